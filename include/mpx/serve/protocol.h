// The Open Inference Protocol (KServe v2) request and response of an image classifier, with Triton's
// binary tensor data extension: parsing checks everything a client can get wrong (shape, datatype, element
// count, values) and throws ProtocolError with the HTTP status and a message that says what to send.
// Inputs: one tensor "images", FP32 intensities in [0, 1] or UINT8 pixels 0-255, shaped [N, 28, 28, 1],
// [N, 28, 28], [N, 1, 28, 28] or [N, 784]. NaN or Inf inputs are refused (400), never answered.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace mpx::serve {

class ProtocolError : public std::runtime_error {
 public:
  ProtocolError(int status, const std::string& message) : std::runtime_error(message), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

inline constexpr const char* kInputName = "images";

struct RequestedOutput {
  std::string name;  // "logits" or "probabilities"
  bool binary = false;
};

struct InferRequest {
  std::string id;
  std::int64_t rows = 0;
  std::vector<float> pixels;  // rows x height x width, in [0, 1]
  std::vector<RequestedOutput> outputs;  // both when the request names none
};

// `body`: the whole HTTP body; `json_length`: the Inference-Header-Content-Length header when present
// (the JSON part's bytes; binary tensor data follows it).
InferRequest parse_infer_request(std::string_view body, std::optional<std::size_t> json_length, std::int64_t height,
                                 std::int64_t width);
// Parses the header's value; throws ProtocolError 400 when it is not a byte count within the body.
std::optional<std::size_t> parse_json_length(const std::string* header, std::size_t body_size);

struct EncodedResponse {
  std::string body;
  std::optional<std::size_t> json_length;  // set when binary outputs follow the JSON
};

// `logits`: rows x classes. `parameters`: the response's parameters (the variant that answered, ...).
EncodedResponse encode_infer_response(const std::string& model_name, const InferRequest& request,
                                      const std::vector<float>& logits, std::int64_t classes,
                                      const nlohmann::json& parameters);

// Softmax of each row, computed in double and stored in FP32.
std::vector<float> probabilities(const std::vector<float>& logits, std::int64_t classes);

}  // namespace mpx::serve
