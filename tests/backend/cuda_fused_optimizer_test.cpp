// The fused GPU optimizer step against the CPU optimizer (LossScaler + unscale_and_check + clip_grad_norm
// + adamw_step/sgd_step) on the same random data: same master weights and state after N steps (within
// FMA-contraction differences), same working copies, same skip decisions and scaler state when an inf is
// injected into one gradient. Label `gpu`: skips with the reason when there is no device.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "../support/gpu.h"
#include "mpx/amp/loss_scaler.h"
#include "mpx/amp/detail/update_rules.h"
#include "mpx/amp/optimizer.h"
#include "mpx/backend/cuda.h"
#include "mpx/backend/cuda_fused_optimizer.h"
#include "mpx/core/error.h"
#include "mpx/numeric/bfloat16.h"
#include "mpx/numeric/convert.h"
#include "mpx/numeric/stochastic_rounding.h"

namespace mpx::cuda {
namespace {

struct HostParam {
  std::vector<float> value, grad, m1, m2;
  std::vector<std::uint16_t> working;
};

struct Case {
  FusedStepConfig::Algorithm algorithm = FusedStepConfig::Algorithm::adamw;
  DType grad_dtype = DType::f32;
  double clip_norm = 0;
  bool loss_scaling = true;
  int inf_at_step = -1;  // 0-based step whose first gradient gets an inf
};

// Runs `steps` steps on both sides and compares after each.
void run_against_cpu(const Case& c, int steps) {
  const std::vector<std::size_t> sizes = {1000, 70001, 5, 131072};
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<HostParam> host(sizes.size());
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    host[t].value.resize(sizes[t]);
    for (float& v : host[t].value) v = normal(rng);
    host[t].m1.assign(sizes[t], 0.0f);
    host[t].m2.assign(sizes[t], 0.0f);
    host[t].working.resize(sizes[t]);
    host[t].grad.resize(sizes[t]);
  }
  DeviceContext context;
  std::vector<DeviceBuffer> buffers;
  std::vector<DeviceParameter> device_params;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    const std::size_t n = sizes[t];
    buffers.emplace_back(n * 4);  // master
    buffers.back().copy_from_host(host[t].value.data(), n * 4);
    buffers.emplace_back(n * 4);  // grad (f32 or 16-bit)
    buffers.emplace_back(n * 4);  // m1
    buffers.emplace_back(n * 4);  // m2
    buffers.emplace_back(n * 2);  // bf16 working copy
    const std::vector<float> zeros(n, 0.0f);
    buffers[buffers.size() - 3].copy_from_host(zeros.data(), n * 4);
    buffers[buffers.size() - 2].copy_from_host(zeros.data(), n * 4);
    auto* b = &buffers[buffers.size() - 5];
    device_params.push_back({static_cast<float*>(b[0].data()), b[1].data(), c.grad_dtype, static_cast<float*>(b[2].data()),
                             static_cast<float*>(b[3].data()), b[4].data(), DType::bf16, n, t % 2 == 0});
  }
  FusedStepConfig config;
  config.algorithm = c.algorithm;
  config.sgd = {0.9f, 1e-4f, true};
  config.clip_norm = c.clip_norm;
  config.loss_scaling = c.loss_scaling;
  config.scaler.growth_interval = 2;  // growth happens within the test
  FusedOptimizer fused(context, config, device_params);
  amp::LossScaler cpu_scaler(config.scaler);
  std::int64_t cpu_optimizer_steps = 0;

