// Every layer's backward against central finite differences of its forward, with the loss
// L = sum(y * r) for a fixed random r accumulated in double. Layers run in FP32 (32-true), so the
// differences are taken with a step large enough to rise above float rounding (1e-2) and compared with
// a relative tolerance of a few percent of the gradient's scale. Inputs keep clear of kinks (ReLU at 0,
// ties in max pooling) so that the function is smooth where it is probed.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <bit>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "mpx/core/error.h"
#include "mpx/nn/layers.h"
#include "mpx/nn/model.h"

namespace mpx::nn {
namespace {

struct Probe {
  std::vector<float> values;
  unsigned seed;
};

std::vector<float> random_vector(std::size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

double weighted_sum(const Tensor& y, const std::vector<float>& r) {
  double sum = 0;
  const float* p = y.data_as<float>();
  for (std::int64_t i = 0; i < y.numel(); ++i) sum += static_cast<double>(p[i]) * r[static_cast<std::size_t>(i)];
  return sum;
}

// Checks dL/dx and dL/dparam for up to `probes` entries of each.
// One context for the whole test program: the layers under test are created before check_layer runs and
// their tensors (accounted to the context's tracker) must not outlive it.
Context& shared_context() {
  static Context ctx;
  return ctx;
}

void check_layer(Layer& layer, const Shape& input_shape, std::vector<float> x_values, int probes = 24,
                 double eps = 1e-2, double tolerance = 2e-2) {
  Context& ctx = shared_context();
  const Shape out_shape = layer.plan({input_shape}, ctx).shape;
  Tensor x = Tensor::empty(input_shape, DType::f32, MemoryCategory::activations, nullptr);
  std::copy(x_values.begin(), x_values.end(), x.data_as<float>());
  const auto r = random_vector(static_cast<std::size_t>(numel(out_shape)), 99);
  auto loss = [&]() { return weighted_sum(layer.forward(x, ctx, true), r); };

  loss();
  Tensor dy = Tensor::empty(out_shape, DType::f32, MemoryCategory::activations, nullptr);
  std::copy(r.begin(), r.end(), dy.data_as<float>());
  const Tensor dx = layer.backward(dy, ctx);
  const std::vector<float> analytic_dx(dx.data_as<float>(), dx.data_as<float>() + dx.numel());
  std::vector<std::vector<float>> analytic_params;
  for (Parameter* p : layer.parameters()) {
    analytic_params.emplace_back(p->grad.data_as<float>(), p->grad.data_as<float>() + p->grad.numel());
  }

  auto probe = [&](float* value, std::int64_t count, const std::vector<float>& analytic, const std::string& what) {
    double scale = 1e-3;
    for (float g : analytic) scale = std::max(scale, static_cast<double>(std::fabs(g)));
    std::mt19937 rng(7);
    for (int k = 0; k < probes; ++k) {
      const auto i = static_cast<std::size_t>(rng() % static_cast<std::uint32_t>(count));
      const float saved = value[i];
      const float plus = saved + static_cast<float>(eps), minus = saved - static_cast<float>(eps);
      value[i] = plus;
      const double up = loss();
      value[i] = minus;
      const double down = loss();
      value[i] = saved;
      const double numeric = (up - down) / (static_cast<double>(plus) - minus);
      EXPECT_NEAR(analytic[i], numeric, tolerance * scale) << layer.name() << " " << what << "[" << i << "]";
    }
  };
  probe(x.data_as<float>(), x.numel(), analytic_dx, "input");
  const auto params = layer.parameters();
  for (std::size_t p = 0; p < params.size(); ++p) {
    probe(params[p]->value.data_as<float>(), params[p]->value.numel(), analytic_params[p], params[p]->name);
  }
}

// Values spaced so that no two are within 2*eps and none is within eps of zero.
std::vector<float> spaced_values(std::size_t n, unsigned seed) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = (static_cast<float>(i) - static_cast<float>(n) / 2.0f + 0.5f) * 0.05f;
  std::shuffle(v.begin(), v.end(), std::mt19937(seed));
  return v;
}

TEST(GradientCheck, Linear) {
  Linear layer("fc", 7, 5, 1);
  check_layer(layer, {3, 7}, random_vector(21, 1));
}

TEST(GradientCheck, Conv2d) {
  Conv2d layer("conv", 3, 4, 3, 1, 1, 2);
  check_layer(layer, {2, 5, 6, 3}, random_vector(2 * 5 * 6 * 3, 2));
}

TEST(GradientCheck, Conv2dStridedWithoutPadding) {
  Conv2d layer("conv", 2, 3, 3, 2, 0, 3);
  check_layer(layer, {2, 7, 7, 2}, random_vector(2 * 7 * 7 * 2, 3));
}

TEST(GradientCheck, BatchNorm2d) {
  BatchNorm2d layer("bn", 3);
  check_layer(layer, {2, 3, 4, 3}, random_vector(72, 4, 2.0f), 24, 1e-2, 5e-2);
}

TEST(GradientCheck, ReLU) {
  ReLU layer("relu");
  check_layer(layer, {4, 10}, spaced_values(40, 5));
}

TEST(GradientCheck, MaxPool2d) {
  MaxPool2d layer("pool", 2);
  check_layer(layer, {2, 4, 6, 3}, spaced_values(144, 6));
}

TEST(GradientCheck, DropoutWithAFixedMask) {
  Dropout layer("dropout", 0.3f, 1);
  check_layer(layer, {4, 25}, random_vector(100, 7));
}

TEST(GradientCheck, Flatten) {
  Flatten layer("flatten");
  check_layer(layer, {2, 3, 2, 2}, random_vector(24, 8));
}

TEST(GradientCheck, SoftmaxCrossEntropy) {
  Context ctx;
  SoftmaxCrossEntropy ce;
  ce.plan({{4, 5}}, ctx);
  Tensor z = Tensor::empty({4, 5}, DType::f32, MemoryCategory::activations, nullptr);
  const auto values = random_vector(20, 9, 2.0f);
  std::copy(values.begin(), values.end(), z.data_as<float>());
  const std::uint8_t labels[] = {0, 3, 4, 1};
  ce.forward(z, labels);
  const Tensor g = ce.backward(1.0f);
  const std::vector<float> analytic(g.data_as<float>(), g.data_as<float>() + 20);
  // Reference loss in double from scratch, not through the code under test.
  auto reference_loss = [&]() {
    double total = 0;
    for (int r = 0; r < 4; ++r) {
      double sum = 0;
      for (int c = 0; c < 5; ++c) sum += std::exp(static_cast<double>(z.data_as<float>()[r * 5 + c]));
      total += std::log(sum) - z.data_as<float>()[r * 5 + labels[r]];
    }
    return total / 4;
  };
  EXPECT_NEAR(ce.forward(z, labels), reference_loss(), 1e-6);
  for (int i = 0; i < 20; ++i) {
    float* v = z.data_as<float>() + i;
    const float saved = *v;
    const float plus = saved + 1e-3f, minus = saved - 1e-3f;  // the steps as floats actually take them
    *v = plus;
    const double up = reference_loss();
    *v = minus;
    const double down = reference_loss();
    *v = saved;
    EXPECT_NEAR(analytic[static_cast<std::size_t>(i)], (up - down) / (static_cast<double>(plus) - minus), 1e-5) << i;
  }
  const Tensor scaled = ce.backward(1024.0f);
  EXPECT_NEAR(scaled.data_as<float>()[3], analytic[3] * 1024.0f, 1e-3);
}

TEST(Layers, ShapeMismatchNamesTheLayer) {
  Context ctx;
  Linear fc("fc1", 10, 4, 1);
  try {
    fc.plan({{2, 9}}, ctx);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("fc1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[2, 9]"), std::string::npos) << e.what();
  }
  Conv2d conv("conv1", 3, 4, 3, 1, 1, 1);
  EXPECT_THROW(conv.plan({{2, 5, 5, 1}}, ctx), InvalidArgument);
}

}  // namespace
}  // namespace mpx::nn

