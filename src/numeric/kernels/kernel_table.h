// The internal contract between the conversion dispatcher (convert.cpp) and the per-instruction-set
// kernel translation units: one function per direction, on one contiguous chunk, in one thread.
#pragma once

#include <cstddef>
#include <cstdint>

#include "mpx/numeric/convert.h"

namespace mpx::numeric::kernels {

enum class Direction : std::uint8_t {
  f32_to_f16,
  f32_to_bf16,
  f32_to_e4m3,
  f32_to_e5m2,
  f16_to_f32,
  bf16_to_f32,
  e4m3_to_f32,
  e5m2_to_f32,
  f16_to_bf16,
  bf16_to_f16,
  count,
};

struct KernelArgs {
  const void* src = nullptr;
  void* dst = nullptr;
  std::size_t count = 0;
  bool saturate = true;          // E4M3 overflow behaviour
  bool streaming_stores = false;  // dst is 64-byte aligned and large: bypass the cache
};

// Converts args.count elements; when `stats` is not null, fills it for this chunk.
using KernelFn = void (*)(const KernelArgs& args, ConversionStats* stats);

struct KernelTable {
  KernelFn fn[static_cast<std::size_t>(Direction::count)] = {};
};

const KernelTable& scalar_kernels();
// Null when the build has no such target (e.g. not x86-64).
const KernelTable* avx2_kernels();
const KernelTable* avx512_kernels();
const KernelTable* avx512_bf16_kernels();

}  // namespace mpx::numeric::kernels
