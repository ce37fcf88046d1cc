// The loss scaler's scale sequence for given overflow patterns, as a table, compared with the rules
// PyTorch's GradScaler documents (growth, backoff, skip, interval reset).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "mpx/amp/loss_scaler.h"
#include "mpx/core/error.h"

namespace mpx::amp {
namespace {

struct Case {
  std::string name;
  LossScalerConfig config;
  std::string pattern;             // one character per step: '.' clean, 'x' inf/NaN found
  std::vector<float> scales;       // scale after each step
  std::string applied;             // '1' applied, '0' skipped
};

TEST(LossScaler, ScaleSequenceFollowsGrowthBackoffAndSkipRules) {
  LossScalerConfig small;
  small.init_scale = 8.0f;
  small.growth_interval = 3;
  LossScalerConfig fixed = small;
  fixed.dynamic = false;
  const std::vector<Case> cases = {
      {"grows after interval clean steps", small, "......", {8, 8, 16, 16, 16, 32}, "111111"},
      {"backs off and skips on overflow", small, "x.x", {4, 4, 2}, "010"},
      {"overflow resets the interval", small, "..x...", {8, 8, 4, 4, 4, 8}, "110111"},
      {"consecutive overflows keep halving", small, "xxx", {4, 2, 1}, "000"},
      {"static scale never changes but still skips", fixed, "..x...", {8, 8, 8, 8, 8, 8}, "110111"},
  };
  for (const Case& c : cases) {
    LossScaler scaler(c.config);
    std::string applied;
    for (std::size_t i = 0; i < c.pattern.size(); ++i) {
      applied += scaler.update(c.pattern[i] == 'x') ? '1' : '0';
      EXPECT_EQ(scaler.scale(), c.scales[i]) << c.name << ", step " << i;
    }
    EXPECT_EQ(applied, c.applied) << c.name;
  }
}

TEST(LossScaler, DefaultsAreThoseOfPyTorchGradScaler) {
  LossScaler scaler;
  EXPECT_EQ(scaler.scale(), 65536.0f);
  EXPECT_EQ(scaler.config().growth_factor, 2.0f);
  EXPECT_EQ(scaler.config().backoff_factor, 0.5f);
  EXPECT_EQ(scaler.config().growth_interval, 2000);
  for (int i = 0; i < 1999; ++i) scaler.update(false);
  EXPECT_EQ(scaler.scale(), 65536.0f);
  scaler.update(false);
  EXPECT_EQ(scaler.scale(), 131072.0f);
}

TEST(LossScaler, CountsEventsAndRestoresState) {
  LossScalerConfig config;
  config.init_scale = 4.0f;
  config.growth_interval = 2;
  LossScaler scaler(config);
  for (char c : std::string("..x..x")) scaler.update(c == 'x');
  const LossScalerState s = scaler.state();
  EXPECT_EQ(s.steps, 6u);
  EXPECT_EQ(s.skipped_steps, 2u);
  EXPECT_EQ(s.growths, 2u);
  EXPECT_EQ(s.backoffs, 2u);
  LossScaler resumed(config);
  resumed.load_state(s);
  for (char c : std::string(".x..")) {
    EXPECT_EQ(resumed.update(c == 'x'), scaler.update(c == 'x'));
    EXPECT_EQ(resumed.scale(), scaler.scale());
  }
}

TEST(LossScaler, NeverBacksOffToZero) {
  LossScalerConfig config;
  config.init_scale = 1e-30f;
  LossScaler scaler(config);
  for (int i = 0; i < 100; ++i) scaler.update(true);
  EXPECT_GT(scaler.scale(), 0.0f);
}

TEST(LossScaler, BadSettingsAreClearErrors) {
  LossScalerConfig c;
  c.init_scale = 0;
  EXPECT_THROW(LossScaler{c}, InvalidArgument);
  c = {};
  c.growth_factor = 1.0f;
  EXPECT_THROW(LossScaler{c}, InvalidArgument);
  c = {};
  c.backoff_factor = 1.5f;
  EXPECT_THROW(LossScaler{c}, InvalidArgument);
  c = {};
  c.growth_interval = 0;
  EXPECT_THROW(LossScaler{c}, InvalidArgument);
  LossScaler scaler;
  LossScalerState bad;
  bad.scale = -1;
  EXPECT_THROW(scaler.load_state(bad), InvalidArgument);
}

}  // namespace
}  // namespace mpx::amp
