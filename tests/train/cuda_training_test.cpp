// Training on the GPU: reaches the CPU engine's accuracy (within 0.3 points, same recipe and seed) in
// 32-true, bf16-mixed and 16-mixed; the same seed gives the same losses bit for bit (with or without the
// graph flag: a captured graph must compute what eager launches compute, and today both launch eagerly);
// the trained state comes back to the host for checkpoints; injected faults are traced as on the CPU. Label `gpu`: skips without a device or data.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "../support/gpu.h"
#include "../support/fashion_mnist.h"
#include "mpx/backend/cuda.h"
#include "mpx/io/safetensors.h"
#include "mpx/train/trainer.h"

namespace mpx::train {
namespace {

// The reference recipe for 4 epochs, or with `steps` > 0 the first `steps` steps of one epoch.
TrainConfig recipe(const std::string& precision, const std::string& device, std::int64_t steps = 0) {
  TrainConfig c;
  c.precision = precision;
  c.device = parse_device(device);
  c.epochs = steps > 0 ? 1 : 4;
  c.max_steps = steps;
  c.numerics_every = 0;
  c.seed = 3;
  return c;
}

TEST(CudaTraining, ReachesTheCpuAccuracyInEveryMixedPrecisionPreset) {
  MPX_SKIP_WITHOUT_GPU();
  MPX_NEED_DATA();
  for (const std::string precision : {"32-true", "bf16-mixed", "16-mixed"}) {
    Trainer cpu(recipe(precision, "cpu"), *test::fashion_mnist());
    const double cpu_accuracy = cpu.run().test_accuracy;
    Trainer gpu(recipe(precision, "cuda"), *test::fashion_mnist());
    const TrainResult result = gpu.run();
    RecordProperty(precision + "_cpu", std::to_string(cpu_accuracy));
    RecordProperty(precision + "_gpu", std::to_string(result.test_accuracy));
    EXPECT_GE(result.test_accuracy, cpu_accuracy - 0.003) << precision;
    EXPECT_GE(result.test_accuracy, 0.90) << precision;
    EXPECT_LT(result.skipped_steps, 10) << precision;
  }
}

TEST(CudaTraining, RunsAreBitIdenticalWithOrWithoutTheGraphFlag) {
  MPX_SKIP_WITHOUT_GPU();
  MPX_NEED_DATA();
  std::vector<float> losses[2];
  for (int graph = 0; graph < 2; ++graph) {
    TrainConfig c = recipe("bf16-mixed", "cuda", 30);
    c.cuda_graph = graph == 1;
    Trainer trainer(c, *test::fashion_mnist());
    Callbacks callbacks;
    callbacks.on_step = [&](const StepReport& r) { losses[graph].push_back(r.loss); };
    trainer.run(callbacks);
  }
  ASSERT_EQ(losses[0].size(), 30u);
  EXPECT_EQ(losses[0], losses[1]);  // bit for bit: same kernels, same order
}

TEST(CudaTraining, SixteenMixedSkipsOverflowingStepsAndKeepsTraining) {
  MPX_SKIP_WITHOUT_GPU();
  MPX_NEED_DATA();
  TrainConfig c = recipe("16-mixed", "cuda", 60);
  Trainer trainer(c, *test::fashion_mnist());
  const TrainResult r = trainer.run();
  // The first steps at 2^16 may overflow FP16 gradients: skipped and backed off, never a NaN weight.
  EXPECT_TRUE(std::isfinite(r.final_loss));
  EXPECT_EQ(r.loss_scaler.skipped_steps, static_cast<std::uint64_t>(r.skipped_steps));
  EXPECT_EQ(r.loss_scaler.steps, 60u);
  for (nn::Parameter* p : trainer.model().parameters()) {
    const float* v = p->value.data_as<float>();
    for (std::int64_t i = 0; i < p->value.numel(); ++i) ASSERT_TRUE(std::isfinite(v[i])) << p->name;
  }
}

TEST(CudaTraining, AResumedRunEndsBitIdenticalToAnUninterruptedOne) {
  MPX_SKIP_WITHOUT_GPU();
  MPX_NEED_DATA();
  const std::string dir = ::testing::TempDir();
  auto config = [&](std::int64_t max_steps, const std::string& checkpoint) {
    TrainConfig c = recipe("16-mixed", "cuda");
    c.epochs = 2;
    c.train_subset = 1280;  // 10 steps an epoch: the stop at 7 is mid-epoch, the last batch is full
    c.test_subset = 128;
    c.max_steps = max_steps;
    c.checkpoint_every = 7;
    c.checkpoint_path = dir + checkpoint;
    return c;
  };
  Trainer straight(config(20, "straight.safetensors"), *test::fashion_mnist());
  const TrainResult a = straight.run();
  Trainer first_half(config(7, "resumed.safetensors"), *test::fashion_mnist());
  first_half.run();
  Trainer second_half(config(20, "resumed.safetensors"), *test::fashion_mnist());
  second_half.load_checkpoint(dir + "resumed.safetensors");
  const TrainResult b = second_half.run();
  EXPECT_EQ(a.loss_scaler.scale, b.loss_scaler.scale);
  EXPECT_EQ(a.loss_scaler.steps, b.loss_scaler.steps);
  const auto pa = straight.model().parameters(), pb = second_half.model().parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(std::memcmp(pa[i]->value.data(), pb[i]->value.data(), pa[i]->value.bytes()), 0) << pa[i]->name;
    EXPECT_EQ(std::memcmp(pa[i]->state2.data(), pb[i]->state2.data(), pa[i]->state2.bytes()), 0) << pa[i]->name;
  }
}

TEST(CudaTraining, NumericsSamplesCoverEveryLayerAsOnTheCpu) {
  MPX_SKIP_WITHOUT_GPU();
  MPX_NEED_DATA();
  TrainConfig c = recipe("bf16-mixed", "cuda", 20);
  c.numerics_every = 10;
  Trainer trainer(c, *test::fashion_mnist());
  std::vector<telemetry::NumericsSample> samples;
  Callbacks callbacks;
  callbacks.on_numerics = [&](const telemetry::NumericsSample& s) { samples.push_back(s); };
  const TrainResult r = trainer.run(callbacks);
  ASSERT_EQ(samples.size(), 2u);
  std::set<std::string> names;
  for (const auto& t : samples.back().tensors) {
    names.insert(t.tensor);
    EXPECT_EQ(t.stats.nonfinite(), 0u) << t.tensor;
  }
  for (const char* expected : {"conv1.output", "bn2.output_grad", "fc2.output", "fc1.weight"}) {
    EXPECT_TRUE(names.count(expected)) << expected;
  }
  EXPECT_FALSE(r.headroom.empty());
}

TEST(CudaTraining, Tf32IsUsedOnlyWhenAskedAndOnlyForFp32Products) {
  MPX_SKIP_WITHOUT_GPU();
  MPX_NEED_DATA();
  auto losses = [](const std::string& precision, bool tf32) {
    TrainConfig c = recipe(precision, "cuda", 20);
    c.tf32 = tf32;
    std::vector<float> out;
    Callbacks callbacks;
    callbacks.on_step = [&](const StepReport& r) { out.push_back(r.loss); };
    Trainer(c, *test::fashion_mnist()).run(callbacks);
    return out;
  };
  const auto exact = losses("32-true", false), fast = losses("32-true", true);
  ASSERT_EQ(exact.size(), 20u);
  EXPECT_NE(exact, fast);  // TF32 rounds the products' inputs: the trajectory moves...
  for (std::size_t i = 0; i < exact.size(); ++i) EXPECT_NEAR(fast[i], exact[i], 0.05f * exact[i]) << i;  // ... a little
  EXPECT_EQ(losses("bf16-mixed", false), losses("bf16-mixed", true));  // no FP32 products to change
}

// The CPU engine's drills (NumericsInTraining.*) on the device: the origin is found in the step's own device
// tensors (no replay) and must name what the CPU names.
TrainConfig drill(const std::string& precision, const std::string& device, const std::string& inject) {
  TrainConfig c = recipe(precision, device, 10);
  c.batch_size = 64;
  c.train_subset = 640;  // ten full batches: the graph is captured at step 2, the drill's step runs eagerly
  c.test_subset = 64;
  c.numerics_every = 5;
  c.inject_nonfinite = inject;
  return c;
}

const telemetry::NonFiniteOrigin* origin_at(const TrainResult& r, std::int64_t step) {
  for (const auto& o : r.nonfinite_origins) {
    if (o.step == step) return &o;
  }
  return nullptr;
}

TEST(CudaTraining, InjectedFaultsAreTracedToTheLayerAndPassTheCpuNames) {
  MPX_SKIP_WITHOUT_GPU();
  MPX_NEED_DATA();
  const std::pair<const char*, std::int64_t> drills[] = {
      {"conv2:forward:5:3", 5}, {"bn2:backward:3:2", 3}, {"fc1:forward:4:2:nan", 4}, {"conv1:forward:7:1000", 7},
      {"dropout:backward:6:5", 6}};
  for (const std::string precision : {"bf16-mixed", "16-mixed"}) {
    for (const auto& [inject, step] : drills) {
      const TrainResult cpu = Trainer(drill(precision, "cpu", inject), *test::fashion_mnist()).run();
      const TrainResult gpu = Trainer(drill(precision, "cuda", inject), *test::fashion_mnist()).run();
      const auto* expected = origin_at(cpu, step);
      const auto* found = origin_at(gpu, step);
      ASSERT_NE(expected, nullptr) << precision << " " << inject;
      ASSERT_NE(found, nullptr) << precision << " " << inject;
      EXPECT_EQ(found->layer, expected->layer) << precision << " " << inject;
      EXPECT_EQ(found->pass, expected->pass) << precision << " " << inject;
      EXPECT_EQ(found->output.pos_inf, expected->output.pos_inf) << precision << " " << inject;
      EXPECT_EQ(found->output.nan, expected->output.nan) << precision << " " << inject;
      EXPECT_EQ(found->input.nonfinite(), 0u) << precision << " " << inject;  // the fault is in that op
      EXPECT_GE(gpu.skipped_steps, 1) << precision << " " << inject;
      EXPECT_TRUE(std::isfinite(gpu.final_loss)) << precision << " " << inject;
    }
  }
}

TEST(CudaTraining, TrueRunStopsAtAnInjectedInfAndNamesWhereItBegan) {
  MPX_SKIP_WITHOUT_GPU();
  MPX_NEED_DATA();
  try {
    Trainer(drill("32-true", "cuda", "conv2:forward:5:3"), *test::fashion_mnist()).run();
    FAIL() << "expected the run to stop";
  } catch (const TrainingDiverged& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("at step 5 "), std::string::npos) << message;
    EXPECT_NE(message.find("step 5: conv2 forward wrote 3 non-finite"), std::string::npos) << message;
  }
}

