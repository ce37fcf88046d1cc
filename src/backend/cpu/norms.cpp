// The CPU backend's normalisations. BatchNorm on NHWC: per-channel statistics over N*H*W rows,
// accumulated in double; LayerNorm over the last dimension, statistics per row in double. FP32 arithmetic
// on FP32 or BF16 storage (outputs and gradients keep the input's dtype).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "mpx/backend/cpu_backend.h"
#include "mpx/core/error.h"
#include "../../common/vector_clones.h"
#include "storage.h"

namespace mpx::backend {

using namespace cpu;  // storage.h: load/store of FP32 and BF16 elements

// Rows are processed a group at a time as one flat loop over group * channels elements, with the
// per-channel parameters repeated `group` times: a long inner loop vectorises well where a 32-channel row
// is only two vectors and the per-row loop overhead dominates. The loops carry `#pragma omp simd`: their
// outputs never overlap their inputs, and without it GCC gives up on the runtime alias checks it would
// need for this many pointers, and at -O2 its "very cheap" cost model refuses any loop that needs a
// remainder, leaving the FP32 builds scalar.
namespace {

struct Period {
  std::int64_t channels = 1, length = 1;  // length: channels times the rows in a group (about 256 values)
};
Period period_for(std::int64_t channels) { return {channels, channels * std::max<std::int64_t>(1, 256 / channels)}; }
std::vector<float> repeated(const float* per_channel, Period p) {
  std::vector<float> out(static_cast<std::size_t>(p.length));
  for (std::int64_t j = 0; j < p.length; ++j) out[static_cast<std::size_t>(j)] = per_channel[j % p.channels];
  return out;
}

// Two per-channel sums over all rows: FP32 partial sums over blocks of 256 rows (vectorised across a
// group of rows), added into per-thread double sums, then the threads' sums added in thread order
// (deterministic for a given thread count). `block_sums(begin, end, a, b)` sets a[j], b[j] (j < length)
// to the FP32 sums of the elements [begin, end) whose offset from begin is j modulo length.
template <class BlockSums>
void per_channel_sums_impl(std::int64_t rows, Period p, BlockSums block_sums, std::vector<double>& a,
                           std::vector<double>& b) {
  constexpr std::int64_t kBlockRows = 256;
  const int threads = rows > 4096 ? omp_get_max_threads() : 1;
  const auto c_count = static_cast<std::size_t>(p.channels);
  std::vector<double> part_a(c_count * static_cast<std::size_t>(threads), 0.0), part_b(part_a.size(), 0.0);
#pragma omp parallel num_threads(threads)
  {
    const auto t = static_cast<std::size_t>(omp_get_thread_num());
    std::vector<float> block_a(static_cast<std::size_t>(p.length)), block_b(block_a.size());
#pragma omp for schedule(static)
    for (std::int64_t first = 0; first < rows; first += kBlockRows) {
      block_sums(first * p.channels, std::min(rows, first + kBlockRows) * p.channels, block_a.data(), block_b.data());
      for (std::size_t j = 0; j < block_a.size(); ++j) {
        part_a[t * c_count + j % c_count] += block_a[j];
        part_b[t * c_count + j % c_count] += block_b[j];
      }
    }
  }
  for (std::size_t t = 0; t < static_cast<std::size_t>(threads); ++t) {
    for (std::size_t c = 0; c < c_count; ++c) {
      a[c] += part_a[t * c_count + c];
      b[c] += part_b[t * c_count + c];
    }
  }
}

template <class T>
MPX_VECTOR_CLONES void moment_sums(const T* in, const float* shift, std::int64_t length, std::int64_t begin,
                                   std::int64_t end, float* a, float* b) {
  for (std::int64_t j = 0; j < length; ++j) a[j] = b[j] = 0.0f;
  for (std::int64_t base = begin; base < end; base += length) {
    const std::int64_t n = std::min(length, end - base);
#pragma omp simd
    for (std::int64_t j = 0; j < n; ++j) {
      const float v = load(in[base + j]) - shift[j];
      a[j] += v;
      b[j] += v * v;
    }
  }
}

// The normalised value before storage rounding; forward and backward both use this one function, so that
// the fused ReLU's mask can be recomputed from x in backward instead of reading the output again.
inline float normalised(float x, float scale, float shift) { return x * scale + shift; }

// The incoming gradient where the fused ReLU let the value through (v > 0; a NaN output passes nothing).
inline float relu_masked(float g, float x, float scale, float shift, bool relu) {
  return (relu & !(normalised(x, scale, shift) > 0.0f)) ? 0.0f : g;
}

// Sums of g and g * (x - mean) (x-hat before the inv_std factor), g masked by the fused ReLU.
template <class T>
MPX_VECTOR_CLONES void gradient_sums(const T* dy, const T* x, const float* mean, const float* scale,
                                     const float* shift, std::int64_t length, std::int64_t begin, std::int64_t end,
                                     bool relu, float* a, float* b) {
  for (std::int64_t j = 0; j < length; ++j) a[j] = b[j] = 0.0f;
  for (std::int64_t base = begin; base < end; base += length) {
    const std::int64_t n = std::min(length, end - base);
#pragma omp simd
    for (std::int64_t j = 0; j < n; ++j) {
      const float xi = load(x[base + j]);
      const float g = relu_masked(load(dy[base + j]), xi, scale[j], shift[j], relu);
      a[j] += g;
      b[j] += g * (xi - mean[j]);
    }
  }
}

// y = x * scale + shift per channel, optionally max(0, .), over elements [begin, end).
template <class T>
MPX_VECTOR_CLONES void scale_shift_rows(const T* in, T* out, const float* scale, const float* shift,
                                        std::int64_t length, std::int64_t begin, std::int64_t end, bool relu) {
  for (std::int64_t base = begin; base < end; base += length) {
    const std::int64_t n = std::min(length, end - base);
#pragma omp simd
    for (std::int64_t j = 0; j < n; ++j) {
      const float v = normalised(load(in[base + j]), scale[j], shift[j]);
      store(out + base + j, relu && v <= 0.0f ? 0.0f : v);  // a NaN propagates through the ReLU
    }
  }
}

// dx = scale * (g - mean_g - x_hat * mean_g_xhat) over elements [begin, end), g masked by the fused ReLU.
// `k` holds the per-channel factors, each repeated over the period: mean, inv_std, scale, shift, mean_g,
// mean_g_xhat.
struct GradientFactors {
  const float *mean, *inv_std, *scale, *shift, *mean_dy, *mean_dy_xhat;
};
template <class T>
MPX_VECTOR_CLONES void input_gradient_rows(const T* dy, const T* x, GradientFactors k, T* out, std::int64_t length,
                                           std::int64_t begin, std::int64_t end, bool relu) {
  for (std::int64_t base = begin; base < end; base += length) {
    const std::int64_t n = std::min(length, end - base);
#pragma omp simd
    for (std::int64_t j = 0; j < n; ++j) {
      const float xi = load(x[base + j]);
      const float g = relu_masked(load(dy[base + j]), xi, k.scale[j], k.shift[j], relu);
      const float xhat = (xi - k.mean[j]) * k.inv_std[j];
      store(out + base + j, k.scale[j] * (g - k.mean_dy[j] - xhat * k.mean_dy_xhat[j]));
    }
  }
}
}  // namespace

namespace {
// y = x * scale + shift with scale = gamma * inv_std and shift = beta - mean * scale: forward and
// backward derive them with this one function, so backward's fused-ReLU mask matches forward's output.
void scale_and_shift(const BatchNormState& s, std::vector<float>& scale, std::vector<float>& shift) {
  const auto channels = static_cast<std::size_t>(s.gamma.numel());
  const float* gamma = s.gamma.data_as<float>();
  const float* beta = s.beta.data_as<float>();
  const float* mean = s.mean.data_as<float>();
  const float* inv_std = s.inv_std.data_as<float>();
  scale.resize(channels);
  shift.resize(channels);
  for (std::size_t c = 0; c < channels; ++c) {
    scale[c] = gamma[c] * inv_std[c];
    shift[c] = beta[c] - mean[c] * scale[c];
  }
}

template <class T>
void batch_norm_forward_impl(const Tensor& x, const BatchNormArgs& args, const BatchNormState& s, const Tensor& y) {
  const std::int64_t channels = s.gamma.numel();
  const std::int64_t rows = x.numel() / channels;
  const auto count = static_cast<double>(rows);
  const std::size_t c_count = static_cast<std::size_t>(channels);
  const T* in = elements<T>(x);
  const Period period = period_for(channels);
  float* mean = s.mean.data_as<float>();
  float* inv_std = s.inv_std.data_as<float>();
  float* running_mean = s.running_mean.data_as<float>();
  float* running_var = s.running_var.data_as<float>();
  if (args.training) {
    std::vector<double> sum(c_count, 0.0), sum_sq(c_count, 0.0);
    // Shifted by the first row's values so that FP32 partial sums of squares do not cancel.
    std::vector<float> shift(c_count);
    for (std::int64_t c = 0; c < channels; ++c) shift[static_cast<std::size_t>(c)] = load(in[c]);
    const std::vector<float> shift_rep = repeated(shift.data(), period);
    per_channel_sums_impl(rows, period, [&](std::int64_t begin, std::int64_t end, float* a, float* b) {
      moment_sums(in, shift_rep.data(), period.length, begin, end, a, b);
    }, sum, sum_sq);
    for (std::int64_t c = 0; c < channels; ++c) {  // back to moments of x
      const double k = shift[static_cast<std::size_t>(c)];
      sum_sq[c] += 2 * k * sum[c] + count * k * k;
      sum[c] += count * k;
    }
    for (std::int64_t c = 0; c < channels; ++c) {
      const double m = sum[c] / count;
      const double var = std::max(0.0, sum_sq[c] / count - m * m);  // biased: used to normalise
      mean[c] = static_cast<float>(m);
      inv_std[c] = static_cast<float>(1.0 / std::sqrt(var + args.eps));
      const double unbiased = rows > 1 ? var * count / (count - 1) : var;  // what PyTorch keeps as running_var
      if (!args.update_running) continue;
      running_mean[c] = static_cast<float>((1 - args.momentum) * running_mean[c] + args.momentum * m);
      running_var[c] = static_cast<float>((1 - args.momentum) * running_var[c] + args.momentum * unbiased);
    }
  } else {
    for (std::int64_t c = 0; c < channels; ++c) {
      mean[c] = running_mean[c];
      inv_std[c] = 1.0f / std::sqrt(running_var[c] + args.eps);
    }
  }
  T* out = mutable_elements<T>(y);
  std::vector<float> scale, shift;
  scale_and_shift(s, scale, shift);
  const std::vector<float> scale_rep = repeated(scale.data(), period), shift_rep = repeated(shift.data(), period);
  mpx::detail::parallel_ranges(rows, 4096, [&](std::int64_t begin, std::int64_t end) {
    scale_shift_rows(in, out, scale_rep.data(), shift_rep.data(), period.length, begin * channels, end * channels,
                     args.relu);
  });
}

template <class T>
void batch_norm_backward_impl(const Tensor& x_tensor, const Tensor& dy, const BatchNormArgs& args,
                              const BatchNormState& s, const Tensor& dx, const Tensor& dgamma, const Tensor& dbeta) {
  const std::int64_t channels = s.gamma.numel();
  const std::int64_t rows = dy.numel() / channels;
  const auto count = static_cast<double>(rows);
  const std::size_t c_count = static_cast<std::size_t>(channels);
  const T* dy_data = elements<T>(dy);
  const T* x = elements<T>(x_tensor);
  const Period period = period_for(channels);
  std::vector<float> scale_c, shift_c;
  scale_and_shift(s, scale_c, shift_c);
  const std::vector<float> mean = repeated(s.mean.data_as<float>(), period), scale = repeated(scale_c.data(), period),
                           shift = repeated(shift_c.data(), period);
  // With the fused ReLU the incoming gradient passes only where the output was positive, which is
  // recomputed from x (the forward's scale and shift, the same function) rather than read back from y.
  std::vector<double> sum_dy(c_count, 0.0), sum_dy_xhat(c_count, 0.0);
  per_channel_sums_impl(rows, period, [&](std::int64_t begin, std::int64_t end, float* a, float* b) {
    // x-hat: times inv_std below
    gradient_sums(dy_data, x, mean.data(), scale.data(), shift.data(), period.length, begin, end, args.relu, a, b);
  }, sum_dy, sum_dy_xhat);
  const float* inv_std = s.inv_std.data_as<float>();
  for (std::int64_t c = 0; c < channels; ++c) sum_dy_xhat[c] *= inv_std[c];
  std::vector<float> mean_dy(c_count), mean_dy_xhat(c_count);
  for (std::int64_t c = 0; c < channels; ++c) {
    dgamma.data_as<float>()[c] = static_cast<float>(sum_dy_xhat[c]);
    dbeta.data_as<float>()[c] = static_cast<float>(sum_dy[c]);
    mean_dy[c] = static_cast<float>(sum_dy[c] / count);
    mean_dy_xhat[c] = static_cast<float>(sum_dy_xhat[c] / count);
  }
  T* out = mutable_elements<T>(dx);
  const std::vector<float> inv_std_rep = repeated(inv_std, period), mean_dy_rep = repeated(mean_dy.data(), period),
                           mean_dy_xhat_rep = repeated(mean_dy_xhat.data(), period);
  const GradientFactors factors{mean.data(),  inv_std_rep.data(), scale.data(), shift.data(), mean_dy_rep.data(),
                                mean_dy_xhat_rep.data()};
  mpx::detail::parallel_ranges(rows, 4096, [&](std::int64_t begin, std::int64_t end) {
    input_gradient_rows(dy_data, x, factors, out, period.length, begin * channels, end * channels, args.relu);
  });
}
}  // namespace

void CpuBackend::batch_norm_forward(const Tensor& x, const BatchNormArgs& args, const BatchNormState& state,
                                    const Tensor& y) {
  with_storage(x.dtype(), [&](auto tag) { batch_norm_forward_impl<decltype(tag)>(x, args, state, y); });
}

void CpuBackend::batch_norm_backward(const Tensor& x, const Tensor& dy, const BatchNormArgs& args,
                                     const BatchNormState& state, const Tensor& dx, const Tensor& dgamma,
                                     const Tensor& dbeta) {
  with_storage(dy.dtype(), [&](auto tag) {
    batch_norm_backward_impl<decltype(tag)>(x, dy, args, state, dx, dgamma, dbeta);
  });
}

namespace {
// Rows [begin, end) of LayerNorm forward. Sums in double (vectorised: the reduction is reassociated across
// the vector's lanes, in a fixed order), x-hat and the affine map in FP32.
template <class T>
MPX_VECTOR_CLONES void layer_norm_forward_rows(const T* in, const float* gamma, const float* beta, float eps,
                                               std::int64_t features, std::int64_t begin, std::int64_t end,
                                               float* mean_out, float* inv_std, T* out) {
  for (std::int64_t r = begin; r < end; ++r) {
    const T* row = in + r * features;
    double sum = 0, sum_sq = 0;
#pragma omp simd reduction(+ : sum, sum_sq)
    for (std::int64_t c = 0; c < features; ++c) {
      const double v = load(row[c]);
      sum += v;
      sum_sq += v * v;
    }
    const double mean = sum / static_cast<double>(features);
    const double var = std::max(0.0, sum_sq / static_cast<double>(features) - mean * mean);
    const auto istd = static_cast<float>(1.0 / std::sqrt(var + eps));
    const auto m = static_cast<float>(mean);
    mean_out[r] = m;
    inv_std[r] = istd;
    T* y = out + r * features;
#pragma omp simd
    for (std::int64_t c = 0; c < features; ++c) store(y + c, (load(row[c]) - m) * istd * gamma[c] + beta[c]);
  }
}

template <class T>
void layer_norm_forward_impl(const Tensor& x, const Tensor& gamma_t, const Tensor& beta_t, float eps,
                             const Tensor& mean_t, const Tensor& inv_std_t, const Tensor& y) {
  const std::int64_t features = gamma_t.numel();
  const std::int64_t rows = x.numel() / features;
  const T* in = elements<T>(x);
  const float* gamma = gamma_t.data_as<float>();
  const float* beta = beta_t.data_as<float>();
  T* out = mutable_elements<T>(y);
  float* mean_out = mean_t.data_as<float>();
  float* inv_std = inv_std_t.data_as<float>();
  mpx::detail::parallel_ranges(rows, 65, [&](std::int64_t begin, std::int64_t end) {
    layer_norm_forward_rows(in, gamma, beta, eps, features, begin, end, mean_out, inv_std, out);
  });
}

// Rows [begin, end) of dx: x-hat is recomputed from x, mean and inv_std exactly as forward computed it (no
// FP32 copy kept); the two row sums in double, the rest in FP32.
template <class T>
MPX_VECTOR_CLONES void layer_norm_backward_rows(const T* in, const T* g, const float* mean, const float* inv_std,
                                                const float* gamma, std::int64_t features, std::int64_t begin,
                                                std::int64_t end, T* out) {
  for (std::int64_t r = begin; r < end; ++r) {
    const float m = mean[r], istd = inv_std[r];
    const T* xr = in + r * features;
    const T* gr = g + r * features;
    double sum_g = 0, sum_g_xhat = 0;
#pragma omp simd reduction(+ : sum_g, sum_g_xhat)
    for (std::int64_t c = 0; c < features; ++c) {
      const float xhat = (load(xr[c]) - m) * istd;
      const double gx = static_cast<double>(load(gr[c]) * gamma[c]);
      sum_g += gx;
      sum_g_xhat += gx * xhat;
    }
    const auto mean_g = static_cast<float>(sum_g / static_cast<double>(features));
    const auto mean_g_xhat = static_cast<float>(sum_g_xhat / static_cast<double>(features));
    T* dx = out + r * features;
#pragma omp simd
    for (std::int64_t c = 0; c < features; ++c) {
      const float xhat = (load(xr[c]) - m) * istd;
      store(dx + c, istd * (load(gr[c]) * gamma[c] - mean_g - xhat * mean_g_xhat));
    }
  }
}

// Columns [first, last) of dgamma and dbeta, each summed over the rows in order (the same sums whatever the
// thread count).
template <class T>
MPX_VECTOR_CLONES void layer_norm_parameter_grads(const T* in, const T* g, const float* mean, const float* inv_std,
                                                  std::int64_t rows, std::int64_t features, std::int64_t first,
                                                  std::int64_t last, float* dgamma, float* dbeta) {
  for (std::int64_t c = first; c < last; ++c) dgamma[c] = dbeta[c] = 0.0f;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float m = mean[r], istd = inv_std[r];
    const T* xr = in + r * features;
    const T* gr = g + r * features;
#pragma omp simd
    for (std::int64_t c = first; c < last; ++c) {
      const float gi = load(gr[c]);
      dgamma[c] += gi * ((load(xr[c]) - m) * istd);
      dbeta[c] += gi;
    }
  }
}

template <class T>
void layer_norm_backward_impl(const Tensor& x, const Tensor& dy, const Tensor& gamma_t, const Tensor& mean_t,
                              const Tensor& inv_std_t, const Tensor& dx, const Tensor& dgamma_t,
                              const Tensor& dbeta_t) {
  const std::int64_t features = gamma_t.numel();
  const std::int64_t rows = dy.numel() / features;
  const T* g = elements<T>(dy);
  const T* in = elements<T>(x);
  const float* mean = mean_t.data_as<float>();
  const float* inv_std = inv_std_t.data_as<float>();
  const float* gamma = gamma_t.data_as<float>();
  float* dgamma = dgamma_t.data_as<float>();
  float* dbeta = dbeta_t.data_as<float>();
  T* out = mutable_elements<T>(dx);
  // dx with the rows split between threads, then dgamma and dbeta with the columns split, in one region.
#pragma omp parallel if (rows > 64)
  {
    const auto t = static_cast<std::int64_t>(omp_get_thread_num()), n = static_cast<std::int64_t>(omp_get_num_threads());
    layer_norm_backward_rows(in, g, mean, inv_std, gamma, features, rows * t / n, rows * (t + 1) / n, out);
    layer_norm_parameter_grads(in, g, mean, inv_std, rows, features, features * t / n, features * (t + 1) / n,
                               dgamma, dbeta);
  }
}
}  // namespace

void CpuBackend::layer_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                                    const Tensor& mean, const Tensor& inv_std, const Tensor& y) {
  with_storage(x.dtype(), [&](auto tag) {
    layer_norm_forward_impl<decltype(tag)>(x, gamma, beta, eps, mean, inv_std, y);
  });
}

void CpuBackend::layer_norm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& mean,
                                     const Tensor& inv_std, const Tensor& dx, const Tensor& dgamma,
                                     const Tensor& dbeta) {
  with_storage(dy.dtype(), [&](auto tag) {
    layer_norm_backward_impl<decltype(tag)>(x, dy, gamma, mean, inv_std, dx, dgamma, dbeta);
  });
}

}  // namespace mpx::backend
