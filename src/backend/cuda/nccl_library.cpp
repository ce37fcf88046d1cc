#include "nccl_library.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "mpx/backend/cuda.h"
#include "mpx/core/error.h"
#include "runtime_library.h"

namespace mpx::cuda {

namespace {

Nccl load() {
  std::vector<std::string> names = {"libnccl.so.2", "libnccl.so"};
  if (const char* chosen = std::getenv("MPX_NCCL_LIBRARY"); chosen != nullptr && *chosen != '\0') {
    names = {chosen};  // the user's choice, and only it
  }
  const RuntimeLibrary library = open_runtime_library(
      names, "NCCL, which data-parallel training on CUDA needs,",
      "install libnccl2 (or the CUDA toolkit's NCCL), add its directory to LD_LIBRARY_PATH, or name the file in "
      "MPX_NCCL_LIBRARY");
  Nccl n;
  n.path = library.file;
#define MPX_RESOLVE(name) \
  n.name = reinterpret_cast<decltype(n.name)>(library.function(#name, "mpx needs NCCL 2.14 or newer"));
  MPX_NCCL_FUNCTIONS(MPX_RESOLVE)
#undef MPX_RESOLVE
  return n;
}

}  // namespace

const Nccl& nccl() {
  static const Nccl library = load();  // a failed load throws, and the next call tries again
  return library;
}

std::string collectives_library() {
  try {
    const Nccl& n = nccl();
    int v = 0;
    n.ncclGetVersion(&v);  // major * 10000 + minor * 100 + patch
    return "NCCL " + version_text(v) + " (" + n.path + ")";
  } catch (const Error& e) {
    return e.what();
  }
}

}  // namespace mpx::cuda
