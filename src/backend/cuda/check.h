// MPX_CUDA_CHECK: wraps every CUDA runtime call; on failure throws mpx::CudaError naming the expression,
// the error and file:line. Never exits: only the CLI turns errors into exit codes.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "mpx/core/error.h"

#define MPX_CUDA_CHECK(expr)                                                                           \
  do {                                                                                                 \
    const cudaError_t mpx_cuda_status_ = (expr);                                                       \
    if (mpx_cuda_status_ != cudaSuccess) {                                                             \
      throw ::mpx::CudaError(std::string(#expr) + " failed: " + cudaGetErrorString(mpx_cuda_status_) + \
                             " (" + __FILE__ + ":" + std::to_string(__LINE__) + ")");                  \
    }                                                                                                  \
  } while (0)

// After a kernel launch: a launch error names the kernel and its size.
#define MPX_CUDA_CHECK_LAUNCH(kernel_name, count)                                                       \
  do {                                                                                                 \
    const cudaError_t mpx_cuda_status_ = cudaGetLastError();                                           \
    if (mpx_cuda_status_ != cudaSuccess) {                                                             \
      throw ::mpx::CudaError(std::string("kernel ") + (kernel_name) + " on " + std::to_string(count) + \
                             " elements failed to launch: " + cudaGetErrorString(mpx_cuda_status_) +   \
                             " (" + __FILE__ + ":" + std::to_string(__LINE__) + ")");                  \
    }                                                                                                  \
  } while (0)

// Wraps every cuBLASLt call: names the expression, the status and file:line.
#define MPX_CUBLAS_CHECK(expr)                                                                              \
  do {                                                                                                      \
    const cublasStatus_t mpx_cublas_status_ = (expr);                                                       \
    if (mpx_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                                      \
      throw ::mpx::CudaError(std::string(#expr) + " failed: " + ::mpx::cuda::cublaslt().cublasLtGetStatusName(mpx_cublas_status_) + \
                             " (" + __FILE__ + ":" + std::to_string(__LINE__) + ")");                       \
    }                                                                                                       \
  } while (0)
