// The SIMD conversion kernels, compiled once per instruction set: each including translation unit sets
// MPX_TARGET_NAMESPACE and its own -m flags. Where the instruction set has a conversion instruction
// (F16C vcvtps2ph/vcvtph2ps, AVX512_BF16 vcvtne2ps2bf16) it is used; elsewhere the branch-free lanes of
// lanes.inl are auto-vectorised. Work goes in blocks small enough for L1: convert, then gather statistics
// from the same block, then (for large arrays) copy it out with streaming stores that bypass the cache.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernel_table.h"
#include "mpx/numeric/detail/formats.h"

namespace mpx::numeric::kernels::MPX_TARGET_NAMESPACE {
namespace {

#include "lanes.inl"

typedef std::uint32_t u32_alias __attribute__((may_alias));
typedef std::uint16_t u16_alias __attribute__((may_alias));
typedef std::uint8_t u8_alias __attribute__((may_alias));

constexpr std::size_t kBlock = 512;

struct Totals {
  std::uint64_t nan = 0, inf = 0, overflow = 0, underflow = 0, subnormal = 0;
  std::uint32_t max_abs_bits = 0;
  void add(const LaneStats& s) {
    nan += s.nan;
    inf += s.inf;
    overflow += s.overflow;
    underflow += s.underflow;
    subnormal += s.subnormal;
    max_abs_bits = s.max_abs_bits > max_abs_bits ? s.max_abs_bits : max_abs_bits;
  }
};

void stream_copy(void* dst, const void* src, std::size_t bytes) {
  auto* d = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  std::size_t i = 0;
#if defined(__AVX512F__)
  for (; i + 64 <= bytes; i += 64) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + i), _mm512_load_si512(s + i));
  }
#else
  for (; i + 32 <= bytes; i += 32) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i),
                        _mm256_load_si256(reinterpret_cast<const __m256i*>(s + i)));
  }
#endif
  std::memcpy(d + i, s + i, bytes - i);
}

// ---- statistics over one block ----------------------------------------------------------------------
// Written with GCC vector extensions: GCC 12 does not auto-vectorise several reductions over shared
// comparisons (counts plus a masked max) in one loop.

#if defined(__AVX512F__)
constexpr std::size_t kLanes = 16;
#else
constexpr std::size_t kLanes = 8;
#endif
typedef std::uint32_t VecU32 __attribute__((vector_size(kLanes * 4)));

VecU32 load_vector(const void* p) {
  VecU32 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

std::uint32_t sum_lanes(VecU32 v) {
  std::uint32_t total = 0;
  for (std::size_t i = 0; i < kLanes; ++i) total += v[i];
  return total;
}

std::uint32_t max_lanes(VecU32 v) {
  std::uint32_t best = 0;
  for (std::size_t i = 0; i < kLanes; ++i) best = v[i] > best ? v[i] : best;
  return best;
}

// Comparisons of vectors give -1 (all ones) per true lane, so subtracting one counts.
template <class Format>
void narrow_stats_block(const u32_alias* in, const std::uint32_t* out, std::size_t n, Totals& totals) {
  constexpr std::uint32_t kMagnitudeMask = (1u << (Format::kWidth - 1)) - 1;
  constexpr std::uint32_t kExpField = ((1u << Format::kExpBits) - 1) << Format::kManBits;
  VecU32 nan{}, inf{}, overflow{}, underflow{}, subnormal{}, max_abs{};
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const VecU32 a = load_vector(in + i) & 0x7FFFFFFFu;
    const VecU32 r = load_vector(out + i) & kMagnitudeMask;
    const VecU32 is_nan = (VecU32)(a > 0x7F800000u);
    nan -= is_nan;
    inf -= (VecU32)(a == 0x7F800000u);
    overflow -= (VecU32)(a < 0x7F800000u) & (VecU32)(a >= Format::kOverflowThreshold);
    underflow -= (VecU32)(a != 0u) & (VecU32)(r == 0u);
    subnormal -= (VecU32)(r != 0u) & (VecU32)((r & kExpField) == 0u);
    const VecU32 candidate = a & ~is_nan;
    max_abs = (VecU32)(candidate > max_abs) ? candidate : max_abs;
  }
  LaneStats s;
  s.nan = sum_lanes(nan), s.inf = sum_lanes(inf), s.overflow = sum_lanes(overflow);
  s.underflow = sum_lanes(underflow), s.subnormal = sum_lanes(subnormal), s.max_abs_bits = max_lanes(max_abs);
  for (; i < n; ++i) narrow_stats_lane<Format>(in[i], out[i], s);
  totals.add(s);
}

