#include "cublaslt_library.h"

#include <string>

#include "mpx/core/error.h"
#include "runtime_library.h"

namespace mpx::cuda {

namespace {

CublasLt load() {
  const RuntimeLibrary library = open_runtime_library(
      {"libcublasLt.so.13", "libcublasLt.so"}, "cuBLASLt",
      "install the CUDA toolkit's libcublasLt or add its directory to LD_LIBRARY_PATH");
  CublasLt lt;
#define MPX_RESOLVE(name) \
  lt.name = reinterpret_cast<decltype(lt.name)>(library.function(#name, "it is older than CUDA 13"));
  MPX_CUBLASLT_FUNCTIONS(MPX_RESOLVE)
#undef MPX_RESOLVE
  return lt;
}

}  // namespace

const CublasLt& cublaslt() {
  static const CublasLt library = load();  // a failed load throws, and the next call tries again
  return library;
}

std::string blas_library() {
  try {
    return "cuBLASLt " + version_text(static_cast<long long>(cublaslt().cublasLtGetVersion()));
  } catch (const Error& e) {
    return e.what();
  }
}

}  // namespace mpx::cuda
