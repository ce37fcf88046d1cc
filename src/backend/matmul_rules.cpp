// The CUDA matmul's rules that need no device: which compute type, which dtype combinations.
#include <string>

#include "mpx/backend/cuda_matmul.h"
#include "mpx/core/error.h"

namespace mpx::cuda {

MatmulCompute matmul_compute(const MatmulProblem& p) {
  return p.input == DType::f32 && p.allow_tf32 ? MatmulCompute::f32_fast_tf32 : MatmulCompute::f32;
}

void check_matmul(const MatmulProblem& p) {
  const std::string shape = "matmul " + std::to_string(p.m) + "x" + std::to_string(p.n) + "x" + std::to_string(p.k);
  if (p.m <= 0 || p.n <= 0 || p.k <= 0) throw InvalidArgument(shape + ": sizes must be positive");
  if (p.input != DType::f32 && p.input != DType::f16 && p.input != DType::bf16) {
    throw InvalidArgument(shape + ": inputs must be f32, f16 or bf16, got " + std::string(name(p.input)));
  }
  if (p.output != DType::f32 && p.output != p.input) {
    throw InvalidArgument(shape + ": output must be f32 or the input dtype (" + std::string(name(p.input)) + "), got " +
                          std::string(name(p.output)));
  }
  if (p.accumulate && p.epilogue != MatmulEpilogue::none) {
    throw InvalidArgument(shape + ": an epilogue cannot be combined with accumulation into C");
  }
}

}  // namespace mpx::cuda
