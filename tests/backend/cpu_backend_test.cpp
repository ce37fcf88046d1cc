// oneDNN-backed products and convolutions against plain double-precision references computed from the
// same (rounded) inputs: FP32 accumulation keeps the relative error near float epsilon.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "mpx/backend/cpu_backend.h"
#include "mpx/core/error.h"
#include "mpx/numeric/bfloat16.h"

namespace mpx::backend {
namespace {

std::vector<float> random_values(std::size_t n, unsigned seed, bool round_to_bf16) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> v(n);
  for (auto& x : v) {
    x = normal(rng);
    if (round_to_bf16) x = static_cast<float>(numeric::BFloat16(x));
  }
  return v;
}

std::vector<numeric::BFloat16> to_bf16(const std::vector<float>& v) {
  std::vector<numeric::BFloat16> out;
  for (float x : v) out.emplace_back(x);
  return out;
}

double relative_error(const std::vector<float>& got, const std::vector<double>& want) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    diff += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  return std::sqrt(diff / norm);
}

TEST(CpuBackend, MatmulWithTransposesMatchesDoubleReference) {
  CpuBackend backend;
  const std::int64_t m = 37, n = 29, k = 53;
  for (DType input : {DType::f32, DType::bf16}) {
    for (int variant = 0; variant < 4; ++variant) {
      const bool ta = variant & 1, tb = variant & 2;
      const auto a = random_values(m * k, 1, input == DType::bf16), b = random_values(k * n, 2, input == DType::bf16);
      const auto bias = random_values(n, 3, false);
      std::vector<double> want(m * n);
      for (std::int64_t i = 0; i < m; ++i) {
        for (std::int64_t j = 0; j < n; ++j) {
          double sum = bias[j];
          for (std::int64_t p = 0; p < k; ++p) {
            const double av = ta ? a[p * m + i] : a[i * k + p];
            const double bv = tb ? b[j * k + p] : b[p * n + j];
            sum += av * bv;
          }
          want[i * n + j] = sum;
        }
      }
      std::vector<float> c(m * n, NAN);
      if (input == DType::f32) {
        backend.matmul(a.data(), ta, b.data(), tb, input, c.data(), m, n, k, bias.data());
      } else {
        const auto a16 = to_bf16(a), b16 = to_bf16(b);
        backend.matmul(a16.data(), ta, b16.data(), tb, input, c.data(), m, n, k, bias.data());
      }
      EXPECT_LT(relative_error(c, want), 1e-5) << name(input) << " ta " << ta << " tb " << tb;
      // Accumulating adds the product to what is there.
      std::vector<float> twice = c;
      if (input == DType::f32) backend.matmul(a.data(), ta, b.data(), tb, input, twice.data(), m, n, k, nullptr, true);
      std::vector<double> want_twice(want);
      for (std::int64_t i = 0; i < m; ++i) {
        for (std::int64_t j = 0; j < n; ++j) want_twice[i * n + j] = 2 * want[i * n + j] - bias[j];
      }
      if (input == DType::f32) {
        EXPECT_LT(relative_error(twice, want_twice), 1e-5);
      }
    }
  }
}

TEST(CpuBackend, ConvolutionForwardAndBackwardMatchDoubleReference) {
  CpuBackend backend;
  ConvShape s{2, 3, 7, 6, 4, 3, 1, 1};
  const std::int64_t p = s.out_height(), q = s.out_width();
  for (DType input : {DType::f32, DType::bf16}) {
    const bool bf = input == DType::bf16;
    const auto x = random_values(s.batch * s.height * s.width * s.in_channels, 4, bf);  // NHWC
    const auto w = random_values(s.out_channels * s.in_channels * 9, 5, bf);            // OIHW
    const auto dy = random_values(s.batch * p * q * s.out_channels, 6, bf);             // NHWC
    const auto bias = random_values(s.out_channels, 7, false);
    auto X = [&](auto n, auto h, auto ww, auto c) { return x[((n * s.height + h) * s.width + ww) * s.in_channels + c]; };
    auto W = [&](auto o, auto c, auto r, auto t) { return w[((o * s.in_channels + c) * 3 + r) * 3 + t]; };
    std::vector<double> y(dy.size()), dx(x.size(), 0.0), dw(w.size(), 0.0), db(s.out_channels, 0.0);
    for (std::int64_t n = 0; n < s.batch; ++n)
      for (std::int64_t i = 0; i < p; ++i)
        for (std::int64_t j = 0; j < q; ++j)
          for (std::int64_t o = 0; o < s.out_channels; ++o) {
            double sum = bias[o];
            const std::size_t out_index = ((n * p + i) * q + j) * s.out_channels + o;
            for (std::int64_t c = 0; c < s.in_channels; ++c)
              for (std::int64_t r = 0; r < 3; ++r)
                for (std::int64_t t = 0; t < 3; ++t) {
                  const std::int64_t h = i + r - 1, ww = j + t - 1;
                  if (h < 0 || h >= s.height || ww < 0 || ww >= s.width) continue;
                  sum += static_cast<double>(X(n, h, ww, c)) * W(o, c, r, t);
                  dx[((n * s.height + h) * s.width + ww) * s.in_channels + c] += static_cast<double>(dy[out_index]) * W(o, c, r, t);
                  dw[((o * s.in_channels + c) * 3 + r) * 3 + t] += static_cast<double>(dy[out_index]) * X(n, h, ww, c);
                }
            y[out_index] = sum;
            db[o] += dy[out_index];
          }
    std::vector<float> got_y(y.size()), got_dx(dx.size()), got_dw(dw.size()), got_db(db.size());
    if (bf) {
      const auto x16 = to_bf16(x), w16 = to_bf16(w), dy16 = to_bf16(dy);
      backend.conv2d_forward(s, x16.data(), w16.data(), input, bias.data(), got_y.data());
      backend.conv2d_backward_data(s, dy16.data(), w16.data(), input, got_dx.data());
      backend.conv2d_backward_weights(s, x16.data(), dy16.data(), input, got_dw.data(), got_db.data());
    } else {
      backend.conv2d_forward(s, x.data(), w.data(), input, bias.data(), got_y.data());
      backend.conv2d_backward_data(s, dy.data(), w.data(), input, got_dx.data());
      backend.conv2d_backward_weights(s, x.data(), dy.data(), input, got_dw.data(), got_db.data());
    }
    EXPECT_LT(relative_error(got_y, y), 1e-5) << name(input);
    EXPECT_LT(relative_error(got_dx, dx), 1e-5) << name(input);
    EXPECT_LT(relative_error(got_dw, dw), 1e-5) << name(input);
    EXPECT_LT(relative_error(got_db, db), 1e-5) << name(input);
  }
}

