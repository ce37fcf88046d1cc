// Conversion kernels for the avx512 target; the flags come from CMake (see src/numeric/CMakeLists.txt).
#define MPX_TARGET_NAMESPACE avx512
#include "convert_kernels.inl"

namespace mpx::numeric::kernels {
const KernelTable* avx512_kernels() { return &avx512::table(); }
}  // namespace mpx::numeric::kernels
