// The CUDA backend's language-model ops against the CPU backend's on the same inputs: embedding gather and
// the deterministic scatter-add (bit for bit: both add in position order), streaming attention forward and
// backward at whole-tile, leftover and 128-wide-head shapes, the KV-cache step, and cross-entropy over a
// GPT-2 vocabulary with token ids. Label `gpu`: skips without a device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../support/gpu.h"
#include "mpx/backend/backend.h"
#include "mpx/backend/cpu_backend.h"
#include "mpx/core/error.h"
#include "mpx/numeric/convert.h"

namespace mpx::backend {
namespace {

std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// A tensor of `dtype` on `b` holding `values` (rounded to dtype).
Tensor put(Backend& b, const Shape& shape, DType dtype, const std::vector<float>& values) {
  Tensor t = b.allocate(shape, dtype, MemoryCategory::activations);
  std::vector<std::uint8_t> bytes(t.bytes());
  if (dtype == DType::f32) {
    std::memcpy(bytes.data(), values.data(), bytes.size());
  } else {
    numeric::convert(values.data(), DType::f32, bytes.data(), dtype, values.size());
  }
  b.upload(t, bytes.data());
  return t;
}
Tensor put_ids(Backend& b, const Shape& shape, const std::vector<std::int32_t>& ids) {
  Tensor t = b.allocate(shape, DType::i32, MemoryCategory::activations);
  b.upload(t, ids.data());
  return t;
}
std::vector<float> get(Backend& b, const Tensor& t) {
  std::vector<std::uint8_t> bytes(t.bytes());
  b.download(t, bytes.data());
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  if (t.dtype() == DType::f32) {
    std::memcpy(out.data(), bytes.data(), bytes.size());
  } else {
    numeric::convert(bytes.data(), t.dtype(), out.data(), DType::f32, out.size());
  }
  return out;
}

// Largest difference relative to the reference's largest magnitude.
void expect_close(const std::vector<float>& cpu, const std::vector<float>& gpu, double tol, const std::string& what) {
  ASSERT_EQ(cpu.size(), gpu.size()) << what;
  double scale = 1e-12, worst = 0;
  std::size_t at = 0;
  for (float v : cpu) scale = std::max(scale, static_cast<double>(std::fabs(v)));
  for (std::size_t i = 0; i < cpu.size(); ++i) {
    const double d = std::fabs(static_cast<double>(cpu[i]) - gpu[i]);
    if (!(d <= worst)) worst = d, at = i;
  }
  EXPECT_LE(worst, tol * scale) << what << " element " << at << ": cpu " << cpu[at] << ", gpu " << gpu[at];
}

struct Backends {
  CpuBackend cpu;
  std::unique_ptr<Backend> gpu = make_backend(Device::cuda);
};

TEST(CudaTransformerKernels, EmbeddingGathersRowsAndAddsRepeatedIdsBitForBitAsTheCpu) {
  MPX_SKIP_WITHOUT_GPU();
  Backends b;
  const std::int64_t count = 3000, vocabulary = 50, dim = 96;
  std::vector<std::int32_t> ids(count);
  for (std::int64_t i = 0; i < count; ++i) ids[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * i + 7) % 37);
  const auto table = random_floats(static_cast<std::size_t>(vocabulary * dim), 1);
  const auto dy = random_floats(static_cast<std::size_t>(count * dim), 2);
  const auto earlier = random_floats(table.size(), 3);  // a tied head's gradient already in the table
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (bool accumulate : {false, true}) {
      std::vector<float> out[2], grad[2];
      int k = 0;
      for (Backend* backend : {static_cast<Backend*>(&b.cpu), b.gpu.get()}) {
        const Tensor t = put(*backend, {vocabulary, dim}, DType::f32, table);
        const Tensor x = put_ids(*backend, {count}, ids);
        const Tensor y = backend->allocate({count, dim}, dtype, MemoryCategory::activations);
        backend->embedding_forward(x, t, y);
        const Tensor g = put(*backend, {count, dim}, dtype, dy);
        const Tensor dt = put(*backend, {vocabulary, dim}, DType::f32, earlier);
        backend->embedding_backward(x, g, dt, accumulate);
        out[k] = get(*backend, y);
        grad[k++] = get(*backend, dt);
      }
      const std::string what = std::string(name(dtype)) + (accumulate ? " accumulating" : " overwriting");
      EXPECT_EQ(out[0], out[1]) << what << ": the gathered rows";
      EXPECT_EQ(grad[0], grad[1]) << what << ": the table gradient";
    }
  }
}

