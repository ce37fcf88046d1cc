// The scalar reference path: one element at a time through the reference rounding of
// mpx/numeric/detail/rounding.h, statistics computed the plain way. Slow, obvious, permanent.
#include <cmath>
#include <cstring>
#include <limits>

#include "kernel_table.h"

namespace mpx::numeric::kernels {

namespace {

void note_input(float x, ConversionStats& s) {
  if (std::isnan(x)) {
    ++s.nan;
    return;
  }
  if (std::isinf(x)) ++s.inf;
  s.max_abs = std::fmax(s.max_abs, std::fabs(x));
}

template <class Narrow>
void note_narrowing(float x, Narrow out, ConversionStats& s) {
  note_input(x, s);
  if (std::isfinite(x)) {
    // Overflowed if the non-saturating rounding leaves the finite range.
    const Narrow unsaturated(x, Fp8Overflow::nan);
    if (!unsaturated.is_finite()) ++s.overflow;
    if (x != 0.0f && (out.bits() & Narrow::kMagnitudeMask) == 0) ++s.underflow;
  }
  if (out.is_subnormal()) ++s.subnormal;
}

void note_widening(float y, ConversionStats& s) {
  note_input(y, s);
  if (std::fpclassify(y) == FP_SUBNORMAL) ++s.subnormal;
}

template <class Narrow>
void narrow_from_float(const KernelArgs& args, ConversionStats* stats) {
  const auto* src = static_cast<const float*>(args.src);
  auto* dst = static_cast<Narrow*>(args.dst);
  const Fp8Overflow mode = args.saturate ? Fp8Overflow::saturate : Fp8Overflow::nan;
  for (std::size_t i = 0; i < args.count; ++i) {
    const Narrow out(src[i], mode);
    dst[i] = out;
    if (stats) note_narrowing(src[i], out, *stats);
  }
}

template <class Narrow>
void widen_to_float(const KernelArgs& args, ConversionStats* stats) {
  const auto* src = static_cast<const Narrow*>(args.src);
  auto* dst = static_cast<float*>(args.dst);
  for (std::size_t i = 0; i < args.count; ++i) {
    dst[i] = src[i].to_float();
    if (stats) note_widening(dst[i], *stats);
  }
}

// Between the two 16-bit formats through float: widening is exact, so there is a single rounding.
template <class From, class To>
void narrow_via_float(const KernelArgs& args, ConversionStats* stats) {
  const auto* src = static_cast<const From*>(args.src);
  auto* dst = static_cast<To*>(args.dst);
  for (std::size_t i = 0; i < args.count; ++i) {
    const float wide = src[i].to_float();
    const To out(wide);
    dst[i] = out;
    if (stats) note_narrowing(wide, out, *stats);
  }
}

KernelTable make_table() {
  KernelTable t;
  auto set = [&t](Direction d, KernelFn f) { t.fn[static_cast<std::size_t>(d)] = f; };
  set(Direction::f32_to_f16, narrow_from_float<Half>);
  set(Direction::f32_to_bf16, narrow_from_float<BFloat16>);
  set(Direction::f32_to_e4m3, narrow_from_float<Float8E4M3>);
  set(Direction::f32_to_e5m2, narrow_from_float<Float8E5M2>);
  set(Direction::f16_to_f32, widen_to_float<Half>);
  set(Direction::bf16_to_f32, widen_to_float<BFloat16>);
  set(Direction::e4m3_to_f32, widen_to_float<Float8E4M3>);
  set(Direction::e5m2_to_f32, widen_to_float<Float8E5M2>);
  set(Direction::f16_to_bf16, narrow_via_float<Half, BFloat16>);
  set(Direction::bf16_to_f16, narrow_via_float<BFloat16, Half>);
  return t;
}

}  // namespace

const KernelTable& scalar_kernels() {
  static const KernelTable table = make_table();
  return table;
}

}  // namespace mpx::numeric::kernels
