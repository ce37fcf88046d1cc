// The engine computes each op in the precision the policy promises: matmul/convolution inputs rounded to
// the compute dtype (bf16 natively, fp16 rounded then widened exactly), FP32 accumulation, FP32 loss
// and normalisation statistics; master weights FP32 and the working copy rounded after each step.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "mpx/nn/layers.h"
#include "mpx/numeric/bfloat16.h"
#include "mpx/numeric/half.h"

namespace mpx::nn {
namespace {

template <class Narrow>
float round_as(float x) {
  return static_cast<float>(Narrow(x));
}

// Linear forward under `preset` against a double reference on inputs rounded by `round` (activations kept
// FP32, so that the output is the FP32 accumulation itself).
template <class Round>
double linear_error(const char* preset, Round round) {
  Context ctx;
  ctx.policy = amp::PrecisionPolicy::preset(preset);
  ctx.policy.activations = DType::f32;
  Linear fc("fc", 64, 8, 3);
  fc.plan({{16, 64}}, ctx);
  Tensor x = Tensor::empty({16, 64}, DType::f32, MemoryCategory::activations, nullptr);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  for (std::int64_t i = 0; i < x.numel(); ++i) x.data_as<float>()[i] = normal(rng);
  const Tensor y = fc.forward(x, ctx, true);
  const float* w = fc.weight().value.data_as<float>();
  const float* b = fc.bias().value.data_as<float>();
  double diff = 0, norm = 0;
  for (int r = 0; r < 16; ++r) {
    for (int o = 0; o < 8; ++o) {
      double sum = b[o];
      for (int i = 0; i < 64; ++i) {
        sum += static_cast<double>(round(x.data_as<float>()[r * 64 + i])) * round(w[o * 64 + i]);
      }
      const double d = y.data_as<float>()[r * 8 + o] - sum;
      diff += d * d;
      norm += sum * sum;
    }
  }
  return std::sqrt(diff / norm);  // normwise relative error
}

TEST(PrecisionEngine, MatmulInputsAreRoundedToTheComputeDtypeWithFp32Accumulation) {
  auto identity = [](float v) { return v; };
  EXPECT_LT(linear_error("32-true", identity), 1e-6);
  EXPECT_LT(linear_error("bf16-mixed", round_as<numeric::BFloat16>), 1e-6);
  EXPECT_LT(linear_error("16-mixed", round_as<numeric::Half>), 1e-6);
  // And the rounding really happened: against unrounded inputs the low-precision results are visibly off.
  EXPECT_GT(linear_error("bf16-mixed", identity), 1e-3);
  EXPECT_GT(linear_error("16-mixed", identity), 1e-4);
}

TEST(PrecisionEngine, PerLayerOverrideKeepsALayerInFp32) {
  Context ctx;
  ctx.policy = amp::PrecisionPolicy::preset("bf16-mixed");
  ctx.policy.overrides = {{"head*", DType::f32}};
  Linear body("body", 4, 4, 1), head("head", 4, 2, 2);
  body.plan({{2, 4}}, ctx);
  head.plan({{2, 4}}, ctx);
  EXPECT_EQ(body.weight().backend_dtype(), DType::bf16);
  EXPECT_EQ(head.weight().backend_dtype(), DType::f32);
  EXPECT_FALSE(head.weight().working.defined());
}

TEST(PrecisionEngine, MasterWeightsStayFp32AndWorkingCopyFollows) {
  Context ctx;
  ctx.policy = amp::PrecisionPolicy::preset("bf16-mixed");
  Linear fc("fc", 4, 2, 1);
  fc.plan({{1, 4}}, ctx);
  Parameter& w = fc.weight();
  EXPECT_EQ(w.value.dtype(), DType::f32);
  EXPECT_EQ(w.working.dtype(), DType::bf16);
  EXPECT_GT(ctx.memory().peak(MemoryCategory::master_weights), 0u);
  w.value.data_as<float>()[0] = 1.0f + 1e-4f;  // an update too small for bf16
  w.refresh(ctx.backend(), true);
  EXPECT_EQ(w.value.data_as<float>()[0], 1.0f + 1e-4f);  // the master keeps it
  EXPECT_EQ(static_cast<float>(w.working.data_as<numeric::BFloat16>()[0]), 1.0f);

  Context true_ctx;
  true_ctx.policy = amp::PrecisionPolicy::preset("bf16-true");
  Linear fc2("fc", 4, 2, 1);
  fc2.plan({{1, 4}}, true_ctx);
  EXPECT_EQ(true_ctx.memory().peak(MemoryCategory::master_weights), 0u);  // *-true: no master copies
  fc2.weight().value.data_as<float>()[0] = 1.0f + 1e-4f;
  fc2.weight().refresh(true_ctx.backend(), false);
  EXPECT_EQ(fc2.weight().value.data_as<float>()[0], 1.0f);  // the weight itself is bf16: the update is lost
}

TEST(PrecisionEngine, BatchNormStatisticsAreFp32WhateverThePolicy) {
  Context ctx;
  ctx.policy = amp::PrecisionPolicy::preset("bf16-true");
  BatchNorm2d bn("bn", 2);
  bn.plan({{4, 2, 2, 2}}, ctx);
  EXPECT_EQ(bn.running_mean().dtype(), DType::f32);
  EXPECT_EQ(bn.running_var().dtype(), DType::f32);
  for (Parameter* p : bn.parameters()) EXPECT_EQ(p->backend_dtype(), DType::f32);
}

}  // namespace
}  // namespace mpx::nn
