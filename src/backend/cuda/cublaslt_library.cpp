#include "cublaslt_library.h"

#include <dlfcn.h>

#include <mutex>
#include <string>

#include "mpx/core/error.h"

namespace mpx::cuda {

namespace {

CublasLt load() {
  const char* const names[] = {"libcublasLt.so.13", "libcublasLt.so"};
  void* handle = nullptr;
  std::string tried;
  for (const char* name : names) {
    handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (handle != nullptr) break;
    tried += std::string(tried.empty() ? "" : ", ") + name;
  }
  if (handle == nullptr) {
    throw NotAvailable("cuBLASLt is not installed (tried " + tried +
                       "); install the CUDA toolkit's libcublasLt or add its directory to LD_LIBRARY_PATH");
  }
  CublasLt lt;
#define MPX_RESOLVE(name)                                                                          \
  lt.name = reinterpret_cast<decltype(lt.name)>(dlsym(handle, #name));                             \
  if (lt.name == nullptr) throw NotAvailable("cuBLASLt lacks " #name "; it is older than CUDA 13");
  MPX_CUBLASLT_FUNCTIONS(MPX_RESOLVE)
#undef MPX_RESOLVE
  return lt;  // the handle stays open for the life of the process
}

}  // namespace

const CublasLt& cublaslt() {
  static const CublasLt library = load();  // a failed load throws, and the next call tries again
  return library;
}

std::string blas_library() {
  try {
    const std::size_t v = cublaslt().cublasLtGetVersion();  // major * 10000 + minor * 100 + patch
    return "cuBLASLt " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
  } catch (const Error& e) {
    return e.what();
  }
}

}  // namespace mpx::cuda
