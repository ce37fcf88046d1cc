#include "mpx/nn/gpt.h"

#include <cmath>
#include <string>

#include "mpx/core/error.h"

namespace mpx::nn {

std::optional<GptConfig> gpt_preset(const std::string& name) {
  if (name == "gpt-tiny") return GptConfig{4, 4, 128, 64, 256, 0.0f};
  if (name == "gpt-char") return GptConfig{6, 6, 384, 256, 256, 0.2f};
  if (name == "gpt2") return GptConfig{12, 12, 768, 1024, 50304, 0.0f};
  return std::nullopt;
}

bool is_gpt_model(const std::string& name) { return gpt_preset(name).has_value(); }

namespace {
void check(const GptConfig& c) {
  const auto positive = [](std::int64_t v, const char* what) {
    if (v <= 0) throw InvalidArgument(std::string("GPT ") + what + " must be positive, got " + std::to_string(v));
  };
  positive(c.n_layer, "n_layer");
  positive(c.n_head, "n_head");
  positive(c.n_embd, "n_embd");
  positive(c.block_size, "block_size");
  positive(c.vocab_size, "vocab_size");
  if (c.n_embd % c.n_head != 0) {
    throw InvalidArgument("GPT n_embd " + std::to_string(c.n_embd) + " does not split into " + std::to_string(c.n_head) +
                          " heads");
  }
  if (!(c.dropout >= 0.0f && c.dropout < 1.0f)) {
    throw InvalidArgument("GPT dropout must be in [0, 1), got " + std::to_string(c.dropout));
  }
}

// GPT-2's initialisation: weights N(0, 0.02) (here a uniform of that standard deviation), the residual
// projections scaled by 1/sqrt(2 n_layer), biases zero.
std::unique_ptr<Linear> gpt_linear(const std::string& name, std::int64_t in, std::int64_t out, float std,
                                   std::uint64_t seed) {
  auto layer = std::make_unique<Linear>(name, in, out, seed);
  layer->set_initialisation(std * std::sqrt(3.0f), /*zero_bias=*/true);
  layer->set_file_layout_transposed(true);  // Hugging Face's Conv1D keeps [in, out]
  return layer;
}
}  // namespace

Sequential make_gpt(const GptConfig& c, std::uint64_t seed) {
  check(c);
  const float residual_std = 0.02f / std::sqrt(2.0f * static_cast<float>(c.n_layer));
  Sequential m;
  auto wte = std::make_unique<Embedding>("transformer.wte", c.vocab_size, c.n_embd, seed + 1);
  Parameter& table = wte->table();
  m.add(std::move(wte));
  m.add(std::make_unique<PositionEmbedding>("transformer.wpe", c.block_size, c.n_embd, seed + 2));
  std::uint64_t stream = 1;
  if (c.dropout > 0) m.add(std::make_unique<Dropout>("transformer.drop", c.dropout, stream++));
  for (std::int64_t i = 0; i < c.n_layer; ++i) {
    const std::string h = "transformer.h." + std::to_string(i);
    const std::uint64_t s = seed + 1000 * static_cast<std::uint64_t>(i + 1);
    auto attn = std::make_unique<Sequential>(h + ".attn_block");
    attn->add(std::make_unique<LayerNorm>(h + ".ln_1", c.n_embd));
    attn->add(gpt_linear(h + ".attn.c_attn", c.n_embd, 3 * c.n_embd, 0.02f, s + 1));
    attn->add(std::make_unique<CausalSelfAttention>(h + ".attn", c.n_embd, c.n_head));
    attn->add(gpt_linear(h + ".attn.c_proj", c.n_embd, c.n_embd, residual_std, s + 2));
    if (c.dropout > 0) attn->add(std::make_unique<Dropout>(h + ".attn.resid_dropout", c.dropout, stream++));
    m.add(std::make_unique<Residual>(h + ".attn_residual", std::move(attn)));
    auto mlp = std::make_unique<Sequential>(h + ".mlp_block");
    mlp->add(std::make_unique<LayerNorm>(h + ".ln_2", c.n_embd));
    mlp->add(gpt_linear(h + ".mlp.c_fc", c.n_embd, 4 * c.n_embd, 0.02f, s + 3));
    mlp->add(std::make_unique<GELU>(h + ".mlp.gelu", /*tanh_approximation=*/true));
    mlp->add(gpt_linear(h + ".mlp.c_proj", 4 * c.n_embd, c.n_embd, residual_std, s + 4));
    if (c.dropout > 0) mlp->add(std::make_unique<Dropout>(h + ".mlp.dropout", c.dropout, stream++));
    m.add(std::make_unique<Residual>(h + ".mlp_residual", std::move(mlp)));
  }
  m.add(std::make_unique<LayerNorm>("transformer.ln_f", c.n_embd));
  m.add(Linear::tied("lm_head", table, c.n_embd, c.vocab_size));
  return m;
}

std::int64_t gpt_parameters(const GptConfig& c, bool with_positions) {
  const std::int64_t d = c.n_embd;
  const std::int64_t block = 2 * d /*ln_1*/ + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d /*ln_2*/ +
                             (d * 4 * d + 4 * d) + (4 * d * d + d);
  return c.vocab_size * d + (with_positions ? c.block_size * d : 0) + c.n_layer * block + 2 * d;
}

double gpt_training_flops_per_token(const GptConfig& c, std::int64_t tokens) {
  // 6 FLOPs per parameter per token (forward 2, backward 4), plus attention's q k^T and P v: 2 x 2 x T x d
  // per layer forward, three times that with backward (the PaLM paper's accounting, without the causal half).
  const double matmul = 6.0 * static_cast<double>(gpt_parameters(c, false));
  const double attention = 12.0 * static_cast<double>(c.n_layer * c.n_embd * tokens);
  return matmul + attention;
}

}  // namespace mpx::nn
