// CpuBackend on oneDNN 2.6: plain row-major / NHWC / OIHW memory, primitives cached by shape and dtype.
// oneDNN 2.6 has BF16 kernels only on CPUs with AVX-512 (avx512_core); elsewhere (an AVX2-only Zen 3, say)
// BF16 operands are widened to FP32 exactly and a BF16 result is rounded once (nearest-even) from the FP32
// sums: the same products and FP32 accumulation as the native kernels, at FP32 speed.
#include <dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <string>
#include <unordered_map>
#include <vector>

#include "mpx/backend/cpu_backend.h"
#include "mpx/core/error.h"
#include "mpx/numeric/convert.h"

namespace mpx::backend {

namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

dt to_dnnl(DType d) {
  switch (d) {
    case DType::f32: return dt::f32;
    case DType::bf16: return dt::bf16;
    default:
      throw InvalidArgument("the CPU backend multiplies f32 or bf16, not " + std::string(name(d)) +
                            " (widen FP16 to FP32 first)");
  }
}

// The output dtype a primitive may write: f32, or bf16 when it reads bf16.
dt output_dnnl(DType input, DType output) {
  if (output == DType::f32) return dt::f32;
  if (output == DType::bf16 && input == DType::bf16) return dt::bf16;
  throw InvalidArgument("the CPU backend writes f32, or bf16 from bf16 inputs; not " + std::string(name(output)) +
                        " from " + std::string(name(input)));
}

std::string key_of(const ConvShape& s, DType d) {
  return std::to_string(s.batch) + "," + std::to_string(s.in_channels) + "," + std::to_string(s.height) + "," +
         std::to_string(s.width) + "," + std::to_string(s.out_channels) + "," + std::to_string(s.kernel) + "," +
         std::to_string(s.stride) + "," + std::to_string(s.padding) + "," + std::string(name(d));
}

// oneDNN throws dnnl::error; turn it into an mpx::Error naming the operation.
template <class Fn>
auto checked(const char* what, Fn&& fn) {
  try {
    return fn();
  } catch (const dnnl::error& e) {
    throw Error(std::string("oneDNN ") + what + " failed: " + e.what());
  }
}

// Whether this CPU's oneDNN builds BF16 matmul and convolution primitives (else it throws "could not create
// a primitive descriptor iterator"). A property of the CPU: probed once per process.
bool probe_onednn_bf16(const dnnl::engine& engine) {
  try {
    const dnnl::memory::desc a({2, 2}, dt::bf16, tag::ab), c({2, 2}, dt::f32, tag::ab);
    dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, a, c), engine);
    const dnnl::memory::desc src({1, 2, 4, 4}, dt::bf16, tag::nhwc), w({2, 2, 3, 3}, dt::bf16, tag::any);
    const dnnl::memory::desc bias({2}, dt::f32, tag::x), dst({1, 2, 4, 4}, dt::bf16, tag::nhwc);
    dnnl::convolution_forward::primitive_desc(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, w,
                                        bias, dst, {1, 1}, {1, 1}, {1, 1}),
        engine);
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}

bool onednn_has_bf16(const dnnl::engine& engine) {
  static const bool has_bf16 = probe_onednn_bf16(engine);
  return has_bf16;
}

// FP32 copies of BF16 operands (and an FP32 result to round) for CPUs without oneDNN BF16 kernels.
class Bf16Widening {
 public:
  const void* widen(int slot, const void* bf16, std::int64_t count) {
    std::vector<float>& buffer = resized(slot, count);
    numeric::convert(bf16, DType::bf16, buffer.data(), DType::f32, static_cast<std::size_t>(count));
    return buffer.data();
  }
  void* result(int slot, std::int64_t count) { return resized(slot, count).data(); }
  void round_into(int slot, void* bf16, std::int64_t count) const {
    numeric::convert(buffers_[static_cast<std::size_t>(slot)].data(), DType::f32, bf16, DType::bf16,
                     static_cast<std::size_t>(count));
  }

 private:
  std::vector<float>& resized(int slot, std::int64_t count) {
    std::vector<float>& buffer = buffers_[static_cast<std::size_t>(slot)];
    if (buffer.size() < static_cast<std::size_t>(count)) buffer.resize(static_cast<std::size_t>(count));
    return buffer;
  }
  std::vector<float> buffers_[3];
};