namespace mpx::nn {
namespace {

TEST(GradientCheck, GeluExact) {
  GELU layer("gelu");
  check_layer(layer, {3, 8}, random_vector(24, 10, 1.5f));
}

TEST(GradientCheck, GeluTanhApproximation) {
  GELU layer("gelu", true);
  check_layer(layer, {3, 8}, random_vector(24, 11, 1.5f));
}

// x + f(x) with a two-layer body: the input gradient is dy plus what flows back through the body.
TEST(GradientCheck, ResidualBlock) {
  auto body = std::make_unique<Sequential>("h.0.mlp");
  body->add(std::make_unique<Linear>("h.0.mlp.c_fc", 6, 6, 13));
  body->add(std::make_unique<GELU>("h.0.mlp.gelu"));
  Residual block("h.0", std::move(body));
  check_layer(block, {3, 6}, random_vector(18, 14));
  const auto params = block.parameters();
  ASSERT_EQ(params.size(), 2u);
  EXPECT_EQ(params[0]->name, "h.0.mlp.c_fc.weight");  // PyTorch's name for the nested module's weight
}

// GPT-2's weight tying: the output projection reads the embedding's table; the table's gradient is the sum
// of both uses (the model zeroes it before backward, each layer adds), and the file holds it once.
TEST(GradientCheck, TiedEmbeddingAndOutputProjectionSumBothGradients) {
  Context& ctx = shared_context();
  Sequential model;
  auto wte = std::make_unique<Embedding>("wte", 11, 6, 21);
  Parameter& table = wte->table();
  model.add(std::move(wte));
  model.add(Linear::tied("lm_head", table, 6, 11));
  const Shape ids_shape = {2, 3};
  model.plan({ids_shape, DType::i32}, ctx);
  ASSERT_EQ(model.parameters().size(), 1u);
  EXPECT_EQ(table.uses, 2);
  Tensor ids = Tensor::empty(ids_shape, DType::i32, MemoryCategory::activations, nullptr);
  const std::int32_t id_values[] = {1, 4, 4, 7, 10, 0};
  std::copy(std::begin(id_values), std::end(id_values), ids.data_as<std::int32_t>());
  const auto r = random_vector(2 * 3 * 11, 5);
  auto loss = [&]() { return weighted_sum(model.forward(ids, ctx, true), r); };
  Tensor dy = Tensor::empty({2, 3, 11}, DType::f32, MemoryCategory::activations, nullptr);
  std::copy(r.begin(), r.end(), dy.data_as<float>());
  loss();
  model.backward(dy, ctx);
  const std::vector<float> analytic(table.grad.data_as<float>(), table.grad.data_as<float>() + table.grad.numel());
  loss();
  model.backward(dy, ctx);  // a second pass starts from zero again
  EXPECT_EQ(std::memcmp(analytic.data(), table.grad.data(), table.grad.bytes()), 0);
  double scale = 1e-3;
  for (float g : analytic) scale = std::max(scale, static_cast<double>(std::fabs(g)));
  float* value = table.value.data_as<float>();
  for (std::int64_t i : {0, 7, 25, 26, 44, 60, 65}) {  // rows used once, twice, never (only by lm_head)
    const float saved = value[i];
    value[i] = saved + 1e-2f;
    const double up = loss();
    value[i] = saved - 1e-2f;
    const double down = loss();
    value[i] = saved;
    EXPECT_NEAR(analytic[static_cast<std::size_t>(i)], (up - down) / 2e-2, 2e-2 * scale) << "table[" << i << "]";
  }
}

TEST(Layers, ResidualRefusesABodyThatChangesTheShape) {
  auto body = std::make_unique<Sequential>("b");
  body->add(std::make_unique<Linear>("b.fc", 6, 4, 1));
  Residual block("b", std::move(body));
  try {
    block.plan({{2, 6}, DType::f32}, shared_context());
    FAIL() << "planned x + f(x) with f changing the shape";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("residual block b"), std::string::npos) << e.what();
  }
}

TEST(GradientCheck, LayerNorm) {
  LayerNorm layer("ln", 6);
  check_layer(layer, {2, 3, 6}, random_vector(36, 12, 2.0f), 24, 1e-2, 5e-2);
}

// Causal self-attention on packed q, k, v: 2 sequences of 5 positions, 2 heads of 3.
TEST(GradientCheck, CausalSelfAttention) {
  CausalSelfAttention layer("h.0.attn", 6, 2);
  check_layer(layer, {2, 5, 18}, random_vector(2 * 5 * 18, 15), 40, 1e-2, 3e-2);
}

TEST(GradientCheck, PositionEmbeddingAddsTheTableRowOfEachPosition) {
  PositionEmbedding layer("wpe", 8, 4, 16);
  check_layer(layer, {2, 5, 4}, random_vector(40, 17));
}

TEST(GradientCheck, EmbeddingTableGradient) {
  Context ctx;
  Embedding layer("wte", 11, 4, 13);
  layer.plan({{2, 3}, DType::i32}, ctx);
  Tensor ids = Tensor::empty({2, 3}, DType::i32, MemoryCategory::activations, nullptr);
  const std::int32_t tokens[] = {3, 7, 3, 0, 10, 7};  // repeats: gradients must add up
  std::copy(std::begin(tokens), std::end(tokens), ids.data_as<std::int32_t>());
  const auto r = random_vector(24, 14);
  auto loss = [&] { return weighted_sum(layer.forward(ids, ctx, true), r); };
  loss();
  Tensor dy = Tensor::empty({2, 3, 4}, DType::f32, MemoryCategory::activations, nullptr);
  std::copy(r.begin(), r.end(), dy.data_as<float>());
  EXPECT_FALSE(layer.backward(dy, ctx).defined());
  float* table = layer.table().value.data_as<float>();
  for (std::int64_t i = 0; i < 44; ++i) {
    const float saved = table[i];
    table[i] = saved + 0.5f;
    const double up = loss();
    table[i] = saved - 0.5f;
    const double down = loss();
    table[i] = saved;
    EXPECT_NEAR(layer.table().grad.data_as<float>()[i], (up - down) / 1.0, 1e-5) << i;
  }
  ids.data_as<std::int32_t>()[0] = 11;
  EXPECT_THROW(layer.forward(ids, ctx, true), InvalidArgument);
}

}  // namespace
}  // namespace mpx::nn

