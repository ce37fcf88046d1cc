// Gradient all-reduce as the trainer uses it, on ranks as threads: averaging, bytes, and what error
// feedback recovers that plain 16-bit aggregation loses.
#include <gtest/gtest.h>

#include <cmath>
#include <mutex>

#include "distributed_test_support.h"
#include "mpx/distributed/gradient_sync.h"
#include "mpx/nn/layers.h"

namespace mpx::distributed {
namespace {

// A model of two weights and two biases (4 gradients); the tests write the weights' gradients.
struct TwoWeights {
  nn::Context ctx;
  nn::Sequential model;
  TwoWeights() {
    model.add(std::make_unique<nn::Linear>("fc", 1, 2, 0));
    model.plan({{1, 1}, DType::f32}, ctx);
  }
  nn::Parameter& weight() { return *model.parameters().front(); }
};

// Over K steps every rank's gradient is {1 + 3e-4, 2^-27}: the first loses its small part in FP16 and
// BF16 (below their resolution next to 1), the second is below FP16's smallest subnormal (2^-24) and BF16
// keeps it. Returns the sum over the steps of the averaged gradients (rank 0's view).
std::vector<double> accumulated(GradComm mode, int steps) {
  std::vector<double> total(2, 0.0);
  std::mutex mutex;
  run_ranks(2, [&](ProcessGroup& g) {
    TwoWeights m;
    GradientSync sync(g, m.model, m.ctx.backend(), {mode, 1 << 20});
    std::vector<double> sum(2, 0.0);
    for (int step = 0; step < steps; ++step) {
      sync.begin_step(0.5, 1.0f, false);
      float* grad = m.weight().grad.data_as<float>();
      grad[0] = 1.0f + 3e-4f;
      grad[1] = std::ldexp(1.0f, -27);
      const GradientSync::Reduced r = sync.finish(1.0f);
      EXPECT_FALSE(r.nonfinite);
      EXPECT_EQ(r.loss, 1.0f);
      sync.end_step(true);
      sum[0] += grad[0];
      sum[1] += grad[1];
    }
    if (g.rank() == 0) {
      const std::lock_guard lock(mutex);
      total = sum;
    }
  });
  return total;
}

TEST(GradientSync, ErrorFeedbackRecoversWhatFp16AggregationLoses) {
  constexpr int kSteps = 200;
  const double exact0 = kSteps * static_cast<double>(1.0f + 3e-4f), exact1 = kSteps * std::ldexp(1.0, -27);
  const std::vector<double> fp32 = accumulated(GradComm::fp32, kSteps);
  EXPECT_NEAR(fp32[0], exact0, 1e-4);
  EXPECT_NEAR(fp32[1], exact1, 1e-12);
  const std::vector<double> fp16 = accumulated(GradComm::fp16, kSteps);
  EXPECT_EQ(fp16[0], kSteps * 1.0);  // every small part lost
  EXPECT_EQ(fp16[1], 0.0);           // flushed to zero every step
  // Error feedback: the sums differ from FP32's by at most what the residuals still hold at the end, one
  // unit in the last place per rank at the size each rank sends (0.5: 2^-12 in FP16; 2^-25: subnormal 2^-24).
  const std::vector<double> ef = accumulated(GradComm::fp16_ef, kSteps);
  EXPECT_NEAR(ef[0], fp32[0], 2 * std::ldexp(1.0, -11));
  EXPECT_NEAR(ef[1], fp32[1], 2 * std::ldexp(1.0, -24));
  const std::vector<double> bf16 = accumulated(GradComm::bf16, kSteps), bf16_ef = accumulated(GradComm::bf16_ef, kSteps);
  EXPECT_EQ(bf16[0], kSteps * 1.0);
  EXPECT_NEAR(bf16_ef[0], fp32[0], 2 * std::ldexp(1.0, -8));
}

TEST(GradientSync, CompressedModesSendHalfTheBytesAndMeasureTheirError) {
  for (GradComm mode : {GradComm::fp32, GradComm::bf16, GradComm::fp16_ef}) {
    std::vector<CommStats> seen(2);
    run_ranks(2, [&](ProcessGroup& g) {
      TwoWeights m;
      GradientSync sync(g, m.model, m.ctx.backend(), {mode, 1 << 20});
      sync.begin_step(0.5, 1.0f, true);
      float* grad = m.weight().grad.data_as<float>();
      grad[0] = 1.0f / 3;
      grad[1] = -2.0f / 3;
      sync.finish(0.0f);
      sync.end_step(true);
      seen[static_cast<std::size_t>(g.rank())] = sync.last();
    });
    const CommStats& s = seen[0];
    EXPECT_EQ(s.payload_bytes, mode == GradComm::fp32 ? 16u : 8u) << name(mode);
    EXPECT_EQ(s.bytes_sent, s.payload_bytes);  // 2 ranks: a ring sends 2 (n - 1) / n of the payload
    ASSERT_TRUE(s.relative_error.has_value());
    if (mode == GradComm::fp32) {
      EXPECT_EQ(*s.relative_error, 0.0);
    } else {  // one rounding of 1/3 and 2/3: about 2^-9 (bf16) or 2^-12 (fp16) relative
      EXPECT_GT(*s.relative_error, 0.0) << name(mode);
      EXPECT_LT(*s.relative_error, 0.01) << name(mode);
    }
  }
}

TEST(GradientSync, ANonFiniteGradientOnOneRankMakesEveryRankSkip) {
  std::vector<int> flagged(2, -1);
  run_ranks(2, [&](ProcessGroup& g) {
    TwoWeights m;
    GradientSync sync(g, m.model, m.ctx.backend(), {GradComm::fp16_ef, 1 << 20});
    sync.begin_step(0.5, 1024.0f, false);
    float* grad = m.weight().grad.data_as<float>();
    grad[0] = g.rank() == 1 ? INFINITY : 1.0f;
    grad[1] = 0.0f;
    flagged[static_cast<std::size_t>(g.rank())] = sync.finish(0.0f).nonfinite ? 1 : 0;
    sync.end_step(false);
  });
  EXPECT_EQ(flagged, (std::vector<int>{1, 1}));
}

TEST(GradientSync, DifferentLossScalesOnTheRanksAreRefused) {
  std::vector<int> refused(2, 0);
  run_ranks(2, [&](ProcessGroup& g) {
    TwoWeights m;
    GradientSync sync(g, m.model, m.ctx.backend(), {GradComm::fp32, 1 << 20});
    sync.begin_step(0.5, g.rank() == 0 ? 1024.0f : 2048.0f, false);
    try {
      sync.finish(0.0f);
    } catch (const Error& e) {
      refused[static_cast<std::size_t>(g.rank())] = std::string(e.what()).find("loss scales differ") != std::string::npos;
    }
  });
  EXPECT_EQ(refused, (std::vector<int>{1, 1}));
}

}  // namespace
}  // namespace mpx::distributed
