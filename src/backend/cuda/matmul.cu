// Row-major C[m, n] = op(A) op(B) through cuBLASLt, which is column-major: the same bytes read
// column-major are the transposes, so it computes C^T[n, m] = op(B)^T op(A)^T with B as its first
// operand. The bias epilogue adds a vector along D's rows, which here are C's columns: bias[n], as wanted.
// Plans (descriptors, layouts and the heuristic's algorithm) are cached per problem; when no algorithm
// takes an FP32 bias with a low-precision output, the bias and ReLU are applied by a small kernel instead.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "check.h"
#include "cublaslt_library.h"
#include "elements.cuh"
#include "mpx/backend/cuda_matmul.h"
#include "mpx/core/error.h"

namespace mpx::cuda {

namespace {

constexpr std::size_t kWorkspaceBytes = std::size_t{32} << 20;

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::f16: return CUDA_R_16F;
    case DType::bf16: return CUDA_R_16BF;
    default: return CUDA_R_32F;
  }
}

cublasLtEpilogue_t lt_epilogue(MatmulEpilogue e) {
  switch (e) {
    case MatmulEpilogue::bias: return CUBLASLT_EPILOGUE_BIAS;
    case MatmulEpilogue::relu: return CUBLASLT_EPILOGUE_RELU;
    case MatmulEpilogue::bias_relu: return CUBLASLT_EPILOGUE_RELU_BIAS;
    default: return CUBLASLT_EPILOGUE_DEFAULT;
  }
}

bool has_bias(MatmulEpilogue e) { return e == MatmulEpilogue::bias || e == MatmulEpilogue::bias_relu; }
bool has_relu(MatmulEpilogue e) { return e == MatmulEpilogue::relu || e == MatmulEpilogue::bias_relu; }

// The largest power of two up to 256 that divides the address: cuBLASLt's heuristics assume 256-byte
// aligned operands unless told otherwise, and a kernel chosen under that assumption may misread others.
std::uint32_t alignment_of(const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t alignment = 256;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

using Key = std::tuple<std::int64_t, std::int64_t, std::int64_t, bool, bool, DType, DType, MatmulEpilogue, bool, bool,
                       std::uint32_t, std::uint32_t, std::uint32_t>;
Key key_of(const MatmulProblem& p, std::uint32_t align_a, std::uint32_t align_b, std::uint32_t align_c) {
  return {p.m, p.n, p.k, p.transpose_a, p.transpose_b, p.input, p.output, p.epilogue, p.accumulate, p.allow_tf32,
          align_a, align_b, align_c};
}

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t first = nullptr, second = nullptr, out = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool separate_epilogue = false;  // bias/ReLU by bias_act_kernel after a plain product
  ~Plan() {
    if (desc) cublaslt().cublasLtMatmulDescDestroy(desc);
    if (first) cublaslt().cublasLtMatrixLayoutDestroy(first);
    if (second) cublaslt().cublasLtMatrixLayoutDestroy(second);
    if (out) cublaslt().cublasLtMatrixLayoutDestroy(out);
  }
};

// rows x cols of C (row-major): bias along the columns, then ReLU.
__global__ void bias_act_kernel(void* c, std::uint8_t kind, std::int64_t rows, std::int64_t cols, const float* bias,
                                bool relu) {
  const std::int64_t total = rows * cols;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    float v = elements::load(c, i, kind);
    if (bias != nullptr) v += bias[i % cols];
    if (relu && v < 0.0f) v = 0.0f;  // NaN stays NaN, as the CPU ReLU keeps it
    elements::store(c, i, kind, v);
  }
}

}  // namespace

struct Matmul::Impl {
  DeviceContext& context;
  cublasLtHandle_t handle = nullptr;
  std::shared_ptr<void> workspace;
  std::map<Key, std::unique_ptr<Plan>> plans;

  cudaStream_t stream() const { return static_cast<cudaStream_t>(context.stream()); }

