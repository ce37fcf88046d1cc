// Triton's generate extension (POST /v2/models/NAME/generate) for a served GPT: a JSON object with the
// prompt as "text_input" (byte-level models: the UTF-8 bytes are the tokens) or "input_ids" (token ids, any
// GPT), an optional "id", and the sampling settings "max_tokens" (default 16), "temperature" (default 1;
// 0: the most likely token), "top_k" (0: all) and "seed" (default 0) either at the top level (as
// TensorRT-LLM's ensemble takes them) or under "parameters" (as vLLM's backend does). The answer is a JSON
// object: "text_output" (byte-level models; bytes that are not UTF-8 become U+FFFD) and "output_ids" (the
// new tokens only), "variant", "fallback_from" when FP32 answered instead, "finish_reason" ("length", or
// "stop" when one of the request's "stop" strings (byte-level models) or "stop_token_ids" ended it; the stop
// sequence is left out of the answer).
#pragma once

#include <string>
#include <string_view>

#include "mpx/serve/generation_engine.h"
#include "mpx/serve/protocol.h"

namespace mpx::serve {

inline constexpr std::size_t kMaxStopSequences = 16;

// POST /v2/models/NAME/generate_stream takes the same body and answers as server-sent events
// (text/event-stream): one `data: {...}` event per new token ("text_output" with the text completed so far
// by that token: bytes of an unfinished UTF-8 character wait for the rest; "output_ids": [id]), then a last
// event with "finish_reason", "variant" (and "fallback_from"), "prompt_tokens" and "output_tokens", or an
// event {"error": "..."} when the generation failed after the stream began.
// Throws ProtocolError (400) saying what to send.
GenerateRequest parse_generate_request(std::string_view body, bool byte_level);
std::string encode_generate_response(const std::string& model_name, const GenerateRequest& request,
                                     const GenerateAnswer& answer, bool byte_level);

// One server-sent event: "data: " + the JSON object + a blank line.
std::string server_sent_event(const nlohmann::json& data);
nlohmann::json generate_token_event(const std::string& model_name, const GenerateRequest& request,
                                    std::int32_t token, const std::string& text);
nlohmann::json generate_final_event(const std::string& model_name, const GenerateRequest& request,
                                    const GenerateAnswer& answer);
// How many leading bytes of `bytes` are whole UTF-8 characters (or bytes that can never start or continue
// one, which are sent as they are and become U+FFFD): the rest is an unfinished character to hold back.
std::size_t complete_utf8_prefix(std::string_view bytes);

}  // namespace mpx::serve
