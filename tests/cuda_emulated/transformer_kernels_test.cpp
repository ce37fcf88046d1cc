// The CUDA engine's language-model kernels (attention.cu, token_kernels.cu), their own source run on host
// threads (the emulated engine: include/cuda_runtime.h here), against references computed in double: streaming attention forward and
// backward at whole-tile, leftover, 8- and 128-wide-head shapes and the KV-cache step; embedding gather,
// the bad-id report and the position-ordered scatter-add (bit for bit); cross-entropy over a GPT-2
// vocabulary with token ids and with u8 class labels. The GPU itself runs these in the `gpu`-labelled tests
// (tests/backend/cuda_transformer_kernels_test.cpp); this is what a machine without one can check.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "mpx/backend/cuda_context.h"
#include "mpx/core/error.h"
#include "mpx/backend/cuda_kernels.h"
#include "mpx/backend/cuda_transformer_kernels.h"

namespace mpx::cuda::kernels {
namespace {

std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// Largest difference relative to the reference's largest magnitude.
double relative_difference(const std::vector<double>& reference, const std::vector<float>& got) {
  double scale = 1e-30, worst = 0;
  for (double v : reference) scale = std::max(scale, std::fabs(v));
  for (std::size_t i = 0; i < reference.size(); ++i) {
    const double d = std::fabs(reference[i] - got[i]);
    if (!(d <= worst)) worst = d;
  }
  return worst / scale;
}

// softmax(q k^T / sqrt(d), causal) v per head, its log-sum-exp, and the gradients of q, k, v for dy.
struct AttentionReference {
  std::vector<double> y, lse, dqkv;
};
AttentionReference attention_reference(const AttentionShape& s, const std::vector<float>& qkv, const std::vector<float>& dy) {
  const std::int64_t T = s.tokens, D = s.head_dim, C = s.width();
  AttentionReference r{std::vector<double>(dy.size()), std::vector<double>(static_cast<std::size_t>(s.batch * s.heads * T)),
                       std::vector<double>(qkv.size(), 0.0)};
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (std::int64_t n = 0; n < s.batch; ++n) {
    for (std::int64_t h = 0; h < s.heads; ++h) {
      const auto at = [&](std::int64_t t, std::int64_t part, std::int64_t d) {
        return static_cast<std::size_t>((n * T + t) * 3 * C + part * C + h * D + d);
      };
      const auto out = [&](std::int64_t t, std::int64_t d) { return static_cast<std::size_t>((n * T + t) * C + h * D + d); };
      std::vector<double> p(static_cast<std::size_t>(T * T), 0.0);
      for (std::int64_t i = 0; i < T; ++i) {
        double max = -INFINITY, sum = 0;
        std::vector<double> score(static_cast<std::size_t>(i + 1));
        for (std::int64_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (std::int64_t d = 0; d < D; ++d) dot += static_cast<double>(qkv[at(i, 0, d)]) * qkv[at(j, 1, d)];
          score[j] = dot * scale;
          max = std::max(max, score[j]);
        }
        for (std::int64_t j = 0; j <= i; ++j) sum += std::exp(score[j] - max);
        r.lse[static_cast<std::size_t>((n * s.heads + h) * T + i)] = max + std::log(sum);
        for (std::int64_t j = 0; j <= i; ++j) p[i * T + j] = std::exp(score[j] - max) / sum;
        for (std::int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (std::int64_t j = 0; j <= i; ++j) acc += p[i * T + j] * qkv[at(j, 2, d)];
          r.y[out(i, d)] = acc;
        }
      }
      for (std::int64_t i = 0; i < T; ++i) {
        std::vector<double> dp(static_cast<std::size_t>(i + 1));
        double weighted = 0;
        for (std::int64_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (std::int64_t d = 0; d < D; ++d) dot += static_cast<double>(dy[out(i, d)]) * qkv[at(j, 2, d)];
          dp[j] = dot;
          weighted += p[i * T + j] * dot;
        }
        for (std::int64_t j = 0; j <= i; ++j) {
          const double ds = p[i * T + j] * (dp[j] - weighted) * scale;
          for (std::int64_t d = 0; d < D; ++d) {
            r.dqkv[at(i, 0, d)] += ds * qkv[at(j, 1, d)];
            r.dqkv[at(j, 1, d)] += ds * qkv[at(i, 0, d)];
            r.dqkv[at(j, 2, d)] += p[i * T + j] * dy[out(i, d)];
          }
        }
      }
    }
  }
  return r;
}

TEST(EmulatedCudaKernels, AttentionForwardBackwardAndTheCacheStepMatchADoubleReference) {
  const AttentionShape cases[] = {{2, 64, 2, 32}, {1, 70, 3, 64}, {1, 33, 1, 128}, {2, 40, 2, 8}, {1, 1, 2, 16}};
  DeviceContext ctx;
  for (const AttentionShape& s : cases) {
    const std::int64_t C = s.width();
    const auto qkv = random_floats(static_cast<std::size_t>(s.batch * s.tokens * 3 * C), 5, 0.7f);
    const auto dy = random_floats(static_cast<std::size_t>(s.batch * s.tokens * C), 6);
    std::vector<float> y(dy.size(), 777.0f), lse(static_cast<std::size_t>(s.batch * s.heads * s.tokens), 777.0f),
        dqkv(qkv.size(), 777.0f), workspace(attention_backward_workspace_floats(s));
    attention_forward(ctx, s, qkv.data(), DType::f32, lse.data(), y.data());
    attention_backward(ctx, s, qkv.data(), lse.data(), dy.data(), DType::f32, workspace.data(), dqkv.data());
    const AttentionReference ref = attention_reference(s, qkv, dy);
    const std::string what = std::to_string(s.batch) + "x" + std::to_string(s.tokens) + ", " + std::to_string(s.heads) +
                             " heads of " + std::to_string(s.head_dim);
    EXPECT_LE(relative_difference(ref.y, y), 1e-5) << what << ": output";
    EXPECT_LE(relative_difference(ref.lse, lse), 1e-5) << what << ": log-sum-exp";
    EXPECT_LE(relative_difference(ref.dqkv, dqkv), 1e-5) << what << ": dqkv";

    // Generation: sequence 0's positions one at a time through the cache give the full pass's outputs.
    std::vector<float> k_cache(static_cast<std::size_t>(s.tokens * C)), v_cache(k_cache.size()), step(static_cast<std::size_t>(C)),
        stepped(k_cache.size());
    const AttentionShape one{1, 1, s.heads, s.head_dim};
    for (std::int64_t p = 0; p < s.tokens; ++p) {
      attention_step(ctx, one, qkv.data() + p * 3 * C, DType::f32, p, k_cache.data(), v_cache.data(), step.data());
      std::copy(step.begin(), step.end(), stepped.begin() + p * C);
    }
    const std::vector<double> first(ref.y.begin(), ref.y.begin() + s.tokens * C);
    EXPECT_LE(relative_difference(first, stepped), 1e-5) << what << ": cached steps";
  }
}

TEST(EmulatedCudaKernels, AttentionRefusesHeadsWiderThanItsTiles) {
  DeviceContext ctx;
  const AttentionShape s{1, 4, 1, kMaxAttentionHeadDim + 1};
  std::vector<float> qkv(static_cast<std::size_t>(4 * 3 * s.head_dim)), y(static_cast<std::size_t>(4 * s.head_dim)), lse(4);
  EXPECT_THROW(attention_forward(ctx, s, qkv.data(), DType::f32, lse.data(), y.data()), InvalidArgument);
}

TEST(EmulatedCudaKernels, EmbeddingGathersReportsTheFirstBadIdAndAddsRowsInPositionOrder) {
  DeviceContext ctx;
  const std::int64_t count = 700, vocabulary = 50, dim = 40;
  std::vector<std::int32_t> ids(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) ids[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * i + 7) % 37);
  const auto table = random_floats(static_cast<std::size_t>(vocabulary * dim), 1), dy = random_floats(static_cast<std::size_t>(count * dim), 2);
  std::vector<float> y(static_cast<std::size_t>(count * dim)), dtable = random_floats(table.size(), 3);
  std::int32_t bad = kNoBadPosition;
  embedding_forward(ctx, ids.data(), count, table.data(), vocabulary, dim, y.data(), DType::f32, &bad);
  EXPECT_EQ(bad, kNoBadPosition);
  for (std::int64_t t = 0; t < count; ++t) {
    for (std::int64_t c = 0; c < dim; ++c) ASSERT_EQ(y[t * dim + c], table[ids[t] * dim + c]) << t << ", " << c;
  }
  std::vector<float> expected = dtable;  // the CPU backend's loop: positions in order
  for (std::int64_t t = 0; t < count; ++t) {
    for (std::int64_t c = 0; c < dim; ++c) expected[ids[t] * dim + c] += dy[t * dim + c];
  }
  std::vector<std::uint8_t> workspace(embedding_backward_workspace_bytes(count, vocabulary));
  embedding_backward(ctx, ids.data(), count, dy.data(), DType::f32, vocabulary, dim, dtable.data(), workspace.data(),
                     workspace.size());
  EXPECT_EQ(dtable, expected);
  ids[9] = -2;
  ids[5] = 60;
  embedding_forward(ctx, ids.data(), count, table.data(), vocabulary, dim, y.data(), DType::f32, &bad);
  EXPECT_EQ(bad, 5);
}

TEST(EmulatedCudaKernels, CrossEntropyOverAGpt2VocabularyAndOverClassLabelsMatchesADoubleReference) {
  DeviceContext ctx;
  const std::int64_t rows = 5, classes = 50304;
  const auto z = random_floats(static_cast<std::size_t>(rows * classes), 7, 3.0f);
  const std::vector<std::int32_t> labels = {0, 50303, 17, 50256, 220};
  std::vector<float> p(z.size()), grad(z.size());
  std::vector<double> loss(static_cast<std::size_t>(rows));
  cross_entropy_forward(ctx, z.data(), DType::f32, labels.data(), DType::i32, rows, classes, p.data(), loss.data());
  cross_entropy_backward(ctx, p.data(), labels.data(), DType::i32, rows, classes, 0.5f, grad.data(), DType::f32);
  std::vector<double> ref_loss(loss.size()), ref_p(z.size()), ref_grad(z.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* row = z.data() + r * classes;
    double max = -INFINITY, sum = 0;
    for (std::int64_t c = 0; c < classes; ++c) max = std::max(max, static_cast<double>(row[c]));
    for (std::int64_t c = 0; c < classes; ++c) sum += std::exp(row[c] - max);
    const double log_sum = std::log(sum) + max;
    ref_loss[r] = log_sum - row[labels[r]];
    for (std::int64_t c = 0; c < classes; ++c) {
      ref_p[r * classes + c] = std::exp(row[c] - log_sum);
      ref_grad[r * classes + c] = (ref_p[r * classes + c] - (c == labels[r] ? 1.0 : 0.0)) * 0.5;
    }
  }
  EXPECT_LE(relative_difference(ref_loss, std::vector<float>(loss.begin(), loss.end())), 1e-6);
  EXPECT_LE(relative_difference(ref_p, p), 1e-6);
  EXPECT_LE(relative_difference(ref_grad, grad), 1e-6);

  const std::vector<std::uint8_t> classes_of = {1, 2, 9, 10, 3};  // 10 is outside ten classes
  const auto z10 = random_floats(50, 9);
  std::vector<float> p10(50);
  cross_entropy_forward(ctx, z10.data(), DType::f32, classes_of.data(), DType::u8, rows, 10, p10.data(), loss.data());
  EXPECT_TRUE(std::isnan(loss[3]));
  EXPECT_FALSE(std::isnan(loss[2]));
}

}  // namespace
}  // namespace mpx::cuda::kernels
