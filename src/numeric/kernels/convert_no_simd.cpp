// Builds without x86-64 SIMD targets (another architecture) get only the scalar path.
#include "kernel_table.h"

namespace mpx::numeric::kernels {
const KernelTable* avx2_kernels() { return nullptr; }
const KernelTable* avx512_kernels() { return nullptr; }
const KernelTable* avx512_bf16_kernels() { return nullptr; }
}  // namespace mpx::numeric::kernels