TEST(CudaTraining, DetectAnomalyStopsAtTheOrigin) {
  MPX_SKIP_WITHOUT_GPU();
  MPX_NEED_DATA();
  TrainConfig c = drill("bf16-mixed", "cuda", "fc1:forward:4");
  c.detect_anomaly = true;
  try {
    Trainer(c, *test::fashion_mnist()).run();
    FAIL() << "expected --detect-anomaly to stop the run";
  } catch (const TrainingDiverged& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("step 4: fc1 forward"), std::string::npos) << message;
  }
}

// As on the CPU: a skipped step leaves weights, moments, BatchNorm running statistics and the optimizer step
// as they were (the checkpoint after 4 clean steps equals the one after the same 4 and a poisoned fifth).
TEST(CudaTraining, ASkippedStepLeavesEveryTensorAsItWas) {
  MPX_SKIP_WITHOUT_GPU();
  MPX_NEED_DATA();
  const std::string dir = ::testing::TempDir();
  std::vector<io::SafetensorsFile> files;
  for (int poisoned = 0; poisoned < 2; ++poisoned) {
    TrainConfig c = recipe("16-mixed", "cuda", poisoned ? 5 : 4);
    c.inject_nonfinite = poisoned ? "conv1:forward:5" : "";
    c.checkpoint_every = 100;
    c.checkpoint_path = dir + (poisoned ? "/cuda-poisoned.safetensors" : "/cuda-clean.safetensors");
    Trainer trainer(c, *test::fashion_mnist());
    EXPECT_EQ(trainer.run().skipped_steps, poisoned);
    files.push_back(io::SafetensorsFile::read(c.checkpoint_path));
  }
  for (const io::SafetensorsEntry& e : files[0].tensors()) {
    const io::SafetensorsEntry* other = files[1].find(e.name);
    ASSERT_NE(other, nullptr) << e.name;
    const auto a = files[0].data(e), b = files[1].data(*other);
    EXPECT_TRUE(a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0) << e.name;
  }
}

}  // namespace
}  // namespace mpx::train