void note_widened(std::string& implementation) {
  constexpr const char* kNote = " (bf16 widened to f32: no oneDNN BF16 kernels on this CPU)";
  if (!implementation.ends_with(kNote)) implementation += kNote;
}

}  // namespace

struct CpuBackend::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  bool native_bf16 = onednn_has_bf16(engine);
  Bf16Widening widening;
  std::unordered_map<std::string, dnnl::matmul> matmuls;
  std::unordered_map<std::string, dnnl::convolution_forward> conv_forward;
  std::unordered_map<std::string, dnnl::convolution_forward::primitive_desc> conv_forward_pd;
  std::unordered_map<std::string, dnnl::convolution_backward_data> conv_backward_data;
  std::unordered_map<std::string, dnnl::convolution_backward_weights> conv_backward_weights;
  std::string last_impl;

  struct ConvDescs {
    dnnl::memory::desc src, weights, bias, dst;
    dnnl::memory::dims strides, padding;
  };
  ConvDescs conv_descs(const ConvShape& s, DType input, DType output = DType::f32) const {
    const dt in = to_dnnl(input);
    ConvDescs d;
    d.src = dnnl::memory::desc({s.batch, s.in_channels, s.height, s.width}, in, tag::nhwc);
    d.weights = dnnl::memory::desc({s.out_channels, s.in_channels, s.kernel, s.kernel}, in, tag::oihw);
    d.bias = dnnl::memory::desc({s.out_channels}, dt::f32, tag::x);
    d.dst = dnnl::memory::desc({s.batch, s.out_channels, s.out_height(), s.out_width()}, output_dnnl(input, output),
                               tag::nhwc);
    d.strides = {s.stride, s.stride};
    d.padding = {s.padding, s.padding};
    return d;
  }
  std::unordered_map<std::string, dnnl::memory> scratch;
  // A memory of `desc` kept per key, so repeated steps do not reallocate.
  dnnl::memory scratch_memory(const std::string& key, const dnnl::memory::desc& desc) {
    auto it = scratch.find(key);
    if (it == scratch.end() || it->second.get_desc() != desc) {
      it = scratch.insert_or_assign(key, dnnl::memory(desc, engine)).first;
    }
    return it->second;
  }
  // User memory as the primitive wants it: the same memory when the layouts agree, else a reordered copy.
  dnnl::memory as_layout(const std::string& key, const dnnl::memory& user, const dnnl::memory::desc& wanted) {
    if (user.get_desc() == wanted) return user;
    dnnl::memory source = user;
    dnnl::memory converted = scratch_memory(key, wanted);
    dnnl::reorder(source, converted).execute(stream, source, converted);
    return converted;
  }

  // The forward primitive's description, also the hint for the backward ones (which then share its
  // weights layout whatever the forward's output dtype).
  dnnl::convolution_forward::primitive_desc forward_pd(const ConvShape& s, DType input, DType output = DType::f32) {
    const std::string key = key_of(s, input) + ">" + std::string(name(output));
    auto it = conv_forward_pd.find(key);
    if (it != conv_forward_pd.end()) return it->second;
    const ConvDescs d = conv_descs(s, input, output);
    // Weights in the layout the fastest implementation wants (tag::any); plain OIHW picks the reference one.
    const dnnl::memory::desc any_weights(d.weights.dims(), d.weights.data_type(), tag::any);
    auto pd = dnnl::convolution_forward::primitive_desc(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, d.src,
                                        any_weights, d.bias, d.dst, d.strides, d.padding, d.padding),
        engine);
    conv_forward_pd.emplace(key, pd);
    return pd;
  }
};

CpuBackend::CpuBackend() : impl_(checked("engine creation", [] { return std::make_unique<Impl>(); })) {}
CpuBackend::~CpuBackend() = default;

std::string CpuBackend::last_implementation() const { return impl_->last_impl; }
bool CpuBackend::native_bf16() const { return impl_->native_bf16; }
void CpuBackend::force_bf16_widening() { impl_->native_bf16 = false; }

