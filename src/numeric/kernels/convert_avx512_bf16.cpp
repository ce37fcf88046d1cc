// Conversion kernels for the avx512_bf16 target; the flags come from CMake (see src/numeric/CMakeLists.txt).
#define MPX_TARGET_NAMESPACE avx512_bf16
#include "convert_kernels.inl"

namespace mpx::numeric::kernels {
const KernelTable* avx512_bf16_kernels() { return &avx512_bf16::table(); }
}  // namespace mpx::numeric::kernels