namespace mpx::nn {
namespace {

TEST(GradientCheck, BatchNorm2dWithFusedRelu) {
  BatchNorm2d layer("bn", 3, 0.1f, 1e-5f, true);
  check_layer(layer, {2, 3, 4, 3}, random_vector(72, 15, 2.0f), 24, 1e-2, 5e-2);
}

TEST(Layers, FusedBatchNormReluEqualsBatchNormThenRelu) {
  Context ctx;
  BatchNorm2d fused("a", 4, 0.1f, 1e-5f, true), plain("b", 4);
  ReLU relu("r");
  const Shape shape = {3, 2, 2, 4};
  fused.plan({shape}, ctx);
  plain.plan({shape}, ctx);
  relu.plan({shape}, ctx);
  Tensor x = Tensor::empty(shape, DType::f32, MemoryCategory::activations, nullptr);
  const auto v = random_vector(48, 16);
  std::copy(v.begin(), v.end(), x.data_as<float>());
  const Tensor a = fused.forward(x, ctx, true);
  const Tensor b = relu.forward(plain.forward(x, ctx, true), ctx, true);
  for (int i = 0; i < 48; ++i) EXPECT_EQ(a.data_as<float>()[i], b.data_as<float>()[i]) << i;
}

TEST(Layers, MaxPoolPropagatesNaNAndKeepsTheFirstOfTies) {
  Context ctx;
  MaxPool2d pool("pool", 2);
  pool.plan({{1, 2, 2, 2}}, ctx);
  Tensor x = Tensor::empty({1, 2, 2, 2}, DType::f32, MemoryCategory::activations, nullptr);
  const float values[] = {1.0f, 5.0f, 3.0f, NAN, 3.0f, 5.0f, 2.0f, 0.0f};  // NHWC, 2 channels
  std::copy(std::begin(values), std::end(values), x.data_as<float>());
  const Tensor y = pool.forward(x, ctx, true);
  EXPECT_EQ(y.data_as<float>()[0], 3.0f);
  EXPECT_TRUE(std::isnan(y.data_as<float>()[1]));
  Tensor dy = Tensor::empty({1, 1, 1, 2}, DType::f32, MemoryCategory::activations, nullptr);
  dy.data_as<float>()[0] = 1.0f;
  dy.data_as<float>()[1] = 2.0f;
  const Tensor dx = pool.backward(dy, ctx);
  const float expected[] = {0.0f, 0.0f, 1.0f, 2.0f, 0.0f, 0.0f, 0.0f, 0.0f};  // the first 3 takes the gradient
  for (int i = 0; i < 8; ++i) EXPECT_EQ(dx.data_as<float>()[i], expected[i]) << i;
}

// The pooling rule, one candidate at a time in window order, on the stored bits: the reference both the
// 2x2 path and the general one must match bit for bit.
template <class Bits>
std::vector<Bits> plain_max_pool(const std::vector<Bits>& in, std::int64_t n, std::int64_t h, std::int64_t w,
                                 std::int64_t c, std::int64_t k, float (*value)(Bits)) {
  const std::int64_t oh = h / k, ow = w / k;
  std::vector<Bits> out(static_cast<std::size_t>(n * oh * ow * c));
  for (std::int64_t b = 0; b < n; ++b)
    for (std::int64_t i = 0; i < oh; ++i)
      for (std::int64_t j = 0; j < ow; ++j)
        for (std::int64_t ch = 0; ch < c; ++ch) {
          Bits best = in[static_cast<std::size_t>(((b * h + i * k) * w + j * k) * c + ch)];
          for (std::int64_t p = 1; p < k * k; ++p) {
            const Bits v = in[static_cast<std::size_t>(((b * h + i * k + p / k) * w + j * k + p % k) * c + ch)];
            const float x = value(v), m = value(best);
            if (x > m || (std::isnan(x) && !std::isnan(m))) best = v;  // the first NaN wins; ties keep the first
          }
          out[static_cast<std::size_t>(((b * oh + i) * ow + j) * c + ch)] = best;
        }
  return out;
}

TEST(Layers, MaxPoolMatchesAPlainScanBitForBitWithNaNsTiesAndSignedZeros) {
  const std::int64_t n = 3, h = 12, w = 12, c = 37;  // c: not a multiple of any vector width
  std::mt19937 rng(5);
  const float palette[] = {0.0f, -0.0f, 1.0f, -1.0f, 2.5f, NAN, -NAN, INFINITY, -INFINITY, 1e-40f};
  std::vector<float> values(static_cast<std::size_t>(n * h * w * c));
  for (float& v : values) v = rng() % 3 == 0 ? palette[rng() % 10] : static_cast<float>(static_cast<int>(rng() % 9) - 4);
  for (const std::int64_t k : {2, 3}) {
    for (const DType dtype : {DType::f32, DType::bf16}) {
      Context ctx;
      MaxPool2d pool("pool", k);
      pool.plan({{n, h, w, c}, dtype}, ctx);
      Tensor x = Tensor::empty({n, h, w, c}, dtype, MemoryCategory::activations, nullptr);
      const Tensor y = [&] {
        if (dtype == DType::f32) {
          std::copy(values.begin(), values.end(), x.data_as<float>());
        } else {
          auto* bits = static_cast<std::uint16_t*>(x.data());
          for (std::size_t i = 0; i < values.size(); ++i) bits[i] = static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(values[i]) >> 16);
        }
        return pool.forward(x, ctx, true);
      }();
      if (dtype == DType::f32) {
        std::vector<std::uint32_t> bits(values.size());
        std::memcpy(bits.data(), values.data(), values.size() * 4);
        const auto expected = plain_max_pool<std::uint32_t>(bits, n, h, w, c, k, [](std::uint32_t b) { return std::bit_cast<float>(b); });
        ASSERT_EQ(std::memcmp(y.data(), expected.data(), expected.size() * 4), 0) << "k " << k << " f32";
      } else {
        const std::vector<std::uint16_t> bits(static_cast<const std::uint16_t*>(x.data()),
                                              static_cast<const std::uint16_t*>(x.data()) + values.size());
        const auto expected = plain_max_pool<std::uint16_t>(
            bits, n, h, w, c, k, [](std::uint16_t b) { return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16); });
        ASSERT_EQ(std::memcmp(y.data(), expected.data(), expected.size() * 2), 0) << "k " << k << " bf16";
      }
    }
  }
}