void CpuBackend::matmul(const void* a, bool transpose_a, const void* b, bool transpose_b, DType input, void* c,
                        std::int64_t m, std::int64_t n, std::int64_t k, const float* bias, bool accumulate,
                        DType output) {
  if (input == DType::bf16 && !impl_->native_bf16) {
    Bf16Widening& w = impl_->widening;
    const void* a32 = w.widen(0, a, m * k);
    const void* b32 = w.widen(1, b, k * n);
    if (output != DType::bf16) {
      matmul(a32, transpose_a, b32, transpose_b, DType::f32, c, m, n, k, bias, accumulate, output);
      return note_widened(impl_->last_impl);
    }
    void* c32 = accumulate ? const_cast<void*>(w.widen(2, c, m * n)) : w.result(2, m * n);
    matmul(a32, transpose_a, b32, transpose_b, DType::f32, c32, m, n, k, bias, accumulate, DType::f32);
    w.round_into(2, c, m * n);
    return note_widened(impl_->last_impl);
  }
  checked("matmul", [&] {
    const dt in = to_dnnl(input);
    const dt out = output_dnnl(input, output);
    const std::string key = std::to_string(m) + "," + std::to_string(n) + "," + std::to_string(k) + "," +
                            std::to_string(transpose_a) + std::to_string(transpose_b) + std::to_string(bias != nullptr) +
                            std::to_string(accumulate) + std::string(name(input)) + ">" + std::string(name(output));
    const dnnl::memory::desc a_md({m, k}, in, transpose_a ? dnnl::memory::dims{1, m} : dnnl::memory::dims{k, 1});
    const dnnl::memory::desc b_md({k, n}, in, transpose_b ? dnnl::memory::dims{1, k} : dnnl::memory::dims{n, 1});
    const dnnl::memory::desc c_md({m, n}, out, tag::ab);
    const dnnl::memory::desc bias_md({1, n}, dt::f32, tag::ab);
    auto it = impl_->matmuls.find(key);
    if (it == impl_->matmuls.end()) {
      dnnl::primitive_attr attr;
      if (accumulate) {
        dnnl::post_ops ops;
        ops.append_sum(1.0f);
        attr.set_post_ops(ops);
      }
      const auto desc = bias ? dnnl::matmul::desc(a_md, b_md, bias_md, c_md) : dnnl::matmul::desc(a_md, b_md, c_md);
      const dnnl::matmul::primitive_desc pd(desc, attr, impl_->engine);
      impl_->last_impl = pd.impl_info_str();
      it = impl_->matmuls.emplace(key, dnnl::matmul(pd)).first;
    }
    std::unordered_map<int, dnnl::memory> args = {
        {DNNL_ARG_SRC, dnnl::memory(a_md, impl_->engine, const_cast<void*>(a))},
        {DNNL_ARG_WEIGHTS, dnnl::memory(b_md, impl_->engine, const_cast<void*>(b))},
        {DNNL_ARG_DST, dnnl::memory(c_md, impl_->engine, c)}};
    if (bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(bias_md, impl_->engine, const_cast<float*>(bias)));
    it->second.execute(impl_->stream, args);
    impl_->stream.wait();
    return 0;
  });
}

void CpuBackend::conv2d_forward(const ConvShape& s, const void* src, const void* weights, DType input,
                                const float* bias, void* dst, DType output) {
  if (input == DType::bf16 && !impl_->native_bf16) {
    Bf16Widening& w = impl_->widening;
    const void* src32 = w.widen(0, src, s.batch * s.height * s.width * s.in_channels);
    const void* weights32 = w.widen(1, weights, s.out_channels * s.in_channels * s.kernel * s.kernel);
    if (output != DType::bf16) return conv2d_forward(s, src32, weights32, DType::f32, bias, dst, output);
    const std::int64_t dst_count = s.batch * s.out_height() * s.out_width() * s.out_channels;
    conv2d_forward(s, src32, weights32, DType::f32, bias, w.result(2, dst_count), DType::f32);
    return w.round_into(2, dst, dst_count);
  }
  checked("convolution forward", [&] {
    const std::string key = key_of(s, input) + ">" + std::string(name(output));
    const auto pd = impl_->forward_pd(s, input, output);
    auto it = impl_->conv_forward.find(key);
    if (it == impl_->conv_forward.end()) {
      impl_->last_impl = pd.impl_info_str();
      it = impl_->conv_forward.emplace(key, dnnl::convolution_forward(pd)).first;
    }
    const auto d = impl_->conv_descs(s, input, output);
    std::vector<float> zero_bias;
    if (!bias) zero_bias.assign(static_cast<std::size_t>(s.out_channels), 0.0f);
    const dnnl::memory user_weights(d.weights, impl_->engine, const_cast<void*>(weights));
    const dnnl::memory w = impl_->as_layout("fwd-weights:" + key, user_weights, pd.weights_desc());
    it->second.execute(impl_->stream,
                       {{DNNL_ARG_SRC, dnnl::memory(d.src, impl_->engine, const_cast<void*>(src))},
                        {DNNL_ARG_WEIGHTS, w},
                        {DNNL_ARG_BIAS, dnnl::memory(d.bias, impl_->engine,
                                                     const_cast<float*>(bias ? bias : zero_bias.data()))},
                        {DNNL_ARG_DST, dnnl::memory(d.dst, impl_->engine, dst)}});
    impl_->stream.wait();
    return 0;
  });
}

