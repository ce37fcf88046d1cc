// BF16 activation storage (the bf16 presets): each layer computes what its FP32 build computes and rounds
// once to BF16; the presets store what they promise; a whole model's gradients agree with FP32's.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "mpx/nn/model.h"
#include "mpx/numeric/bfloat16.h"
#include "mpx/numeric/philox.h"

namespace mpx::nn {
namespace {

using numeric::BFloat16;

std::vector<float> values_of(const Tensor& t) {
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = t.dtype() == DType::f32 ? t.data_as<float>()[i] : static_cast<float>(t.data_as<BFloat16>()[i]);
  }
  return out;
}

// The same values in an f32 tensor and a bf16 tensor (all exactly representable in BF16).
struct Pair {
  Tensor f32, bf16;
};
Pair same_values(const Shape& shape, unsigned seed, float scale = 1.0f) {
  Pair p{Tensor::empty(shape, DType::f32, MemoryCategory::activations, nullptr),
         Tensor::empty(shape, DType::bf16, MemoryCategory::activations, nullptr)};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  for (std::int64_t i = 0; i < p.f32.numel(); ++i) {
    const BFloat16 v(normal(rng));
    p.bf16.data_as<BFloat16>()[i] = v;
    p.f32.data_as<float>()[i] = static_cast<float>(v);
  }
  return p;
}

// bf16 results equal the FP32 results rounded to nearest-even, allowing `ulps` BF16 steps where the two
// builds' FP32 arithmetic may differ in its last bits (different vector widths or summation order).
void expect_rounded_once(const Tensor& f32, const Tensor& bf16, int ulps, const char* what) {
  ASSERT_EQ(bf16.dtype(), DType::bf16) << what;
  const auto a = values_of(f32), b = values_of(bf16);
  ASSERT_EQ(a.size(), b.size());
  std::size_t exact = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const float rounded = static_cast<float>(BFloat16(a[i]));
    exact += rounded == b[i] || (std::isnan(rounded) && std::isnan(b[i]));
    const float ulp = std::ldexp(1.0f, std::ilogb(std::fabs(rounded) + 1e-30f) - 7);
    EXPECT_LE(std::fabs(rounded - b[i]), ulps * ulp) << what << " element " << i;
  }
  EXPECT_GE(static_cast<double>(exact), 0.98 * static_cast<double>(a.size())) << what;
}

void use_bf16_mixed(Context& ctx) { ctx.policy = amp::PrecisionPolicy::preset("bf16-mixed"); }

TEST(Bf16Activations, PresetsStoreWhatTheyPromise) {
  for (const char* preset : {"32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"}) {
    Context ctx;
    ctx.policy = amp::PrecisionPolicy::preset(preset);
    Sequential cnn = make_cnn(1);
    const TensorSpec logits = cnn.plan({{4, 28, 28, 1}, DType::f32}, ctx);
    const DType expected = ctx.policy.activations == DType::bf16 ? DType::bf16 : DType::f32;
    EXPECT_EQ(logits.dtype, expected) << preset;
    EXPECT_EQ(ctx.activation_dtype(), expected) << preset;
  }
}

TEST(Bf16Activations, BatchNormReluComputesInFp32AndRoundsOnce) {
  Context ctx;
  use_bf16_mixed(ctx);
  const Shape shape = {4, 5, 5, 32};
  BatchNorm2d a("a", 32, 0.1f, 1e-5f, true), b("b", 32, 0.1f, 1e-5f, true);
  a.plan({shape, DType::f32}, ctx);
  b.plan({shape, DType::bf16}, ctx);
  const Pair x = same_values(shape, 1, 3.0f), dy = same_values(shape, 2);
  expect_rounded_once(a.forward(x.f32, ctx, true), b.forward(x.bf16, ctx, true), 1, "forward");
  expect_rounded_once(a.backward(dy.f32, ctx), b.backward(dy.bf16, ctx), 1, "backward");
  // Statistics and parameter gradients stay FP32 and agree closely.
  for (std::size_t p = 0; p < 2; ++p) {
    const float* ga = a.parameters()[p]->grad.data_as<float>();
    const float* gb = b.parameters()[p]->grad.data_as<float>();
    for (int c = 0; c < 32; ++c) EXPECT_NEAR(ga[c], gb[c], 1e-3f * (1.0f + std::fabs(ga[c]))) << p << " " << c;
  }
}

