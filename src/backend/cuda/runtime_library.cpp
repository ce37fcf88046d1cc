#include "runtime_library.h"

#include <dlfcn.h>

#include "mpx/core/error.h"

namespace mpx::cuda {

void* RuntimeLibrary::function(const char* name, const std::string& too_old) const {
  void* f = dlsym(handle, name);
  if (f == nullptr) throw NotAvailable(file + " lacks " + name + ": " + too_old);
  return f;
}

RuntimeLibrary open_runtime_library(const std::vector<std::string>& names, const std::string& what,
                                    const std::string& advice) {
  std::string tried;
  for (const std::string& name : names) {
    if (void* handle = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL); handle != nullptr) return {handle, name};
    tried += (tried.empty() ? "" : ", ") + name;
  }
  throw NotAvailable(what + " is not installed (tried " + tried + "): " + advice);
}

std::string version_text(long long v) {
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

}  // namespace mpx::cuda