  // align_*: of the operands as the caller passes them (a is the row-major A, cuBLASLt's second operand).
  Plan& plan_for(const MatmulProblem& p, std::uint32_t align_a, std::uint32_t align_b, std::uint32_t align_c) {
    const Key key = key_of(p, align_a, align_b, align_c);
    auto found = plans.find(key);
    if (found != plans.end()) return *found->second;
    auto plan = std::make_unique<Plan>();
    const cublasComputeType_t compute =
        matmul_compute(p) == MatmulCompute::f32_fast_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    MPX_CUBLAS_CHECK(cublaslt().cublasLtMatmulDescCreate(&plan->desc, compute, CUDA_R_32F));
    // First operand: B^T (n x k); second: A^T (k x m); out: C^T (n x m), all column-major.
    const cublasOperation_t op_first = p.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_second = p.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    MPX_CUBLAS_CHECK(cublaslt().cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
    MPX_CUBLAS_CHECK(cublaslt().cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
    const cudaDataType_t in = cuda_type(p.input), out = cuda_type(p.output);
    if (p.transpose_b) MPX_CUBLAS_CHECK(cublaslt().cublasLtMatrixLayoutCreate(&plan->first, in, p.k, p.n, p.k));
    else MPX_CUBLAS_CHECK(cublaslt().cublasLtMatrixLayoutCreate(&plan->first, in, p.n, p.k, p.n));
    if (p.transpose_a) MPX_CUBLAS_CHECK(cublaslt().cublasLtMatrixLayoutCreate(&plan->second, in, p.m, p.k, p.m));
    else MPX_CUBLAS_CHECK(cublaslt().cublasLtMatrixLayoutCreate(&plan->second, in, p.k, p.m, p.k));
    MPX_CUBLAS_CHECK(cublaslt().cublasLtMatrixLayoutCreate(&plan->out, out, p.n, p.m, p.n));

    cublasLtMatmulPreference_t preference = nullptr;
    MPX_CUBLAS_CHECK(cublaslt().cublasLtMatmulPreferenceCreate(&preference));
    const std::size_t workspace_bytes = kWorkspaceBytes;
    MPX_CUBLAS_CHECK(cublaslt().cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                          &workspace_bytes, sizeof(workspace_bytes)));
    const std::pair<cublasLtMatmulPreferenceAttributes_t, std::uint32_t> alignments[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_b},  // cuBLASLt's A is our B
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c}};
    for (const auto& [attribute, bytes] : alignments) {
      MPX_CUBLAS_CHECK(cublaslt().cublasLtMatmulPreferenceSetAttribute(preference, attribute, &bytes, sizeof(bytes)));
    }
    auto heuristic = [&](MatmulEpilogue e) {
      const cublasLtEpilogue_t epilogue = lt_epilogue(e);
      MPX_CUBLAS_CHECK(cublaslt().cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
      if (has_bias(e)) {
        const std::int32_t bias_type = CUDA_R_32F;  // FP32 bias (the master copy) whatever the output
        MPX_CUBLAS_CHECK(cublaslt().cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                        sizeof(bias_type)));
      }
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      const cublasStatus_t status = cublaslt().cublasLtMatmulAlgoGetHeuristic(handle, plan->desc, plan->first, plan->second, plan->out,
                                                                   plan->out, preference, 1, &result, &found);
      if (status != CUBLAS_STATUS_SUCCESS || found == 0) return false;
      plan->algo = result.algo;
      return true;
    };
    bool ok = heuristic(p.epilogue);
    if (!ok && p.epilogue != MatmulEpilogue::none) {
      plan->separate_epilogue = true;
      ok = heuristic(MatmulEpilogue::none);
    }
    cublaslt().cublasLtMatmulPreferenceDestroy(preference);
    if (!ok) {
      throw CudaError("cuBLASLt has no algorithm for " + std::to_string(p.m) + "x" + std::to_string(p.n) + "x" +
                      std::to_string(p.k) + " " + std::string(name(p.input)) + " -> " + std::string(name(p.output)));
    }
    return *plans.emplace(key, std::move(plan)).first->second;
  }
};

