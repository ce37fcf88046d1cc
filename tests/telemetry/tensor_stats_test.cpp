// Tensor statistics against hand-counted inputs in each storage dtype, and the monitor's records of a
// model pass with injected faults.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "mpx/core/error.h"
#include "mpx/nn/layers.h"
#include "mpx/nn/model.h"
#include "mpx/numeric/convert.h"
#include "mpx/numeric/bfloat16.h"
#include "mpx/numeric/half.h"
#include "mpx/telemetry/numerics_monitor.h"

namespace mpx::telemetry {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::uint64_t histogram_total(const TensorStats& s) {
  return std::accumulate(s.histogram.begin(), s.histogram.end(), std::uint64_t{0});
}

TEST(TensorStats, CountsEveryClassOfValueInFp32) {
  const std::vector<float> v = {0.0f, -0.0f, 1.5f, -3.0f, 7e4f, kInf, -kInf, NAN, 1e-40f, std::ldexp(1.0f, -60),
                                std::ldexp(1.0f, 60), 65504.0f};
  const TensorStats s = compute_stats(v.data(), DType::f32, v.size());
  EXPECT_EQ(s.elements, 12u);
  EXPECT_EQ(s.nan, 1u);
  EXPECT_EQ(s.pos_inf, 1u);
  EXPECT_EQ(s.neg_inf, 1u);
  EXPECT_EQ(s.zeros, 2u);
  EXPECT_EQ(s.subnormals, 1u);   // 1e-40
  EXPECT_EQ(s.beyond_fp16, 2u);  // 7e4 and 2^60; 65504 itself fits
  EXPECT_EQ(s.max_abs, std::ldexp(1.0, 60));
  EXPECT_EQ(s.min, -3.0);
  EXPECT_EQ(histogram_total(s) + s.nan, s.elements);
  EXPECT_EQ(s.histogram[static_cast<std::size_t>(TensorStats::bucket_of_binade(0))], 1u);  // 1.5
  EXPECT_EQ(s.histogram[static_cast<std::size_t>(TensorStats::bucket_of_binade(1))], 1u);  // -3
  EXPECT_EQ(s.histogram.front(), 4u);  // two zeros, 1e-40, 2^-60
  EXPECT_EQ(s.histogram.back(), 3u);   // +inf, -inf, 2^60
  EXPECT_EQ(s.nonzero_below(-14), 2u);
  EXPECT_LT(s.fp16_headroom_binades(), 0.0);
}

TEST(TensorStats, MinAndMaxAreThoseOfAPlainScanOverTheFiniteValues) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> v(5000 + 37 * trial);
    for (float& x : v) x = std::bit_cast<float>(any_bits(rng));  // every class: NaN, inf, subnormal, -0
    double lo = kInf, hi = -kInf;
    for (float x : v) {
      if (!std::isfinite(x)) continue;
      lo = std::min<double>(lo, x);
      hi = std::max<double>(hi, x);
    }
    const TensorStats s = compute_stats(v.data(), DType::f32, v.size());
    EXPECT_EQ(s.min, lo);
    EXPECT_EQ(s.max, hi);
    EXPECT_EQ(s.max_abs, std::max(std::fabs(lo), std::fabs(hi)));
  }
  const std::vector<float> none_finite = {NAN, kInf, -kInf};
  const TensorStats s = compute_stats(none_finite.data(), DType::f32, none_finite.size());
  EXPECT_EQ(s.min, 0.0);
  EXPECT_EQ(s.max, 0.0);
  const std::vector<float> zeros = {0.0f, -0.0f};
  EXPECT_EQ(compute_stats(zeros.data(), DType::f32, 2).max_abs, 0.0);
}

TEST(TensorStats, Bf16AndFp16DataGiveTheSameCountsAsTheirValues) {
  const std::vector<float> values = {0.0f, 1.0f, -2.5f, 1e-6f, NAN, kInf, 3e4f};
  std::vector<numeric::BFloat16> b;
  std::vector<numeric::Half> h;
  for (float x : values) {
    b.emplace_back(x);
    h.emplace_back(x);
  }
  const TensorStats sb = compute_stats(b.data(), DType::bf16, b.size());
  const TensorStats sh = compute_stats(h.data(), DType::f16, h.size());
  for (const TensorStats* s : {&sb, &sh}) {
    EXPECT_EQ(s->nan, 1u);
    EXPECT_EQ(s->pos_inf, 1u);
    EXPECT_EQ(s->zeros, 1u);
    EXPECT_EQ(histogram_total(*s) + s->nan, s->elements);
  }
  EXPECT_EQ(sb.subnormals, 0u);  // 1e-6 is normal in BF16 ...
  EXPECT_EQ(sh.subnormals, 1u);  // ... and subnormal in FP16
}

