// Libraries the CUDA backend opens with dlopen on first use instead of linking (cuBLASLt, NCCL): a CUDA
// build then starts where they are missing, and says which file it needed only when a run needs it.
#pragma once

#include <string>
#include <vector>

namespace mpx::cuda {

struct RuntimeLibrary {
  void* handle = nullptr;  // kept open for the life of the process
  std::string file;        // the name that opened
  // The function `name`, or NotAvailable "<file> lacks <name>: <too_old>".
  void* function(const char* name, const std::string& too_old) const;
};

// The first of `names` that opens; else NotAvailable "<what> is not installed (tried ...): <advice>".
RuntimeLibrary open_runtime_library(const std::vector<std::string>& names, const std::string& what,
                                    const std::string& advice);

// A version encoded major * 10000 + minor * 100 + patch, as "major.minor.patch".
std::string version_text(long long encoded);

}  // namespace mpx::cuda
