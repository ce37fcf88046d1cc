// bf16-true's weights without a master copy: the CPU backend's optimizer step rounds the updated weights to
// BF16 stochastically, so updates far below half a BF16 ulp still move them by their size on average,
// where rounding to nearest drops every one; the rounding is reproducible from the seed and step alone.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "mpx/amp/detail/update_rules.h"
#include "mpx/backend/cpu_backend.h"
#include "mpx/numeric/bfloat16.h"
#include "mpx/numeric/stochastic_rounding.h"

namespace mpx::backend {
namespace {

constexpr std::int64_t kWeights = 8192;

struct Bf16TrueRun {
  std::vector<float> values;
  std::vector<std::uint16_t> working;
};

// Weights start at 1.0 (a BF16 value); every gradient is +1, so AdamW's step is -lr each time: 1e-3,
// a quarter of the BF16 ulp just below 1.0 (2^-8).
Bf16TrueRun train_bf16_true(bool stochastic, std::uint64_t seed, int steps) {
  CpuBackend backend;
  ParameterTensors p;
  p.value = backend.allocate({kWeights}, DType::f32, MemoryCategory::weights);
  p.grad = backend.allocate({kWeights}, DType::f32, MemoryCategory::gradients);
  p.state1 = backend.allocate({kWeights}, DType::f32, MemoryCategory::optimizer_state);
  p.state2 = backend.allocate({kWeights}, DType::f32, MemoryCategory::optimizer_state);
  p.working = backend.allocate({kWeights}, DType::bf16, MemoryCategory::weights);
  p.compute = DType::bf16;
  p.decay = false;
  const std::vector<float> ones(kWeights, 1.0f), zeros(kWeights, 0.0f);
  backend.upload(p.value, ones.data());
  backend.upload(p.state1, zeros.data());
  backend.upload(p.state2, zeros.data());
  OptimizerSettings settings;
  settings.master_weights = false;
  settings.stochastic_rounding = stochastic;
  settings.rounding_seed = seed;
  settings.adamw.weight_decay = 0.0f;
  auto optimizer = backend.make_optimizer(settings, {p});
  for (int step = 0; step < steps; ++step) {
    backend.upload(p.grad, ones.data());
    EXPECT_FALSE(optimizer->unscale_and_check(1.0f, 1e-3f));
    EXPECT_TRUE(optimizer->apply(false, 1e-3f));
  }
  Bf16TrueRun run{std::vector<float>(kWeights), std::vector<std::uint16_t>(kWeights)};
  backend.download(p.value, run.values.data());
  backend.download(p.working, run.working.data());
  return run;
}

double mean(const std::vector<float>& v) {
  double sum = 0;
  for (const float x : v) sum += x;
  return sum / static_cast<double>(v.size());
}

TEST(WeightRounding, Bf16TrueWeightsFollowUpdatesOfAQuarterUlpOnAverage) {
  const Bf16TrueRun run = train_bf16_true(true, 5, 100);
  // 100 steps of -1e-3 from 1.0: 0.9 in expectation; the spread of the mean over 8192 weights is ~4e-4.
  EXPECT_NEAR(mean(run.values), 0.9, 3e-3);
  for (std::int64_t i = 0; i < kWeights; ++i) {
    const auto k = static_cast<std::size_t>(i);
    ASSERT_EQ(run.values[k], static_cast<float>(std::bit_cast<numeric::BFloat16>(run.working[k])))
        << "weight " << i << ": the FP32 value is the BF16 weight itself (no master copy)";
  }
}

TEST(WeightRounding, RoundingToNearestDropsUpdatesBelowHalfAnUlp) {
  // What 16-true does for FP16, and what bf16-true would do without stochastic rounding: stuck at 1.0.
  const Bf16TrueRun run = train_bf16_true(false, 5, 100);
  for (const float v : run.values) ASSERT_EQ(v, 1.0f);
}

TEST(WeightRounding, TheSameSeedRoundsTheSameWayAndTheStreamIsTheLibrarys) {
  const Bf16TrueRun a = train_bf16_true(true, 5, 3), b = train_bf16_true(true, 5, 3), c = train_bf16_true(true, 6, 3);
  EXPECT_EQ(a.working, b.working);
  EXPECT_NE(a.working, c.working);
  // One step by hand: AdamW's update rule, then numeric::stochastic_round with the stream of (seed, step 1)
  // and each weight's index. (Another FMA contraction may move the updated value by an FP32 ulp, which
  // changes a BF16 stochastic rounding with probability 2^-16: a few weights of 8192 at most; a wrong
  // stream would change ~38% of them.)
  const Bf16TrueRun one = train_bf16_true(true, 9, 1);
  amp::AdamWConfig config;
  config.weight_decay = 0.0f;
  float m1 = 0, m2 = 0;
  const float value = amp::detail::adamw_update(1.0f, 1.0f, m1, m2, amp::detail::adamw_factors(config, 1e-3f, 1), 1.0f);
  const std::vector<float> updated(kWeights, value);
  std::vector<numeric::BFloat16> want(kWeights);
  numeric::stochastic_round(updated, want, amp::detail::weight_rounding_stream(9, 1), 0);
  std::int64_t same = 0;
  for (std::int64_t i = 0; i < kWeights; ++i) {
    const auto k = static_cast<std::size_t>(i);
    same += one.working[k] == std::bit_cast<std::uint16_t>(want[k]);
  }
  EXPECT_GE(same, kWeights - 4);
}

}  // namespace
}  // namespace mpx::backend
