// The CPU backend's pointwise ops and pooling: ReLU, GELU, residual add, dropout, max pooling.
// Dtype-preserving (FP32 or BF16 storage, FP32 arithmetic), vectorisable loops, OpenMP over rows.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "mpx/backend/cpu_backend.h"
#include "mpx/core/error.h"
#include "mpx/numeric/philox.h"
#include "../../common/vector_clones.h"
#include "storage.h"

namespace mpx::backend {

using namespace cpu;  // storage.h: load/store of FP32 and BF16 elements

namespace {

template <class T>
MPX_VECTOR_CLONES void relu_range(const T* in, T* out, std::int64_t begin, std::int64_t end) {
  for (std::int64_t i = begin; i < end; ++i) {
    const float v = load(in[i]);
    store(out + i, v <= 0.0f ? 0.0f : v);  // a NaN propagates, as in PyTorch
  }
}

template <class T>
MPX_VECTOR_CLONES void relu_gradient_range(const T* g, const T* y, T* out, std::int64_t begin, std::int64_t end) {
  for (std::int64_t i = begin; i < end; ++i) store_exact(out + i, load(y[i]) > 0.0f ? load(g[i]) : 0.0f);
}

template <class T>
MPX_VECTOR_CLONES void scale_by_mask_range(const T* in, const std::uint8_t* keep, float keep_scale, T* out,
                                           std::int64_t begin, std::int64_t end) {
  for (std::int64_t i = begin; i < end; ++i) store(out + i, load(in[i]) * (static_cast<float>(keep[i]) * keep_scale));
}
}  // namespace

void CpuBackend::relu_forward(const Tensor& x, const Tensor& y) {
  with_storage(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = elements<T>(x);
    T* out = mutable_elements<T>(y);
    mpx::detail::parallel_ranges(x.numel(), 65536, [&](std::int64_t b, std::int64_t e) { relu_range(in, out, b, e); });
  });
}

void CpuBackend::relu_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  with_storage(dy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* g = elements<T>(dy);
    const T* out_y = elements<T>(y);
    T* out = mutable_elements<T>(dx);
    mpx::detail::parallel_ranges(dy.numel(), 65536,
                                 [&](std::int64_t b, std::int64_t e) { relu_gradient_range(g, out_y, out, b, e); });
  });
}

namespace {
template <class T>
MPX_VECTOR_CLONES void add_range(const T* a, const T* b, T* out, std::int64_t begin, std::int64_t end) {
  // out may be a or b (an in-place residual add): element i is read before it is written, so the loop
  // vectorises safely; the pragma says so (GCC's alias checks otherwise keep it scalar).
#pragma omp simd
  for (std::int64_t i = begin; i < end; ++i) store(out + i, load(a[i]) + load(b[i]));
}
}  // namespace

void CpuBackend::add(const Tensor& a, const Tensor& b, const Tensor& sum) {
  with_storage(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T *pa = elements<T>(a), *pb = elements<T>(b);
    T* out = mutable_elements<T>(sum);
    mpx::detail::parallel_ranges(a.numel(), 65536, [&](std::int64_t s, std::int64_t e) { add_range(pa, pb, out, s, e); });
  });
}

// Kept elements are scaled by 1/(1-p) in FP32 and rounded once to the storage dtype.
void CpuBackend::dropout_forward(const Tensor& x, const DropoutArgs& args, const Tensor& keep_mask, const Tensor& y) {
  std::uint8_t* keep = keep_mask.data_as<std::uint8_t>();
  const auto threshold = static_cast<std::uint32_t>(static_cast<double>(args.probability) * 4294967296.0);
  // Counter-based: the mask depends on (key, element counter) only, never on threads.
  const std::uint64_t key = args.key;
  const std::uint64_t base = args.step * args.planned_elements + args.element_offset;
  const std::int64_t n = x.numel();
  // Element i takes word (base + i) % 4 of Philox block (base + i) / 4, as random_u32 does: one block
  // computed per four elements instead of per element.
  const auto first_block = static_cast<std::int64_t>(base >> 2);
  const auto end_block = static_cast<std::int64_t>((base + static_cast<std::uint64_t>(n) + 3) >> 2);
#pragma omp parallel for if (n > 16384)
  for (std::int64_t block = first_block; block < end_block; ++block) {
    const auto b = static_cast<std::uint64_t>(block);
    const numeric::Philox4x32 r = numeric::philox4x32_10(static_cast<std::uint32_t>(b), static_cast<std::uint32_t>(b >> 32),
                                                         0, 0, static_cast<std::uint32_t>(key),
                                                         static_cast<std::uint32_t>(key >> 32));
    for (std::uint64_t word = 0; word < 4; ++word) {
      const std::uint64_t index = b * 4 + word;
      if (index < base || index >= base + static_cast<std::uint64_t>(n)) continue;
      keep[index - base] = r.out[word] >= threshold;
    }
  }
  dropout_backward(x, keep_mask, args.probability, y);  // the same scaling
}

