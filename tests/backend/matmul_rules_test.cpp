// The CUDA matmul's device-free rules: FP32 accumulation always, TF32 only when allowed, dtype checks.
#include <gtest/gtest.h>

#include "mpx/amp/precision_policy.h"
#include "mpx/backend/cuda_matmul.h"
#include "mpx/core/error.h"

namespace mpx::cuda {
namespace {

TEST(CudaMatmulRules, Fp32InputsUseTf32OnlyWhenAllowed) {
  MatmulProblem p{64, 64, 64, false, false, DType::f32, DType::f32};
  EXPECT_EQ(matmul_compute(p), MatmulCompute::f32);
  p.allow_tf32 = true;
  EXPECT_EQ(matmul_compute(p), MatmulCompute::f32_fast_tf32);
}

TEST(CudaMatmulRules, LowPrecisionInputsAccumulateInFp32) {
  for (DType input : {DType::f16, DType::bf16}) {
    MatmulProblem p{64, 64, 64, false, false, input, input};
    p.allow_tf32 = true;  // irrelevant for 16-bit inputs
    EXPECT_EQ(matmul_compute(p), MatmulCompute::f32);
    EXPECT_NO_THROW(check_matmul(p));
  }
}

TEST(CudaMatmulRules, RejectsMixedOutputDtypesFp8InputsAndEmptySizes) {
  EXPECT_THROW(check_matmul({64, 64, 64, false, false, DType::bf16, DType::f16}), InvalidArgument);
  EXPECT_THROW(check_matmul({64, 64, 64, false, false, DType::f8_e4m3, DType::f32}), InvalidArgument);
  EXPECT_THROW(check_matmul({0, 64, 64, false, false, DType::bf16, DType::f32}), InvalidArgument);
  MatmulProblem p{64, 64, 64, false, false, DType::bf16, DType::f32, MatmulEpilogue::bias, true};
  EXPECT_THROW(check_matmul(p), InvalidArgument);
}

}  // namespace
}  // namespace mpx::cuda
