// Conversion kernels for the avx2 target; the flags come from CMake (see src/numeric/CMakeLists.txt).
#define MPX_TARGET_NAMESPACE avx2
#include "convert_kernels.inl"

namespace mpx::numeric::kernels {
const KernelTable* avx2_kernels() { return &avx2::table(); }
}  // namespace mpx::numeric::kernels
