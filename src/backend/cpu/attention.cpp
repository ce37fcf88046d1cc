// Causal multi-head self-attention on the CPU: one (sequence, head) pair per task, its q, k and v widened
// to FP32 once, scores and products accumulated in FP32, the softmax max-subtracted in FP32. Streaming:
// eight rows at a time, so no T x T matrix is kept; forward keeps each row's log-sum-exp and backward
// recomputes the probabilities from it (GPT-2's block of 1024 would otherwise keep 4 MB per head).
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

// The products of one head are small (T x T x d with T, d of 32..1024): each is computed in tiles of up to
// 8 rows x 32 columns whose FP32 sums stay in registers (16 AVX-512 vectors) over the whole reduction, so
// the loads are one vector of b and one broadcast of a per 8 x 32 multiply-adds.
constexpr int kTileRows = 8, kTileColumns = 32;

#define MPX_ALWAYS_INLINE inline __attribute__((always_inline))

// c[r, n0 + w] = sum_{k in [k_begin, k_end)} a(r, k) * b[k, n0 + w] for r < R, w < 32, where a(r, k) is
// a[r * lda + k], or a[k * lda + r] when kTransposedA.
template <int R, bool kTransposedA>
MPX_ALWAYS_INLINE void product_tile(const float* __restrict a, std::int64_t lda, const float* __restrict b,
                                    std::int64_t ldb, std::int64_t n0, std::int64_t k_begin, std::int64_t k_end,
                                    float* __restrict c, std::int64_t ldc, bool accumulate) {
  float acc[R][kTileColumns];
  for (int r = 0; r < R; ++r) {
    for (int w = 0; w < kTileColumns; ++w) acc[r][w] = 0.0f;
  }
  for (std::int64_t k = k_begin; k < k_end; ++k) {
    const float* bk = b + k * ldb + n0;
    for (int r = 0; r < R; ++r) {
      const float ar = kTransposedA ? a[k * lda + r] : a[r * lda + k];
#pragma omp simd
      for (int w = 0; w < kTileColumns; ++w) acc[r][w] += ar * bk[w];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int w = 0; w < kTileColumns; ++w) c[r * ldc + n0 + w] = acc[r][w] + (accumulate ? c[r * ldc + n0 + w] : 0.0f);
  }
}

// c[r, n] (+)= sum_{k in [k_begin, k_end)} a(r, k) * b[k, n] for r < rows (at most 8), n < cols (added to
// c when `accumulate`); the columns past the last whole tile take a plain loop.
template <bool kTransposedA>
MPX_ALWAYS_INLINE void product_rows(const float* __restrict a, std::int64_t lda, const float* __restrict b,
                                    std::int64_t ldb, std::int64_t rows, std::int64_t cols, std::int64_t k_begin,
                                    std::int64_t k_end, float* __restrict c, std::int64_t ldc,
                                    bool accumulate = false) {
  const auto row_of_a = [&](std::int64_t r) { return kTransposedA ? a + r : a + r * lda; };
  std::int64_t n0 = 0;
  for (; n0 + kTileColumns <= cols; n0 += kTileColumns) {
    if (rows == kTileRows) {
      product_tile<kTileRows, kTransposedA>(a, lda, b, ldb, n0, k_begin, k_end, c, ldc, accumulate);
    } else {
      for (std::int64_t r = 0; r < rows; ++r) {
        product_tile<1, kTransposedA>(row_of_a(r), lda, b, ldb, n0, k_begin, k_end, c + r * ldc, ldc, accumulate);
      }
    }
  }
  for (; n0 < cols; ++n0) {
    for (std::int64_t r = 0; r < rows; ++r) {
      float sum = 0.0f;
      for (std::int64_t k = k_begin; k < k_end; ++k) {
        sum += (kTransposedA ? a[k * lda + r] : a[r * lda + k]) * b[k * ldb + n0];
      }
      c[r * ldc + n0] = sum + (accumulate ? c[r * ldc + n0] : 0.0f);
    }
  }
}

// How far the row block [i0, i0 + rows) reaches: its last row attends to positions below `reach`; scores are
// computed up to `columns` (whole tiles where the block allows; the masked ones are overwritten).
struct RowBlock {
  std::int64_t rows, reach, columns;
};
inline RowBlock row_block(std::int64_t i0, std::int64_t tokens) {
  const std::int64_t rows = std::min<std::int64_t>(kTileRows, tokens - i0);
  const std::int64_t reach = i0 + rows;
  return {rows, reach, std::min(tokens, (reach + kTileColumns - 1) / kTileColumns * kTileColumns)};
}