void widen_stats_block(const u32_alias* out, std::size_t n, Totals& totals) {
  VecU32 nan{}, inf{}, subnormal{}, max_abs{};
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const VecU32 a = load_vector(out + i) & 0x7FFFFFFFu;
    const VecU32 is_nan = (VecU32)(a > 0x7F800000u);
    nan -= is_nan;
    inf -= (VecU32)(a == 0x7F800000u);
    subnormal -= (VecU32)(a != 0u) & (VecU32)(a < 0x00800000u);
    const VecU32 candidate = a & ~is_nan;
    max_abs = (VecU32)(candidate > max_abs) ? candidate : max_abs;
  }
  LaneStats s;
  s.nan = sum_lanes(nan), s.inf = sum_lanes(inf), s.subnormal = sum_lanes(subnormal);
  s.max_abs_bits = max_lanes(max_abs);
  for (; i < n; ++i) widen_stats_lane(out[i], s);
  totals.add(s);
}

template <class Narrow>
void zero_extend(const Narrow* in, std::uint32_t* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = in[i];
}

template <class Narrow>
void truncate(const std::uint32_t* in, Narrow* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<Narrow>(in[i]);
}

// ---- narrowing from float: one block of at most kBlock elements -------------------------------------
// Lanes are computed in 32 bits and packed in a second loop: GCC will not vectorise the mixed-width loop.

// float -> FP8 with the FPU doing the rounding: adding 1.5 * 2^(E + 23 - kMan), whose ulp is the target's
// unit 2^(E - kMan) in |x|'s binade E (at least the target's minimum), rounds |x| to nearest-even in that
// unit, and the sum's low bits are then the rounded significand. Half the operations of narrow_lane's
// integer rounding; relies on round-to-nearest and no denormals-are-zero, which convert() guarantees.
template <class Format>
std::uint32_t narrow_lane_fpu(std::uint32_t u, bool saturate) {
  constexpr std::uint32_t kMan = Format::kManBits;
  constexpr std::uint32_t kNormalFloatExponent = 128 - Format::kBias;  // float exponent of the min normal
  const std::uint32_t a = u & 0x7FFFFFFFu;
  const std::uint32_t fe = a >> 23;
  const std::uint32_t binade = fe > kNormalFloatExponent ? fe : kNormalFloatExponent;
  const float magic = float_from_bits(((binade + 23 - kMan) << 23) | 0x00400000u);
  const std::uint32_t sum = float_bits_of(float_from_bits(a) + magic);
  const std::uint32_t significand = sum & 0x003FFFFFu;  // rounded |x| / unit, up to 2^(kMan+1)
  std::uint32_t result = ((binade - kNormalFloatExponent) << kMan) + significand;  // carries bump the exponent
  std::uint32_t overflow_result;
  std::uint32_t nan_result;
  if constexpr (Format::kHasInf) {
    overflow_result = Format::kInfBits;
    nan_result = Format::kInfBits | Format::kQuietBit | ((a & 0x007FFFFFu) >> (23 - kMan));
  } else {
    overflow_result = saturate ? Format::kMaxFiniteBits : Format::kNanBits;
    nan_result = Format::kNanBits;
  }
  result = a >= Format::kOverflowThreshold ? overflow_result : result;
  result = a > 0x7F800000u ? nan_result : result;
  return ((u >> 31) << (Format::kWidth - 1)) | result;
}

template <class Format, class Out>
void narrow_block(const float* in_f, Out* out, std::size_t n, bool saturate, Totals* totals) {
  const auto* in = reinterpret_cast<const u32_alias*>(in_f);
  alignas(64) std::uint32_t wide[kBlock];
  if constexpr (Format::kWidth == 8) {
    for (std::size_t i = 0; i < n; ++i) wide[i] = narrow_lane_fpu<Format>(in[i], saturate);
  } else {
    for (std::size_t i = 0; i < n; ++i) wide[i] = narrow_lane<Format>(in[i], saturate);
  }
  truncate(wide, out, n);
  if (totals) narrow_stats_block<Format>(in, wide, n, *totals);
}

void narrow_half_block(const float* in, std::uint16_t* out, std::size_t n, Totals* totals) {
  std::size_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), h);
  }
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
  }