  for (int step = 0; step < steps; ++step) {
    const float scale = c.loss_scaling ? cpu_scaler.scale() : 1.0f;
    const float lr = 1e-3f * static_cast<float>(step + 1);
    std::vector<std::span<float>> grads;
    std::vector<amp::ParameterSlot> slots;
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      HostParam& h = host[t];
      // The scaled gradient as the backward pass would leave it, in its dtype; the CPU sees its exact value.
      std::vector<float> scaled(sizes[t]);
      for (float& g : scaled) g = normal(rng) * 1e-2f * scale;
      if (step == c.inf_at_step && t == 1) scaled[17] = INFINITY;
      std::vector<std::uint16_t> narrow(sizes[t]);
      if (c.grad_dtype != DType::f32) {
        numeric::convert(scaled.data(), DType::f32, narrow.data(), c.grad_dtype, sizes[t]);
        numeric::convert(narrow.data(), c.grad_dtype, scaled.data(), DType::f32, sizes[t]);
        buffers[t * 5 + 1].copy_from_host(narrow.data(), sizes[t] * 2);
      } else {
        buffers[t * 5 + 1].copy_from_host(scaled.data(), sizes[t] * 4);
      }
      h.grad = scaled;
      grads.emplace_back(h.grad);
      slots.push_back({h.value, h.grad, h.m1, h.m2, t % 2 == 0, h.working});
    }
    const bool found_inf = amp::unscale_and_check(grads, 1.0f / scale);
    const bool apply = c.loss_scaling ? cpu_scaler.update(found_inf) : !found_inf;
    if (apply) {
      if (c.clip_norm > 0) amp::clip_grad_norm(grads, c.clip_norm);
      ++cpu_optimizer_steps;
      if (c.algorithm == FusedStepConfig::Algorithm::adamw) {
        amp::adamw_step(config.adamw, lr, cpu_optimizer_steps, slots);
      } else {
        amp::sgd_step(config.sgd, lr, slots);
      }
    }
    fused.step(lr);
    const FusedStepRecord r = fused.record();
    ASSERT_EQ(r.applied, apply) << "step " << step;
    ASSERT_EQ(r.found_inf, found_inf) << "step " << step;
    EXPECT_EQ(r.optimizer_steps, cpu_optimizer_steps);
    EXPECT_EQ(r.scaler.scale, c.loss_scaling ? cpu_scaler.scale() : 1.0f);
    if (c.loss_scaling) {
      EXPECT_EQ(r.scaler.skipped_steps, cpu_scaler.state().skipped_steps);
      EXPECT_EQ(r.scaler.growths, cpu_scaler.state().growths);
    }
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      std::vector<float> master(sizes[t]), m1(sizes[t]);
      std::vector<std::uint16_t> working(sizes[t]);
      buffers[t * 5].copy_to_host(master.data(), sizes[t] * 4);
      buffers[t * 5 + 2].copy_to_host(m1.data(), sizes[t] * 4);
      buffers[t * 5 + 4].copy_to_host(working.data(), sizes[t] * 2);
      for (std::size_t i = 0; i < sizes[t]; ++i) {
        // FMA contraction on the device differs from the CPU's separate multiply-adds by an ulp or so.
        ASSERT_NEAR(master[i], host[t].value[i], 2e-6f * (1.0f + std::fabs(host[t].value[i])))
            << "step " << step << " tensor " << t << " element " << i;
        ASSERT_NEAR(m1[i], host[t].m1[i], 1e-5f * (1e-3f + std::fabs(host[t].m1[i]))) << "tensor " << t << " element " << i;
        if (apply || step > 0) {
          ASSERT_LE(std::abs(int{working[i]} - int{host[t].working[i]}), 1) << "tensor " << t << " element " << i;
        }
      }
    }
  }
}

TEST(CudaFusedOptimizer, AdamWWithFp16GradientsMatchesTheCpuStep) {
  MPX_SKIP_WITHOUT_GPU();
  run_against_cpu({FusedStepConfig::Algorithm::adamw, DType::f16, 0, true, -1}, 6);
}

TEST(CudaFusedOptimizer, AdamWWithClippingAndFp32GradientsMatchesTheCpuStep) {
  MPX_SKIP_WITHOUT_GPU();
  run_against_cpu({FusedStepConfig::Algorithm::adamw, DType::f32, 0.5, false, -1}, 4);
}

TEST(CudaFusedOptimizer, SgdWithBf16GradientsMatchesTheCpuStep) {
  MPX_SKIP_WITHOUT_GPU();
  run_against_cpu({FusedStepConfig::Algorithm::sgd, DType::bf16, 0, true, -1}, 4);
}

TEST(CudaFusedOptimizer, SkipsAndBacksOffLikeTheCpuWhenOneGradientIsInfinite) {
  MPX_SKIP_WITHOUT_GPU();
  run_against_cpu({FusedStepConfig::Algorithm::adamw, DType::f16, 0, true, 2}, 5);
}

