// Causal multi-head self-attention on the CPU: one (sequence, head) pair per task, its q, k and v widened
// to FP32 once, scores and products accumulated in FP32, the softmax max-subtracted in FP32. The T x T
// probabilities are kept for backward (GPT-2 on a CPU trains with short blocks; the CUDA path is where a
// streaming kernel pays).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "mpx/backend/cpu_backend.h"
#include "mpx/core/error.h"
#include "../../common/vector_clones.h"
#include "fast_math.h"
#include "storage.h"

namespace mpx::backend {

using namespace cpu;

namespace {

struct AttentionShape {
  std::int64_t batch, tokens, width, heads, head_dim;
};

AttentionShape attention_shape(const Tensor& qkv, std::int64_t heads, const char* what) {
  if (qkv.shape().size() != 3 || qkv.dim(2) % 3 != 0 || heads <= 0 || (qkv.dim(2) / 3) % heads != 0) {
    throw InvalidArgument(std::string(what) + ": qkv must be [N, T, 3C] with C a multiple of " +
                          std::to_string(heads) + " heads, got " + to_string(qkv.shape()));
  }
  const std::int64_t width = qkv.dim(2) / 3;
  return {qkv.dim(0), qkv.dim(1), width, heads, width / heads};
}

// Head h of sequence n: q, k, v as FP32 [T, head_dim] each.
template <class T>
void load_head(const T* qkv, const AttentionShape& s, std::int64_t n, std::int64_t h, float* q, float* k, float* v) {
  for (std::int64_t t = 0; t < s.tokens; ++t) {
    const T* row = qkv + (n * s.tokens + t) * 3 * s.width + h * s.head_dim;
    for (std::int64_t d = 0; d < s.head_dim; ++d) {
      q[t * s.head_dim + d] = load(row[d]);
      k[t * s.head_dim + d] = load(row[s.width + d]);
      v[t * s.head_dim + d] = load(row[2 * s.width + d]);
    }
  }
}

// One head of one sequence, FP32 [T, d] q, k, v: the probabilities (row i: T entries, zero past i) and
// the output y = P v ([T, d]).
MPX_VECTOR_CLONES void head_forward(const float* q, const float* k, const float* v, std::int64_t tokens,
                                    std::int64_t head_dim, float scale, float* probs, float* y) {
  for (std::int64_t i = 0; i < tokens; ++i) {
    float* p = probs + i * tokens;
    const float* qi = q + i * head_dim;
    float max = -INFINITY;
    for (std::int64_t j = 0; j <= i; ++j) {
      const float* kj = k + j * head_dim;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (std::int64_t d = 0; d < head_dim; ++d) dot += qi[d] * kj[d];
      p[j] = dot * scale;
      max = std::fmax(max, p[j]);
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (std::int64_t j = 0; j <= i; ++j) {
      p[j] = exp_fast(p[j] - max);
      sum += p[j];
    }
    const float inv = 1.0f / sum;
    float* yi = y + i * head_dim;
    for (std::int64_t d = 0; d < head_dim; ++d) yi[d] = 0.0f;
    for (std::int64_t j = 0; j <= i; ++j) {
      p[j] *= inv;
      const float* vj = v + j * head_dim;
      const float pj = p[j];
#pragma omp simd
      for (std::int64_t d = 0; d < head_dim; ++d) yi[d] += pj * vj[d];
    }
    for (std::int64_t j = i + 1; j < tokens; ++j) p[j] = 0.0f;  // the masked future
  }
}

// The gradients of one head: g = dy [T, d] in, dq, dk, dv [T, d] out (overwritten); ds: T floats of scratch.
MPX_VECTOR_CLONES void head_backward(const float* q, const float* k, const float* v, const float* g, const float* probs,
                                     std::int64_t tokens, std::int64_t head_dim, float scale, float* dq, float* dk,
                                     float* dv, float* ds) {
  for (std::int64_t e = 0; e < tokens * head_dim; ++e) dq[e] = dk[e] = dv[e] = 0.0f;
  for (std::int64_t i = 0; i < tokens; ++i) {
    const float* p = probs + i * tokens;
    const float* gi = g + i * head_dim;
    float weighted = 0.0f;  // sum_j P_ij dP_ij
    for (std::int64_t j = 0; j <= i; ++j) {
      const float* vj = v + j * head_dim;
      float dp = 0.0f;
#pragma omp simd reduction(+ : dp)
      for (std::int64_t d = 0; d < head_dim; ++d) dp += gi[d] * vj[d];
      ds[j] = dp;
      weighted += p[j] * dp;
    }
    float* dqi = dq + i * head_dim;
    const float* qi = q + i * head_dim;
    for (std::int64_t j = 0; j <= i; ++j) {
      const float dsij = p[j] * (ds[j] - weighted) * scale;
      const float pj = p[j];
      const float* kj = k + j * head_dim;
      float* dkj = dk + j * head_dim;
      float* dvj = dv + j * head_dim;
#pragma omp simd
      for (std::int64_t d = 0; d < head_dim; ++d) {
        dqi[d] += dsij * kj[d];
        dkj[d] += dsij * qi[d];
        dvj[d] += pj * gi[d];
      }
    }
  }
}

}  // namespace

void CpuBackend::attention_forward(const Tensor& qkv, std::int64_t heads, const Tensor& probabilities,
                                   const Tensor& y) {
  const AttentionShape s = attention_shape(qkv, heads, "attention");
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  float* probs = probabilities.data_as<float>();
  with_storage(qkv.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = elements<T>(qkv);
    T* out = mutable_elements<T>(y);
#pragma omp parallel
    {
      std::vector<float> q(static_cast<std::size_t>(s.tokens * s.head_dim)), k(q.size()), v(q.size()), acc(q.size());
#pragma omp for schedule(static)
      for (std::int64_t task = 0; task < s.batch * s.heads; ++task) {
        const std::int64_t n = task / s.heads, h = task % s.heads;
        load_head(in, s, n, h, q.data(), k.data(), v.data());
        head_forward(q.data(), k.data(), v.data(), s.tokens, s.head_dim, scale, probs + task * s.tokens * s.tokens,
                     acc.data());
        for (std::int64_t i = 0; i < s.tokens; ++i) {
          T* yi = out + (n * s.tokens + i) * s.width + h * s.head_dim;
          for (std::int64_t d = 0; d < s.head_dim; ++d) store(yi + d, acc[static_cast<std::size_t>(i * s.head_dim + d)]);
        }
      }
    }
  });
}

// With S = scale q k^T and P = softmax(S) row by row: dP = dy v^T, dS = P (dP - rowsum(P dP)),
// dq = scale dS k, dk = scale dS^T q, dv = P^T dy.
void CpuBackend::attention_backward(const Tensor& qkv, const Tensor& probabilities, const Tensor& dy,
                                    std::int64_t heads, const Tensor& dqkv) {
  const AttentionShape s = attention_shape(qkv, heads, "attention backward");
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  const float* probs = probabilities.data_as<float>();
  with_storage(qkv.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = elements<T>(qkv);
    const T* grad_out = elements<T>(dy);
    T* grad_in = mutable_elements<T>(dqkv);
#pragma omp parallel
    {
      const auto head_size = static_cast<std::size_t>(s.tokens * s.head_dim);
      std::vector<float> q(head_size), k(head_size), v(head_size), g(head_size), dq(head_size), dk(head_size),
          dv(head_size), ds(static_cast<std::size_t>(s.tokens));
#pragma omp for schedule(static)
      for (std::int64_t task = 0; task < s.batch * s.heads; ++task) {
        const std::int64_t n = task / s.heads, h = task % s.heads;
        load_head(in, s, n, h, q.data(), k.data(), v.data());
        for (std::int64_t t = 0; t < s.tokens; ++t) {
          const T* row = grad_out + (n * s.tokens + t) * s.width + h * s.head_dim;
          for (std::int64_t d = 0; d < s.head_dim; ++d) g[static_cast<std::size_t>(t * s.head_dim + d)] = load(row[d]);
        }
        head_backward(q.data(), k.data(), v.data(), g.data(), probs + task * s.tokens * s.tokens, s.tokens, s.head_dim,
                      scale, dq.data(), dk.data(), dv.data(), ds.data());
        for (std::int64_t t = 0; t < s.tokens; ++t) {
          T* row = grad_in + (n * s.tokens + t) * 3 * s.width + h * s.head_dim;
          for (std::int64_t d = 0; d < s.head_dim; ++d) {
            const auto e = static_cast<std::size_t>(t * s.head_dim + d);
            store(row + d, dq[e]);
            store(row + s.width + d, dk[e]);
            store(row + 2 * s.width + d, dv[e]);
          }
        }
      }
    }
  });
}

}  // namespace mpx::backend