void CpuBackend::dropout_backward(const Tensor& dy, const Tensor& keep_mask, float probability, const Tensor& dx) {
  const std::uint8_t* keep = keep_mask.data_as<std::uint8_t>();
  const float keep_scale = 1.0f / (1.0f - probability);
  with_storage(dy.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* g = elements<T>(dy);
    T* out = mutable_elements<T>(dx);
    mpx::detail::parallel_ranges(dy.numel(), 65536, [&](std::int64_t b, std::int64_t e) {
      scale_by_mask_range(g, keep, keep_scale, out, b, e);
    });
  });
}

namespace {

// The max-pooling rule for one more candidate: a NaN wins and propagates, as in PyTorch; on
// ties the earlier position keeps it.
inline std::uint32_t all_ones(bool b) { return 0u - static_cast<std::uint32_t>(b); }

// The select is an integer blend: chained ternaries on floats leave GCC's vectoriser a branchy loop.
inline float pool_max(float best, float candidate) {
  const std::uint32_t take = all_ones((candidate > best) | ((candidate != candidate) & (best == best)));
  return std::bit_cast<float>((std::bit_cast<std::uint32_t>(candidate) & take) | (std::bit_cast<std::uint32_t>(best) & ~take));
}

// Max over each k x k window for images [first, last) of an NHWC batch (exact in any storage dtype).
template <class T>
MPX_VECTOR_CLONES void max_pool_images(const T* in, T* out, std::int64_t first, std::int64_t last, std::int64_t h, std::int64_t w,
                     std::int64_t c, std::int64_t kernel) {
  const std::int64_t oh = h / kernel, ow = w / kernel;
  for (std::int64_t b = first; b < last; ++b) {
    for (std::int64_t i = 0; i < oh; ++i) {
      for (std::int64_t j = 0; j < ow; ++j) {
        T* o = out + ((b * oh + i) * ow + j) * c;
        const T* v0 = in + ((b * h + i * kernel) * w + j * kernel) * c;
        for (std::int64_t ch = 0; ch < c; ++ch) o[ch] = v0[ch];
        for (std::int64_t k = 1; k < kernel * kernel; ++k) {
          const T* v = in + ((b * h + i * kernel + k / kernel) * w + j * kernel + k % kernel) * c;
          for (std::int64_t ch = 0; ch < c; ++ch) store_exact(o + ch, pool_max(load(o[ch]), load(v[ch])));
        }
      }
    }
  }
}

// 2x2 pooling in one pass per window (the four positions in order), the case every CNN here uses: the
// general loop re-reads and re-stores each output once per window position.
template <class T>
MPX_VECTOR_CLONES void max_pool2_images(const T* in, T* out, std::int64_t first, std::int64_t last, std::int64_t h,
                                        std::int64_t w, std::int64_t c) {
  const std::int64_t oh = h / 2, ow = w / 2;
  for (std::int64_t b = first; b < last; ++b) {
    for (std::int64_t i = 0; i < oh; ++i) {
      for (std::int64_t j = 0; j < ow; ++j) {
        T* o = out + ((b * oh + i) * ow + j) * c;
        const std::int64_t top = ((b * h + 2 * i) * w + 2 * j) * c, bottom = top + w * c;
        const T *v0 = in + top, *v1 = in + top + c, *v2 = in + bottom, *v3 = in + bottom + c;
#pragma omp simd
        for (std::int64_t ch = 0; ch < c; ++ch) {
          const float m = pool_max(pool_max(pool_max(load(v0[ch]), load(v1[ch])), load(v2[ch])), load(v3[ch]));
          store_exact(o + ch, m);
        }
      }
    }
  }
}

// The gradient of 2x2 pooling for images [first, last): position k of a window takes it when it holds the
// maximum (a NaN maximum matches a NaN) and no earlier position did. Branch-free, so it vectorises.
template <class T>
MPX_VECTOR_CLONES void max_pool2_gradient_images(const T* in, const T* max, const T* g, T* out, std::int64_t first,
                               std::int64_t last, std::int64_t h, std::int64_t w, std::int64_t c) {
  const std::int64_t oh = h / 2, ow = w / 2;
  for (std::int64_t b = first; b < last; ++b) {
    for (std::int64_t i = 0; i < oh; ++i) {
      for (std::int64_t j = 0; j < ow; ++j) {
        const std::int64_t o = ((b * oh + i) * ow + j) * c;
        const std::int64_t top = ((b * h + 2 * i) * w + 2 * j) * c, bottom = top + w * c;
        const T *v0 = in + top, *v1 = in + top + c, *v2 = in + bottom, *v3 = in + bottom + c;
        T *d0 = out + top, *d1 = out + top + c, *d2 = out + bottom, *d3 = out + bottom + c;
        // The four window positions and the inputs never overlap: without `omp simd` GCC gives up on the
        // many runtime alias checks (and at -O2 on any loop that needs a remainder) and leaves it scalar.
#pragma omp simd
        for (std::int64_t ch = 0; ch < c; ++ch) {
          const float m = load(max[o + ch]);
          const std::uint32_t grad = std::bit_cast<std::uint32_t>(load(g[o + ch]));
          const float x0 = load(v0[ch]), x1 = load(v1[ch]), x2 = load(v2[ch]), x3 = load(v3[ch]);
          // All-ones where a position holds the maximum (a NaN maximum matches a NaN): integer masks, so
          // that the loop has no control flow in any storage dtype.
          const std::uint32_t nan_max = all_ones(m != m);
          const std::uint32_t e0 = all_ones(x0 == m) | (nan_max & all_ones(x0 != x0));
          const std::uint32_t e1 = all_ones(x1 == m) | (nan_max & all_ones(x1 != x1));
          const std::uint32_t e2 = all_ones(x2 == m) | (nan_max & all_ones(x2 != x2));
          const std::uint32_t e3 = all_ones(x3 == m) | (nan_max & all_ones(x3 != x3));
          store_exact(d0 + ch, std::bit_cast<float>(grad & e0));
          store_exact(d1 + ch, std::bit_cast<float>(grad & e1 & ~e0));
          store_exact(d2 + ch, std::bit_cast<float>(grad & e2 & ~(e0 | e1)));
          store_exact(d3 + ch, std::bit_cast<float>(grad & e3 & ~(e0 | e1 | e2)));
        }
      }
    }
  }
}

}  // namespace

