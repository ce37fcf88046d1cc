#include "mpx/serve/protocol.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace mpx::serve {

namespace {

ProtocolError bad(const std::string& message) { return ProtocolError(400, message); }

std::int64_t positive_dim(const nlohmann::json& d) {
  if (!d.is_number_integer() || d.get<std::int64_t>() < 1) throw bad("\"shape\" must hold positive integers");
  return d.get<std::int64_t>();
}

// The images in `shape`, which must be one of the accepted layouts of height x width images.
std::int64_t rows_of(const nlohmann::json& shape, std::int64_t h, std::int64_t w) {
  if (!shape.is_array() || shape.empty()) throw bad("\"shape\" must be an array such as [1, 28, 28, 1]");
  std::vector<std::int64_t> d;
  for (const nlohmann::json& x : shape) d.push_back(positive_dim(x));
  const bool ok = (d.size() == 4 && d[1] == h && d[2] == w && d[3] == 1) || (d.size() == 3 && d[1] == h && d[2] == w) ||
                  (d.size() == 4 && d[1] == 1 && d[2] == h && d[3] == w) || (d.size() == 2 && d[1] == h * w);
  if (!ok) {
    throw bad(fmt::format("input shape {} is not a batch of {}x{} images: send [N, {}, {}, 1], [N, {}, {}], "
                          "[N, 1, {}, {}] or [N, {}]", shape.dump(), h, w, h, w, h, w, h, w, h * w));
  }
  return d[0];
}

void flatten_into(const nlohmann::json& data, std::vector<const nlohmann::json*>& out) {
  if (data.is_array()) {
    for (const nlohmann::json& x : data) flatten_into(x, out);
  } else {
    out.push_back(&data);
  }
}

float checked_fp32(double v, std::size_t index) {
  if (!std::isfinite(v)) throw bad(fmt::format("input element {} is not finite: NaN and Inf inputs are refused", index));
  if (v < 0 || v > 1) {
    throw bad(fmt::format("input element {} is {}: FP32 inputs are intensities in [0, 1] (send UINT8 for 0-255 pixels)",
                          index, v));
  }
  return static_cast<float>(v);
}

void read_json_data(const nlohmann::json& data, bool uint8, std::vector<float>& pixels) {
  std::vector<const nlohmann::json*> flat;
  flat.reserve(pixels.size());
  flatten_into(data, flat);
  if (flat.size() != pixels.size()) {
    throw bad(fmt::format("\"data\" holds {} elements; the shape needs {}", flat.size(), pixels.size()));
  }
  for (std::size_t i = 0; i < flat.size(); ++i) {
    const nlohmann::json& x = *flat[i];
    if (uint8) {
      if (!x.is_number_integer() || x.get<std::int64_t>() < 0 || x.get<std::int64_t>() > 255) {
        throw bad(fmt::format("input element {} is {}: UINT8 elements are integers 0-255", i, x.dump()));
      }
      pixels[i] = static_cast<float>(x.get<std::int64_t>()) / 255.0f;
    } else {
      if (!x.is_number()) throw bad(fmt::format("input element {} is {}: FP32 elements are numbers", i, x.dump()));
      pixels[i] = checked_fp32(x.get<double>(), i);
    }
  }
}

void read_binary_data(std::string_view bytes, bool uint8, std::vector<float>& pixels) {
  const std::size_t need = pixels.size() * (uint8 ? 1 : 4);
  if (bytes.size() != need) {
    throw bad(fmt::format("\"binary_data_size\" is {} bytes; the shape and datatype need {}", bytes.size(), need));
  }
  for (std::size_t i = 0; i < pixels.size(); ++i) {
    if (uint8) {
      pixels[i] = static_cast<float>(static_cast<unsigned char>(bytes[i])) / 255.0f;
    } else {
      float v;
      std::memcpy(&v, bytes.data() + 4 * i, 4);  // little-endian, as the extension and x86 have it
      pixels[i] = checked_fp32(v, i);
    }
  }
}

}  // namespace

std::optional<std::size_t> parse_json_length(const std::string* header, std::size_t body_size) {
  if (header == nullptr) return std::nullopt;
  std::size_t value = 0;
  const bool digits = !header->empty() && header->size() < 19 &&
                      std::all_of(header->begin(), header->end(), [](char c) { return c >= '0' && c <= '9'; });
  if (digits) value = std::stoull(*header);
  if (!digits || value > body_size) {
    throw bad("Inference-Header-Content-Length '" + *header + "' must be the JSON part's length in bytes, at most the body's " +
              std::to_string(body_size));
  }
  return value;
}

