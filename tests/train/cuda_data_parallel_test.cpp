// Data-parallel training on CUDA through the trainer, as `mpirun -np 2 mpx train --device cuda` runs it
// (ranks as threads here): 2 ranks x batch 32 with fp32 communication train the MLP (dropout included) to
// the weights of 1 process x batch 64 within summation order, every rank holding the same bits; the
// compressed modes with error feedback train on. Synthetic images: no data set needed. On the GPU (label
// gpu) it needs two; the emulated engine (label emulated) runs both ranks on its one device.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <mutex>
#include <random>

#include "../distributed/distributed_test_support.h"
#include "../support/gpu.h"
#include "mpx/train/trainer.h"

namespace mpx::train {
namespace {

// 28 x 28 x 1 FP32 images of uniform noise; the label of image i is i % 10.
class NoiseImages final : public Dataset {
 public:
  explicit NoiseImages(std::int64_t count) : count_(count), pixels_(static_cast<std::size_t>(count) * 784) {
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (float& p : pixels_) p = u(rng);
  }
  std::int64_t size() const override { return count_; }
  Shape sample_shape() const override { return {28, 28, 1}; }
  DType sample_dtype() const override { return DType::f32; }
  void gather(std::span<const std::int64_t> indices, void* x, void* labels) const override {
    auto* out = static_cast<float*>(x);
    auto* l = static_cast<std::uint8_t*>(labels);
    for (std::size_t b = 0; b < indices.size(); ++b) {
      const auto i = static_cast<std::size_t>(indices[b]);
      std::copy_n(pixels_.data() + i * 784, 784, out + b * 784);
      l[b] = static_cast<std::uint8_t>(i % 10);
    }
  }

 private:
  std::int64_t count_;
  std::vector<float> pixels_;
};

TrainConfig recipe(std::int64_t batch, distributed::GradComm comm, const std::string& precision) {
  TrainConfig c;
  c.model = "mlp";
  c.precision = precision;
  c.device = DeviceChoice::cuda;
  c.batch_size = batch;
  c.epochs = 1;
  c.max_steps = 6;
  c.numerics_every = 0;
  c.seed = 5;
  c.grad_comm = comm;
  return c;
}

struct Outcome {
  std::vector<std::vector<float>> weights;  // per parameter, host copies
  float final_loss = 0;
};
Outcome outcome_of(Trainer& t, const TrainResult& r) {
  Outcome o;
  o.final_loss = r.final_loss;
  for (nn::Parameter* p : t.model().parameters()) {
    const float* v = p->value.data_as<float>();
    o.weights.emplace_back(v, v + p->value.numel());
  }
  return o;
}

std::vector<Outcome> train_ranks(int world, TrainConfig c) {
  std::vector<Outcome> out(static_cast<std::size_t>(world));
  distributed::run_ranks(world, [&](distributed::ProcessGroup& g) {
    TrainConfig mine = c;
    mine.device_index = test::device_of_test_rank(g.rank());
    Trainer t(resolve(mine), std::make_unique<NoiseImages>(512), std::make_unique<NoiseImages>(64));
    t.join(g);
    const TrainResult r = t.run();
    out[static_cast<std::size_t>(g.rank())] = outcome_of(t, r);
  }, std::chrono::milliseconds(60000));
  return out;
}

TEST(CudaDataParallel, TwoRanksTrainTheWeightsOfOneProcessWithTheirGlobalBatch) {
  if (const std::string why = test::cannot_run_cuda_ranks(2); !why.empty()) GTEST_SKIP() << why;
  Trainer single(resolve(recipe(64, distributed::GradComm::fp32, "32-true")), std::make_unique<NoiseImages>(512),
                 std::make_unique<NoiseImages>(64));
  const TrainResult r = single.run();
  const Outcome one = outcome_of(single, r);
  const std::vector<Outcome> two = train_ranks(2, recipe(32, distributed::GradComm::fp32, "32-true"));
  EXPECT_EQ(two[0].weights, two[1].weights);  // every rank applies the same averaged gradients
  double diff = 0, norm = 0;  // relative L2 over every weight, as tests/cli/data_parallel.sh measures
  for (std::size_t p = 0; p < one.weights.size(); ++p) {
    for (std::size_t i = 0; i < one.weights[p].size(); ++i) {
      const double d = static_cast<double>(one.weights[p][i]) - two[0].weights[p][i];
      diff += d * d;
      norm += static_cast<double>(one.weights[p][i]) * one.weights[p][i];
    }
  }
  const double relative = std::sqrt(diff / norm);
  RecordProperty("relative_l2_difference", std::to_string(relative));
  EXPECT_LT(relative, 1e-6);
  EXPECT_NEAR(two[0].final_loss, one.final_loss, 1e-5 * std::fabs(one.final_loss));
}

TEST(CudaDataParallel, CompressedGradientsWithErrorFeedbackTrainOnEveryRankAlike) {
  if (const std::string why = test::cannot_run_cuda_ranks(2); !why.empty()) GTEST_SKIP() << why;
  for (distributed::GradComm comm : {distributed::GradComm::bf16_ef, distributed::GradComm::fp16_ef}) {
    const std::vector<Outcome> two = train_ranks(2, recipe(32, comm, "bf16-mixed"));
    EXPECT_EQ(two[0].weights, two[1].weights) << distributed::name(comm);
    EXPECT_TRUE(std::isfinite(two[0].final_loss)) << distributed::name(comm);
  }
}

TEST(CudaDataParallel, ResumingACheckpointContinuesBitForBitWithTheResiduals) {
  if (const std::string why = test::cannot_run_cuda_ranks(2); !why.empty()) GTEST_SKIP() << why;
  // 6 steps straight, against 3 steps, a checkpoint (model, optimizer, scaler, each rank's error-feedback
  // residuals downloaded from the device) and 3 more steps in new trainers that loaded it.
  const TrainConfig c = recipe(32, distributed::GradComm::fp16_ef, "16-mixed");
  const std::vector<Outcome> straight = train_ranks(2, c);
  const std::string dir = ::testing::TempDir() + "mpx-cuda-dp-resume";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string checkpoint = dir + "/checkpoint.safetensors";
  std::vector<Outcome> resumed(2);
  distributed::run_ranks(2, [&](distributed::ProcessGroup& g) {
    TrainConfig first = c;
    first.device_index = test::device_of_test_rank(g.rank());
    first.max_steps = 3;
    first.checkpoint_path = checkpoint;
    {
      Trainer t(resolve(first), std::make_unique<NoiseImages>(512), std::make_unique<NoiseImages>(64));
      t.join(g);
      t.run();
      t.save_checkpoint(checkpoint);
    }
    TrainConfig second = c;
    second.device_index = first.device_index;
    Trainer t(resolve(second), std::make_unique<NoiseImages>(512), std::make_unique<NoiseImages>(64));
    t.join(g);
    t.load_checkpoint(checkpoint);
    EXPECT_EQ(t.resume_notice(), "");  // nothing started from zero
    const TrainResult r = t.run();
    resumed[static_cast<std::size_t>(g.rank())] = outcome_of(t, r);
  }, std::chrono::milliseconds(60000));
  EXPECT_TRUE(std::filesystem::exists(dir + "/checkpoint-ef-rank-1.safetensors"));
  EXPECT_EQ(resumed[0].weights, straight[0].weights);
  EXPECT_EQ(resumed[1].weights, straight[1].weights);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mpx::train