// Forward keeps only the maxima; backward finds each window's (first) maximum again by comparing the
// input, which is still alive in the previous layer's buffer.
void CpuBackend::max_pool_forward(const Tensor& x, std::int64_t kernel, const Tensor& y) {
  const std::int64_t n = x.dim(0), h = x.dim(1), w = x.dim(2), c = x.dim(3);
  with_storage(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = elements<T>(x);
    T* out = mutable_elements<T>(y);
    mpx::detail::parallel_ranges(n, 2, [&](std::int64_t first, std::int64_t last) {
      if (kernel == 2) {
        max_pool2_images(in, out, first, last, h, w, c);
      } else {
        max_pool_images(in, out, first, last, h, w, c, kernel);
      }
    });
  });
}

namespace {
template <class T>
void max_pool_backward_impl(const Tensor& x, const Tensor& y, const Tensor& dy, std::int64_t kernel, const Tensor& dx) {
  const std::int64_t n = dy.dim(0), h = x.dim(1), w = x.dim(2), c = x.dim(3);
  const std::int64_t oh = h / kernel, ow = w / kernel, window = kernel * kernel;
  if (oh * kernel != h || ow * kernel != w) dx.fill_zero();  // rows/columns no window covers
  const T* g = elements<T>(dy);
  const T* in = elements<T>(x);
  const T* out_max = elements<T>(y);
  T* out = mutable_elements<T>(dx);
  if (kernel == 2) {
    mpx::detail::parallel_ranges(n, 2, [&](std::int64_t first, std::int64_t last) {
      max_pool2_gradient_images(in, out_max, g, out, first, last, h, w, c);
    });
    return;
  }
  // Other kernel sizes: the same rule, one window position at a time.
#pragma omp parallel for collapse(2) if (n * oh > 64)
  for (std::int64_t b = 0; b < n; ++b) {
    for (std::int64_t i = 0; i < oh; ++i) {
      for (std::int64_t j = 0; j < ow; ++j) {
        const std::int64_t o = ((b * oh + i) * ow + j) * c;
        for (std::int64_t ch = 0; ch < c; ++ch) {
          const float m = load(out_max[o + ch]);
          bool taken = false;
          for (std::int64_t k = 0; k < window; ++k) {
            const std::int64_t index = ((b * h + i * kernel + k / kernel) * w + j * kernel + k % kernel) * c + ch;
            const float v = load(in[index]);
            const bool is_max = !taken && (v == m || (m != m && v != v));
            out[index] = is_max ? g[o + ch] : T{};
            taken = taken || is_max;
          }
        }
      }
    }
  }
}
}  // namespace

void CpuBackend::max_pool_backward(const Tensor& x, const Tensor& y, const Tensor& dy, std::int64_t kernel,
                                   const Tensor& dx) {
  with_storage(dy.dtype(), [&](auto tag) { max_pool_backward_impl<decltype(tag)>(x, y, dy, kernel, dx); });
}

}  // namespace mpx::backend
