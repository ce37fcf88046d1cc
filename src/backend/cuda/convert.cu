// Bulk conversions on the GPU, bit-identical to the CPU paths because they run the same branch-free lanes
// (src/numeric/kernels/lanes.inl). Memory-bound: each thread moves 16-byte vectors on both sides (8 or
// 16 elements), in a grid-stride loop over a grid of a few blocks per SM; statistics, when asked for,
// are reduced per warp and added to one device record with atomics.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "check.h"
#include "mpx/backend/cuda.h"
#include "mpx/numeric/detail/formats.h"
#include "mpx/numeric/philox.h"

namespace mpx::cuda {

namespace {

namespace lanes {
#include "../../numeric/kernels/lanes.inl"
#include "../../numeric/kernels/stochastic_lanes.inl"
}  // namespace lanes

using lanes::LaneStats;

struct DeviceStats {
  unsigned long long nan, inf, overflow, underflow, subnormal;
  unsigned int max_abs_bits;
};

// One conversion: raw input element -> raw output element, and its statistics.
template <class Format>
struct NarrowOp {
  using In = std::uint32_t;
  using Out = std::conditional_t<Format::kWidth == 8, std::uint8_t, std::uint16_t>;
  bool saturate;
  __device__ Out operator()(In u, LaneStats& s, bool with_stats) const {
    std::uint32_t r;
    if constexpr (Format::kExpBits == 8) r = lanes::bfloat16_narrow_lane(u);
    else r = lanes::narrow_lane<Format>(u, saturate);
    if (with_stats) lanes::narrow_stats_lane<Format>(u, r, s);
    return static_cast<Out>(r);
  }
};

template <class Format>
struct WidenOp {
  using In = std::conditional_t<Format::kWidth == 8, std::uint8_t, std::uint16_t>;
  using Out = std::uint32_t;
  bool saturate;
  __device__ Out operator()(In h, LaneStats& s, bool with_stats) const {
    std::uint32_t f;
    if constexpr (Format::kExpBits == 8) f = lanes::bfloat16_widen_lane(h);
    else f = lanes::widen_lane<Format>(h);
    if (with_stats) lanes::widen_stats_lane(f, s);
    return f;
  }
};

template <class FromFormat, class ToFormat>
struct ViaFloatOp {
  using In = std::uint16_t;
  using Out = std::uint16_t;
  bool saturate;
  __device__ Out operator()(In h, LaneStats& s, bool with_stats) const {
    LaneStats unused;
    const std::uint32_t wide = WidenOp<FromFormat>{saturate}(h, unused, false);
    return NarrowOp<ToFormat>{saturate}(wide, s, with_stats);
  }
};

__device__ void flush_stats(const LaneStats& s, DeviceStats* out) {
  unsigned int v[6] = {s.nan, s.inf, s.overflow, s.underflow, s.subnormal, s.max_abs_bits};
  for (int offset = 16; offset > 0; offset /= 2) {
    for (int k = 0; k < 5; ++k) v[k] += __shfl_down_sync(0xFFFFFFFFu, v[k], offset);
    v[5] = max(v[5], __shfl_down_sync(0xFFFFFFFFu, v[5], offset));
  }
  if ((threadIdx.x & 31) == 0) {
    if (v[0]) atomicAdd(&out->nan, static_cast<unsigned long long>(v[0]));
    if (v[1]) atomicAdd(&out->inf, static_cast<unsigned long long>(v[1]));
    if (v[2]) atomicAdd(&out->overflow, static_cast<unsigned long long>(v[2]));
    if (v[3]) atomicAdd(&out->underflow, static_cast<unsigned long long>(v[3]));
    if (v[4]) atomicAdd(&out->subnormal, static_cast<unsigned long long>(v[4]));
    atomicMax(&out->max_abs_bits, v[5]);
  }
}

constexpr int kThreads = 256;

template <class T>
constexpr int vector_elements() {
  return 16 / sizeof(T);
}

// kVec elements per thread step: 16 bytes on the narrower side, whole 16-byte vectors on both sides.
template <class Op, bool kStats>
__global__ void __launch_bounds__(kThreads) convert_kernel(const typename Op::In* __restrict__ src,
                                                          typename Op::Out* __restrict__ dst, std::size_t count,
                                                          bool vectorised, Op op, DeviceStats* stats) {
  using In = typename Op::In;
  using Out = typename Op::Out;
  constexpr int kVec = sizeof(In) < sizeof(Out) ? vector_elements<In>() : vector_elements<Out>();
  constexpr int kInVectors = kVec * sizeof(In) / 16;
  constexpr int kOutVectors = kVec * sizeof(Out) / 16;
  LaneStats s;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  const std::size_t first = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  std::size_t scalar_begin = 0;
  if (vectorised) {
    const std::size_t groups = count / kVec;
    const uint4* in_vectors = reinterpret_cast<const uint4*>(src);
    uint4* out_vectors = reinterpret_cast<uint4*>(dst);
    for (std::size_t g = first; g < groups; g += stride) {
      uint4 in_raw[kInVectors];
      uint4 out_raw[kOutVectors];
#pragma unroll
      for (int v = 0; v < kInVectors; ++v) in_raw[v] = in_vectors[g * kInVectors + v];
      const In* in = reinterpret_cast<const In*>(in_raw);
      Out* out = reinterpret_cast<Out*>(out_raw);
#pragma unroll
      for (int k = 0; k < kVec; ++k) out[k] = op(in[k], s, kStats);
#pragma unroll
      for (int v = 0; v < kOutVectors; ++v) out_vectors[g * kOutVectors + v] = out_raw[v];
    }
    scalar_begin = groups * kVec;
  }
  for (std::size_t i = scalar_begin + first; i < count; i += stride) dst[i] = op(src[i], s, kStats);
  if constexpr (kStats) flush_stats(s, stats);
}

int grid_for(std::size_t work_items) {
  static_assert(kThreads % 32 == 0);
  int device = 0, sms = 0;
  MPX_CUDA_CHECK(cudaGetDevice(&device));
  MPX_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const std::size_t wanted = (work_items + kThreads - 1) / kThreads;
  const std::size_t cap = static_cast<std::size_t>(sms) * 8;
  return static_cast<int>(wanted < 1 ? 1 : (wanted < cap ? wanted : cap));
}

template <class Op>
void launch(const void* src, void* dst, std::size_t count, Op op, numeric::ConversionStats* stats,
            const char* kernel_name) {
  using In = typename Op::In;
  using Out = typename Op::Out;
  const bool aligned = reinterpret_cast<std::uintptr_t>(src) % 16 == 0 && reinterpret_cast<std::uintptr_t>(dst) % 16 == 0;
  const int grid = grid_for(aligned ? count / 8 + 1 : count);
  const auto* in = static_cast<const In*>(src);
  auto* out = static_cast<Out*>(dst);
  if (stats == nullptr) {
    convert_kernel<Op, false><<<grid, kThreads>>>(in, out, count, aligned, op, nullptr);
    MPX_CUDA_CHECK_LAUNCH(kernel_name, count);
    MPX_CUDA_CHECK(cudaStreamSynchronize(nullptr));
    return;
  }
  DeviceBuffer record(sizeof(DeviceStats));
  MPX_CUDA_CHECK(cudaMemsetAsync(record.data(), 0, sizeof(DeviceStats), nullptr));
  convert_kernel<Op, true><<<grid, kThreads>>>(in, out, count, aligned, op, static_cast<DeviceStats*>(record.data()));
  MPX_CUDA_CHECK_LAUNCH(kernel_name, count);
  DeviceStats host{};
  record.copy_to_host(&host, sizeof(host));
  stats->elements = count;
  stats->nan = host.nan;
  stats->inf = host.inf;
  stats->overflow = host.overflow;
  stats->underflow = host.underflow;
  stats->subnormal = host.subnormal;
  std::memcpy(&stats->max_abs, &host.max_abs_bits, sizeof(float));
}

__global__ void stochastic_kernel(const std::uint32_t* __restrict__ src, std::uint16_t* __restrict__ dst,
                                  std::size_t count, std::uint64_t seed, std::uint64_t first_index, bool to_half) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    const std::uint32_t random = numeric::random_u32(seed, first_index + i);
    const std::uint32_t r = to_half ? lanes::half_stochastic_lane(src[i], random)
                                    : lanes::bfloat16_stochastic_lane(src[i], random);
    dst[i] = static_cast<std::uint16_t>(r);
  }
}

}  // namespace

