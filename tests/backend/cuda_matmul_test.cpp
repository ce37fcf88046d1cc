// cuBLASLt matmul against a double-precision reference of the same rounded inputs, for every input dtype,
// both transposes, low-precision and FP32 outputs and the bias/ReLU epilogues. FP32 without TF32 must be
// FP32-accurate (32-true never silently loses precision). Label `gpu`.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "../support/gpu.h"
#include "mpx/backend/cuda.h"
#include "mpx/backend/cuda_matmul.h"
#include "mpx/numeric/convert.h"

namespace mpx::cuda {
namespace {

// Values exactly representable in `dtype`, and their bytes in that dtype.
std::vector<float> random_values(std::size_t n, DType dtype, std::vector<unsigned char>& bytes, std::mt19937& rng) {
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = uniform(rng);
  bytes.resize(n * size_bytes(dtype));
  numeric::convert(v.data(), DType::f32, bytes.data(), dtype, n);
  numeric::convert(bytes.data(), dtype, v.data(), DType::f32, n);
  return v;
}

void check_problem(const MatmulProblem& p) {
  std::mt19937 rng(11);
  std::vector<unsigned char> a_bytes, b_bytes;
  const auto a = random_values(static_cast<std::size_t>(p.m * p.k), p.input, a_bytes, rng);
  const auto b = random_values(static_cast<std::size_t>(p.k * p.n), p.input, b_bytes, rng);
  std::vector<float> bias(static_cast<std::size_t>(p.n));
  for (float& x : bias) x = std::uniform_real_distribution<float>(-0.5f, 0.5f)(rng);
  DeviceContext context;
  DeviceBuffer da(a_bytes.size()), db(b_bytes.size()), dc(static_cast<std::size_t>(p.m * p.n) * size_bytes(p.output)),
      dbias(bias.size() * 4);
  da.copy_from_host(a_bytes.data(), a_bytes.size());
  db.copy_from_host(b_bytes.data(), b_bytes.size());
  dbias.copy_from_host(bias.data(), bias.size() * 4);
  Matmul matmul(context);
  matmul.run(p, da.data(), db.data(), dc.data(), static_cast<const float*>(dbias.data()));
  context.synchronize();
  std::vector<unsigned char> c_bytes(dc.bytes());
  dc.copy_to_host(c_bytes.data(), c_bytes.size());
  std::vector<float> c(static_cast<std::size_t>(p.m * p.n));
  numeric::convert(c_bytes.data(), p.output, c.data(), DType::f32, c.size());

  const bool bias_on = p.epilogue == MatmulEpilogue::bias || p.epilogue == MatmulEpilogue::bias_relu;
  const bool relu_on = p.epilogue == MatmulEpilogue::relu || p.epilogue == MatmulEpilogue::bias_relu;
  // Output rounding plus FP32 accumulation error (or TF32's 10-bit mantissa inputs when allowed).
  const double unit = p.output == DType::bf16 ? 0x1p-8 : p.output == DType::f16 ? 0x1p-11 : 0x1p-22;
  for (std::int64_t i = 0; i < p.m; ++i) {
    for (std::int64_t j = 0; j < p.n; ++j) {
      double sum = 0, magnitude = 0;
      for (std::int64_t l = 0; l < p.k; ++l) {
        const double x = p.transpose_a ? a[l * p.m + i] : a[i * p.k + l];
        const double y = p.transpose_b ? b[j * p.k + l] : b[l * p.n + j];
        sum += x * y;
        magnitude += std::fabs(x * y);
      }
      if (bias_on) sum += bias[j];
      if (relu_on) sum = std::max(sum, 0.0);
      const double tolerance = unit * (std::fabs(sum) + 1e-3) + 1e-6 * magnitude;
      ASSERT_NEAR(c[i * p.n + j], sum, tolerance) << "row " << i << " col " << j;
    }
  }
}

TEST(CudaMatmul, LowPrecisionInputsMatchADoubleReference) {
  MPX_SKIP_WITHOUT_GPU();
  for (DType input : {DType::f16, DType::bf16}) {
    for (DType output : {DType::f32, input}) {
      for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
          SCOPED_TRACE(std::string(name(input)) + "->" + std::string(name(output)) + (ta ? " A^T" : "") + (tb ? " B^T" : ""));
          check_problem({67, 45, 129, ta, tb, input, output});
        }
      }
    }
  }
}

TEST(CudaMatmul, Fp32WithoutTf32IsFp32Accurate) {
  MPX_SKIP_WITHOUT_GPU();
  check_problem({128, 96, 256, false, true, DType::f32, DType::f32});
}

TEST(CudaMatmul, BiasAndReluEpiloguesMatchTheReference) {
  MPX_SKIP_WITHOUT_GPU();
  for (auto e : {MatmulEpilogue::bias, MatmulEpilogue::relu, MatmulEpilogue::bias_relu}) {
    check_problem({128, 256, 64, false, true, DType::bf16, DType::bf16, e});
    check_problem({128, 256, 64, false, true, DType::f16, DType::f32, e});
  }
}

}  // namespace
}  // namespace mpx::cuda
