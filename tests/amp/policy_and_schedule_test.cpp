#include <gtest/gtest.h>

#include <cmath>

#include "mpx/amp/precision_policy.h"
#include "mpx/amp/schedule.h"
#include "mpx/core/error.h"

namespace mpx::amp {
namespace {

TEST(PrecisionPolicy, PresetsMatchLightningNamesAndKeepFp32WhereItMatters) {
  const auto bf16 = PrecisionPolicy::preset("bf16-mixed");
  EXPECT_EQ(bf16.compute, DType::bf16);
  EXPECT_TRUE(bf16.master_weights);
  EXPECT_FALSE(bf16.loss_scaling);
  const auto fp16 = PrecisionPolicy::preset("16-mixed");
  EXPECT_EQ(fp16.compute, DType::f16);
  EXPECT_TRUE(fp16.loss_scaling);
  const auto fp32 = PrecisionPolicy::preset("32-true");
  EXPECT_EQ(fp32.compute, DType::f32);
  EXPECT_FALSE(fp32.master_weights);
  EXPECT_FALSE(PrecisionPolicy::preset("bf16-true").master_weights);
  EXPECT_EQ(PrecisionPolicy::preset("fp16").name, "16-mixed");
  EXPECT_EQ(PrecisionPolicy::preset("bf16").name, "bf16-mixed");
  EXPECT_EQ(PrecisionPolicy::preset("fp32").name, "32-true");
  static_assert(PrecisionPolicy::kLoss == DType::f32 && PrecisionPolicy::kNormStatistics == DType::f32 &&
                PrecisionPolicy::kOptimizerState == DType::f32 && PrecisionPolicy::kAccumulate == DType::f32);
  EXPECT_THROW(PrecisionPolicy::preset("int8"), InvalidArgument);
}

TEST(PrecisionPolicy, PerLayerOverridesByGlob) {
  auto p = PrecisionPolicy::preset("bf16-mixed");
  p.overrides = {{"fc*", DType::f32}, {"fc2", DType::f16}};
  EXPECT_EQ(p.compute_for("conv1"), DType::bf16);
  EXPECT_EQ(p.compute_for("fc1"), DType::f32);
  EXPECT_EQ(p.compute_for("fc2"), DType::f16);  // the last matching override wins
  EXPECT_TRUE(glob_match("block?.attn*", "block3.attn.qkv"));
  EXPECT_FALSE(glob_match("block?.attn", "block12.attn"));
}

TEST(Schedules, OneCycleMatchesTorchShape) {
  OneCycleSchedule s{0.01f, 1000};
  EXPECT_NEAR(s.lr(0), 0.01f / 25, 1e-9);
  EXPECT_NEAR(s.lr(299), 0.01f, 1e-9);  // the peak at pct_start * total - 1
  EXPECT_NEAR(s.lr(999), 0.01f / 25 / 1e4, 1e-12);
  EXPECT_GT(s.lr(150), s.lr(100));
  EXPECT_LT(s.lr(600), s.lr(400));
}

TEST(Schedules, CosineWithWarmup) {
  CosineSchedule s{1.0f, 0.1f, 10, 110};
  EXPECT_NEAR(s.lr(0), 0.1f, 1e-6);
  EXPECT_NEAR(s.lr(9), 1.0f, 1e-6);
  EXPECT_NEAR(s.lr(60), 0.55f, 1e-5);
  EXPECT_NEAR(s.lr(110), 0.1f, 1e-6);
}

}  // namespace
}  // namespace mpx::amp