TEST(CudaFusedOptimizer, ReportsTheLossItWasGivenAndSkipsOnANonFiniteOne) {
  MPX_SKIP_WITHOUT_GPU();
  DeviceContext context;
  const std::vector<float> value = {1, 2, 3, 4}, grad = {0.5f, -0.5f, 0.25f, 0}, zeros(4, 0.0f);
  DeviceBuffer master(16), g(16), m1(16), m2(16), loss(4);
  master.copy_from_host(value.data(), 16);
  g.copy_from_host(grad.data(), 16);
  m1.copy_from_host(zeros.data(), 16);
  m2.copy_from_host(zeros.data(), 16);
  DeviceParameter p{static_cast<float*>(master.data()), g.data(), DType::f32, static_cast<float*>(m1.data()),
                    static_cast<float*>(m2.data()), nullptr, DType::bf16, 4, true};
  FusedStepConfig config;
  config.loss_scaling = true;
  FusedOptimizer fused(context, config, {p});
  fused.load({});
  const float finite = 2.3125f, nan = std::nanf("");
  loss.copy_from_host(&finite, 4);
  fused.step(1e-3f, static_cast<const float*>(loss.data()));
  FusedStepRecord r = fused.record();
  EXPECT_EQ(r.loss, finite);
  EXPECT_TRUE(r.applied);
  loss.copy_from_host(&nan, 4);
  fused.step(1e-3f, static_cast<const float*>(loss.data()));
  r = fused.record();
  EXPECT_TRUE(std::isnan(r.loss));
  EXPECT_TRUE(r.found_inf);
  EXPECT_FALSE(r.applied);
  EXPECT_EQ(r.scaler.scale, config.scaler.init_scale * config.scaler.backoff_factor);
  EXPECT_EQ(r.optimizer_steps, 1);
}

// bf16-true: the device rounds the weights (no master copy) with the CPU's stochastic stream, indices
// running on across tensors, so both backends agree bit for bit but for FMA-contraction ulps.
TEST(CudaFusedOptimizer, Bf16TrueRoundsWeightsStochasticallyWithTheCpuStream) {
  MPX_SKIP_WITHOUT_GPU();
  const std::vector<std::size_t> sizes = {1000, 70001};
  DeviceContext context;
  std::vector<DeviceBuffer> buffers;
  std::vector<DeviceParameter> params;
  for (const std::size_t n : sizes) {
    const std::vector<float> ones(n, 1.0f), zeros(n, 0.0f);
    for (int k = 0; k < 4; ++k) buffers.emplace_back(n * 4);
    buffers.emplace_back(n * 2);
    auto* b = &buffers[buffers.size() - 5];
    b[0].copy_from_host(ones.data(), n * 4);
    b[1].copy_from_host(ones.data(), n * 4);  // every gradient +1: AdamW's first step is about -lr
    b[2].copy_from_host(zeros.data(), n * 4);
    b[3].copy_from_host(zeros.data(), n * 4);
    params.push_back({static_cast<float*>(b[0].data()), b[1].data(), DType::f32, static_cast<float*>(b[2].data()),
                      static_cast<float*>(b[3].data()), b[4].data(), DType::bf16, n, false, true});
  }
  FusedStepConfig config;
  config.adamw.weight_decay = 0.0f;
  config.stochastic_rounding = true;
  config.rounding_seed = 11;
  FusedOptimizer fused(context, config, params);
  fused.step(1e-3f);
  ASSERT_TRUE(fused.record().applied);
  float m1 = 0, m2 = 0;
  const float updated = amp::detail::adamw_update(1.0f, 1.0f, m1, m2, amp::detail::adamw_factors(config.adamw, 1e-3f, 1), 1.0f);
  std::size_t first = 0, differ = 0, total = 0;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    const std::size_t n = sizes[t];
    std::vector<numeric::BFloat16> want(n);
    numeric::stochastic_round(std::vector<float>(n, updated), want, amp::detail::weight_rounding_stream(11, 1), first);
    std::vector<std::uint16_t> working(n);
    std::vector<float> master(n);
    buffers[t * 5 + 4].copy_to_host(working.data(), n * 2);
    buffers[t * 5].copy_to_host(master.data(), n * 4);
    for (std::size_t i = 0; i < n; ++i) {
      differ += working[i] != std::bit_cast<std::uint16_t>(want[i]);
      ASSERT_EQ(master[i], static_cast<float>(std::bit_cast<numeric::BFloat16>(working[i]))) << "no master copy";
    }
    first += n;
    total += n;
  }
  EXPECT_LE(differ, total / 4096) << "of " << total << " weights";  // a wrong stream differs in ~38%
}

TEST(CudaFusedOptimizer, RejectsAParameterWithoutState) {
  MPX_SKIP_WITHOUT_GPU();
  DeviceContext context;
  DeviceBuffer buffer(64);
  DeviceParameter p{static_cast<float*>(buffer.data()), buffer.data(), DType::f32, nullptr, nullptr, nullptr, DType::bf16, 4, true};
  EXPECT_THROW(FusedOptimizer(context, {}, {p}), InvalidArgument);
}

}  // namespace
}  // namespace mpx::cuda