TEST(TensorStats, ThreadedPassAgreesWithTheParts) {
  std::vector<float> v(1 << 20);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 100.0f);
  for (float& x : v) x = normal(rng);
  v[12345] = NAN;
  v[999999] = -kInf;
  const TensorStats whole = compute_stats(v.data(), DType::f32, v.size());
  TensorStats parts = compute_stats(v.data(), DType::f32, 1000);
  parts.merge(compute_stats(v.data() + 1000, DType::f32, v.size() - 1000));
  EXPECT_EQ(whole.histogram, parts.histogram);
  EXPECT_EQ(whole.nan, 1u);
  EXPECT_EQ(whole.neg_inf, 1u);
  EXPECT_EQ(whole.max_abs, parts.max_abs);
  EXPECT_EQ(histogram_total(whole) + whole.nan, whole.elements);
}

TEST(TensorStats, RejectsDtypesItDoesNotCover) {
  const std::int32_t x = 1;
  EXPECT_THROW(compute_stats(&x, DType::i32, 1), InvalidArgument);
}

TEST(NonFiniteInjector, ParsesItsSpecAndRejectsBadOnes) {
  const auto a = NonFiniteInjector::parse("conv2:forward:7:3");
  EXPECT_EQ(a.step(), 7);
  EXPECT_EQ(a.count(), 3);
  for (const char* bad : {"conv2", "conv2:sideways:3", "conv2:forward:x", "conv2:forward:0", "a:forward:1:2:inf"}) {
    EXPECT_THROW(NonFiniteInjector::parse(bad), InvalidArgument) << bad;
  }
}

TEST(NonFiniteInjector, PoisonsSpreadElementsOfItsLayerAtItsStepInEveryFloatDtype) {
  nn::Context ctx;
  nn::Flatten target("flat"), other("other");
  for (const DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    for (const bool nan : {false, true}) {
      const NonFiniteInjector injector("flat", nn::Pass::forward, 5, 3, nan);
      Tensor t = Tensor::zeros({10}, dtype, MemoryCategory::activations, nullptr);
      ctx.step = 3;  // step 4: not yet
      NonFiniteInjector(injector).after_layer(target, nn::Pass::forward, Tensor{}, t, ctx);
      ctx.step = 4;
      NonFiniteInjector(injector).after_layer(other, nn::Pass::forward, Tensor{}, t, ctx);
      NonFiniteInjector(injector).after_layer(target, nn::Pass::backward, Tensor{}, t, ctx);
      EXPECT_EQ(compute_stats(t.data(), dtype, 10).nonfinite(), 0u) << name(dtype);
      NonFiniteInjector(injector).after_layer(target, nn::Pass::forward, Tensor{}, t, ctx);
      std::vector<float> values(10);
      if (dtype == DType::f32) {
        std::copy_n(t.data_as<float>(), 10, values.data());
      } else {
        numeric::convert(t.data(), dtype, values.data(), DType::f32, 10);
      }
      for (int i = 0; i < 10; ++i) {
        const bool poisoned = i == 0 || i == 3 || i == 6;  // k * 10 / 3
        EXPECT_EQ(poisoned ? (nan ? std::isnan(values[i]) : values[i] == kInf) : values[i] == 0.0f, true)
            << name(dtype) << " element " << i;
      }
    }
  }
  Tensor all = Tensor::zeros({4}, DType::f16, MemoryCategory::activations, nullptr);
  NonFiniteInjector("flat", nn::Pass::forward, 5, 100).after_layer(target, nn::Pass::forward, Tensor{}, all, ctx);
  EXPECT_EQ(compute_stats(all.data(), DType::f16, 4).pos_inf, 4u);  // more than there are: every one
  Tensor ints = Tensor::zeros({4}, DType::i32, MemoryCategory::activations, nullptr);
  EXPECT_THROW(NonFiniteInjector("flat", nn::Pass::forward, 5).after_layer(target, nn::Pass::forward, Tensor{}, ints, ctx),
               InvalidArgument);
}