#endif
  if (i < n) narrow_block<HalfFormat>(in + i, out + i, n - i, true, nullptr);
  if (totals) {
    alignas(64) std::uint32_t wide[kBlock];
    zero_extend(out, wide, n);
    narrow_stats_block<HalfFormat>(reinterpret_cast<const u32_alias*>(in), wide, n, *totals);
  }
}

void narrow_bfloat16_block(const float* in_f, std::uint16_t* out, std::size_t n, Totals* totals) {
  const auto* in = reinterpret_cast<const u32_alias*>(in_f);
  std::size_t i = 0;
#if defined(__AVX512BF16__)
  // vcvtne2ps2bf16 flushes subnormal inputs to zero; redo any 32-lane group that holds one exactly.
  const __m512i exponent_mask = _mm512_set1_epi32(0x7F800000);
  const __m512i magnitude_mask = _mm512_set1_epi32(0x7FFFFFFF);
  for (; i + 32 <= n; i += 32) {
    const __m512 lo = _mm512_loadu_ps(in_f + i);
    const __m512 hi = _mm512_loadu_ps(in_f + i + 16);
    const __m512bh packed = _mm512_cvtne2ps_pbh(hi, lo);
    _mm512_storeu_si512(out + i, reinterpret_cast<const __m512i&>(packed));
    const __m512i lo_bits = _mm512_castps_si512(lo), hi_bits = _mm512_castps_si512(hi);
    const __mmask16 lo_sub = _mm512_testn_epi32_mask(lo_bits, exponent_mask) &
                             _mm512_test_epi32_mask(lo_bits, magnitude_mask);
    const __mmask16 hi_sub = _mm512_testn_epi32_mask(hi_bits, exponent_mask) &
                             _mm512_test_epi32_mask(hi_bits, magnitude_mask);
    if ((lo_sub | hi_sub) != 0) {
      for (std::size_t j = i; j < i + 32; ++j) out[j] = static_cast<std::uint16_t>(bfloat16_narrow_lane(in[j]));
    }
  }
#endif
  if (i < n) {
    alignas(64) std::uint32_t wide[kBlock];
    for (std::size_t j = i; j < n; ++j) wide[j - i] = bfloat16_narrow_lane(in[j]);
    truncate(wide, out + i, n - i);
  }
  if (totals) {
    alignas(64) std::uint32_t wide[kBlock];
    zero_extend(out, wide, n);
    narrow_stats_block<BFloat16Format>(in, wide, n, *totals);
  }
}

// ---- widening to float ------------------------------------------------------------------------------

template <class Format, class In>
void widen_block(const In* in, float* out_f, std::size_t n, Totals* totals) {
  auto* out = reinterpret_cast<u32_alias*>(out_f);
  alignas(64) std::uint32_t raw[kBlock];
  zero_extend(in, raw, n);
  for (std::size_t i = 0; i < n; ++i) out[i] = widen_lane<Format>(raw[i]);
  if (totals) widen_stats_block(out, n, *totals);
}

void widen_half_block(const std::uint16_t* in, float* out, std::size_t n, Totals* totals) {
  std::size_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i))));
  }
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
  }
#endif
  if (i < n) widen_block<HalfFormat>(in + i, out + i, n - i, nullptr);
  if (totals) widen_stats_block(reinterpret_cast<const u32_alias*>(out), n, *totals);
}

// E5M2 is the top byte of a Half (same exponent field and bias, fraction truncated to 2 bits), so it widens
// exactly through F16C: shift into a Half, then vcvtph2ps.
void widen_e5m2_block(const std::uint8_t* in, float* out, std::size_t n, Totals* totals) {
  alignas(64) std::uint16_t half[kBlock];
  for (std::size_t i = 0; i < n; ++i) half[i] = static_cast<std::uint16_t>(in[i] << 8);
  widen_half_block(half, out, n, totals);
}

