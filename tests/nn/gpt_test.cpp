// GPT-2 models on the shared layers: causal masking, the KV-cache decoding path against the full forward
// pass, a finite-difference check of the whole model's loss, and the presets' sizes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "mpx/core/error.h"
#include "mpx/nn/gpt.h"

namespace mpx::nn {
namespace {

const GptConfig kSmall{2, 2, 8, 6, 13, 0.0f};

Tensor token_ids(const Shape& shape, std::vector<std::int32_t> values) {
  Tensor ids = Tensor::empty(shape, DType::i32, MemoryCategory::activations, nullptr);
  std::memcpy(ids.data(), values.data(), ids.bytes());
  return ids;
}

std::vector<float> host_floats(const Tensor& t) { return {t.data_as<float>(), t.data_as<float>() + t.numel()}; }

TEST(Gpt, ChangingALaterTokenNeverChangesAnEarlierLogit) {
  Context ctx;
  Sequential model = make_gpt(kSmall, 3);
  model.plan({{2, 6}, DType::i32}, ctx);
  std::vector<std::int32_t> ids = {1, 5, 7, 2, 9, 4, 0, 3, 3, 12, 8, 6};
  const std::vector<float> before = host_floats(model.forward(token_ids({2, 6}, ids), ctx, false));
  ids[3] = 11;      // sequence 0, position 3
  ids[6 + 1] = 10;  // sequence 1, position 1
  const std::vector<float> after = host_floats(model.forward(token_ids({2, 6}, ids), ctx, false));
  const std::int64_t v = kSmall.vocab_size;
  for (std::int64_t t = 0; t < 6; ++t) {
    const bool same0 = std::memcmp(&before[t * v], &after[t * v], v * sizeof(float)) == 0;
    const bool same1 = std::memcmp(&before[(6 + t) * v], &after[(6 + t) * v], v * sizeof(float)) == 0;
    EXPECT_EQ(same0, t < 3) << "sequence 0, position " << t;
    EXPECT_EQ(same1, t < 1) << "sequence 1, position " << t;
  }
}

// The decoding path (one position per forward, keys and values cached) computes what the full forward
// pass computes at every position.
TEST(Gpt, KvCacheDecodingMatchesTheFullForwardPass) {
  Context full_ctx, step_ctx;
  Sequential full = make_gpt(kSmall, 5), stepper = make_gpt(kSmall, 5);
  full.plan({{1, 6}, DType::i32}, full_ctx);
  visit_layers(stepper, [](Layer& layer) {
    if (auto* attention = dynamic_cast<CausalSelfAttention*>(&layer)) attention->enable_cache(6);
  });
  stepper.plan({{1, 1}, DType::i32}, step_ctx);
  const std::vector<std::int32_t> ids = {4, 4, 1, 12, 0, 7};
  const std::vector<float> reference = host_floats(full.forward(token_ids({1, 6}, ids), full_ctx, false));
  for (std::int64_t t = 0; t < 6; ++t) {
    step_ctx.position_offset = t;
    const std::vector<float> logits = host_floats(stepper.forward(token_ids({1, 1}, {ids[t]}), step_ctx, false));
    for (std::int64_t c = 0; c < kSmall.vocab_size; ++c) {
      EXPECT_NEAR(logits[c], reference[t * kSmall.vocab_size + c], 1e-5) << "position " << t << " token " << c;
    }
  }
}

// A prompt fed in passes of several rows (row i at position offset + i, Context::rows_are_positions) fills
// the KV cache as one position per pass does: the logits after every position match the full forward pass,
// and so does decoding after it.
TEST(Gpt, APromptFedRowsAtATimeFillsTheCacheAsOnePositionPerPassDoes) {
  Context full_ctx, ctx;
  Sequential full = make_gpt(kSmall, 5), model = make_gpt(kSmall, 5);
  full.plan({{1, 6}, DType::i32}, full_ctx);
  visit_layers(model, [](Layer& layer) {
    if (auto* attention = dynamic_cast<CausalSelfAttention*>(&layer)) attention->enable_cache(6);
  });
  ctx.rows_are_positions = true;
  model.plan({{4, 1}, DType::i32}, ctx);
  const std::vector<std::int32_t> ids = {4, 4, 1, 12, 0, 7};
  const std::vector<float> reference = host_floats(full.forward(token_ids({1, 6}, ids), full_ctx, false));
  const std::int64_t v = kSmall.vocab_size;
  // Positions 0-3 in one pass, 4 alone, 5 alone (decoding).
  std::vector<float> logits = host_floats(model.forward(token_ids({4, 1}, {ids[0], ids[1], ids[2], ids[3]}), ctx, false));
  for (std::int64_t i = 4; i < 6; ++i) {
    ctx.position_offset = i;
    const std::vector<float> one = host_floats(model.forward(token_ids({1, 1}, {ids[static_cast<std::size_t>(i)]}), ctx, false));
    logits.insert(logits.end(), one.begin(), one.end());
  }
  ASSERT_EQ(logits.size(), reference.size());
  for (std::size_t k = 0; k < logits.size(); ++k) {
    EXPECT_NEAR(logits[k], reference[k], 1e-5) << "position " << static_cast<std::int64_t>(k) / v;
  }
  ctx.position_offset = 4;  // two rows past the cache's six positions
  EXPECT_THROW(model.forward(token_ids({3, 1}, {1, 2, 3}), ctx, false), InvalidArgument);
  // Without rows_are_positions, rows would be several sequences: one sequence's cache refuses them.
  ctx.position_offset = 0;
  ctx.rows_are_positions = false;
  EXPECT_THROW(model.forward(token_ids({2, 1}, {1, 2}), ctx, false), InvalidArgument);
}

// The whole model's mean cross-entropy against central differences, for entries of every parameter
// (embeddings, attention, MLP, LayerNorms; the tied table sums both uses). The residual stream starts
// small (GPT-2's initialisation) and LayerNorm rescales it, so the step is small (1e-3); the loss is an
// FP32 number, so the differences carry an absolute error of about ulp(loss) / step (~2.4e-4 here).
TEST(Gpt, WholeModelGradientsMatchFiniteDifferences) {
  Context ctx;
  Sequential model = make_gpt(kSmall, 7);
  const TensorSpec logits = model.plan({{2, 6}, DType::i32}, ctx);
  SoftmaxCrossEntropy loss;
  loss.plan(logits, DType::i32, ctx);
  const Tensor ids = token_ids({2, 6}, {1, 5, 7, 2, 9, 4, 0, 3, 3, 12, 8, 6});
  const std::vector<std::int32_t> targets = {5, 7, 2, 9, 4, 1, 3, 3, 12, 8, 6, 0};
  auto evaluate = [&] { return static_cast<double>(loss.forward(model.forward(ids, ctx, true), targets.data())); };
  evaluate();
  model.backward(loss.backward(1.0f), ctx);
  std::mt19937 rng(11);
  constexpr float kEps = 1e-3f;
  constexpr double kResolution = 2.5e-4;
  for (Parameter* p : model.parameters()) {
    const std::vector<float> analytic = host_floats(p->grad);
    double scale = 1e-4;
    for (float g : analytic) scale = std::max(scale, static_cast<double>(std::fabs(g)));
    float* value = p->value.data_as<float>();
    for (int probe = 0; probe < 3; ++probe) {
      const auto i = static_cast<std::size_t>(rng() % static_cast<std::uint32_t>(p->value.numel()));
      const float saved = value[i];
      value[i] = saved + kEps;
      const double up = evaluate();
      value[i] = saved - kEps;
      const double down = evaluate();
      value[i] = saved;
      EXPECT_NEAR(analytic[i], (up - down) / (2 * kEps), 3e-2 * scale + kResolution) << p->name << "[" << i << "]";
    }
  }
}

TEST(Gpt, PresetsHaveTheirPublishedSizes) {
  GptConfig gpt2 = *gpt_preset("gpt2");
  EXPECT_EQ(gpt2.vocab_size, 50304);  // 50257 padded to a multiple of 64
  gpt2.vocab_size = 50257;
  EXPECT_EQ(gpt_parameters(gpt2), 124439808);  // GPT-2 small, as Hugging Face counts it
  const GptConfig tiny = *gpt_preset("gpt-tiny");
  EXPECT_EQ(tiny.n_layer, 4);
  EXPECT_EQ(tiny.n_embd, 128);
  EXPECT_EQ(tiny.block_size, 64);
  const GptConfig chr = *gpt_preset("gpt-char");
  EXPECT_EQ(chr.n_layer * 1000 + chr.n_head * 100 + chr.block_size, 6856);
  EXPECT_FALSE(gpt_preset("gpt3").has_value());
  Sequential model = make_gpt(tiny, 0);
  Context ctx;
  model.plan({{1, 64}, DType::i32}, ctx);
  std::int64_t counted = 0;
  for (Parameter* p : model.parameters()) counted += p->value.numel();
  EXPECT_EQ(counted, gpt_parameters(tiny));
  EXPECT_THROW(make_gpt({2, 3, 8, 6, 13, 0.0f}, 0), InvalidArgument);  // 8 features in 3 heads
}

TEST(Gpt, APromptLongerThanTheContextIsRefusedByThePositionEmbedding) {
  Context ctx;
  Sequential model = make_gpt(kSmall, 1);
  EXPECT_THROW(model.plan({{1, 7}, DType::i32}, ctx), InvalidArgument);
}

}  // namespace
}  // namespace mpx::nn
