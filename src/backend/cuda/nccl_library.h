// NCCL, opened with dlopen the first time a data-parallel job on CUDA connects its ranks, rather than
// linked: a CUDA build of mpx still starts where NCCL is not installed (one GPU, or the CPU), and a job can
// name the library it wants (MPX_NCCL_LIBRARY, e.g. the copy a PyTorch wheel brings).
#pragma once

#include <nccl.h>

#include <string>

namespace mpx::cuda {

struct Nccl {
#define MPX_NCCL_FUNCTIONS(X)                                                                        \
  X(ncclGetVersion) X(ncclGetUniqueId) X(ncclCommInitRankConfig) X(ncclCommGetAsyncError)            \
  X(ncclCommAbort) X(ncclCommFinalize) X(ncclCommDestroy) X(ncclAllReduce) X(ncclGetErrorString)     \
  X(ncclGetLastError)
#define MPX_DECLARE_POINTER(name) decltype(&::name) name = nullptr;
  MPX_NCCL_FUNCTIONS(MPX_DECLARE_POINTER)
#undef MPX_DECLARE_POINTER
  std::string path;  // the file opened
};

// The loaded library (opened once, kept for the process). Throws NotAvailable naming the files tried.
const Nccl& nccl();

}  // namespace mpx::cuda
