// Bulk conversion: argument checks, the choice of CPU path, and the split of large arrays over threads.
#include "mpx/numeric/convert.h"

#include <omp.h>

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/kernel_table.h"
#include "mpx/core/cpu_features.h"
#include "mpx/core/error.h"

namespace mpx::numeric {

namespace {

using kernels::Direction;
using kernels::KernelArgs;
using kernels::KernelTable;

// Below this many elements a second thread costs more than it saves.
constexpr std::size_t kMinElementsPerThread = std::size_t{1} << 17;
// Streaming stores pay off once the output no longer fits in cache; below, the caller likely reads it soon.
constexpr std::size_t kStreamingMinBytes = std::size_t{16} << 20;
constexpr std::size_t kChunkGrain = 512;  // elements; keeps each thread's output 64-byte aligned

struct PathName {
  CpuPath path;
  std::string_view name;
};
constexpr PathName kPathNames[] = {
    {CpuPath::automatic, "auto"}, {CpuPath::scalar, "scalar"},           {CpuPath::avx2, "avx2"},
    {CpuPath::avx512, "avx512"},  {CpuPath::avx512_bf16, "avx512_bf16"},
};

const KernelTable* table_for(CpuPath path) {
  const CpuFeatures& cpu = cpu_features();
  const bool avx2 = cpu.avx2 && cpu.fma && cpu.f16c;
  const bool avx512 = avx2 && cpu.avx512f && cpu.avx512bw && cpu.avx512vl && cpu.avx512dq;
  switch (path) {
    case CpuPath::scalar: return &kernels::scalar_kernels();
    case CpuPath::avx2: return avx2 ? kernels::avx2_kernels() : nullptr;
    case CpuPath::avx512: return avx512 ? kernels::avx512_kernels() : nullptr;
    case CpuPath::avx512_bf16: return avx512 && cpu.avx512_bf16 ? kernels::avx512_bf16_kernels() : nullptr;
    case CpuPath::automatic: return table_for(best_cpu_path());
  }
  return nullptr;
}

bool find_direction(DType from, DType to, Direction& direction) {
  struct Entry {
    DType from, to;
    Direction direction;
  };
  constexpr Entry kDirections[] = {
      {DType::f32, DType::f16, Direction::f32_to_f16},         {DType::f32, DType::bf16, Direction::f32_to_bf16},
      {DType::f32, DType::f8_e4m3, Direction::f32_to_e4m3},    {DType::f32, DType::f8_e5m2, Direction::f32_to_e5m2},
      {DType::f16, DType::f32, Direction::f16_to_f32},         {DType::bf16, DType::f32, Direction::bf16_to_f32},
      {DType::f8_e4m3, DType::f32, Direction::e4m3_to_f32},    {DType::f8_e5m2, DType::f32, Direction::e5m2_to_f32},
      {DType::f16, DType::bf16, Direction::f16_to_bf16},       {DType::bf16, DType::f16, Direction::bf16_to_f16},
  };
  for (const Entry& e : kDirections) {
    if (e.from == from && e.to == to) {
      direction = e.direction;
      return true;
    }
  }
  return false;
}

bool overlaps(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes) {
  const auto pa = reinterpret_cast<std::uintptr_t>(a), pb = reinterpret_cast<std::uintptr_t>(b);
  return pa < pb + b_bytes && pb < pa + a_bytes;
}

// Conversions use the FPU (F16C, AVX512_BF16, the FP8 kernels' rounding additions), which honours MXCSR's
// rounding mode and its denormals-are-zero and flush-to-zero bits (ML code sometimes sets the latter).
// Force round-to-nearest and clear both bits for the duration, per thread, so that results never depend
// on the caller's mode.
class ExactFloatMode {
 public:
#if defined(__x86_64__)
  // Clears DAZ (0x0040), FTZ (0x8000) and the rounding-control bits (0x6000: 0 is round-to-nearest).
  ExactFloatMode() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ & ~(0x0040u | 0x8000u | 0x6000u)); }
  ~ExactFloatMode() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
 public:
  ExactFloatMode(const ExactFloatMode&) = delete;
  ExactFloatMode& operator=(const ExactFloatMode&) = delete;
};