void CpuBackend::conv2d_backward_data(const ConvShape& s, const void* diff_dst, const void* weights, DType input,
                                      void* diff_src, DType output) {
  if (input == DType::bf16 && !impl_->native_bf16) {
    Bf16Widening& w = impl_->widening;
    const void* diff_dst32 = w.widen(0, diff_dst, s.batch * s.out_height() * s.out_width() * s.out_channels);
    const void* weights32 = w.widen(1, weights, s.out_channels * s.in_channels * s.kernel * s.kernel);
    if (output != DType::bf16) return conv2d_backward_data(s, diff_dst32, weights32, DType::f32, diff_src, output);
    const std::int64_t src_count = s.batch * s.height * s.width * s.in_channels;
    conv2d_backward_data(s, diff_dst32, weights32, DType::f32, w.result(2, src_count), DType::f32);
    return w.round_into(2, diff_src, src_count);
  }
  checked("convolution backward data", [&] {
    const std::string key = key_of(s, input) + ">" + std::string(name(output));
    auto d = impl_->conv_descs(s, input);
    const dnnl::memory::desc diff_src_md({s.batch, s.in_channels, s.height, s.width}, output_dnnl(input, output),
                                         tag::nhwc);
    const dnnl::memory::desc diff_dst_md({s.batch, s.out_channels, s.out_height(), s.out_width()}, to_dnnl(input),
                                         tag::nhwc);
    auto it = impl_->conv_backward_data.find(key);
    if (it == impl_->conv_backward_data.end()) {
      const dnnl::memory::desc any_weights(d.weights.dims(), d.weights.data_type(), tag::any);
      const auto pd = dnnl::convolution_backward_data::primitive_desc(
          dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_direct, diff_src_md, any_weights,
                                                diff_dst_md, d.strides, d.padding, d.padding),
          impl_->engine, impl_->forward_pd(s, input));
      impl_->last_impl = pd.impl_info_str();
      it = impl_->conv_backward_data.emplace(key, dnnl::convolution_backward_data(pd)).first;
    }
    const auto pd = dnnl::convolution_backward_data::primitive_desc(const_cast<dnnl_primitive_desc_t>(it->second.get_primitive_desc()));
    const dnnl::memory user_weights(d.weights, impl_->engine, const_cast<void*>(weights));
    const dnnl::memory w = impl_->as_layout("bwd-data-weights:" + key, user_weights, pd.weights_desc());
    it->second.execute(impl_->stream,
                       {{DNNL_ARG_DIFF_DST, dnnl::memory(diff_dst_md, impl_->engine, const_cast<void*>(diff_dst))},
                        {DNNL_ARG_WEIGHTS, w},
                        {DNNL_ARG_DIFF_SRC, dnnl::memory(diff_src_md, impl_->engine, diff_src)}});
    impl_->stream.wait();
    return 0;
  });
}