TEST(Bf16Activations, PoolingReluAndDropoutAreExactOnBf16Values) {
  Context ctx;
  use_bf16_mixed(ctx);
  const Shape shape = {3, 6, 4, 16};
  MaxPool2d pa("pa", 2), pb("pb", 2);
  ReLU ra("ra"), rb("rb");
  Dropout da("d", 0.3f, 7), db("d", 0.3f, 7);
  pa.plan({shape, DType::f32}, ctx);
  pb.plan({shape, DType::bf16}, ctx);
  ra.plan({shape, DType::f32}, ctx);
  rb.plan({shape, DType::bf16}, ctx);
  da.plan({shape, DType::f32}, ctx);
  db.plan({shape, DType::bf16}, ctx);
  const Pair x = same_values(shape, 3), g_pool = same_values({3, 3, 2, 16}, 4), g = same_values(shape, 5);
  expect_rounded_once(pa.forward(x.f32, ctx, true), pb.forward(x.bf16, ctx, true), 0, "pool forward");
  expect_rounded_once(pa.backward(g_pool.f32, ctx), pb.backward(g_pool.bf16, ctx), 0, "pool backward");
  expect_rounded_once(ra.forward(x.f32, ctx, true), rb.forward(x.bf16, ctx, true), 0, "relu forward");
  expect_rounded_once(ra.backward(g.f32, ctx), rb.backward(g.bf16, ctx), 0, "relu backward");
  ctx.step = 3;
  expect_rounded_once(da.forward(x.f32, ctx, true), db.forward(x.bf16, ctx, true), 0, "dropout forward");
  expect_rounded_once(da.backward(g.f32, ctx), db.backward(g.bf16, ctx), 0, "dropout backward");
}

TEST(Bf16Activations, DropoutMaskIsPhiloxOfSeedLayerStepAndElement) {
  // The documented rule: element i at step s is kept when random_u32(key, s * planned + i) >= p * 2^32,
  // key = seed ^ (stream * golden ratio); odd sizes so that blocks of four straddle steps.
  Context ctx;
  ctx.seed = 12345;
  const Shape shape = {3, 7};
  Dropout d("d", 0.5f, 3);
  d.plan({shape, DType::f32}, ctx);
  Tensor x = Tensor::empty(shape, DType::f32, MemoryCategory::activations, nullptr);
  for (int i = 0; i < 21; ++i) x.data_as<float>()[i] = 1.0f;
  const std::uint64_t key = ctx.seed ^ (3ull * 0x9E3779B97F4A7C15ull);
  for (std::uint64_t step : {0ull, 1ull, 2ull, 5ull}) {
    ctx.step = step;
    const Tensor y = d.forward(x, ctx, true);
    for (std::uint64_t i = 0; i < 21; ++i) {
      const bool kept = numeric::random_u32(key, step * 21 + i) >= 0x80000000u;
      EXPECT_EQ(y.data_as<float>()[i], kept ? 2.0f : 0.0f) << "step " << step << " element " << i;
    }
  }
}

