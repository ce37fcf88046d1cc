#include "mpx/serve/service.h"

#include <openssl/crypto.h>

#include <chrono>
#include <optional>
#include <regex>

#include "mpx/build_info.h"
#include "mpx/core/error.h"
#include "mpx/serve/generate_protocol.h"
#include "mpx/serve/protocol.h"

namespace mpx::serve {

namespace {

HttpResponse json_response(int status, const nlohmann::json& body) {
  HttpResponse r;
  r.status = status;
  r.body = body.dump();
  return r;
}

HttpResponse error_response(int status, const std::string& message) {
  HttpResponse r;
  r.status = status;
  r.body = InferenceService::error_body(message);
  return r;
}

const char* status_label(int status) {
  switch (status) {
    case 400: return "bad_request";
    case 404: return "not_found";
    case 413: return "too_large";
    case 503: return "unavailable";
    default: return status >= 500 ? "error" : "bad_request";
  }
}

// Compares in time independent of where the strings first differ (OpenSSL's CRYPTO_memcmp).
bool same_secret(const std::string& given, const std::string& expected) {
  return given.size() == expected.size() && CRYPTO_memcmp(given.data(), expected.data(), given.size()) == 0;
}

// Times one request and counts it in the request metrics under the variant that answered, whatever the
// outcome; `refuse` and `refuse_engine` make the error answers.
class RequestRecord {
 public:
  explicit RequestRecord(ServeMetrics& metrics) : metrics_(metrics) {}
  void answered_by(const std::string& variant) { variant_ = variant.empty() ? "none" : variant; }
  HttpResponse refuse(int status, const std::string& message, const char* label = nullptr) {
    record(label ? label : status_label(status));
    HttpResponse r = error_response(status, message);
    if (status == 503) r.headers["Retry-After"] = "1";
    return r;
  }
  // The answer for an engine status other than ok.
  HttpResponse refuse_engine(Answer::Status status, const std::string& message) {
    switch (status) {
      case Answer::Status::bad_request: return refuse(400, message);
      case Answer::Status::timed_out: return refuse(503, message, "timed_out");
      case Answer::Status::unavailable: return refuse(503, message);
      case Answer::Status::ok:
      case Answer::Status::failed: break;
    }
    return refuse(500, message);
  }
  void record(const char* label) {
    metrics_.record_request(variant_, label, std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  }

 private:
  ServeMetrics& metrics_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::string variant_ = "none";
};

// The request a generate route reads, or the refusal it answers instead (counted in `record`): 503 while
// draining, 400 for a body that is not a generate request or that the model cannot take.
std::optional<HttpResponse> read_generate_request(const HttpRequest& request, const Rollout& rollout,
                                                  const GenerationEngine& text, RequestRecord& record,
                                                  GenerateRequest& parsed) {
  if (rollout.draining()) return record.refuse(503, "the server is shutting down; send the request to another replica");
  try {
    parsed = parse_generate_request(request.body, text.byte_level());
  } catch (const ProtocolError& e) {
    return record.refuse(e.status(), e.what());
  }
  if (const std::string why = text.refusal(parsed); !why.empty()) return record.refuse(400, why);
  return std::nullopt;
}

}  // namespace

std::string InferenceService::error_body(const std::string& message) { return nlohmann::json{{"error", message}}.dump(); }

InferenceService::InferenceService(ServingEngine& images, ServiceOptions options)
    : images_(&images), rollout_(images.rollout()), metrics_(images.metrics()), options_(std::move(options)) {}

InferenceService::InferenceService(GenerationEngine& text, ServiceOptions options)
    : text_(&text), rollout_(text.rollout()), metrics_(text.metrics()), options_(std::move(options)) {}

nlohmann::json InferenceService::routing() const { return images_ ? images_->routing() : text_->routing(); }

HttpResponse InferenceService::handle(const HttpRequest& request) {
  static const std::regex model_path(R"(/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer|/generate_stream|/generate)?)");
  const std::string& p = request.path;
  const bool get = request.method == "GET" || request.method == "HEAD";
  const bool post = request.method == "POST";
  auto only = [&](bool allowed, const char* method) -> std::optional<HttpResponse> {
    if (allowed) return std::nullopt;
    HttpResponse r = error_response(405, p + " takes " + method + ", not " + request.method);
    r.headers["Allow"] = method;
    return r;
  };
  if (p == "/v2/health/live") {
    if (auto r = only(get, "GET")) return *r;
    return json_response(200, {{"live", true}});
  }
  if (p == "/v2/health/ready") {
    if (auto r = only(get, "GET")) return *r;
    const bool ready = !rollout_.draining();
    return json_response(ready ? 200 : 503, {{"ready", ready}});
  }
  if (p == "/v2") {
    if (auto r = only(get, "GET")) return *r;
    const nlohmann::json extensions = images_ ? nlohmann::json{"binary_tensor_data"} : nlohmann::json{"generate"};
    return json_response(200, {{"name", "mpx"}, {"version", build::kVersion}, {"extensions", extensions}});
  }
  if (p == "/metrics") {
    if (auto r = only(get, "GET")) return *r;
    HttpResponse r;
    r.content_type = "text/plain; version=0.0.4";
    r.body = metrics_.text();
    return r;
  }
  if (p == "/admin/precision") return admin(request);
  std::smatch m;
  if (std::regex_match(p, m, model_path)) {
    if (m[1] != options_.model_name) {
      return error_response(404, "unknown model '" + m[1].str() + "': this server serves '" + options_.model_name + "'");
    }
    if (m[2].matched && m[2] != "1") {
      return error_response(404, "model '" + options_.model_name + "' has version 1 only, not '" + m[2].str() + "'");
    }
    if (m[3] == "/infer" || m[3] == "/generate" || m[3] == "/generate_stream") {
      if (auto r = only(post, "POST")) return *r;
      const bool infer_route = m[3] == "/infer";
      if (infer_route && !images_) {
        return error_response(400, "model '" + options_.model_name + "' generates text: POST /v2/models/" +
                                       options_.model_name + "/generate with {\"text_input\": \"...\", \"max_tokens\": 16}");
      }
      if (!infer_route && !text_) {
        return error_response(400, "model '" + options_.model_name + "' classifies images: POST /v2/models/" +
                                       options_.model_name + "/infer");
      }
      if (infer_route) return infer(request);
      return m[3] == "/generate" ? generate(request) : generate_stream(request);
    }
    if (auto r = only(get, "GET")) return *r;
    if (m[3] == "/ready") {
      const bool ready = !rollout_.draining();
      return json_response(ready ? 200 : 503, {{"name", options_.model_name}, {"ready", ready}});
    }
    return model_metadata();
  }
  return error_response(404, "no route " + request.method + " " + p + ": see /v2/health/live, /v2/models/" +
                                 options_.model_name + (images_ ? "[/ready|/infer]" : "[/ready|/generate|/generate_stream]") + ", /metrics");
}

HttpResponse InferenceService::model_metadata() const {
  const nlohmann::json r = routing();
  if (text_) {
    const nn::GptConfig& c = text_->config();
    nlohmann::json inputs = {{{"name", "input_ids"}, {"datatype", "INT32"}, {"shape", {-1}}}};
    nlohmann::json outputs = {{{"name", "output_ids"}, {"datatype", "INT32"}, {"shape", {-1}}}};
    if (text_->byte_level()) {
      inputs.push_back({{"name", "text_input"}, {"datatype", "BYTES"}, {"shape", {1}}});
      outputs.push_back({{"name", "text_output"}, {"datatype", "BYTES"}, {"shape", {1}}});
    }
    return json_response(200, {{"name", options_.model_name},
                               {"versions", {"1"}},
                               {"platform", "mpx"},
                               {"inputs", inputs},
                               {"outputs", outputs},
                               {"parameters",
                                {{"architecture", "gpt"},
                                 {"tokenizer", text_->byte_level() ? "bytes" : "none (send input_ids)"},
                                 {"context", c.block_size},
                                 {"vocabulary", c.vocab_size},
                                 {"layers", c.n_layer},
                                 {"width", c.n_embd},
                                 {"max_tokens", text_->max_new_tokens()},
                                 {"primary", r["primary"]},
                                 {"canary", r["canary"]}}}});
  }
  const std::int64_t h = images_->source().height, w = images_->source().width, classes = images_->classes();
  return json_response(
      200, {{"name", options_.model_name},
            {"versions", {"1"}},
            {"platform", "mpx"},
            {"inputs", {{{"name", kInputName}, {"datatype", "FP32"}, {"shape", {-1, h, w, 1}}}}},
            {"outputs",
             {{{"name", "logits"}, {"datatype", "FP32"}, {"shape", {-1, classes}}},
              {{"name", "probabilities"}, {"datatype", "FP32"}, {"shape", {-1, classes}}}}},
            {"parameters",
             {{"architecture", images_->source().model},
              {"input_scale", "FP32 intensities in [0, 1], or UINT8 pixels 0-255"},
              {"max_batch", images_->max_batch()},
              {"primary", r["primary"]},
              {"canary", r["canary"]}}}});
}

HttpResponse InferenceService::infer(const HttpRequest& request) {
  RequestRecord record(metrics_);
  if (rollout_.draining()) return record.refuse(503, "the server is shutting down; send the request to another replica");
  InferRequest parsed;
  try {
    const auto header = request.headers.find("inference-header-content-length");
    parsed = parse_infer_request(request.body,
                                 parse_json_length(header == request.headers.end() ? nullptr : &header->second, request.body.size()),
                                 images_->source().height, images_->source().width);
  } catch (const ProtocolError& e) {
    return record.refuse(e.status(), e.what());
  }
  Answer a = images_->infer(parsed.id, std::move(parsed.pixels), parsed.rows);
  record.answered_by(a.variant);
  if (a.status != Answer::Status::ok) return record.refuse_engine(a.status, a.error);
  nlohmann::json parameters = {{"variant", a.variant}};
  if (!a.fallback_from.empty()) parameters["fallback_from"] = a.fallback_from;
  const EncodedResponse e = encode_infer_response(options_.model_name, parsed, a.logits, a.classes, parameters);
  HttpResponse r;
  r.body = e.body;
  if (e.json_length) {
    r.content_type = "application/octet-stream";
    r.headers["Inference-Header-Content-Length"] = std::to_string(*e.json_length);
  }
  record.record("ok");
  return r;
}

HttpResponse InferenceService::generate(const HttpRequest& request) {
  RequestRecord record(metrics_);
  GenerateRequest parsed;
  if (auto refused = read_generate_request(request, rollout_, *text_, record, parsed)) return *refused;
  const GenerateAnswer a = text_->generate(parsed);
  record.answered_by(a.variant);
  if (a.status != Answer::Status::ok) return record.refuse_engine(a.status, a.error);
  HttpResponse r;
  r.body = encode_generate_response(options_.model_name, parsed, a, text_->byte_level());
  record.record("ok");
  return r;
}

HttpResponse InferenceService::generate_stream(const HttpRequest& request) {
  auto record = std::make_shared<RequestRecord>(metrics_);
  GenerateRequest parsed;
  // Refused before the stream starts: once the status line has gone, an error can only be an event.
  if (auto refused = read_generate_request(request, rollout_, *text_, *record, parsed)) return *refused;
  HttpResponse r;
  r.content_type = "text/event-stream";
  r.headers["Cache-Control"] = "no-cache";
  r.stream = [this, parsed = std::move(parsed), record](const ChunkWriter& write) {
    const bool byte_level = text_->byte_level();
    std::string pending;  // bytes of a UTF-8 character still unfinished
    const GenerateAnswer a = text_->generate(parsed, [&](std::int32_t token) {
      std::string text;
      if (byte_level) {
        pending.push_back(static_cast<char>(token));
        const std::size_t whole = complete_utf8_prefix(pending);
        text = pending.substr(0, whole);
        pending.erase(0, whole);
      }
      return write(server_sent_event(generate_token_event(options_.model_name, parsed, token, text)));
    });
    record->answered_by(a.variant);
    if (a.status != Answer::Status::ok) {
      // The status line has gone: the failure is the stream's last event (tritonclient raises it).
      record->refuse_engine(a.status, a.error);
      write(server_sent_event({{"error", a.error}}));
      return;
    }
    nlohmann::json last = generate_final_event(options_.model_name, parsed, a);
    last["text_output"] = pending;
    write(server_sent_event(last));
    record->record(a.cancelled ? "cancelled" : "ok");
  };
  return r;
}

HttpResponse InferenceService::admin(const HttpRequest& request) {
  if (options_.admin_token.empty()) {
    return error_response(403, "the admin endpoint is off: start mpx serve with --admin-token-file FILE or MPX_ADMIN_TOKEN");
  }
  const auto auth = request.headers.find("authorization");
  const std::string given = auth == request.headers.end() ? "" : auth->second;
  if (!same_secret(given, "Bearer " + options_.admin_token)) {
    HttpResponse r = error_response(401, "send the admin token as 'Authorization: Bearer TOKEN'");
    r.headers["WWW-Authenticate"] = "Bearer";
    return r;
  }
  if (request.method == "GET") return json_response(200, routing());
  if (request.method != "POST") {
    HttpResponse r = error_response(405, "/admin/precision takes GET or POST");
    r.headers["Allow"] = "GET, POST";
    return r;
  }
  const nlohmann::json command = nlohmann::json::parse(request.body, nullptr, false);
  if (command.is_discarded()) return error_response(400, "the body is not valid JSON: send {\"action\": \"rollback\"}");
  try {
    return json_response(200, images_ ? images_->admin(command) : text_->admin(command));
  } catch (const InvalidArgument& e) {
    return error_response(400, e.what());
  } catch (const Error& e) {  // a variant that cannot be built: nothing was switched
    return error_response(500, e.what());
  }
}

}  // namespace mpx::serve