void CpuBackend::conv2d_backward_weights(const ConvShape& s, const void* src, const void* diff_dst, DType input,
                                         float* diff_weights, float* diff_bias) {
  if (input == DType::bf16 && !impl_->native_bf16) {
    Bf16Widening& w = impl_->widening;
    const void* src32 = w.widen(0, src, s.batch * s.height * s.width * s.in_channels);
    const void* diff_dst32 = w.widen(1, diff_dst, s.batch * s.out_height() * s.out_width() * s.out_channels);
    return conv2d_backward_weights(s, src32, diff_dst32, DType::f32, diff_weights, diff_bias);
  }
  checked("convolution backward weights", [&] {
    const std::string key = key_of(s, input);
    auto d = impl_->conv_descs(s, input);
    const dnnl::memory::desc diff_weights_md({s.out_channels, s.in_channels, s.kernel, s.kernel}, dt::f32, tag::oihw);
    const dnnl::memory::desc diff_dst_md({s.batch, s.out_channels, s.out_height(), s.out_width()}, to_dnnl(input),
                                         tag::nhwc);
    auto it = impl_->conv_backward_weights.find(key);
    if (it == impl_->conv_backward_weights.end()) {
      const dnnl::memory::desc any_diff_weights(diff_weights_md.dims(), dt::f32, tag::any);
      const auto pd = dnnl::convolution_backward_weights::primitive_desc(
          dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, d.src, any_diff_weights,
                                                   d.bias, diff_dst_md, d.strides, d.padding, d.padding),
          impl_->engine, impl_->forward_pd(s, input));
      impl_->last_impl = pd.impl_info_str();
      it = impl_->conv_backward_weights.emplace(key, dnnl::convolution_backward_weights(pd)).first;
    }
    std::vector<float> scratch_bias;
    if (!diff_bias) scratch_bias.resize(static_cast<std::size_t>(s.out_channels));
    const auto pd = dnnl::convolution_backward_weights::primitive_desc(const_cast<dnnl_primitive_desc_t>(it->second.get_primitive_desc()));
    const dnnl::memory user_diff_weights(diff_weights_md, impl_->engine, diff_weights);
    const bool same_layout = pd.diff_weights_desc() == diff_weights_md;
    dnnl::memory user_diff = user_diff_weights;
    dnnl::memory dw =
        same_layout ? user_diff_weights : impl_->scratch_memory("bwd-weights:" + key, pd.diff_weights_desc());
    it->second.execute(impl_->stream,
                       {{DNNL_ARG_SRC, dnnl::memory(d.src, impl_->engine, const_cast<void*>(src))},
                        {DNNL_ARG_DIFF_DST, dnnl::memory(diff_dst_md, impl_->engine, const_cast<void*>(diff_dst))},
                        {DNNL_ARG_DIFF_WEIGHTS, dw},
                        {DNNL_ARG_DIFF_BIAS,
                         dnnl::memory(d.bias, impl_->engine, diff_bias ? diff_bias : scratch_bias.data())}});
    if (!same_layout) dnnl::reorder(dw, user_diff).execute(impl_->stream, dw, user_diff);
    impl_->stream.wait();
    return 0;
  });
}

double time_direct_onednn_matmul(std::int64_t m, std::int64_t n, std::int64_t k, DType input, int repeats) {
  return checked("direct matmul", [&] {
    dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    dnnl::stream stream(engine);
    // Where oneDNN has no BF16 kernels the anchor is what it can do here: FP32 (what CpuBackend then runs).
    const DType runnable = input == DType::bf16 && !onednn_has_bf16(engine) ? DType::f32 : input;
    const dt in = to_dnnl(runnable);
    const dnnl::memory::desc a_md({m, k}, in, tag::ab), b_md({k, n}, in, tag::ab), c_md({m, n}, dt::f32, tag::ab);
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), engine);
    const dnnl::matmul matmul(pd);
    dnnl::memory a(a_md, engine), b(b_md, engine), c(c_md, engine);
    // Non-zero inputs: products of zeros can run faster than real data.
    auto fill = [](dnnl::memory& mem, std::size_t count, DType dtype) {
      if (dtype == DType::f32) {
        auto* p = static_cast<float*>(mem.get_data_handle());
        for (std::size_t i = 0; i < count; ++i) p[i] = static_cast<float>(i % 17) * 0.03125f - 0.25f;
      } else {
        auto* p = static_cast<std::uint16_t*>(mem.get_data_handle());
        for (std::size_t i = 0; i < count; ++i) p[i] = static_cast<std::uint16_t>(0x3F80 + (i % 17) * 3);
      }
    };
    fill(a, static_cast<std::size_t>(m * k), runnable);
    fill(b, static_cast<std::size_t>(k * n), runnable);
    std::vector<double> times;
    for (int r = -1; r < repeats; ++r) {
      const auto start = std::chrono::steady_clock::now();
      matmul.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
      stream.wait();
      if (r >= 0) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  });
}

}  // namespace mpx::backend
