// cuBLASLt, opened with dlopen the first time a matmul needs it rather than linked: a CUDA build of mpx
// then starts on machines without the library (CPU-only use), and cuBLASLt's ~94 KiB of thread-local
// storage stays out of the static TLS block, where it would leave no room in the 100 KiB stacks that
// civetweb (the Prometheus endpoint) gives its threads.
#pragma once

#include <cublasLt.h>

namespace mpx::cuda {

struct CublasLt {
#define MPX_CUBLASLT_FUNCTIONS(X)                                                                              \
  X(cublasLtCreate) X(cublasLtDestroy) X(cublasLtMatmul) X(cublasLtMatmulAlgoGetHeuristic)                     \
  X(cublasLtMatmulDescCreate) X(cublasLtMatmulDescDestroy) X(cublasLtMatmulDescSetAttribute)                   \
  X(cublasLtMatmulPreferenceCreate) X(cublasLtMatmulPreferenceDestroy) X(cublasLtMatmulPreferenceSetAttribute) \
  X(cublasLtMatrixLayoutCreate) X(cublasLtMatrixLayoutDestroy) X(cublasLtGetStatusName) X(cublasLtGetVersion)
#define MPX_DECLARE_POINTER(name) decltype(&::name) name = nullptr;
  MPX_CUBLASLT_FUNCTIONS(MPX_DECLARE_POINTER)
#undef MPX_DECLARE_POINTER
};

// The loaded library (opened once, kept for the process). Throws NotAvailable naming the files tried.
const CublasLt& cublaslt();

}  // namespace mpx::cuda
