// Numerics telemetry in real training steps: faults injected into one layer's forward output or one
// gradient are traced to exactly that layer and pass, counted, and skipped; --detect-anomaly stops there.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "../support/fashion_mnist.h"
#include "mpx/io/fashion_mnist.h"
#include "mpx/io/safetensors.h"
#include "mpx/train/trainer.h"

namespace mpx::train {
namespace {

const io::FashionMnist* dataset() { return test::fashion_mnist(); }

TrainConfig short_run(const char* precision, const std::string& inject) {
  TrainConfig c;
  c.precision = precision;
  c.epochs = 1;
  c.max_steps = 10;
  c.batch_size = 64;
  c.train_subset = 640;
  c.test_subset = 64;
  c.numerics_every = 5;
  c.inject_nonfinite = inject;
  return c;
}

TEST(NumericsInTraining, InjectedForwardInfIsTracedToItsLayerAndSkipped) {
  MPX_NEED_DATA();
  for (const char* precision : {"bf16-mixed", "16-mixed"}) {
    Trainer trainer(short_run(precision, "conv2:forward:5:3"), *dataset());
    int samples = 0;
    Callbacks callbacks;
    callbacks.on_numerics = [&](const telemetry::NumericsSample& s) {
      ++samples;
      for (const auto& t : s.tensors) {
        if (t.tensor == "conv2.output") {
          EXPECT_EQ(t.stats.pos_inf, s.step == 5 ? 3u : 0u) << precision;
        }
      }
    };
    const TrainResult r = trainer.run(callbacks);
    EXPECT_EQ(samples, 2) << precision;
    EXPECT_EQ(r.nonfinite_steps, 1) << precision;
    EXPECT_EQ(r.skipped_steps, 1) << precision;
    ASSERT_EQ(r.nonfinite_origins.size(), 1u) << precision;
    const auto& o = r.nonfinite_origins[0];
    EXPECT_EQ(o.step, 5);
    EXPECT_EQ(o.layer, "conv2");
    EXPECT_EQ(o.pass, "forward");
    EXPECT_EQ(o.output.pos_inf, 3u);
    EXPECT_EQ(o.input.nonfinite(), 0u);  // its input was fine: the fault is in this op
  }
}

TEST(NumericsInTraining, TrueRunStopsAtAnInjectedInfAndNamesWhereItBegan) {
  MPX_NEED_DATA();
  try {
    Trainer(short_run("32-true", "conv2:forward:5:3"), *dataset()).run();
    FAIL() << "expected the run to stop";
  } catch (const TrainingDiverged& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("at step 5 "), std::string::npos) << message;
    EXPECT_NE(message.find("step 5: conv2 forward wrote 3 non-finite"), std::string::npos) << message;
  }
}

TEST(NumericsInTraining, InjectedGradientInfIsTracedToItsLayerAndBackwardPass) {
  MPX_NEED_DATA();
  Trainer trainer(short_run("bf16-mixed", "bn2:backward:3:2"), *dataset());
  const TrainResult r = trainer.run();
  ASSERT_EQ(r.nonfinite_origins.size(), 1u);
  EXPECT_EQ(r.nonfinite_origins[0].layer, "bn2");
  EXPECT_EQ(r.nonfinite_origins[0].pass, "backward");
  EXPECT_EQ(r.nonfinite_origins[0].step, 3);
  EXPECT_EQ(r.nonfinite_origins[0].output.pos_inf, 2u);
  EXPECT_EQ(r.skipped_steps, 1);
}

TEST(NumericsInTraining, SkippedStepsEqualInjectedOverflowSteps) {
  MPX_NEED_DATA();
  // Two drills on two layers at once are not expressible; two runs with one each, and the loss scaler's
  // count of skipped steps, add up.
  std::int64_t skipped = 0;
  // (A NaN injected where a ReLU mask zeroes the gradient never reaches the weights; bn1's input gradient
  // reaches conv1's weight gradient whatever the values.)
  for (const char* inject : {"fc1:forward:2", "bn1:backward:7:4:nan"}) {
    Trainer trainer(short_run("16-mixed", inject), *dataset());
    const TrainResult r = trainer.run();
    skipped += r.skipped_steps;
    EXPECT_EQ(r.loss_scaler.skipped_steps, 1u) << inject;
    EXPECT_EQ(r.loss_scaler.backoffs, 1u) << inject;
  }
  EXPECT_EQ(skipped, 2);
}

TEST(NumericsInTraining, DetectAnomalyStopsAtTheOrigin) {
  MPX_NEED_DATA();
  TrainConfig c = short_run("bf16-mixed", "fc1:forward:4");
  c.detect_anomaly = true;
  try {
    Trainer(c, *dataset()).run();
    FAIL() << "expected --detect-anomaly to stop the run";
  } catch (const TrainingDiverged& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("step 4: fc1 forward"), std::string::npos) << message;
  }
}

