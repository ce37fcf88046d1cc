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

// K and V of a head transposed to [d, T], so that a row's scores (and in backward its dP) run over
// contiguous positions: the loops over j vectorise instead of reducing short dot products.
MPX_VECTOR_CLONES void transpose_head(const float* x, std::int64_t tokens, std::int64_t head_dim, float* xt) {
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t d = 0; d < head_dim; ++d) xt[d * tokens + t] = x[t * head_dim + d];
  }
}

// scores[j] = sum_d a[d] * bt[d, j] for j < count (bt: [d, tokens]).
inline void row_times_transposed(const float* __restrict a, const float* __restrict bt, std::int64_t tokens,
                                 std::int64_t head_dim, std::int64_t count, float* __restrict scores) {
  for (std::int64_t j = 0; j < count; ++j) scores[j] = 0.0f;
  for (std::int64_t d = 0; d < head_dim; ++d) {
    const float ad = a[d];
    const float* row = bt + d * tokens;
#pragma omp simd
    for (std::int64_t j = 0; j < count; ++j) scores[j] += ad * row[j];
  }
}

// One head of one sequence: q, v FP32 [T, d], kt [d, T]; writes the probabilities (row i: T entries, zero
// past i) and y = P v ([T, d]).
MPX_VECTOR_CLONES void head_forward(const float* __restrict q, const float* __restrict kt, const float* __restrict v,
                                    std::int64_t tokens, std::int64_t head_dim, float scale, float* __restrict probs,
                                    float* __restrict y) {
  for (std::int64_t i = 0; i < tokens; ++i) {
    float* p = probs + i * tokens;
    const std::int64_t count = i + 1;
    row_times_transposed(q + i * head_dim, kt, tokens, head_dim, count, p);
    float max = -INFINITY;
    for (std::int64_t j = 0; j < count; ++j) {
      p[j] *= scale;
      max = p[j] > max ? p[j] : max;
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (std::int64_t j = 0; j < count; ++j) {
      p[j] = exp_fast(p[j] - max);
      sum += p[j];
    }
    const float inv = 1.0f / sum;
    float* yi = y + i * head_dim;
    for (std::int64_t d = 0; d < head_dim; ++d) yi[d] = 0.0f;
    for (std::int64_t j = 0; j < count; ++j) {
      p[j] *= inv;
      const float pj = p[j];
      const float* vj = v + j * head_dim;
#pragma omp simd
      for (std::int64_t d = 0; d < head_dim; ++d) yi[d] += pj * vj[d];
    }
    for (std::int64_t j = count; j < tokens; ++j) p[j] = 0.0f;  // the masked future
  }
}

// The gradients of one head: q, k, g = dy [T, d], vt [d, T] in; dq, dk, dv [T, d] out (overwritten);
// ds: T floats of scratch.
MPX_VECTOR_CLONES void head_backward(const float* __restrict q, const float* __restrict k, const float* __restrict vt,
                                     const float* __restrict g, const float* __restrict probs, std::int64_t tokens,
                                     std::int64_t head_dim, float scale, float* __restrict dq, float* __restrict dk,
                                     float* __restrict dv, float* __restrict ds) {
  for (std::int64_t e = 0; e < tokens * head_dim; ++e) dq[e] = dk[e] = dv[e] = 0.0f;
  for (std::int64_t i = 0; i < tokens; ++i) {
    const float* p = probs + i * tokens;
    const float* gi = g + i * head_dim;
    const std::int64_t count = i + 1;
    row_times_transposed(gi, vt, tokens, head_dim, count, ds);  // dP_ij
    float weighted = 0.0f;  // sum_j P_ij dP_ij
#pragma omp simd reduction(+ : weighted)
    for (std::int64_t j = 0; j < count; ++j) weighted += p[j] * ds[j];
    float* dqi = dq + i * head_dim;
    const float* qi = q + i * head_dim;
    for (std::int64_t j = 0; j < count; ++j) {
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
      std::vector<float> q(static_cast<std::size_t>(s.tokens * s.head_dim)), k(q.size()), v(q.size()), kt(q.size()),
          acc(q.size());
#pragma omp for schedule(static)
      for (std::int64_t task = 0; task < s.batch * s.heads; ++task) {
        const std::int64_t n = task / s.heads, h = task % s.heads;
        load_head(in, s, n, h, q.data(), k.data(), v.data());
        transpose_head(k.data(), s.tokens, s.head_dim, kt.data());
        head_forward(q.data(), kt.data(), v.data(), s.tokens, s.head_dim, scale, probs + task * s.tokens * s.tokens,
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
          dv(head_size), vt(head_size), ds(static_cast<std::size_t>(s.tokens));
#pragma omp for schedule(static)
      for (std::int64_t task = 0; task < s.batch * s.heads; ++task) {
        const std::int64_t n = task / s.heads, h = task % s.heads;
        load_head(in, s, n, h, q.data(), k.data(), v.data());
        for (std::int64_t t = 0; t < s.tokens; ++t) {
          const T* row = grad_out + (n * s.tokens + t) * s.width + h * s.head_dim;
          for (std::int64_t d = 0; d < s.head_dim; ++d) g[static_cast<std::size_t>(t * s.head_dim + d)] = load(row[d]);
        }
        transpose_head(v.data(), s.tokens, s.head_dim, vt.data());
        head_backward(q.data(), k.data(), vt.data(), g.data(), probs + task * s.tokens * s.tokens, s.tokens, s.head_dim,
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

void CpuBackend::attention_step(const Tensor& qkv, std::int64_t heads, std::int64_t position, const Tensor& k_cache,
                                const Tensor& v_cache, const Tensor& y) {
  const AttentionShape s = attention_shape(qkv, heads, "attention step");
  if (s.batch != 1 || s.tokens != 1 || position < 0 || position >= k_cache.dim(0) || k_cache.dim(1) != s.width) {
    throw InvalidArgument("attention step: qkv " + to_string(qkv.shape()) + " at position " + std::to_string(position) +
                          " does not fit a cache of " + to_string(k_cache.shape()));
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  float* keys = k_cache.data_as<float>();
  float* values = v_cache.data_as<float>();
  with_storage(qkv.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* row = elements<T>(qkv);
    std::vector<float> q(static_cast<std::size_t>(s.width));
    for (std::int64_t c = 0; c < s.width; ++c) {
      q[static_cast<std::size_t>(c)] = load(row[c]);
      keys[position * s.width + c] = load(row[s.width + c]);
      values[position * s.width + c] = load(row[2 * s.width + c]);
    }
    T* out = mutable_elements<T>(y);
    std::vector<float> p(static_cast<std::size_t>(position + 1)), acc(static_cast<std::size_t>(s.head_dim));
    for (std::int64_t h = 0; h < s.heads; ++h) {
      const float* qh = q.data() + h * s.head_dim;
      float max = -INFINITY;
      for (std::int64_t j = 0; j <= position; ++j) {
        const float* kj = keys + j * s.width + h * s.head_dim;
        float dot = 0.0f;
        for (std::int64_t d = 0; d < s.head_dim; ++d) dot += qh[d] * kj[d];
        p[static_cast<std::size_t>(j)] = dot * scale;
        max = std::fmax(max, p[static_cast<std::size_t>(j)]);
      }
      float sum = 0.0f;
      for (auto& pj : p) {
        pj = exp_fast(pj - max);
        sum += pj;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (std::int64_t j = 0; j <= position; ++j) {
        const float pj = p[static_cast<std::size_t>(j)] / sum;
        const float* vj = values + j * s.width + h * s.head_dim;
        for (std::int64_t d = 0; d < s.head_dim; ++d) acc[static_cast<std::size_t>(d)] += pj * vj[d];
      }
      for (std::int64_t d = 0; d < s.head_dim; ++d) store(out + h * s.head_dim + d, acc[static_cast<std::size_t>(d)]);
    }
  });
}

}  // namespace mpx::backend