TEST(Bf16Activations, LinearAndConvolutionWriteTheFp32AccumulationRoundedOnce) {
  Context wide, narrow;
  use_bf16_mixed(wide);
  use_bf16_mixed(narrow);
  wide.policy.activations = DType::f32;  // same bf16 compute, FP32 outputs
  Linear la("fc", 48, 24, 9), lb("fc", 48, 24, 9);
  la.plan({{8, 48}, DType::f32}, wide);
  lb.plan({{8, 48}, DType::bf16}, narrow);
  const Pair x = same_values({8, 48}, 6), dy = same_values({8, 24}, 7);
  expect_rounded_once(la.forward(x.f32, wide, true), lb.forward(x.bf16, narrow, true), 1, "linear forward");
  expect_rounded_once(la.backward(dy.f32, wide), lb.backward(dy.bf16, narrow), 1, "linear input gradient");

  Conv2d ca("conv", 8, 16, 3, 1, 1, 11), cb("conv", 8, 16, 3, 1, 1, 11);
  ca.plan({{2, 6, 6, 8}, DType::f32}, wide);
  cb.plan({{2, 6, 6, 8}, DType::bf16}, narrow);
  const Pair image = same_values({2, 6, 6, 8}, 8), g = same_values({2, 6, 6, 16}, 9);
  expect_rounded_once(ca.forward(image.f32, wide, true), cb.forward(image.bf16, narrow, true), 1, "conv forward");
  expect_rounded_once(ca.backward(g.f32, wide), cb.backward(g.bf16, narrow), 1, "conv input gradient");
  const float* wa = ca.weight().grad.data_as<float>();
  const float* wb = cb.weight().grad.data_as<float>();
  for (std::int64_t i = 0; i < ca.weight().grad.numel(); ++i) EXPECT_NEAR(wa[i], wb[i], 1e-4f * (1 + std::fabs(wa[i])));
}

// Loss and parameter gradients of the whole CNN, from the same weights and images, in 32-true and in
// bf16-mixed (and with a layer overridden to FP32 compute, which mixes storage dtypes at its edges).
struct ModelRun {
  float loss = 0;
  std::vector<float> grads;
};
ModelRun run_cnn(const char* preset, const char* fp32_layer = nullptr) {
  Context ctx;
  ctx.policy = amp::PrecisionPolicy::preset(preset);
  if (fp32_layer) ctx.policy.overrides = {{fp32_layer, DType::f32}};
  Sequential cnn = make_cnn(3);
  const TensorSpec logits = cnn.plan({{16, 28, 28, 1}, DType::f32}, ctx);
  SoftmaxCrossEntropy loss;
  loss.plan(logits, ctx);
  Tensor x = Tensor::empty({16, 28, 28, 1}, DType::f32, MemoryCategory::activations, nullptr);
  std::mt19937 rng(4);
  std::normal_distribution<float> normal;
  for (std::int64_t i = 0; i < x.numel(); ++i) x.data_as<float>()[i] = normal(rng);
  std::vector<std::uint8_t> labels(16);
  for (int i = 0; i < 16; ++i) labels[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(i % 10);
  ModelRun run;
  run.loss = loss.forward(cnn.forward(x, ctx, true), labels.data());
  cnn.backward(loss.backward(1.0f), ctx);
  for (Parameter* p : cnn.parameters()) {
    for (std::int64_t i = 0; i < p->grad.numel(); ++i) run.grads.push_back(p->grad.data_as<float>()[i]);
  }
  return run;
}

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

TEST(Bf16Activations, WholeModelGradientsAgreeWithFp32) {
  const ModelRun reference = run_cnn("32-true");
  for (const char* fp32_layer : {static_cast<const char*>(nullptr), "fc2", "conv2"}) {
    const ModelRun bf16 = run_cnn("bf16-mixed", fp32_layer);
    ASSERT_EQ(bf16.grads.size(), reference.grads.size());
    EXPECT_NEAR(bf16.loss, reference.loss, 0.02 * reference.loss) << (fp32_layer ? fp32_layer : "all bf16");
    EXPECT_GT(cosine(bf16.grads, reference.grads), 0.99) << (fp32_layer ? fp32_layer : "all bf16");
  }
}

}  // namespace
}  // namespace mpx::nn