TEST(NumericsInTraining, SamplingEveryStepDoesNotChangeTheRun) {
  MPX_NEED_DATA();
  TrainConfig quiet = short_run("bf16-mixed", ""), watched = quiet;
  quiet.numerics_every = 0;
  watched.numerics_every = 1;
  const TrainResult a = Trainer(quiet, *dataset()).run();
  const TrainResult b = Trainer(watched, *dataset()).run();
  EXPECT_EQ(a.final_loss, b.final_loss);
  EXPECT_EQ(a.test_accuracy, b.test_accuracy);
  EXPECT_TRUE(a.headroom.empty());
  EXPECT_FALSE(b.headroom.empty());
}

TEST(NumericsInTraining, CleanRunHasNoNonFiniteStepsAndARecommendation) {
  MPX_NEED_DATA();
  const TrainResult r = Trainer(short_run("16-mixed", ""), *dataset()).run();
  EXPECT_EQ(r.nonfinite_steps, 0);
  EXPECT_FALSE(r.headroom.empty());
  EXPECT_FALSE(r.recommendation.empty());
}

// A skipped step changes nothing but the loss scaler and the position: the checkpoint after a clean 4-step
// run and after the same run with a fifth, poisoned step hold the same bytes for every tensor (weights,
// AdamW moments, BatchNorm running statistics) and the same optimizer step count.
TEST(NumericsInTraining, ASkippedStepLeavesEveryTensorAndTheOptimizerStepAsTheyWere) {
  MPX_NEED_DATA();
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "mpx-skipped-step-test";
  std::filesystem::create_directories(dir);
  for (const char* precision : {"16-mixed", "bf16-mixed"}) {
    for (const char* drill : {"conv1:forward:5", "conv2:forward:5:1:nan"}) {
      TrainConfig clean = short_run(precision, ""), poisoned = short_run(precision, drill);
      clean.max_steps = 4;
      poisoned.max_steps = 5;
      clean.numerics_every = poisoned.numerics_every = 0;
      clean.checkpoint_every = poisoned.checkpoint_every = 100;  // the last step writes one
      clean.checkpoint_path = (dir / "clean.safetensors").string();
      poisoned.checkpoint_path = (dir / "poisoned.safetensors").string();
      EXPECT_EQ(Trainer(clean, *dataset()).run().skipped_steps, 0);
      EXPECT_EQ(Trainer(poisoned, *dataset()).run().skipped_steps, 1) << precision << " " << drill;
      const io::SafetensorsFile a = io::SafetensorsFile::read(clean.checkpoint_path);
      const io::SafetensorsFile b = io::SafetensorsFile::read(poisoned.checkpoint_path);
      ASSERT_EQ(a.tensors().size(), b.tensors().size());
      for (const io::SafetensorsEntry& e : a.tensors()) {
        const io::SafetensorsEntry* other = b.find(e.name);
        ASSERT_NE(other, nullptr) << e.name;
        const auto x = a.data(e), y = b.data(*other);
        EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end())) << precision << " " << drill << ": " << e.name;
      }
      const auto state_a = nlohmann::json::parse(a.metadata().at("mpx.checkpoint"));
      const auto state_b = nlohmann::json::parse(b.metadata().at("mpx.checkpoint"));
      EXPECT_EQ(state_a.at("optimizer_steps"), state_b.at("optimizer_steps")) << precision << " " << drill;
      EXPECT_EQ(state_b.at("global_step"), 5);
    }
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mpx::train