// The scaled, causally masked scores of rows [i0, reach) of a head, as probabilities p (rows of T floats,
// zero from each row's next position up to `zero_to`, as far as the products that follow read):
// exp(scale s - lse) with the rows' log-sum-exp `lse`, or (forward, when `lse_out` is given) max-subtracted
// and normalised, writing the rows' log-sum-exp there.
MPX_ALWAYS_INLINE void block_probabilities(const float* __restrict q, const float* __restrict kt, std::int64_t tokens,
                                           std::int64_t head_dim, float scale, std::int64_t i0, const RowBlock& block,
                                           std::int64_t zero_to, const float* __restrict lse_in,
                                           float* __restrict lse_out, float* __restrict p) {
  product_rows<false>(q + i0 * head_dim, head_dim, kt, tokens, block.rows, block.columns, 0, head_dim, p, tokens);
  for (std::int64_t i = i0; i < block.reach; ++i) {
    float* pi = p + (i - i0) * tokens;
    const std::int64_t count = i + 1;
    if (lse_out == nullptr) {
      const float lse = lse_in[i];
#pragma omp simd
      for (std::int64_t j = 0; j < count; ++j) pi[j] = exp_fast(pi[j] * scale - lse);
    } else {
      float max = -INFINITY;
#pragma omp simd reduction(max : max)
      for (std::int64_t j = 0; j < count; ++j) {
        pi[j] *= scale;
        max = std::max(max, pi[j]);
      }
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (std::int64_t j = 0; j < count; ++j) {
        pi[j] = exp_fast(pi[j] - max);
        sum += pi[j];
      }
      const float inv = 1.0f / sum;
#pragma omp simd
      for (std::int64_t j = 0; j < count; ++j) pi[j] *= inv;
      lse_out[i] = max + std::log(sum);
    }
    for (std::int64_t j = count; j < zero_to; ++j) pi[j] = 0.0f;  // the masked future
  }
}

// One head of one sequence, streaming: q, v FP32 [T, d], kt [d, T]; y = P v ([T, d]) and each row's
// log-sum-exp of its scaled scores (T floats) out; p: 8 x T floats of scratch (one row block's probabilities).
MPX_VECTOR_CLONES void head_forward(const float* __restrict q, const float* __restrict kt, const float* __restrict v,
                                    std::int64_t tokens, std::int64_t head_dim, float scale, float* __restrict lse,
                                    float* __restrict y, float* __restrict p) {
  for (std::int64_t i0 = 0; i0 < tokens; i0 += kTileRows) {
    const RowBlock block = row_block(i0, tokens);
    // P v reads each row up to the block's reach.
    block_probabilities(q, kt, tokens, head_dim, scale, i0, block, block.reach, nullptr, lse, p);
    product_rows<false>(p, tokens, v, head_dim, block.rows, head_dim, 0, block.reach, y + i0 * head_dim, head_dim);
  }
}

// Backward takes the query rows 64 at a time: their recomputed probabilities and dS (64 x T floats each)
// are the sums' depth for dk and dv, which a block of 8 rows would leave too shallow to pay for the tiles.
constexpr std::int64_t kBackwardRows = 64;

// The gradients of one head: q, k, g = dy [T, d], kt, vt [d, T] and the rows' log-sum-exp in; dq, dk, dv
// [T, d] out (overwritten). Chunk by chunk of query rows, the probabilities are recomputed from the scores
// and the log-sum-exp (no T x T matrix is kept); p and ds: 64 x T floats of scratch each.
MPX_VECTOR_CLONES void head_backward(const float* __restrict q, const float* __restrict k, const float* __restrict kt,
                                     const float* __restrict vt, const float* __restrict g, const float* __restrict lse,
                                     std::int64_t tokens, std::int64_t head_dim, float scale, float* __restrict dq,
                                     float* __restrict dk, float* __restrict dv, float* __restrict p,
                                     float* __restrict ds) {
  for (std::int64_t e = 0; e < tokens * head_dim; ++e) dk[e] = dv[e] = 0.0f;
  for (std::int64_t c0 = 0; c0 < tokens; c0 += kBackwardRows) {
    const std::int64_t chunk_end = std::min(tokens, c0 + kBackwardRows);
    for (std::int64_t i0 = c0; i0 < chunk_end; i0 += kTileRows) {
      const RowBlock block = row_block(i0, tokens);
      float* pb = p + (i0 - c0) * tokens;
      float* dsb = ds + (i0 - c0) * tokens;
      // dS k reads each row up to the block's reach; dS^T q and P^T dy read the chunk's columns.
      const std::int64_t zero_to = std::max(block.reach, chunk_end);
      block_probabilities(q, kt, tokens, head_dim, scale, i0, block, zero_to, lse, nullptr, pb);
      product_rows<false>(g + i0 * head_dim, head_dim, vt, tokens, block.rows, block.columns, 0, head_dim, dsb,
                          tokens);  // dP_ij
      for (std::int64_t i = i0; i < block.reach; ++i) {
        const float* pi = pb + (i - i0) * tokens;
        float* dsi = dsb + (i - i0) * tokens;
        const std::int64_t count = i + 1;
        float weighted = 0.0f;  // sum_j P_ij dP_ij
#pragma omp simd reduction(+ : weighted)
        for (std::int64_t j = 0; j < count; ++j) weighted += pi[j] * dsi[j];
#pragma omp simd
        for (std::int64_t j = 0; j < count; ++j) dsi[j] = pi[j] * (dsi[j] - weighted) * scale;
        for (std::int64_t j = count; j < zero_to; ++j) dsi[j] = 0.0f;
      }
      product_rows<false>(dsb, tokens, k, head_dim, block.rows, head_dim, 0, block.reach, dq + i0 * head_dim,
                          head_dim);  // dq = dS k
    }
    // dk += dS^T q and dv += P^T dy over the chunk's rows, for the positions they reach (rows before a
    // position are zero in its column: the sums start there).
    const std::int64_t chunk_rows = chunk_end - c0;
    for (std::int64_t j0 = 0; j0 < chunk_end; j0 += kTileRows) {
      const std::int64_t rows = std::min<std::int64_t>(kTileRows, chunk_end - j0);
      const std::int64_t first = std::max<std::int64_t>(0, j0 - c0);
      product_rows<true>(ds + j0, tokens, q + c0 * head_dim, head_dim, rows, head_dim, first, chunk_rows,
                         dk + j0 * head_dim, head_dim, true);
      product_rows<true>(p + j0, tokens, g + c0 * head_dim, head_dim, rows, head_dim, first, chunk_rows,
                         dv + j0 * head_dim, head_dim, true);
    }
  }
}

}  // namespace

