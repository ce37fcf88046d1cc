// Sampling from a trained GPT model file (`mpx generate`): the model planned for one position at a time
// with a KV cache in every attention layer, so each new token costs one position, not the whole prefix.
// The prompt is fed position by position; sampling is temperature / top-k over FP32 logits with a seeded
// generator (temperature 0: the most likely token).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mpx/nn/gpt.h"
#include "mpx/tensor/tensor.h"

namespace mpx::artifacts {

struct SamplingOptions {
  std::int64_t max_new_tokens = 200;
  float temperature = 1.0f;  // 0: greedy
  std::int64_t top_k = 0;    // 0: the whole vocabulary
  std::uint64_t seed = 0;
};

struct Generation {
  std::vector<std::int32_t> prompt;  // as fed (after any cut to the context)
  std::vector<std::int32_t> tokens;  // the new ones
  std::vector<std::string> notices;  // what was done to the prompt or the context on the way
  bool stopped = false;              // the sampling-logits observer ended it before max_new_tokens
};

// Sees the FP32 logits each new token is about to be drawn from; returning false ends the generation
// there, before that token (serving stops a variant whose logits went non-finite).
using SamplingLogitsObserver = std::function<bool(const std::vector<float>&)>;

class Generator {
 public:
  // `model`: a model file (mpx's, or a Hugging Face GPT-2 file in safetensors form); `precision`: fp32, bf16
  // or fp16 (the weights rounded to it, products in it, FP32 accumulation and softmax). Throws IoError for a
  // file that holds no GPT, InvalidArgument for an unknown precision.
  // `heads` overrides the head count of a file without mpx's metadata (inferred as width / 64, GPT-2's).
  // `device`: the backend it runs on (CUDA: NotAvailable when there is no device).
  Generator(const std::string& model, const std::string& precision, std::int64_t heads = 0,
            Device device = Device::cpu);
  ~Generator();
  const nn::GptConfig& config() const;
  bool byte_level() const;  // a byte-level model (vocabulary 256): text in, text out
  // Logits (FP32, [vocabulary]) after each prompt position are handed to `on_prompt_logits` when given;
  // every new token to `on_token` as it is sampled; the logits each token is drawn from to
  // `on_sampling_logits`.
  Generation generate(std::vector<std::int32_t> prompt, const SamplingOptions& options,
                      const std::function<void(std::int32_t)>& on_token = {},
                      const std::function<void(const std::vector<float>&)>& on_prompt_logits = {},
                      const SamplingLogitsObserver& on_sampling_logits = {});

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The next token from FP32 logits under `options` (temperature, top-k), drawing from `uniform` in [0, 1).
std::int32_t sample_token(const std::vector<float>& logits, const SamplingOptions& options, double uniform);

}  // namespace mpx::artifacts