void run_kernel(kernels::KernelFn kernel, const KernelArgs& args, ConversionStats* stats) {
  const ExactFloatMode exact_mode;
  kernel(args, stats);
}

int threads_for(std::size_t count, int requested) {
  const int available = requested > 0 ? requested : omp_get_max_threads();
  const auto useful = static_cast<int>(std::max<std::size_t>(1, count / kMinElementsPerThread));
  return std::max(1, std::min(available, useful));
}

}  // namespace

void ConversionStats::merge(const ConversionStats& other) {
  elements += other.elements;
  nan += other.nan;
  inf += other.inf;
  overflow += other.overflow;
  underflow += other.underflow;
  subnormal += other.subnormal;
  max_abs = std::max(max_abs, other.max_abs);
}

std::string_view name(CpuPath path) {
  for (const auto& p : kPathNames) {
    if (p.path == path) return p.name;
  }
  return "unknown";
}

CpuPath parse_cpu_path(std::string_view text) {
  for (const auto& p : kPathNames) {
    if (p.name == text) return p.path;
  }
  throw InvalidArgument("unknown CPU path '" + std::string(text) +
                        "'; expected one of: auto, scalar, avx2, avx512, avx512_bf16");
}

bool is_available(CpuPath path) { return table_for(path) != nullptr; }

CpuPath best_cpu_path() {
  for (CpuPath p : {CpuPath::avx512_bf16, CpuPath::avx512, CpuPath::avx2}) {
    if (table_for(p) != nullptr) return p;
  }
  return CpuPath::scalar;
}

std::vector<CpuPath> available_cpu_paths() {
  std::vector<CpuPath> out;
  for (CpuPath p : {CpuPath::scalar, CpuPath::avx2, CpuPath::avx512, CpuPath::avx512_bf16}) {
    if (is_available(p)) out.push_back(p);
  }
  return out;
}

bool conversion_supported(DType from, DType to) {
  Direction unused;
  return find_direction(from, to, unused);
}

