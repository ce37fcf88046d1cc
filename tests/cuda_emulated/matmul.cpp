// cuda::Matmul for the emulated build: cuBLASLt's contract (row-major C[m, n] = op(A) op(B), FP32
// accumulation, bias and ReLU epilogues, C added when accumulating, output in FP32 or the input dtype)
// computed by host loops in the order k = 0, 1, ... FP32 inputs never go through TF32 here.
#include <chrono>
#include <cuda_runtime.h>

#include "elements.cuh"
#include "mpx/backend/cuda.h"
#include "mpx/backend/cuda_matmul.h"
#include "mpx/core/error.h"

namespace mpx::cuda {

namespace {
std::uint8_t kind_of(DType t) {
  return t == DType::f32 ? elements::kF32 : t == DType::f16 ? elements::kF16 : elements::kBF16;
}
}  // namespace

struct Matmul::Impl {
  DeviceContext& context;
};

Matmul::Matmul(DeviceContext& context) : impl_(std::make_unique<Impl>(Impl{context})) {}
Matmul::~Matmul() = default;

void Matmul::run(const MatmulProblem& p, const void* a, const void* b, void* c, const float* bias) {
  check_matmul(p);
  const bool with_bias = p.epilogue == MatmulEpilogue::bias || p.epilogue == MatmulEpilogue::bias_relu;
  const bool with_relu = p.epilogue == MatmulEpilogue::relu || p.epilogue == MatmulEpilogue::bias_relu;
  if (with_bias && bias == nullptr) throw InvalidArgument("matmul: the bias epilogue needs a bias vector");
  if (a == nullptr || b == nullptr || c == nullptr) throw InvalidArgument("matmul: null device pointer");
  emulated::enqueue([=] {
    const std::uint8_t in = kind_of(p.input), out = kind_of(p.output);
    for (std::int64_t i = 0; i < p.m; ++i) {
      for (std::int64_t j = 0; j < p.n; ++j) {
        float sum = 0.0f;
        for (std::int64_t k = 0; k < p.k; ++k) {
          const float x = elements::load(a, static_cast<std::uint64_t>(p.transpose_a ? k * p.m + i : i * p.k + k), in);
          const float y = elements::load(b, static_cast<std::uint64_t>(p.transpose_b ? j * p.k + k : k * p.n + j), in);
          sum += x * y;
        }
        const auto at = static_cast<std::uint64_t>(i * p.n + j);
        if (p.accumulate) sum += elements::load(c, at, out);
        if (with_bias) sum += bias[j];
        if (with_relu) sum = sum > 0.0f ? sum : 0.0f;
        elements::store(c, at, out, sum);
      }
    }
  });
}

double time_matmul(DeviceContext& context, std::int64_t m, std::int64_t n, std::int64_t k, DType input, bool allow_tf32,
                   int repeats) {
  MatmulProblem p{m, n, k, false, false, input, input, MatmulEpilogue::none, false, allow_tf32};
  check_matmul(p);
  const std::size_t element = size_bytes(input);
  auto& pool = context.pool();
  auto a = pool.allocate(static_cast<std::size_t>(m * k) * element, MemoryCategory::workspace);
  auto b = pool.allocate(static_cast<std::size_t>(k * n) * element, MemoryCategory::workspace);
  auto c = pool.allocate(static_cast<std::size_t>(m * n) * element, MemoryCategory::workspace);
  std::memset(a.get(), 0x3C, static_cast<std::size_t>(m * k) * element);
  std::memset(b.get(), 0x3C, static_cast<std::size_t>(k * n) * element);
  Matmul matmul(context);
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < std::max(repeats, 1); ++r) matmul.run(p, a.get(), b.get(), c.get());
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / std::max(repeats, 1);
}

std::string blas_library() { return "emulated (host loops in place of cuBLASLt)"; }

}  // namespace mpx::cuda
