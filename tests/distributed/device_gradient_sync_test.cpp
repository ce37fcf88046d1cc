// Data-parallel gradients on a CUDA device (NCCL) against the same steps in host memory (Gloo): every
// mode's averaged gradients, non-finite verdicts, M9 error and error-feedback residuals bit for bit, over
// steps with small gradients, a loss-scale change and an overflow. The ranks are threads. On the GPU
// (label gpu) a world of one GPU per rank; in the emulated engine (label emulated) two ranks on the one
// emulated device with an in-process NCCL stand-in. Without a device it skips and says why.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <mutex>

#include "../support/gpu.h"
#include "distributed_test_support.h"
#include "mpx/backend/cuda.h"
#include "mpx/distributed/gradient_sync.h"
#include "mpx/nn/layers.h"

namespace mpx::distributed {
namespace {

struct Step {
  std::vector<float> grads;  // rank 0's averaged gradients after the step
  bool nonfinite = false;
  CommStats stats;
};
struct SyncRun {
  std::vector<Step> steps;
  std::vector<GradientSync::Residual> residuals;  // rank 0's, at the end
};

// A Linear 3 -> 4 (16 gradients) on `device`; each rank's gradients are its own mix of large values,
// values below FP16's and BF16's resolution next to them, and at step 3 an infinity on rank 1.
SyncRun run_steps(Device device, int world, GradComm mode) {
  constexpr int kSteps = 6;
  SyncRun result;
  std::mutex mutex;
  run_ranks(world, [&](ProcessGroup& g) {
    nn::Context ctx(backend::make_backend(device, device == Device::cuda ? test::device_of_test_rank(g.rank()) : 0));
    nn::Sequential model;
    model.add(std::make_unique<nn::Linear>("fc", 3, 4, 0));
    model.plan({{1, 3}, DType::f32}, ctx);
    GradientSync sync(g, model, ctx.backend(), {mode, 1 << 20});
    std::vector<Step> steps;
    for (int step = 0; step < kSteps; ++step) {
      const float scale = step < 2 ? 1024.0f : 4096.0f;  // a new scale rescales the residuals
      sync.begin_step(1.0 / world, scale, step % 2 == 0);
      for (nn::Parameter* p : model.parameters()) {
        std::vector<float> v(static_cast<std::size_t>(p->grad.numel()));
        for (std::size_t i = 0; i < v.size(); ++i) {
          const float big = static_cast<float>((static_cast<int>(i) * 7 + g.rank() * 3 + step) % 11) - 5.0f;
          v[i] = big + std::ldexp(1.0f, -14 - static_cast<int>(i % 8)) * static_cast<float>(1 + g.rank());
        }
        if (step == 3 && g.rank() == world - 1) v[1] = INFINITY;
        ctx.backend().upload(p->grad, v.data());
      }
      const GradientSync::Reduced r = sync.finish(0.25f * static_cast<float>(g.rank() + 1));
      sync.end_step(!r.nonfinite);
      Step s;
      s.nonfinite = r.nonfinite;
      s.stats = sync.last();
      for (nn::Parameter* p : model.parameters()) {
        std::vector<float> v(static_cast<std::size_t>(p->grad.numel()));
        ctx.backend().download(p->grad, v.data());
        s.grads.insert(s.grads.end(), v.begin(), v.end());
      }
      steps.push_back(std::move(s));
    }
    if (g.rank() == 0) {
      const std::lock_guard lock(mutex);
      result.steps = std::move(steps);
      result.residuals = sync.residuals();
      // The residuals go back as they came (a checkpoint's resume).
      sync.load_residuals(result.residuals);
      const auto again = sync.residuals();
      for (std::size_t i = 0; i < again.size(); ++i) EXPECT_EQ(again[i].values, result.residuals[i].values);
    }
  });
  return result;
}

class DeviceGradientSync : public ::testing::TestWithParam<GradComm> {};

TEST_P(DeviceGradientSync, GivesTheHostMemoryPathsBitsOnEveryStep) {
  // Two ranks where there are two GPUs (or the emulated one), else one: its own kernels still run.
  const int world = test::emulated_cuda() ? 2 : std::max<int>(1, std::min<int>(2, static_cast<int>(cuda::devices().size())));
  if (const std::string why = test::cannot_run_cuda_ranks(world); !why.empty()) GTEST_SKIP() << why;
  const GradComm mode = GetParam();
  const SyncRun host = run_steps(Device::cpu, world, mode), device = run_steps(Device::cuda, world, mode);
  ASSERT_EQ(host.steps.size(), device.steps.size());
  for (std::size_t s = 0; s < host.steps.size(); ++s) {
    const Step &h = host.steps[s], &d = device.steps[s];
    SCOPED_TRACE("step " + std::to_string(s) + ", " + name(mode) + ", " + std::to_string(world) + " ranks");
    EXPECT_EQ(h.nonfinite, d.nonfinite);
    EXPECT_EQ(h.nonfinite, s == 3);
    ASSERT_EQ(h.grads.size(), d.grads.size());
    EXPECT_EQ(0, std::memcmp(h.grads.data(), d.grads.data(), h.grads.size() * sizeof(float)));
    EXPECT_EQ(h.stats.payload_bytes, d.stats.payload_bytes);
    EXPECT_EQ(h.stats.relative_error, d.stats.relative_error);
    EXPECT_EQ(h.stats.residual_norm, d.stats.residual_norm);
  }
  ASSERT_EQ(host.residuals.size(), device.residuals.size());
  for (std::size_t i = 0; i < host.residuals.size(); ++i) {
    EXPECT_EQ(host.residuals[i].name, device.residuals[i].name);
    EXPECT_EQ(host.residuals[i].values, device.residuals[i].values) << host.residuals[i].name;
  }
  if (error_feedback(mode)) {  // the small parts were kept somewhere
    double held = 0;
    for (const auto& r : device.residuals) {
      for (float v : r.values) held += std::fabs(v);
    }
    EXPECT_GT(held, 0.0);
  }
}

TEST(DeviceGradientSyncFaults, ARankThatLeavesIsNamedWithinTheTimeout) {
  if (const std::string why = test::cannot_run_cuda_ranks(2); !why.empty()) GTEST_SKIP() << why;
  // Rank 1 leaves after the first step; rank 0's device all-reduce of the second times out and names it.
  std::vector<int> named(2, -2);
  std::vector<double> seconds(2, 0.0);
  run_ranks(2, [&](ProcessGroup& g) {
    nn::Context ctx(backend::make_backend(Device::cuda, test::device_of_test_rank(g.rank())));
    nn::Sequential model;
    model.add(std::make_unique<nn::Linear>("fc", 3, 4, 0));
    model.plan({{1, 3}, DType::f32}, ctx);
    GradientSync sync(g, model, ctx.backend(), {GradComm::fp16_ef, 1 << 20});
    sync.begin_step(0.5, 1.0f, false);
    sync.finish(0.0f);
    sync.end_step(true);
    if (g.rank() == 1) return;  // gone: its heartbeat stops
    const auto start = std::chrono::steady_clock::now();
    try {
      sync.begin_step(0.5, 1.0f, false);
      sync.finish(0.0f);
    } catch (const CommunicationError& e) {
      named[0] = e.missing_rank();
      EXPECT_NE(std::string(e.what()).find("rank 1 stopped responding"), std::string::npos) << e.what();
    }
    seconds[0] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }, std::chrono::milliseconds(1500));
  EXPECT_EQ(named[0], 1);
  EXPECT_LT(seconds[0], 10.0);  // the timeout (1.5 s) and the heartbeat check, not forever
}

INSTANTIATE_TEST_SUITE_P(Modes, DeviceGradientSync,
                         ::testing::Values(GradComm::fp32, GradComm::bf16, GradComm::fp16, GradComm::bf16_ef,
                                           GradComm::fp16_ef),
                         [](const auto& info) {
                           std::string n = name(info.param);
                           for (char& c : n) c = c == '+' ? '_' : c;
                           return n;
                         });

}  // namespace
}  // namespace mpx::distributed