void convert(const void* src, DType src_type, void* dst, DType dst_type, std::size_t count,
             const ConvertOptions& options, ConversionStats* stats) {
  Direction direction;
  if (!find_direction(src_type, dst_type, direction)) {
    throw InvalidArgument("no conversion from " + std::string(name(src_type)) + " to " +
                          std::string(name(dst_type)) +
                          "; supported: f32 <-> f16, bf16, f8_e4m3, f8_e5m2, and f16 <-> bf16");
  }
  if (count > 0 && (src == nullptr || dst == nullptr)) {
    throw InvalidArgument("convert: null " + std::string(src == nullptr ? "source" : "destination") +
                          " pointer with " + std::to_string(count) + " elements");
  }
  const std::size_t src_bytes = count * size_bytes(src_type), dst_bytes = count * size_bytes(dst_type);
  if (count > 0 && overlaps(src, src_bytes, dst, dst_bytes)) {
    throw InvalidArgument("convert: source and destination overlap; convert into a separate buffer");
  }
  const KernelTable* table = table_for(options.path);
  if (table == nullptr) {
    throw NotAvailable("CPU path '" + std::string(name(options.path)) +
                       "' is not available on this CPU or build; `mpx info` lists the available ones");
  }
  if (options.threads < 0) throw InvalidArgument("convert: threads must be >= 0 (0 = automatic)");
  if (stats) *stats = ConversionStats{};
  if (count == 0) return;

  const auto kernel = table->fn[static_cast<std::size_t>(direction)];
  const std::size_t out_size = size_bytes(dst_type);
  const bool element_aligned = reinterpret_cast<std::uintptr_t>(dst) % out_size == 0;
  // Only the SIMD kernels stream (the scalar reference writes plainly).
  const bool streaming = table != &kernels::scalar_kernels() && dst_bytes >= kStreamingMinBytes && element_aligned;

  // Elements before dst reaches a 64-byte boundary go without streaming stores, by the calling thread.
  std::size_t head = 0;
  if (streaming) {
    const std::size_t misalignment = reinterpret_cast<std::uintptr_t>(dst) % 64;
    head = std::min(count, misalignment == 0 ? 0 : (64 - misalignment) / out_size);
  }
  auto args_for = [&](std::size_t begin, std::size_t end, bool stream) {
    KernelArgs args;
    args.src = static_cast<const unsigned char*>(src) + begin * size_bytes(src_type);
    args.dst = static_cast<unsigned char*>(dst) + begin * out_size;
    args.count = end - begin;
    args.saturate = options.fp8_overflow == Fp8Overflow::saturate;
    args.streaming_stores = stream;
    return args;
  };

  ConversionStats total;
  if (head > 0) run_kernel(kernel, args_for(0, head, false), stats ? &total : nullptr);
  const std::size_t body = count - head;
  const int threads = threads_for(body, options.threads);
  if (threads == 1) {
    ConversionStats part;
    run_kernel(kernel, args_for(head, count, streaming), stats ? &part : nullptr);
    total.merge(part);
  } else {
    std::vector<ConversionStats> parts(static_cast<std::size_t>(threads));
    const std::size_t grains = (body + kChunkGrain - 1) / kChunkGrain;
#pragma omp parallel num_threads(threads)
    {
      const auto t = static_cast<std::size_t>(omp_get_thread_num());
      const auto n = static_cast<std::size_t>(omp_get_num_threads());
      const std::size_t begin = head + std::min(body, grains * t / n * kChunkGrain);
      const std::size_t end = head + std::min(body, grains * (t + 1) / n * kChunkGrain);
      if (begin < end) run_kernel(kernel, args_for(begin, end, streaming), stats ? &parts[t] : nullptr);
    }
    for (const auto& part : parts) total.merge(part);
  }
  if (stats) {
    *stats = total;
    stats->elements = count;
  }
}

namespace {
template <class From, class To>
void convert_spans(std::span<const From> src, std::span<To> dst, DType from, DType to,
                   const ConvertOptions& options, ConversionStats* stats) {
  if (src.size() != dst.size()) {
    throw InvalidArgument("convert: source has " + std::to_string(src.size()) + " elements but destination has " +
                          std::to_string(dst.size()));
  }
  convert(src.data(), from, dst.data(), to, src.size(), options, stats);
}
}  // namespace

#define MPX_DEFINE_TYPED_CONVERT(FROM_T, FROM_D, TO_T, TO_D)                                              \
  void convert(std::span<const FROM_T> src, std::span<TO_T> dst, const ConvertOptions& options,          \
               ConversionStats* stats) {                                                                  \
    convert_spans(src, dst, FROM_D, TO_D, options, stats);                                                \
  }
MPX_DEFINE_TYPED_CONVERT(float, DType::f32, Half, DType::f16)
MPX_DEFINE_TYPED_CONVERT(float, DType::f32, BFloat16, DType::bf16)
MPX_DEFINE_TYPED_CONVERT(float, DType::f32, Float8E4M3, DType::f8_e4m3)
MPX_DEFINE_TYPED_CONVERT(float, DType::f32, Float8E5M2, DType::f8_e5m2)
MPX_DEFINE_TYPED_CONVERT(Half, DType::f16, float, DType::f32)
MPX_DEFINE_TYPED_CONVERT(BFloat16, DType::bf16, float, DType::f32)
MPX_DEFINE_TYPED_CONVERT(Float8E4M3, DType::f8_e4m3, float, DType::f32)
MPX_DEFINE_TYPED_CONVERT(Float8E5M2, DType::f8_e5m2, float, DType::f32)
MPX_DEFINE_TYPED_CONVERT(Half, DType::f16, BFloat16, DType::bf16)
MPX_DEFINE_TYPED_CONVERT(BFloat16, DType::bf16, Half, DType::f16)
#undef MPX_DEFINE_TYPED_CONVERT

}  // namespace mpx::numeric
