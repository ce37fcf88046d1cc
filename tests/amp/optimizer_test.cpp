// Optimizers against hand-computed references (PyTorch's update rules written out in double), master
// weights keeping updates BF16 would lose, clipping and unscaling.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "mpx/amp/optimizer.h"
#include "mpx/core/error.h"
#include "mpx/numeric/bfloat16.h"

namespace mpx::amp {
namespace {

// The BF16 working copy written in the optimizer's pass is the updated master rounded to nearest-even,
// bit for bit, for both optimizers; the masters themselves are what they are without a copy.
TEST(Optimizers, WriteTheBf16WorkingCopyInTheSamePass) {
  const std::size_t n = 100003;  // large enough for the threaded path, odd to leave a tail
  std::vector<float> g(n);
  for (std::size_t i = 0; i < n; ++i) g[i] = std::sin(static_cast<float>(i)) * 1e-2f;
  for (const bool adamw : {true, false}) {
    std::vector<float> w1(n), w2(n), m1(n, 0.0f), v1(n, 0.0f), m2(n, 0.0f), v2(n, 0.0f);
    for (std::size_t i = 0; i < n; ++i) w1[i] = w2[i] = 1.0f + std::cos(static_cast<float>(i));
    std::vector<std::uint16_t> working(n, 0);
    ParameterSlot plain{w1, g, m1, v1, true};
    ParameterSlot fused{w2, g, m2, v2, true, working};
    for (int step = 1; step <= 3; ++step) {
      if (adamw) {
        adamw_step(AdamWConfig{}, 1e-3f, step, std::span(&plain, 1));
        adamw_step(AdamWConfig{}, 1e-3f, step, std::span(&fused, 1));
      } else {
        sgd_step({0.9f, 1e-4f, true}, 1e-2f, std::span(&plain, 1));
        sgd_step({0.9f, 1e-4f, true}, 1e-2f, std::span(&fused, 1));
      }
    }
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_EQ(w1[i], w2[i]) << (adamw ? "adamw " : "sgd ") << i;
      ASSERT_EQ(working[i], numeric::BFloat16(w1[i]).bits()) << (adamw ? "adamw " : "sgd ") << i;
    }
  }
}

TEST(AdamW, MatchesTheUpdateRuleInDouble) {
  std::vector<float> w = {0.5f, -1.0f, 2.0f}, g(3), m(3, 0.0f), v(3, 0.0f);
  std::vector<double> rw = {0.5, -1.0, 2.0}, rm(3, 0.0), rv(3, 0.0);
  const AdamWConfig c;
  const double lr = 1e-2;
  for (int step = 1; step <= 20; ++step) {
    for (int i = 0; i < 3; ++i) g[i] = std::sin(static_cast<float>(step * 3 + i));
    ParameterSlot slot{w, g, m, v, true};
    adamw_step(c, static_cast<float>(lr), step, std::span(&slot, 1));
    for (int i = 0; i < 3; ++i) {
      const double gi = g[i];
      rw[i] *= 1.0 - lr * c.weight_decay;
      rm[i] = c.beta1 * rm[i] + (1 - c.beta1) * gi;
      rv[i] = c.beta2 * rv[i] + (1 - c.beta2) * gi * gi;
      const double mhat = rm[i] / (1 - std::pow(c.beta1, step));
      const double vhat = rv[i] / (1 - std::pow(c.beta2, step));
      rw[i] -= lr * mhat / (std::sqrt(vhat) + c.eps);
    }
  }
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(w[i], rw[i], 1e-5) << i;
}

TEST(Sgd, MomentumAndNesterovFollowTorchRules) {
  for (bool nesterov : {false, true}) {
    std::vector<float> w = {1.0f}, g = {0.5f}, buf = {0.0f};
    double rw = 1.0, rbuf = 0.0;
    SgdConfig c{0.9f, 0.1f, nesterov};
    for (int step = 0; step < 10; ++step) {
      ParameterSlot slot{w, g, buf, {}, true};
      sgd_step(c, 0.1f, std::span(&slot, 1));
      double grad = 0.5 + 0.1 * rw;
      rbuf = 0.9 * rbuf + grad;
      grad = nesterov ? grad + 0.9 * rbuf : rbuf;
      rw -= 0.1 * grad;
    }
    EXPECT_NEAR(w[0], rw, 1e-5) << "nesterov " << nesterov;
  }
}

TEST(MasterWeights, KeepUpdatesThatVanishInBFloat16) {
  // 1e-4 added to 1.0 a thousand times: below half a BF16 ulp of 1.0 (2^-8), so a BF16 weight never moves.
  std::vector<float> master = {1.0f}, grad = {-1e-4f}, unused = {0.0f};
  numeric::BFloat16 working(1.0f), bf16_only(1.0f);
  for (int i = 0; i < 1000; ++i) {
    ParameterSlot slot{master, grad, unused, {}, false};
    sgd_step({}, 1.0f, std::span(&slot, 1));
    refresh_working_copy(master, &working, DType::bf16);
    bf16_only = numeric::BFloat16(static_cast<float>(bf16_only) + 1e-4f);  // a *-true run: no master copy
  }
  EXPECT_NEAR(master[0], 1.1f, 1e-4f);
  EXPECT_EQ(static_cast<float>(working), static_cast<float>(numeric::BFloat16(master[0])));
  EXPECT_NEAR(static_cast<float>(working), 1.1f, 0.005f);
  EXPECT_EQ(static_cast<float>(bf16_only), 1.0f);
}

TEST(Gradients, UnscaleFindsNonFiniteAndClipBoundsTheNorm) {
  std::vector<float> a = {65536.0f, -131072.0f}, b = {0.0f, 196608.0f};
  std::vector<std::span<float>> grads = {a, b};
  EXPECT_FALSE(unscale_and_check(grads, 1.0f / 65536.0f));
  EXPECT_EQ(a[0], 1.0f);
  EXPECT_EQ(b[1], 3.0f);
  const double norm = clip_grad_norm(grads, 1.0);
  EXPECT_NEAR(norm, std::sqrt(1.0 + 4.0 + 9.0), 1e-9);
  std::vector<std::span<const float>> views(grads.begin(), grads.end());
  EXPECT_NEAR(global_grad_norm(views), 1.0, 1e-5);
  b[0] = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(unscale_and_check(grads, 0.5f));
  a[0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(global_grad_norm(views)));
}

TEST(Optimizer, MismatchedSizesAreAnError) {
  std::vector<float> w(3), g(2), m(3), v(3);
  ParameterSlot slot{w, g, m, v, true};
  EXPECT_THROW(adamw_step({}, 0.1f, 1, std::span(&slot, 1)), InvalidArgument);
  EXPECT_THROW(adamw_step({}, 0.1f, 0, {}), InvalidArgument);
}

}  // namespace
}  // namespace mpx::amp