TEST(CudaTransformerKernels, EmbeddingNamesAnIdOutsideTheVocabularyAndItsPosition) {
  MPX_SKIP_WITHOUT_GPU();
  Backends b;
  const Tensor t = put(*b.gpu, {10, 4}, DType::f32, random_floats(40, 4));
  const Tensor x = put_ids(*b.gpu, {6}, {1, 2, 3, 12, 4, -1});
  const Tensor y = b.gpu->allocate({6, 4}, DType::bf16, MemoryCategory::activations);
  try {
    b.gpu->embedding_forward(x, t, y);
    FAIL() << "an id outside the vocabulary was gathered";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("token id 12 at position 3 is outside the vocabulary of 10"), std::string::npos)
        << e.what();
  }
}

struct AttentionCase {
  std::int64_t batch, tokens, heads, head_dim;
};

TEST(CudaTransformerKernels, AttentionForwardAndBackwardMatchTheCpuAtTileAndLeftoverShapes) {
  MPX_SKIP_WITHOUT_GPU();
  Backends b;
  // 64 = two whole tiles; 70 and 33 leave rows over; head widths of gpt-tiny (32), GPT-2 (64), the largest
  // (128) and one below a warp (8); a single position.
  const AttentionCase cases[] = {{2, 64, 4, 32}, {2, 70, 3, 64}, {1, 33, 2, 128}, {3, 40, 2, 8}, {2, 1, 2, 16}};
  for (const AttentionCase& c : cases) {
    const std::int64_t width = c.heads * c.head_dim;
    const auto qkv = random_floats(static_cast<std::size_t>(c.batch * c.tokens * 3 * width), 5, 0.7f);
    const auto dy = random_floats(static_cast<std::size_t>(c.batch * c.tokens * width), 6);
    for (DType dtype : {DType::f32, DType::bf16}) {
      std::vector<float> y[2], lse[2], dqkv[2];
      int k = 0;
      for (Backend* backend : {static_cast<Backend*>(&b.cpu), b.gpu.get()}) {
        const Tensor x = put(*backend, {c.batch, c.tokens, 3 * width}, dtype, qkv);
        const Tensor l = backend->allocate({c.batch, c.heads, c.tokens}, DType::f32, MemoryCategory::activations);
        const Tensor out = backend->allocate({c.batch, c.tokens, width}, dtype, MemoryCategory::activations);
        backend->attention_forward(x, c.heads, l, out);
        const Tensor g = put(*backend, {c.batch, c.tokens, width}, dtype, dy);
        const Tensor dx = backend->allocate(x.shape(), dtype, MemoryCategory::activations);
        backend->attention_backward(x, l, g, c.heads, dx);
        y[k] = get(*backend, out);
        lse[k] = get(*backend, l);
        dqkv[k++] = get(*backend, dx);
      }
      // FP32 sums in another order; BF16 outputs may round the other way at a tie of the FP32 results.
      const double tol = dtype == DType::f32 ? 2e-5 : 1e-2;
      const std::string what = std::to_string(c.batch) + "x" + std::to_string(c.tokens) + ", " +
                               std::to_string(c.heads) + " heads of " + std::to_string(c.head_dim) + ", " + std::string(name(dtype));
      expect_close(y[0], y[1], tol, what + ": output");
      expect_close(lse[0], lse[1], 2e-5, what + ": log-sum-exp");
      expect_close(dqkv[0], dqkv[1], tol, what + ": dqkv");
    }
  }
}