void CpuBackend::attention_forward(const Tensor& qkv, std::int64_t heads, const Tensor& row_logsumexp,
                                   const Tensor& y) {
  const AttentionShape s = attention_shape(qkv, heads, "attention");
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  float* lse = row_logsumexp.data_as<float>();
  with_storage(qkv.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = elements<T>(qkv);
    T* out = mutable_elements<T>(y);
#pragma omp parallel
    {
      std::vector<float> q(static_cast<std::size_t>(s.tokens * s.head_dim)), k(q.size()), v(q.size()), kt(q.size()),
          acc(q.size()), p(static_cast<std::size_t>(kTileRows * s.tokens));
#pragma omp for schedule(static)
      for (std::int64_t task = 0; task < s.batch * s.heads; ++task) {
        const std::int64_t n = task / s.heads, h = task % s.heads;
        load_head(in, s, n, h, q.data(), k.data(), v.data());
        transpose_head(k.data(), s.tokens, s.head_dim, kt.data());
        head_forward(q.data(), kt.data(), v.data(), s.tokens, s.head_dim, scale, lse + task * s.tokens, acc.data(),
                     p.data());
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
void CpuBackend::attention_backward(const Tensor& qkv, const Tensor& row_logsumexp, const Tensor& dy,
                                    std::int64_t heads, const Tensor& dqkv) {
  const AttentionShape s = attention_shape(qkv, heads, "attention backward");
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  const float* lse = row_logsumexp.data_as<float>();
  with_storage(qkv.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = elements<T>(qkv);
    const T* grad_out = elements<T>(dy);
    T* grad_in = mutable_elements<T>(dqkv);
#pragma omp parallel
    {
      const auto head_size = static_cast<std::size_t>(s.tokens * s.head_dim);
      std::vector<float> q(head_size), k(head_size), v(head_size), g(head_size), dq(head_size), dk(head_size),
          dv(head_size), kt(head_size), vt(head_size),
          p(static_cast<std::size_t>(std::min(kBackwardRows, s.tokens) * s.tokens)), ds(p.size());
#pragma omp for schedule(static)
      for (std::int64_t task = 0; task < s.batch * s.heads; ++task) {
        const std::int64_t n = task / s.heads, h = task % s.heads;
        load_head(in, s, n, h, q.data(), k.data(), v.data());
        for (std::int64_t t = 0; t < s.tokens; ++t) {
          const T* row = grad_out + (n * s.tokens + t) * s.width + h * s.head_dim;
          for (std::int64_t d = 0; d < s.head_dim; ++d) g[static_cast<std::size_t>(t * s.head_dim + d)] = load(row[d]);
        }
        transpose_head(k.data(), s.tokens, s.head_dim, kt.data());
        transpose_head(v.data(), s.tokens, s.head_dim, vt.data());
        head_backward(q.data(), k.data(), kt.data(), vt.data(), g.data(), lse + task * s.tokens, s.tokens, s.head_dim,
                      scale, dq.data(), dk.data(), dv.data(), p.data(), ds.data());
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