// E4M3 is exactly representable as Half: normal codes move their fields into place and add the bias
// difference (8) to the exponent; subnormal codes (exponent 0) are encoded with exponent 1 and the implicit
// 2^-6 subtracted after widening (exact); zeros keep their sign; S.1111.111 becomes the quiet NaN.
void widen_e4m3_block(const std::uint8_t* in, float* out_f, std::size_t n, Totals* totals) {
#if defined(__AVX512F__)
  // The same steps in registers, 16 at a time, when no statistics are wanted.
  if (totals == nullptr) {
    std::size_t i = 0;
    const __m512i fraction_and_exponent = _mm512_set1_epi32(0x78), magnitude = _mm512_set1_epi32(0x7F);
    for (; i + 16 <= n; i += 16) {
      const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i)));
      const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0x80)), 8);
      const __m512i mag = _mm512_and_si512(b, magnitude);
      const __mmask16 subnormal = _mm512_testn_epi32_mask(b, fraction_and_exponent);
      const __mmask16 zero = _mm512_testn_epi32_mask(b, magnitude);
      const __mmask16 nan = _mm512_cmpeq_epi32_mask(mag, magnitude);
      __m512i encoded = _mm512_add_epi32(_mm512_slli_epi32(mag, 7), _mm512_set1_epi32(0x2000));
      encoded = _mm512_mask_add_epi32(encoded, subnormal, encoded, _mm512_set1_epi32(0x0400));
      encoded = _mm512_mask_mov_epi32(encoded, nan, _mm512_set1_epi32(0x7E00));
      const __m256i half = _mm512_cvtepi32_epi16(_mm512_or_si512(sign, encoded));
      __m512 f = _mm512_cvtph_ps(half);
      const __m512i sign32 = _mm512_slli_epi32(sign, 16);
      const __m512 implicit = _mm512_castsi512_ps(_mm512_or_si512(sign32, _mm512_set1_epi32(0x3C800000)));
      f = _mm512_mask_sub_ps(f, subnormal, f, implicit);
      f = _mm512_mask_mov_ps(f, zero, _mm512_castsi512_ps(sign32));
      _mm512_storeu_ps(out_f + i, f);
    }
    if (i == n) return;
    in += i;
    out_f += i;
    n -= i;
  }
#endif
  alignas(64) std::uint16_t half[kBlock];
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint16_t b = in[i];
    const std::uint16_t sign = static_cast<std::uint16_t>((b & 0x80u) << 8);
    const std::uint16_t magnitude = b & 0x7Fu;
    const std::uint16_t subnormal_bump = (b & 0x78u) == 0 ? 0x0400u : 0u;
    const std::uint16_t encoded = static_cast<std::uint16_t>((magnitude << 7) + 0x2000u + subnormal_bump);
    half[i] = static_cast<std::uint16_t>(sign | (magnitude == 0x7Fu ? 0x7E00u : encoded));
  }
  widen_half_block(half, out_f, n, nullptr);
  auto* out = reinterpret_cast<u32_alias*>(out_f);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t b = in[i];
    const std::uint32_t sign = (b & 0x80u) << 24;
    const float value = float_from_bits(out[i]);
    const float unbiased = value - float_from_bits(sign | 0x3C800000u);  // minus +-2^-6
    const std::uint32_t fixed = (b & 0x7Fu) == 0 ? sign : float_bits_of(unbiased);
    out[i] = (b & 0x78u) == 0 ? fixed : out[i];
  }
  if (totals) widen_stats_block(out, n, *totals);
}

void widen_bfloat16_block(const std::uint16_t* in, float* out_f, std::size_t n, Totals* totals) {
  auto* out = reinterpret_cast<u32_alias*>(out_f);
  for (std::size_t i = 0; i < n; ++i) out[i] = bfloat16_widen_lane(in[i]);
  if (totals) widen_stats_block(out, n, *totals);
}

// ---- the chunk driver ------------------------------------------------------------------------------

// Runs `convert(in, out, n, totals_or_null)` block by block.
template <class In, class Out, class Convert>
void run_chunk(const KernelArgs& args, ConversionStats* stats, Convert convert) {
  const auto* src = static_cast<const In*>(args.src);
  auto* dst = static_cast<Out*>(args.dst);
  alignas(64) Out staging[kBlock];
  Totals totals;
  for (std::size_t start = 0; start < args.count; start += kBlock) {
    const std::size_t n = args.count - start < kBlock ? args.count - start : kBlock;
    Out* out = args.streaming_stores ? staging : dst + start;
    convert(src + start, out, n, stats ? &totals : nullptr);
    if (args.streaming_stores) stream_copy(dst + start, staging, n * sizeof(Out));
  }
  if (args.streaming_stores) _mm_sfence();
  if (stats) {
    stats->nan += totals.nan;
    stats->inf += totals.inf;
    stats->overflow += totals.overflow;
    stats->underflow += totals.underflow;
    stats->subnormal += totals.subnormal;
    stats->max_abs = float_from_bits(totals.max_abs_bits);
  }
}