Matmul::Matmul(DeviceContext& context) : impl_(std::make_unique<Impl>(Impl{context})) {
  MPX_CUBLAS_CHECK(cublaslt().cublasLtCreate(&impl_->handle));
  impl_->workspace = context.pool().allocate(kWorkspaceBytes, MemoryCategory::workspace);
}

Matmul::~Matmul() {
  if (impl_ && impl_->handle) {
    impl_->plans.clear();
    cublaslt().cublasLtDestroy(impl_->handle);
  }
}

void Matmul::run(const MatmulProblem& p, const void* a, const void* b, void* c, const float* bias) {
  check_matmul(p);
  if (has_bias(p.epilogue) && bias == nullptr) throw InvalidArgument("matmul: the bias epilogue needs a bias vector");
  if (a == nullptr || b == nullptr || c == nullptr) throw InvalidArgument("matmul: null device pointer");
  Plan& plan = impl_->plan_for(p, alignment_of(a), alignment_of(b), alignment_of(c));
  if (has_bias(p.epilogue) && !plan.separate_epilogue) {
    MPX_CUBLAS_CHECK(cublaslt().cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  const float alpha = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
  MPX_CUBLAS_CHECK(cublaslt().cublasLtMatmul(impl_->handle, plan.desc, &alpha, b, plan.first, a, plan.second, &beta, c, plan.out, c,
                                  plan.out, &plan.algo, impl_->workspace.get(), kWorkspaceBytes, impl_->stream()));
  if (plan.separate_epilogue) {
    const std::uint8_t kind = p.output == DType::f32 ? elements::kF32 : p.output == DType::f16 ? elements::kF16 : elements::kBF16;
    const std::int64_t total = p.m * p.n;
    const int blocks = static_cast<int>(std::min<std::int64_t>((total + 255) / 256, 4096));
    bias_act_kernel<<<blocks, 256, 0, impl_->stream()>>>(c, kind, p.m, p.n, has_bias(p.epilogue) ? bias : nullptr,
                                                         has_relu(p.epilogue));
    MPX_CUDA_CHECK_LAUNCH("matmul/bias_act", total);
  }
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
  auto stream = static_cast<cudaStream_t>(context.stream());
  // Every byte 0x3C: 1.06 in FP16, 0.011 in BF16 and FP32. A GEMM's speed does not depend on its data as
  // long as it is finite.
  MPX_CUDA_CHECK(cudaMemsetAsync(a.get(), 0x3C, static_cast<std::size_t>(m * k) * element, stream));
  MPX_CUDA_CHECK(cudaMemsetAsync(b.get(), 0x3C, static_cast<std::size_t>(k * n) * element, stream));
  Matmul matmul(context);
  for (int i = 0; i < 3; ++i) matmul.run(p, a.get(), b.get(), c.get());
  cudaEvent_t start, stop;
  MPX_CUDA_CHECK(cudaEventCreate(&start));
  MPX_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms;
  for (int r = 0; r < std::max(repeats, 1); ++r) {
    MPX_CUDA_CHECK(cudaEventRecord(start, stream));
    matmul.run(p, a.get(), b.get(), c.get());
    MPX_CUDA_CHECK(cudaEventRecord(stop, stream));
    MPX_CUDA_CHECK(cudaEventSynchronize(stop));
    float elapsed = 0;
    MPX_CUDA_CHECK(cudaEventElapsedTime(&elapsed, start, stop));
    ms.push_back(elapsed);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::nth_element(ms.begin(), ms.begin() + static_cast<std::ptrdiff_t>(ms.size() / 2), ms.end());
  return ms[ms.size() / 2] * 1e-3;
}

}  // namespace mpx::cuda