TEST(Layers, BatchNormLeavesRunningStatisticsAloneDuringAReplay) {
  Context ctx;
  BatchNorm2d bn("bn", 2);
  bn.plan({{4, 2, 2, 2}}, ctx);
  Tensor x = Tensor::empty({4, 2, 2, 2}, DType::f32, MemoryCategory::activations, nullptr);
  const auto v = random_vector(32, 21, 3.0f);
  std::copy(v.begin(), v.end(), x.data_as<float>());
  ctx.running_statistics = Context::RunningStatistics::keep;
  bn.forward(x, ctx, true);
  EXPECT_EQ(bn.running_mean().data_as<float>()[0], 0.0f);
  EXPECT_EQ(bn.running_var().data_as<float>()[1], 1.0f);
  ctx.running_statistics = Context::RunningStatistics::update;
  bn.forward(x, ctx, true);
  EXPECT_NE(bn.running_mean().data_as<float>()[0], 0.0f);
}

// The trainer's mode: a skipped step drops the batch's statistics, an applied one commits exactly what an
// immediate update would have written.
TEST(Layers, BatchNormCommitsDeferredRunningStatisticsOnlyForAnAppliedStep) {
  Context ctx;
  BatchNorm2d deferred("bn", 2), immediate("bn", 2);
  deferred.plan({{4, 2, 2, 2}}, ctx);
  immediate.plan({{4, 2, 2, 2}}, ctx);
  Tensor x = Tensor::empty({4, 2, 2, 2}, DType::f32, MemoryCategory::activations, nullptr);
  const auto v = random_vector(32, 22, 3.0f);
  std::copy(v.begin(), v.end(), x.data_as<float>());
  auto bits = [](const Tensor& t) {
    return std::vector<float>(t.data_as<float>(), t.data_as<float>() + t.numel());
  };
  ctx.running_statistics = Context::RunningStatistics::defer;
  deferred.forward(x, ctx, true);
  deferred.end_step(ctx, false);
  EXPECT_EQ(bits(deferred.running_mean()), std::vector<float>(2, 0.0f));
  EXPECT_EQ(bits(deferred.running_var()), std::vector<float>(2, 1.0f));
  deferred.forward(x, ctx, true);
  deferred.end_step(ctx, true);
  ctx.running_statistics = Context::RunningStatistics::update;
  immediate.forward(x, ctx, true);
  EXPECT_EQ(std::memcmp(deferred.running_mean().data(), immediate.running_mean().data(), 8), 0);
  EXPECT_EQ(std::memcmp(deferred.running_var().data(), immediate.running_var().data(), 8), 0);
  EXPECT_NE(bits(deferred.running_mean()), std::vector<float>(2, 0.0f));
}

}  // namespace
}  // namespace mpx::nn
