// cuBLASLt matmul against a double-precision reference of the same rounded inputs, for every input dtype,
// both transposes, low-precision and FP32 outputs and the bias/ReLU epilogues. FP32 without TF32 must be
// FP32-accurate (32-true never silently loses precision). Label `gpu`.
#include <gtest/gtest.h>

#include <cstring>

#include <cmath>
#include <random>
#include <vector>

#include "../support/gpu.h"
#include "mpx/backend/cuda.h"
#include "mpx/backend/cuda_matmul.h"
#include "mpx/numeric/convert.h"

namespace mpx::cuda {
namespace {

// numeric::convert, or a copy between equal dtypes (which it refuses).
void convert_or_copy(const void* src, DType from, void* dst, DType to, std::size_t n) {
  if (from == to) {
    std::memcpy(dst, src, n * size_bytes(from));
  } else {
    numeric::convert(src, from, dst, to, n);
  }
}

// Values exactly representable in `dtype`, and their bytes in that dtype.
std::vector<float> random_values(std::size_t n, DType dtype, std::vector<unsigned char>& bytes, std::mt19937& rng) {
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = uniform(rng);
  bytes.resize(n * size_bytes(dtype));
  convert_or_copy(v.data(), DType::f32, bytes.data(), dtype, n);
  convert_or_copy(bytes.data(), dtype, v.data(), DType::f32, n);
  return v;
}

// offset: elements by which every operand starts past a 256-byte boundary (cuBLASLt must be told).
void check_problem(const MatmulProblem& p, std::size_t offset = 0) {
  std::mt19937 rng(11);
  std::vector<unsigned char> a_bytes, b_bytes;
  const auto a = random_values(static_cast<std::size_t>(p.m * p.k), p.input, a_bytes, rng);
  const auto b = random_values(static_cast<std::size_t>(p.k * p.n), p.input, b_bytes, rng);
  std::vector<float> bias(static_cast<std::size_t>(p.n));
  for (float& x : bias) x = std::uniform_real_distribution<float>(-0.5f, 0.5f)(rng);
  DeviceContext context;
  const std::size_t in_skip = offset * size_bytes(p.input), out_skip = offset * size_bytes(p.output);
  DeviceBuffer da(a_bytes.size() + in_skip), db(b_bytes.size() + in_skip),
      dc(static_cast<std::size_t>(p.m * p.n) * size_bytes(p.output) + out_skip), dbias(bias.size() * 4);
  std::vector<unsigned char> padded_a(in_skip, 0), padded_b(in_skip, 0);
  padded_a.insert(padded_a.end(), a_bytes.begin(), a_bytes.end());
  padded_b.insert(padded_b.end(), b_bytes.begin(), b_bytes.end());
  da.copy_from_host(padded_a.data(), padded_a.size());
  db.copy_from_host(padded_b.data(), padded_b.size());
  dbias.copy_from_host(bias.data(), bias.size() * 4);
  Matmul matmul(context);
  auto* base_a = static_cast<unsigned char*>(da.data()) + in_skip;
  auto* base_b = static_cast<unsigned char*>(db.data()) + in_skip;
  auto* base_c = static_cast<unsigned char*>(dc.data()) + out_skip;
  matmul.run(p, base_a, base_b, base_c, static_cast<const float*>(dbias.data()));
  context.synchronize();
  std::vector<unsigned char> all_c(dc.bytes());
  dc.copy_to_host(all_c.data(), all_c.size());
  const std::vector<unsigned char> c_bytes(all_c.begin() + static_cast<std::ptrdiff_t>(out_skip), all_c.end());
  std::vector<float> c(static_cast<std::size_t>(p.m * p.n));
  convert_or_copy(c_bytes.data(), p.output, c.data(), DType::f32, c.size());

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

TEST(CudaMatmul, OperandsOffFromTheDefault256ByteAlignmentStillGiveTheReference) {
  MPX_SKIP_WITHOUT_GPU();
  check_problem({64, 48, 72, false, true, DType::bf16, DType::f32}, 1);
  check_problem({64, 48, 72, false, false, DType::f16, DType::f16}, 4);
  check_problem({64, 48, 72, true, false, DType::f32, DType::f32}, 2);
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
