// The HTTP endpoints of `mpx serve`, independent of the HTTP library (so protocol conformance is tested
// without sockets): the Open Inference Protocol (health, server and model metadata, readiness, infer for an
// image classifier; Triton's generate extension for a GPT), /metrics, and the token-protected
// /admin/precision. Every error is a JSON body {"error": "..."}.
#pragma once

#include <functional>
#include <map>
#include <string>

#include "mpx/serve/engine.h"
#include "mpx/serve/generation_engine.h"

namespace mpx::serve {

struct HttpRequest {
  std::string method, path, body;
  std::map<std::string, std::string> headers;  // names in lower case
};

// Writes one chunk of a streamed answer; false when the client has gone.
using ChunkWriter = std::function<bool(const std::string&)>;

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json", body;
  std::map<std::string, std::string> headers;
  // Set for a streamed answer (the body is then unused): called once, after the status and headers have
  // been sent, with the writer of the body's chunks.
  std::function<void(const ChunkWriter&)> stream;
};

struct ServiceOptions {
  std::string model_name;   // the NAME in /v2/models/NAME
  std::string admin_token;  // empty: the admin endpoint refuses every call
};

class InferenceService {
 public:
  InferenceService(ServingEngine& images, ServiceOptions options);
  InferenceService(GenerationEngine& text, ServiceOptions options);
  HttpResponse handle(const HttpRequest& request);
  // The body of an error response, as every endpoint writes it.
  static std::string error_body(const std::string& message);

 private:
  HttpResponse infer(const HttpRequest& request);
  HttpResponse generate(const HttpRequest& request);
  HttpResponse generate_stream(const HttpRequest& request);
  HttpResponse model_metadata() const;
  HttpResponse admin(const HttpRequest& request);
  nlohmann::json routing() const;

  ServingEngine* images_ = nullptr;  // one of the two engines
  GenerationEngine* text_ = nullptr;
  Rollout& rollout_;
  ServeMetrics& metrics_;
  ServiceOptions options_;
};

}  // namespace mpx::serve