// The BF16 path of CPUs without oneDNN BF16 kernels (forced here, so AVX-512 machines test it too): the
// FP32 product of the exactly widened operands, rounded once to BF16; where native kernels exist, both paths
// agree to within one BF16 rounding.
TEST(CpuBackend, WidenedBf16IsTheFp32ProductRoundedOnce) {
  CpuBackend widened, fp32;
  widened.force_bf16_widening();
  EXPECT_FALSE(widened.native_bf16());
  const std::int64_t m = 19, n = 23, k = 41;
  const auto a = random_values(m * k, 11, true), b = random_values(k * n, 12, true), bias = random_values(n, 13, false);
  const auto a16 = to_bf16(a), b16 = to_bf16(b);
  std::vector<float> want(m * n);
  fp32.matmul(a.data(), false, b.data(), true, DType::f32, want.data(), m, n, k, bias.data());
  std::vector<numeric::BFloat16> got(m * n);
  widened.matmul(a16.data(), false, b16.data(), true, DType::bf16, got.data(), m, n, k, bias.data(), false, DType::bf16);
  for (std::int64_t i = 0; i < m * n; ++i) ASSERT_EQ(got[i].bits(), numeric::BFloat16(want[i]).bits()) << i;
  // Accumulating into BF16: the BF16 C widened, the product added in FP32, rounded once.
  std::vector<float> sum(want.size());
  for (std::int64_t i = 0; i < m * n; ++i) sum[i] = static_cast<float>(got[i]);
  fp32.matmul(a.data(), false, b.data(), true, DType::f32, sum.data(), m, n, k, nullptr, true);
  widened.matmul(a16.data(), false, b16.data(), true, DType::bf16, got.data(), m, n, k, nullptr, true, DType::bf16);
  for (std::int64_t i = 0; i < m * n; ++i) ASSERT_EQ(got[i].bits(), numeric::BFloat16(sum[i]).bits()) << i;

  const ConvShape s{2, 3, 6, 5, 4, 3, 1, 1};
  const auto x = random_values(s.batch * s.height * s.width * s.in_channels, 14, true);
  const auto w = random_values(s.out_channels * s.in_channels * 9, 15, true);
  const auto x16 = to_bf16(x), w16 = to_bf16(w);
  std::vector<float> y(s.batch * s.out_height() * s.out_width() * s.out_channels);
  fp32.conv2d_forward(s, x.data(), w.data(), DType::f32, bias.data(), y.data());
  std::vector<numeric::BFloat16> y16(y.size());
  widened.conv2d_forward(s, x16.data(), w16.data(), DType::bf16, bias.data(), y16.data(), DType::bf16);
  for (std::size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y16[i].bits(), numeric::BFloat16(y[i]).bits()) << i;

  CpuBackend native;
  if (!native.native_bf16()) return;  // no oneDNN BF16 kernels on this CPU: the widened path is the only one
  std::vector<numeric::BFloat16> native_y(y.size());
  native.conv2d_forward(s, x16.data(), w16.data(), DType::bf16, bias.data(), native_y.data(), DType::bf16);
  for (std::size_t i = 0; i < y.size(); ++i) {
    EXPECT_NEAR(static_cast<float>(native_y[i]), y[i], std::abs(y[i]) / 128 + 1e-6f) << i;
  }
}

TEST(CpuBackend, Fp16InputsAreRejectedWithAHint) {
  CpuBackend backend;
  float c = 0;
  EXPECT_THROW(backend.matmul(&c, false, &c, false, DType::f16, &c, 1, 1, 1), InvalidArgument);
}

}  // namespace
}  // namespace mpx::backend