InferRequest parse_infer_request(std::string_view body, std::optional<std::size_t> json_length, std::int64_t height,
                                 std::int64_t width) {
  const std::string_view json_text = json_length ? body.substr(0, *json_length) : body;
  std::string_view binary = json_length ? body.substr(*json_length) : std::string_view{};
  const nlohmann::json j = nlohmann::json::parse(json_text, nullptr, false);
  if (j.is_discarded()) throw bad("the body is not valid JSON: send {\"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}]}");
  if (!j.is_object()) throw bad("the body must be a JSON object with \"inputs\"");
  InferRequest r;
  if (j.contains("id")) {
    if (!j["id"].is_string()) throw bad("\"id\" must be a string");
    r.id = j["id"];
  }
  if (!j.contains("inputs") || !j["inputs"].is_array() || j["inputs"].size() != 1) {
    throw bad(std::string("\"inputs\" must be an array of one tensor, \"") + kInputName + "\"");
  }
  const nlohmann::json& in = j["inputs"][0];
  if (!in.is_object()) throw bad("each input must be an object with \"name\", \"shape\", \"datatype\" and \"data\"");
  if (!in.contains("name") || !in["name"].is_string() || in["name"] != kInputName) {
    throw bad(std::string("the model's input is named \"") + kInputName + "\"" +
              (in.contains("name") ? ", not " + in["name"].dump() : ""));
  }
  if (!in.contains("datatype") || !in["datatype"].is_string()) throw bad("the input needs \"datatype\": FP32 or UINT8");
  const std::string datatype = in["datatype"];
  if (datatype != "FP32" && datatype != "UINT8") throw bad("datatype " + datatype + " is not accepted: send FP32 or UINT8");
  if (!in.contains("shape")) throw bad("the input needs \"shape\"");
  r.rows = rows_of(in["shape"], height, width);
  if (r.rows > (std::int64_t{1} << 20)) throw ProtocolError(413, "a request of more than 2^20 images");
  r.pixels.resize(static_cast<std::size_t>(r.rows * height * width));
  const bool uint8 = datatype == "UINT8";
  const nlohmann::json* params = in.contains("parameters") && in["parameters"].is_object() ? &in["parameters"] : nullptr;
  if (params && params->contains("binary_data_size")) {
    const nlohmann::json& size = (*params)["binary_data_size"];
    if (!size.is_number_unsigned() || size.get<std::uint64_t>() > binary.size()) {
      throw bad(fmt::format("\"binary_data_size\" {} is more than the {} bytes after the JSON", size.dump(), binary.size()));
    }
    read_binary_data(binary.substr(0, size.get<std::size_t>()), uint8, r.pixels);
  } else {
    if (!in.contains("data")) throw bad("the input needs \"data\" (or binary data with \"binary_data_size\")");
    read_json_data(in["data"], uint8, r.pixels);
  }
  bool binary_default = false;
  if (j.contains("parameters") && j["parameters"].is_object() && j["parameters"].contains("binary_data_output")) {
    binary_default = j["parameters"]["binary_data_output"].is_boolean() && j["parameters"]["binary_data_output"].get<bool>();
  }
  if (j.contains("outputs")) {
    if (!j["outputs"].is_array()) throw bad("\"outputs\" must be an array of {\"name\"}");
    for (const nlohmann::json& o : j["outputs"]) {
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string()) throw bad("each requested output needs a \"name\"");
      const std::string name = o["name"];
      if (name != "logits" && name != "probabilities") {
        throw bad("unknown output \"" + name + "\": the model's outputs are \"logits\" and \"probabilities\"");
      }
      bool binary_out = binary_default;
      if (o.contains("parameters") && o["parameters"].is_object() && o["parameters"].contains("binary_data")) {
        binary_out = o["parameters"]["binary_data"].is_boolean() && o["parameters"]["binary_data"].get<bool>();
      }
      r.outputs.push_back({name, binary_out});
    }
  }
  if (r.outputs.empty()) r.outputs = {{"logits", binary_default}, {"probabilities", binary_default}};
  return r;
}

std::vector<float> probabilities(const std::vector<float>& logits, std::int64_t classes) {
  std::vector<float> p(logits.size());
  for (std::size_t first = 0; first + static_cast<std::size_t>(classes) <= logits.size(); first += static_cast<std::size_t>(classes)) {
    const float* row = logits.data() + first;
    const double top = *std::max_element(row, row + classes);
    double sum = 0;
    for (std::int64_t k = 0; k < classes; ++k) sum += std::exp(static_cast<double>(row[k]) - top);
    for (std::int64_t k = 0; k < classes; ++k) p[first + static_cast<std::size_t>(k)] = static_cast<float>(std::exp(row[k] - top) / sum);
  }
  return p;
}

EncodedResponse encode_infer_response(const std::string& model_name, const InferRequest& request,
                                      const std::vector<float>& logits, std::int64_t classes,
                                      const nlohmann::json& parameters) {
  nlohmann::json j = {{"model_name", model_name}, {"model_version", "1"}, {"parameters", parameters}};
  if (!request.id.empty()) j["id"] = request.id;
  nlohmann::json outputs = nlohmann::json::array();
  std::string binary;
  std::vector<float> probs;
  for (const RequestedOutput& o : request.outputs) {
    const std::vector<float>* values = &logits;
    if (o.name == "probabilities") {
      if (probs.empty()) probs = probabilities(logits, classes);
      values = &probs;
    }
    nlohmann::json t = {{"name", o.name}, {"datatype", "FP32"}, {"shape", {request.rows, classes}}};
    if (o.binary) {
      const std::size_t bytes = values->size() * sizeof(float);
      t["parameters"] = {{"binary_data_size", bytes}};
      binary.append(reinterpret_cast<const char*>(values->data()), bytes);
    } else {
      t["data"] = *values;
    }
    outputs.push_back(std::move(t));
  }
  j["outputs"] = std::move(outputs);
  EncodedResponse e;
  e.body = j.dump();
  if (!binary.empty()) {
    e.json_length = e.body.size();
    e.body += binary;
  }
  return e;
}

}  // namespace mpx::serve
