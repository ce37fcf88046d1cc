// Stop sequences of a generate request ("stop" strings, "stop_token_ids"): generation ends when the drawn
// tokens end with one of them, and the stop sequence itself is not part of the answer (as vLLM and
// OpenAI-style servers answer). For a stream, the tokens that could still become a stop sequence are held
// back until they cannot (or are dropped when they do), so a client never receives part of one.
#pragma once

#include <cstdint>
#include <vector>

namespace mpx::serve {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::vector<std::int32_t>> stops);
  // Takes the next drawn token; returns the tokens that can be handed on now (in order), and sets
  // stopped() when the drawn tokens end with a stop sequence.
  std::vector<std::int32_t> push(std::int32_t token);
  // At the end of a generation that did not stop: what was held back.
  std::vector<std::int32_t> flush();
  bool stopped() const { return matched_ > 0; }
  std::size_t matched_length() const { return matched_; }  // the stop sequence's tokens at the end

 private:
  std::vector<std::vector<std::int32_t>> stops_;
  std::vector<std::int32_t> pending_;
  std::size_t matched_ = 0;
};

}  // namespace mpx::serve
