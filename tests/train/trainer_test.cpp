// End to end on the real data set (installed by scripts/setup.sh): a short subset trains to a clear
// accuracy bar in every precision; a diverging *-true run stops with the step and a hint; a missing data
// set names the install command. Skips when the data set is absent.
#include <gtest/gtest.h>

#include <filesystem>

#include "mpx/core/error.h"
#include "../support/fashion_mnist.h"
#include "mpx/io/fashion_mnist.h"
#include "mpx/train/trainer.h"

namespace mpx::train {
namespace {

const io::FashionMnist* dataset() { return test::fashion_mnist(); }

TEST(Training, ShortRunReachesAClearBarInEveryPrecision) {
  MPX_NEED_DATA();
  for (const char* precision : {"32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true"}) {
    TrainConfig c;
    c.model = "cnn";
    c.precision = precision;
    c.epochs = 1;
    c.train_subset = 4096;
    c.test_subset = 2000;
    Trainer trainer(c, *dataset());
    const TrainResult r = trainer.run();
    EXPECT_GT(r.test_accuracy, 0.72) << precision;
    EXPECT_EQ(r.steps, 32) << precision;
    EXPECT_EQ(r.loss_scaling, std::string(precision).starts_with("16")) << precision;
  }
}

TEST(Training, SameSeedGivesTheSameRun) {
  MPX_NEED_DATA();
  TrainConfig c;
  c.model = "mlp";
  c.precision = "bf16-mixed";
  c.train_subset = 1024;
  c.test_subset = 500;
  const TrainResult a = Trainer(c, *dataset()).run();
  const TrainResult b = Trainer(c, *dataset()).run();
  EXPECT_EQ(a.final_loss, b.final_loss);
  EXPECT_EQ(a.test_accuracy, b.test_accuracy);
}

TEST(Training, DivergingTrueRunStopsWithStepAndHint) {
  MPX_NEED_DATA();
  TrainConfig c;
  c.model = "mlp";
  c.precision = "32-true";
  c.optimizer = OptimizerKind::sgd;
  c.schedule = ScheduleKind::constant;
  c.lr = 1e12f;
  c.train_subset = 2048;
  c.test_subset = 100;
  try {
    Trainer(c, *dataset()).run();
    FAIL() << "expected the run to diverge";
  } catch (const TrainingDiverged& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("at step"), std::string::npos) << message;
    EXPECT_NE(message.find("bf16-mixed"), std::string::npos) << message;
  }
}

TEST(Training, Fp16MixedUsesTheLossScalerAndCountsSkippedSteps) {
  MPX_NEED_DATA();
  TrainConfig c;
  c.model = "mlp";
  c.precision = "16-mixed";
  c.train_subset = 1024;
  c.test_subset = 100;
  c.lr = 1e-3f;
  Trainer trainer(c, *dataset());
  const TrainResult r = trainer.run();
  EXPECT_TRUE(r.loss_scaling);
  EXPECT_EQ(r.loss_scaler.skipped_steps, static_cast<std::uint64_t>(r.skipped_steps));
  EXPECT_GT(r.loss_scaler.scale, 0.0f);
}

TEST(Training, BadSettingsAndMissingDataAreClearErrors) {
  TrainConfig c;
  c.epochs = 0;
  EXPECT_THROW(resolve(c), InvalidArgument);
  c = {};
  c.precision = "fp12";
  EXPECT_THROW(resolve(c), InvalidArgument);
  c = {};
  c.inject_nonfinite = "fc3:forward:2";  // the CNN has fc1 and fc2: the drill would never fire
  try {
    resolve(c);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("no layer 'fc3'; its layers: conv1, bn1, pool1"), std::string::npos) << e.what();
  }
  c.model = "mlp";
  c.inject_nonfinite = "fc1:backward:2";
  EXPECT_NO_THROW(resolve(c));
  c = {};
  c.tf32 = true;  // TF32 is a tensor-core mode: asking for it on the CPU engine is a contradiction...
  EXPECT_THROW(resolve(c), InvalidArgument);
  c.device = DeviceChoice::automatic;  // ... while auto without a device simply has none to use
  const TrainConfig resolved = resolve(c);
  EXPECT_EQ(resolved.tf32, resolved.device == DeviceChoice::cuda);
  try {
    io::load_fashion_mnist("/nonexistent/fashion");
    FAIL();
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("apt-get install dataset-fashion-mnist"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mpx::train
