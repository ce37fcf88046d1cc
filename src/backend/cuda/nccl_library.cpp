#include "nccl_library.h"

#include <dlfcn.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "mpx/backend/cuda.h"
#include "mpx/core/error.h"

namespace mpx::cuda {

namespace {

Nccl load() {
  std::vector<std::string> names;
  if (const char* chosen = std::getenv("MPX_NCCL_LIBRARY"); chosen != nullptr && *chosen != '\0') {
    names.emplace_back(chosen);  // the user's choice, and only it
  } else {
    names = {"libnccl.so.2", "libnccl.so"};
  }
  void* handle = nullptr;
  std::string tried, opened;
  for (const std::string& name : names) {
    handle = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle != nullptr) {
      opened = name;
      break;
    }
    tried += (tried.empty() ? "" : ", ") + name;
  }
  if (handle == nullptr) {
    throw NotAvailable("data-parallel training on CUDA needs NCCL, which is not installed (tried " + tried +
                       "): install libnccl2 (or the CUDA toolkit's NCCL), add its directory to LD_LIBRARY_PATH, "
                       "or name the file in MPX_NCCL_LIBRARY");
  }
  Nccl n;
  n.path = opened;
#define MPX_RESOLVE(name)                                                                 \
  n.name = reinterpret_cast<decltype(n.name)>(dlsym(handle, #name));                      \
  if (n.name == nullptr) {                                                                \
    throw NotAvailable(opened + " lacks " #name ": mpx needs NCCL 2.14 or newer");        \
  }
  MPX_NCCL_FUNCTIONS(MPX_RESOLVE)
#undef MPX_RESOLVE
  return n;  // the handle stays open for the life of the process
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
    return "NCCL " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100) +
           " (" + n.path + ")";
  } catch (const Error& e) {
    return e.what();
  }
}

}  // namespace mpx::cuda
