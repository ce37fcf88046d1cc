// Matrix products on the GPU through cuBLASLt: FP16/BF16 (or FP32) inputs, FP32 compute and accumulation,
// FP32 or low-precision output, and bias/ReLU epilogues that save an elementwise kernel. FP32 inputs run
// through TF32 tensor cores only when the caller allows it (never for `32-true`). Row-major operands, as
// the CPU backend's matmul: C[m, n] = op(A) op(B) (+ bias[n]) (+ C).
#pragma once

#include <cstdint>
#include <memory>

#include "mpx/backend/cuda_context.h"
#include "mpx/numeric/dtype.h"

namespace mpx::cuda {

enum class MatmulEpilogue : std::uint8_t { none, bias, relu, bias_relu };

struct MatmulProblem {
  std::int64_t m = 0, n = 0, k = 0;
  bool transpose_a = false;  // A stored [k, m]
  bool transpose_b = false;  // B stored [n, k]
  DType input = DType::bf16;   // f32, f16 or bf16 (both operands)
  DType output = DType::f32;   // f32, or the input dtype
  MatmulEpilogue epilogue = MatmulEpilogue::none;
  bool accumulate = false;     // C += ...
  bool allow_tf32 = false;     // FP32 inputs only
};

// The arithmetic the library is asked for: FP32 accumulation always; TF32 multiplies only when allowed.
enum class MatmulCompute : std::uint8_t { f32, f32_fast_tf32 };
MatmulCompute matmul_compute(const MatmulProblem& problem);
// Throws InvalidArgument naming what does not fit (dtypes, non-positive sizes, epilogue with accumulate).
void check_matmul(const MatmulProblem& problem);

class Matmul {
 public:
  explicit Matmul(DeviceContext& context);  // a cuBLASLt handle and a 32 MiB workspace from the pool
  ~Matmul();
  Matmul(const Matmul&) = delete;
  Matmul& operator=(const Matmul&) = delete;

  // Enqueues on the context's stream. bias: FP32, n elements, when the epilogue has one. The plan
  // (descriptors and the heuristic's algorithm) is made once per problem and cached.
  void run(const MatmulProblem& problem, const void* a, const void* b, void* c, const float* bias = nullptr);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// For `mpx bench matmul --device cuda`: the median seconds of C = A B (row-major, output in the input
// dtype) over `repeats` timed runs after warm-up, with CUDA events on the context's stream.
double time_matmul(DeviceContext& context, std::int64_t m, std::int64_t n, std::int64_t k, DType input, bool allow_tf32,
                   int repeats);

}  // namespace mpx::cuda
