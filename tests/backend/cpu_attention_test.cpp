// The CPU attention op against a plain double-precision causal attention, at shapes that exercise every
// path of its tiles: whole 8-row and 32-column tiles (T = 64, head_dim 32), and leftovers of both with more
// than one 64-row backward chunk (T = 100, head_dim 40). Forward output, the rows' log-sum-exp and the
// gradients of q, k and v.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "mpx/backend/cpu_backend.h"

namespace mpx::backend {
namespace {

struct Reference {
  std::vector<double> y, lse, dqkv;
};

// qkv [N, T, 3C], dy [N, T, C]; C = heads * d.
Reference reference_attention(const std::vector<float>& qkv, const std::vector<float>& dy, std::int64_t n_seq,
                              std::int64_t tokens, std::int64_t heads, std::int64_t d) {
  const std::int64_t c = heads * d;
  Reference r{std::vector<double>(static_cast<std::size_t>(n_seq * tokens * c)),
              std::vector<double>(static_cast<std::size_t>(n_seq * heads * tokens)),
              std::vector<double>(qkv.size(), 0.0)};
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  auto at = [&](std::int64_t n, std::int64_t t, std::int64_t part, std::int64_t h, std::int64_t e) {
    return static_cast<std::size_t>((n * tokens + t) * 3 * c + part * c + h * d + e);
  };
  for (std::int64_t n = 0; n < n_seq; ++n) {
    for (std::int64_t h = 0; h < heads; ++h) {
      std::vector<double> p(static_cast<std::size_t>(tokens * tokens), 0.0);
      for (std::int64_t i = 0; i < tokens; ++i) {
        double max = -INFINITY;
        for (std::int64_t j = 0; j <= i; ++j) {
          double s = 0;
          for (std::int64_t e = 0; e < d; ++e) s += static_cast<double>(qkv[at(n, i, 0, h, e)]) * qkv[at(n, j, 1, h, e)];
          p[static_cast<std::size_t>(i * tokens + j)] = s * scale;
          max = std::max(max, s * scale);
        }
        double sum = 0;
        for (std::int64_t j = 0; j <= i; ++j) sum += std::exp(p[static_cast<std::size_t>(i * tokens + j)] - max);
        r.lse[static_cast<std::size_t>((n * heads + h) * tokens + i)] = max + std::log(sum);
        for (std::int64_t j = 0; j <= i; ++j) {
          double& pij = p[static_cast<std::size_t>(i * tokens + j)];
          pij = std::exp(pij - max) / sum;
        }
        for (std::int64_t e = 0; e < d; ++e) {
          double y = 0;
          for (std::int64_t j = 0; j <= i; ++j) y += p[static_cast<std::size_t>(i * tokens + j)] * qkv[at(n, j, 2, h, e)];
          r.y[static_cast<std::size_t>((n * tokens + i) * c + h * d + e)] = y;
        }
      }
      for (std::int64_t i = 0; i < tokens; ++i) {
        const auto g = [&](std::int64_t e) { return static_cast<double>(dy[static_cast<std::size_t>((n * tokens + i) * c + h * d + e)]); };
        std::vector<double> dp(static_cast<std::size_t>(i + 1));
        double weighted = 0;
        for (std::int64_t j = 0; j <= i; ++j) {
          for (std::int64_t e = 0; e < d; ++e) dp[static_cast<std::size_t>(j)] += g(e) * qkv[at(n, j, 2, h, e)];
          weighted += p[static_cast<std::size_t>(i * tokens + j)] * dp[static_cast<std::size_t>(j)];
        }
        for (std::int64_t j = 0; j <= i; ++j) {
          const double pij = p[static_cast<std::size_t>(i * tokens + j)];
          const double ds = pij * (dp[static_cast<std::size_t>(j)] - weighted) * scale;
          for (std::int64_t e = 0; e < d; ++e) {
            r.dqkv[at(n, i, 0, h, e)] += ds * qkv[at(n, j, 1, h, e)];
            r.dqkv[at(n, j, 1, h, e)] += ds * qkv[at(n, i, 0, h, e)];
            r.dqkv[at(n, j, 2, h, e)] += pij * g(e);
          }
        }
      }
    }
  }
  return r;
}

// The largest |got - want| over the largest |want|.
double relative_max_error(const float* got, const std::vector<double>& want) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(want[i]));
  }
  return diff / scale;
}

std::string scientific(double x) {
  std::ostringstream out;
  out << std::scientific << x;
  return out.str();
}

void check_attention(std::int64_t n_seq, std::int64_t tokens, std::int64_t heads, std::int64_t d) {
  CpuBackend backend;
  const std::int64_t c = heads * d;
  std::mt19937 rng(static_cast<unsigned>(tokens * 31 + d));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> qkv(static_cast<std::size_t>(n_seq * tokens * 3 * c)), dy(static_cast<std::size_t>(n_seq * tokens * c));
  for (float& x : qkv) x = normal(rng);
  for (float& x : dy) x = normal(rng);
  const Tensor qkv_t = backend.allocate({n_seq, tokens, 3 * c}, DType::f32, MemoryCategory::activations);
  const Tensor dy_t = backend.allocate({n_seq, tokens, c}, DType::f32, MemoryCategory::activations);
  const Tensor y = backend.allocate({n_seq, tokens, c}, DType::f32, MemoryCategory::activations);
  const Tensor lse = backend.allocate({n_seq, heads, tokens}, DType::f32, MemoryCategory::activations);
  const Tensor dqkv = backend.allocate({n_seq, tokens, 3 * c}, DType::f32, MemoryCategory::activations);
  backend.upload(qkv_t, qkv.data());
  backend.upload(dy_t, dy.data());
  backend.attention_forward(qkv_t, heads, lse, y);
  backend.attention_backward(qkv_t, lse, dy_t, heads, dqkv);
  const Reference want = reference_attention(qkv, dy, n_seq, tokens, heads, d);
  const double y_error = relative_max_error(y.data_as<float>(), want.y);
  const double lse_error = relative_max_error(lse.data_as<float>(), want.lse);
  const double grad_error = relative_max_error(dqkv.data_as<float>(), want.dqkv);
  ::testing::Test::RecordProperty("y_error", scientific(y_error));
  ::testing::Test::RecordProperty("gradient_error", scientific(grad_error));
  EXPECT_LT(y_error, 1e-5) << "y";
  EXPECT_LT(lse_error, 1e-6) << "log-sum-exp";
  EXPECT_LT(grad_error, 1e-5) << "dq, dk, dv";
  EXPECT_GT(grad_error, 0.0) << "the reference and mpx are two computations";
}

TEST(CpuAttention, WholeTilesMatchADoubleReference) { check_attention(2, 64, 2, 32); }

TEST(CpuAttention, LeftoverRowsColumnsAndTwoBackwardChunksMatchADoubleReference) { check_attention(2, 100, 2, 40); }

}  // namespace
}  // namespace mpx::backend
