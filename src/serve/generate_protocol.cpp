#include "mpx/serve/generate_protocol.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace mpx::serve {

namespace {

[[noreturn]] void bad(const std::string& message) { throw ProtocolError(400, message); }

// A sampling setting from the top level or "parameters" (not both).
const nlohmann::json* setting(const nlohmann::json& body, const char* key) {
  const nlohmann::json* top = body.contains(key) ? &body[key] : nullptr;
  const nlohmann::json* nested = nullptr;
  if (body.contains("parameters")) {
    const nlohmann::json& p = body["parameters"];
    if (!p.is_object()) bad("\"parameters\" must be a JSON object");
    if (p.contains(key)) nested = &p[key];
  }
  if (top && nested) bad(std::string("\"") + key + "\" is given twice: at the top level and under \"parameters\"");
  return top ? top : nested;
}

std::int64_t integer_setting(const nlohmann::json& body, const char* key, std::int64_t fallback, std::int64_t lo,
                             std::int64_t hi) {
  const nlohmann::json* v = setting(body, key);
  if (!v) return fallback;
  if (!v->is_number_integer()) bad(std::string("\"") + key + "\" must be an integer");
  if (v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(hi)) {
    bad(std::string("\"") + key + "\" must be at most " + std::to_string(hi));
  }
  const auto n = v->get<std::int64_t>();
  if (n < lo || n > hi) bad(std::string("\"") + key + "\" must be " + std::to_string(lo) + " to " + std::to_string(hi));
  return n;
}

}  // namespace

GenerateRequest parse_generate_request(std::string_view text, bool byte_level) {
  const nlohmann::json body = nlohmann::json::parse(text, nullptr, false);
  if (body.is_discarded()) bad("the body is not valid JSON: send {\"text_input\": \"...\", \"max_tokens\": 16}");
  if (!body.is_object()) bad("the body must be a JSON object: {\"text_input\": \"...\", \"max_tokens\": 16}");
  GenerateRequest r;
  if (body.contains("id")) {
    if (!body["id"].is_string()) bad("\"id\" must be a string");
    r.id = body["id"];
  }
  const bool text_given = body.contains("text_input"), ids_given = body.contains("input_ids");
  if (text_given == ids_given) bad("send the prompt as \"text_input\" (a string) or \"input_ids\" (token ids), one of them");
  if (text_given) {
    if (!byte_level) {
      bad("this model has a GPT-2 vocabulary and mpx has no GPT-2 tokenizer: send the prompt as \"input_ids\"");
    }
    if (!body["text_input"].is_string()) bad("\"text_input\" must be a string");
    for (const char c : body["text_input"].get<std::string>()) r.prompt.push_back(static_cast<unsigned char>(c));
  } else {
    const nlohmann::json& ids = body["input_ids"];
    if (!ids.is_array()) bad("\"input_ids\" must be an array of token ids");
    for (const nlohmann::json& id : ids) {
      if (!id.is_number_integer() || id.get<std::int64_t>() < 0 || id.get<std::int64_t>() > std::numeric_limits<std::int32_t>::max()) {
        bad("\"input_ids\" holds " + id.dump() + ": token ids are non-negative integers");
      }
      r.prompt.push_back(static_cast<std::int32_t>(id.get<std::int64_t>()));
    }
  }
  if (const nlohmann::json* stream = setting(body, "stream"); stream && !(stream->is_boolean() && !stream->get<bool>())) {
    bad("this endpoint answers whole generations: POST .../generate_stream for tokens as they are drawn, or leave out \"stream\"");
  }
  if (const nlohmann::json* stop = setting(body, "stop")) {
    if (!byte_level) bad("this model has a GPT-2 vocabulary and mpx has no GPT-2 tokenizer: send \"stop_token_ids\"");
    const nlohmann::json list = stop->is_string() ? nlohmann::json::array({*stop}) : *stop;
    if (!list.is_array() || list.size() > kMaxStopSequences) {
      bad("\"stop\" must be a string or an array of at most " + std::to_string(kMaxStopSequences) + " strings");
    }
    for (const nlohmann::json& s : list) {
      if (!s.is_string() || s.get<std::string>().empty()) bad("\"stop\" holds " + s.dump() + ": stop sequences are non-empty strings");
      r.stop.emplace_back();
      for (const char c : s.get<std::string>()) r.stop.back().push_back(static_cast<unsigned char>(c));
    }
  }
  if (const nlohmann::json* ids = setting(body, "stop_token_ids")) {
    if (!ids->is_array() || ids->size() > kMaxStopSequences) {
      bad("\"stop_token_ids\" must be an array of at most " + std::to_string(kMaxStopSequences) + " token ids");
    }
    for (const nlohmann::json& id : *ids) {
      if (!id.is_number_integer() || id.get<std::int64_t>() < 0 || id.get<std::int64_t>() > std::numeric_limits<std::int32_t>::max()) {
        bad("\"stop_token_ids\" holds " + id.dump() + ": token ids are non-negative integers");
      }
      r.stop.push_back({static_cast<std::int32_t>(id.get<std::int64_t>())});
    }
  }
  r.sampling.max_new_tokens = integer_setting(body, "max_tokens", 16, 1, std::int64_t{1} << 30);
  r.sampling.top_k = integer_setting(body, "top_k", 0, 0, std::int64_t{1} << 30);
  const nlohmann::json* seed = setting(body, "seed");
  if (seed) {
    if (!seed->is_number_integer() || (seed->is_number_integer() && !seed->is_number_unsigned() && seed->get<std::int64_t>() < 0)) {
      bad("\"seed\" must be a non-negative integer");
    }
    r.sampling.seed = seed->get<std::uint64_t>();
  }
  if (const nlohmann::json* t = setting(body, "temperature")) {
    if (!t->is_number()) bad("\"temperature\" must be a number");
    const double v = t->get<double>();
    if (!std::isfinite(v) || v < 0 || v > 100) bad("\"temperature\" must be 0 to 100 (0: the most likely token)");
    r.sampling.temperature = static_cast<float>(v);
  } else {
    r.sampling.temperature = 1.0f;
  }
  return r;
}