// One sampled forward/backward pass of the CNN with three infinities injected into conv2's output.
TEST(NumericsMonitor, SampleRecordsEveryLayerAndCountsInjectedValues) {
  nn::Context ctx;
  ctx.policy = amp::PrecisionPolicy::preset("bf16-mixed");
  ctx.step = 4;  // step 5, 1-based
  nn::Sequential cnn = nn::make_cnn(1);
  const nn::TensorSpec logits = cnn.plan({{8, 28, 28, 1}, DType::f32}, ctx);
  NonFiniteInjector injector("conv2", nn::Pass::forward, 5, 3);
  NumericsMonitor monitor;
  ctx.observers = {&injector, &monitor};
  Tensor x = Tensor::zeros({8, 28, 28, 1}, DType::f32, MemoryCategory::activations, nullptr);
  monitor.begin(NumericsMonitor::Mode::sample, 5, 1.0f);
  nn::SoftmaxCrossEntropy loss;
  loss.plan(logits, ctx);
  const std::vector<std::uint8_t> labels(8, 3);
  loss.forward(cnn.forward(x, ctx, true), labels.data());
  cnn.backward(loss.backward(1.0f), ctx);
  monitor.record_parameters(cnn.parameters(), true, ctx.backend());
  const NumericsSample sample = monitor.take_sample();
  EXPECT_EQ(sample.step, 5);
  int activations = 0, gradients = 0;
  for (const TensorRecord& r : sample.tensors) {
    EXPECT_EQ(histogram_total(r.stats) + r.stats.nan, r.stats.elements) << r.tensor;
    if (r.kind == TensorKind::activation) ++activations;
    if (r.tensor == "conv2.output") {
      EXPECT_EQ(r.stats.pos_inf, 3u);
      EXPECT_EQ(r.dtype, DType::bf16);
    }
    if (r.tensor == "fc1.weight") {
      EXPECT_EQ(r.kind, TensorKind::master_weight);
    }
    if (r.kind == TensorKind::activation_grad) ++gradients;
  }
  EXPECT_EQ(activations, static_cast<int>(cnn.layers().size()));
  EXPECT_EQ(gradients, static_cast<int>(cnn.layers().size()));  // every layer receives a gradient
  EXPECT_EQ((monitor.nonfinite_totals().at({"conv2", "activation", "inf"})), 3u);
}

TEST(NumericsMonitor, HeadroomAndAdviceFollowTheSample) {
  NumericsSample s;
  s.loss_scale = 1024.0f;  // 2^10
  const std::vector<float> big = {40000.0f, 1.0f}, small_grads = {1e-3f, 1e-3f, 1e-3f, 1e-3f};
  const std::vector<float> tiny = {1.0f, 2.0f}, tiny_grads = {1e-5f, 1e-3f};  // stored (scaled) values
  s.tensors.push_back({"a.output", "a", TensorKind::activation, DType::f32, compute_stats(big.data(), DType::f32, 2)});
  s.tensors.push_back(
      {"a.output_grad", "a", TensorKind::activation_grad, DType::f32, compute_stats(small_grads.data(), DType::f32, 4)});
  s.tensors.push_back({"b.output", "b", TensorKind::activation, DType::f32, compute_stats(tiny.data(), DType::f32, 2)});
  s.tensors.push_back(
      {"b.output_grad", "b", TensorKind::activation_grad, DType::f32, compute_stats(tiny_grads.data(), DType::f32, 2)});
  const auto h = layer_headroom(s);
  ASSERT_EQ(h.size(), 2u);
  EXPECT_NEAR(h[0].activation_headroom, std::log2(65504.0 / 40000.0), 1e-9);
  EXPECT_EQ(h[0].advice, "keep in FP32");
  EXPECT_DOUBLE_EQ(h[1].underflow_scaled, 0.5);    // 1e-5 < 2^-14 as stored
  EXPECT_DOUBLE_EQ(h[1].underflow_unscaled, 1.0);  // both below 2^-14 once divided by 2^10
  EXPECT_EQ(h[1].advice, "raise the initial scale");
  const std::string advice = recommendation(h, true, 0, 100);
  EXPECT_NE(recommendation(h, false, 10, 100).find("lower the learning rate"), std::string::npos);
  EXPECT_NE(advice.find("Keep a in FP32"), std::string::npos) << advice;
  EXPECT_NE(advice.find("Raise the initial loss scale: b"), std::string::npos) << advice;
  EXPECT_EQ(recommendation({}, true, 0, 100).substr(0, 4), "Keep");
}

}  // namespace
}  // namespace mpx::telemetry