template <class Format, class Out>
void narrow_kernel(const KernelArgs& args, ConversionStats* stats) {
  const bool saturate = args.saturate;
  run_chunk<float, Out>(args, stats, [saturate](const float* in, Out* out, std::size_t n, Totals* totals) {
    if constexpr (std::is_same_v<Format, HalfFormat>) narrow_half_block(in, out, n, totals);
    else if constexpr (std::is_same_v<Format, BFloat16Format>) narrow_bfloat16_block(in, out, n, totals);
    else narrow_block<Format>(in, out, n, saturate, totals);
  });
}

template <class Format, class In>
void widen_kernel(const KernelArgs& args, ConversionStats* stats) {
  run_chunk<In, float>(args, stats, [](const In* in, float* out, std::size_t n, Totals* totals) {
    if constexpr (std::is_same_v<Format, HalfFormat>) widen_half_block(in, out, n, totals);
    else if constexpr (std::is_same_v<Format, BFloat16Format>) widen_bfloat16_block(in, out, n, totals);
    else if constexpr (std::is_same_v<Format, E5M2Format>) widen_e5m2_block(in, out, n, totals);
    else if constexpr (std::is_same_v<Format, E4M3Format>) widen_e4m3_block(in, out, n, totals);
    else widen_block<Format>(in, out, n, totals);
  });
}

// Between the 16-bit formats: exact widening into an L1 scratch block, then one rounding.
template <class FromFormat, class ToFormat>
void narrow_via_float_kernel(const KernelArgs& args, ConversionStats* stats) {
  run_chunk<std::uint16_t, std::uint16_t>(
      args, stats, [](const std::uint16_t* in, std::uint16_t* out, std::size_t n, Totals* totals) {
#if defined(__AVX512BF16__)
        // Half -> BF16 without the scratch block: widen and round in registers. A Half never widens to a
        // float subnormal, so vcvtne2ps2bf16's flushing of subnormal inputs cannot apply here.
        if constexpr (std::is_same_v<FromFormat, HalfFormat> && std::is_same_v<ToFormat, BFloat16Format>) {
          if (totals == nullptr) {
            std::size_t i = 0;
            for (; i + 32 <= n; i += 32) {
              const __m512 lo = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i)));
              const __m512 hi = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i + 16)));
              const __m512bh packed = _mm512_cvtne2ps_pbh(hi, lo);
              _mm512_storeu_si512(out + i, reinterpret_cast<const __m512i&>(packed));
            }
            if (i < n) {
              alignas(64) float wide[kBlock];
              widen_half_block(in + i, wide, n - i, nullptr);
              narrow_bfloat16_block(wide, out + i, n - i, nullptr);
            }
            return;
          }
        }
#endif
        alignas(64) float wide[kBlock];
        if constexpr (std::is_same_v<FromFormat, HalfFormat>) widen_half_block(in, wide, n, nullptr);
        else widen_bfloat16_block(in, wide, n, nullptr);
        if constexpr (std::is_same_v<ToFormat, HalfFormat>) narrow_half_block(wide, out, n, totals);
        else narrow_bfloat16_block(wide, out, n, totals);
      });
}

KernelTable make_table() {
  KernelTable t;
  auto set = [&t](Direction d, KernelFn f) { t.fn[static_cast<std::size_t>(d)] = f; };
  set(Direction::f32_to_f16, narrow_kernel<HalfFormat, std::uint16_t>);
  set(Direction::f32_to_bf16, narrow_kernel<BFloat16Format, std::uint16_t>);
  set(Direction::f32_to_e4m3, narrow_kernel<E4M3Format, std::uint8_t>);
  set(Direction::f32_to_e5m2, narrow_kernel<E5M2Format, std::uint8_t>);
  set(Direction::f16_to_f32, widen_kernel<HalfFormat, std::uint16_t>);
  set(Direction::bf16_to_f32, widen_kernel<BFloat16Format, std::uint16_t>);
  set(Direction::e4m3_to_f32, widen_kernel<E4M3Format, std::uint8_t>);
  set(Direction::e5m2_to_f32, widen_kernel<E5M2Format, std::uint8_t>);
  set(Direction::f16_to_bf16, narrow_via_float_kernel<HalfFormat, BFloat16Format>);
  set(Direction::bf16_to_f16, narrow_via_float_kernel<BFloat16Format, HalfFormat>);
  return t;
}

}  // namespace

const KernelTable& table() {
  static const KernelTable kernels = make_table();
  return kernels;
}

}  // namespace mpx::numeric::kernels::MPX_TARGET_NAMESPACE