TEST(CudaTransformerKernels, AttentionStepWithAKvCacheMatchesTheCpu) {
  MPX_SKIP_WITHOUT_GPU();
  Backends b;
  const std::int64_t heads = 4, head_dim = 64, width = heads * head_dim, positions = 40;
  std::vector<float> y[2], keys[2];
  int k = 0;
  for (Backend* backend : {static_cast<Backend*>(&b.cpu), b.gpu.get()}) {
    const Tensor k_cache = put(*backend, {positions, width}, DType::f32, std::vector<float>(positions * width, 0.0f));
    const Tensor v_cache = put(*backend, {positions, width}, DType::f32, std::vector<float>(positions * width, 0.0f));
    const Tensor out = backend->allocate({1, 1, width}, DType::bf16, MemoryCategory::activations);
    for (std::int64_t p = 0; p < positions; ++p) {
      const Tensor x = put(*backend, {1, 1, 3 * width}, DType::bf16,
                           random_floats(static_cast<std::size_t>(3 * width), 100 + static_cast<std::uint32_t>(p)));
      backend->attention_step(x, heads, p, k_cache, v_cache, out);
      const auto step = get(*backend, out);
      y[k].insert(y[k].end(), step.begin(), step.end());
    }
    keys[k++] = get(*backend, k_cache);
  }
  EXPECT_EQ(keys[0], keys[1]) << "the cache holds the widened k rows";
  expect_close(y[0], y[1], 1e-2, "every step's output");
}

TEST(CudaTransformerKernels, CrossEntropyOverAGpt2VocabularyWithTokenIdsMatchesTheCpu) {
  MPX_SKIP_WITHOUT_GPU();
  Backends b;
  const std::int64_t rows = 6, classes = 50304;
  const auto logits = random_floats(static_cast<std::size_t>(rows * classes), 7, 3.0f);
  const std::vector<std::int32_t> labels = {0, 50303, 17, 50256, 9000, 220};
  for (DType dtype : {DType::f32, DType::bf16}) {
    float loss[2];
    std::vector<float> p[2], grad[2];
    int k = 0;
    for (Backend* backend : {static_cast<Backend*>(&b.cpu), b.gpu.get()}) {
      const Tensor z = put(*backend, {rows, classes}, dtype, logits);
      const Tensor l = put_ids(*backend, {rows}, labels);
      const Tensor prob = backend->allocate({rows, classes}, DType::f32, MemoryCategory::activations);
      loss[k] = backend->cross_entropy_forward(z, l, prob);
      const Tensor g = backend->allocate({rows, classes}, dtype, MemoryCategory::activations);
      backend->cross_entropy_backward(prob, l, 1024.0f, g);
      p[k] = get(*backend, prob);
      grad[k++] = get(*backend, g);
    }
    EXPECT_NEAR(loss[1], loss[0], 1e-6 * loss[0]) << std::string(name(dtype));
    expect_close(p[0], p[1], 1e-6, std::string(name(dtype)) + ": probabilities");
    expect_close(grad[0], grad[1], dtype == DType::f32 ? 1e-6 : 1e-2, std::string(name(dtype)) + ": gradient");
  }
}

TEST(CudaTransformerKernels, CrossEntropyNamesALabelOutsideTheClassesButPassesANaNLogitOn) {
  MPX_SKIP_WITHOUT_GPU();
  Backends b;
  std::vector<float> logits = random_floats(4 * 300, 8);
  const Tensor prob = b.gpu->allocate({4, 300}, DType::f32, MemoryCategory::activations);
  try {
    b.gpu->cross_entropy_forward(put(*b.gpu, {4, 300}, DType::f32, logits), put_ids(*b.gpu, {4}, {1, 2, 300, 3}), prob);
    FAIL() << "a label outside the classes was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("label 300 at row 2"), std::string::npos) << e.what();
  }
  logits[301] = NAN;  // row 1
  const float loss =
      b.gpu->cross_entropy_forward(put(*b.gpu, {4, 300}, DType::f32, logits), put_ids(*b.gpu, {4}, {1, 2, 299, 3}), prob);
  EXPECT_TRUE(std::isnan(loss)) << "a NaN logit is a numeric fault for the step's checks, not a bad label";
}

}  // namespace
}  // namespace mpx::backend