std::string encode_generate_response(const std::string& model_name, const GenerateRequest& request,
                                     const GenerateAnswer& answer, bool byte_level) {
  const auto& tokens = answer.generation.tokens;
  nlohmann::json out = {{"model_name", model_name}, {"model_version", "1"}};
  if (!request.id.empty()) out["id"] = request.id;
  if (byte_level) {
    std::string text;
    for (const std::int32_t t : tokens) text.push_back(static_cast<char>(t));
    out["text_output"] = text;
  }
  out["output_ids"] = tokens;
  out["variant"] = answer.variant;
  if (!answer.fallback_from.empty()) out["fallback_from"] = answer.fallback_from;
  out["finish_reason"] = answer.finish_reason;
  out["prompt_tokens"] = answer.generation.prompt.size();
  if (!answer.generation.notices.empty()) out["notices"] = answer.generation.notices;
  return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

nlohmann::json generate_token_event(const std::string& model_name, const GenerateRequest& request,
                                    std::int32_t token, const std::string& text) {
  nlohmann::json e = {{"model_name", model_name}, {"model_version", "1"}};
  if (!request.id.empty()) e["id"] = request.id;
  e["text_output"] = text;
  e["output_ids"] = {token};
  return e;
}

nlohmann::json generate_final_event(const std::string& model_name, const GenerateRequest& request,
                                    const GenerateAnswer& answer) {
  nlohmann::json e = {{"model_name", model_name}, {"model_version", "1"}};
  if (!request.id.empty()) e["id"] = request.id;
  e["text_output"] = "";
  e["output_ids"] = nlohmann::json::array();
  e["variant"] = answer.variant;
  if (!answer.fallback_from.empty()) e["fallback_from"] = answer.fallback_from;
  e["finish_reason"] = answer.finish_reason;
  e["prompt_tokens"] = answer.generation.prompt.size();
  e["output_tokens"] = answer.generation.tokens.size();
  return e;
}

std::string server_sent_event(const nlohmann::json& data) {
  return "data: " + data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n\n";
}

std::size_t complete_utf8_prefix(std::string_view bytes) {
  // Look back at most 3 bytes for the lead byte of the last character.
  const std::size_t n = bytes.size();
  for (std::size_t back = 1; back <= std::min<std::size_t>(3, n); ++back) {
    const auto c = static_cast<unsigned char>(bytes[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: keep looking for the lead
    const std::size_t length = c >= 0xF5 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 1;
    return length > back ? n - back : n;  // the last character still needs bytes
  }
  return n;
}

}  // namespace mpx::serve
