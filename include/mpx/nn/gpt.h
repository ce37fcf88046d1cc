// GPT-2 family language models on the shared layers: token + learned position embeddings, pre-LayerNorm
// blocks (causal self-attention, a 4x MLP with tanh-GELU, residual adds), a final LayerNorm and an output
// projection tied to the token embedding. Layers carry Hugging Face GPT-2's names
// (transformer.h.0.attn.c_attn, ...); input i32 token ids [N, T], output logits [N, T, vocabulary].
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "mpx/nn/model.h"

namespace mpx::nn {

struct GptConfig {
  std::int64_t n_layer = 4, n_head = 4, n_embd = 128, block_size = 64, vocab_size = 256;
  float dropout = 0.0f;
};

// gpt-tiny (4/4/128, block 64), gpt-char (6/6/384, block 256), gpt2 (12/12/768, block 1024, vocabulary
// 50304: GPT-2's 50257 padded to a multiple of 64); std::nullopt for another name.
std::optional<GptConfig> gpt_preset(const std::string& name);
bool is_gpt_model(const std::string& name);

// Throws InvalidArgument when the sizes do not fit together (heads dividing the width, positive sizes).
Sequential make_gpt(const GptConfig& config, std::uint64_t seed);

// The parameter count without the position embedding (what GPT-2's papers report), and the training
// FLOPs per token of a forward + backward pass (6 x parameters + the attention's 12 x layers x width x T).
std::int64_t gpt_parameters(const GptConfig& config, bool with_positions = true);
double gpt_training_flops_per_token(const GptConfig& config, std::int64_t tokens);

}  // namespace mpx::nn