void convert(const void* src, DType src_type, void* dst, DType dst_type, std::size_t count,
             numeric::Fp8Overflow fp8_overflow, numeric::ConversionStats* stats) {
  using namespace numeric::detail;
  if (!numeric::conversion_supported(src_type, dst_type)) {
    throw InvalidArgument("no conversion from " + std::string(name(src_type)) + " to " + std::string(name(dst_type)));
  }
  if (count > 0 && (src == nullptr || dst == nullptr)) {
    throw InvalidArgument("cuda::convert: null device pointer with " + std::to_string(count) + " elements");
  }
  if (stats) *stats = numeric::ConversionStats{};
  if (count == 0) return;
  const bool saturate = fp8_overflow == numeric::Fp8Overflow::saturate;
  auto is = [&](DType a, DType b) { return src_type == a && dst_type == b; };
  if (is(DType::f32, DType::f16)) launch(src, dst, count, NarrowOp<HalfFormat>{saturate}, stats, "f32_to_f16");
  else if (is(DType::f32, DType::bf16)) launch(src, dst, count, NarrowOp<BFloat16Format>{saturate}, stats, "f32_to_bf16");
  else if (is(DType::f32, DType::f8_e4m3)) launch(src, dst, count, NarrowOp<E4M3Format>{saturate}, stats, "f32_to_e4m3");
  else if (is(DType::f32, DType::f8_e5m2)) launch(src, dst, count, NarrowOp<E5M2Format>{saturate}, stats, "f32_to_e5m2");
  else if (is(DType::f16, DType::f32)) launch(src, dst, count, WidenOp<HalfFormat>{saturate}, stats, "f16_to_f32");
  else if (is(DType::bf16, DType::f32)) launch(src, dst, count, WidenOp<BFloat16Format>{saturate}, stats, "bf16_to_f32");
  else if (is(DType::f8_e4m3, DType::f32)) launch(src, dst, count, WidenOp<E4M3Format>{saturate}, stats, "e4m3_to_f32");
  else if (is(DType::f8_e5m2, DType::f32)) launch(src, dst, count, WidenOp<E5M2Format>{saturate}, stats, "e5m2_to_f32");
  else if (is(DType::f16, DType::bf16)) launch(src, dst, count, ViaFloatOp<HalfFormat, BFloat16Format>{saturate}, stats, "f16_to_bf16");
  else launch(src, dst, count, ViaFloatOp<BFloat16Format, HalfFormat>{saturate}, stats, "bf16_to_f16");
}

void stochastic_round(const float* src, void* dst, DType dst_type, std::size_t count, std::uint64_t seed,
                      std::uint64_t first_index) {
  if (dst_type != DType::f16 && dst_type != DType::bf16) {
    throw InvalidArgument("stochastic rounding goes to f16 or bf16, not " + std::string(name(dst_type)));
  }
  if (count > 0 && (src == nullptr || dst == nullptr)) {
    throw InvalidArgument("cuda::stochastic_round: null device pointer with " + std::to_string(count) + " elements");
  }
  if (count == 0) return;
  stochastic_kernel<<<grid_for(count), kThreads>>>(reinterpret_cast<const std::uint32_t*>(src),
                                                   static_cast<std::uint16_t*>(dst), count, seed, first_index,
                                                   dst_type == DType::f16);
  MPX_CUDA_CHECK_LAUNCH("stochastic_round", count);
  MPX_CUDA_CHECK(cudaStreamSynchronize(nullptr));
}

}  // namespace mpx::cuda
