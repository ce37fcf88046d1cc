// The CUDA backend's stand-in for builds without nvcc (MPX_CUDA=OFF, or AUTO with no toolkit).
#include "mpx/backend/cuda.h"
#include "mpx/backend/cuda_context.h"
#include "mpx/backend/cuda_fused_optimizer.h"
#include "mpx/backend/cuda_kernels.h"
#include "mpx/backend/cuda_matmul.h"
#include "mpx/backend/cuda_transformer_kernels.h"
#include "mpx/core/error.h"
#include "cuda_factory.h"

namespace mpx::cuda {

[[noreturn]] void not_built() {
  throw NotAvailable("mpx was built without CUDA; install the CUDA toolkit and rebuild with -DMPX_CUDA=ON");
}

bool compiled() { return false; }
std::vector<DeviceInfo> devices() { return {}; }
RuntimeInfo runtime_info() { return {}; }
std::string no_device_reason() { return "mpx was built without CUDA support"; }
std::string blas_library() { return "mpx was built without CUDA support"; }
std::string collectives_library() { return "mpx was built without CUDA support"; }
void require_device() { not_built(); }

DeviceBuffer::DeviceBuffer(std::size_t) { not_built(); }
DeviceBuffer::~DeviceBuffer() = default;
DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept : data_(other.data_), bytes_(other.bytes_) {}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&&) noexcept { return *this; }
void DeviceBuffer::copy_from_host(const void*, std::size_t) { not_built(); }
void DeviceBuffer::copy_to_host(void*, std::size_t) const { not_built(); }

void convert(const void*, DType, void*, DType, std::size_t, numeric::Fp8Overflow, numeric::ConversionStats*) {
  not_built();
}
void stochastic_round(const float*, void*, DType, std::size_t, std::uint64_t, std::uint64_t) { not_built(); }
void copy_device_to_device(void*, const void*, std::size_t) { not_built(); }
void synchronize() { not_built(); }

struct DeviceContext::Impl {};
DeviceContext::DeviceContext(int) { not_built(); }
DeviceContext::~DeviceContext() = default;
int DeviceContext::index() const { not_built(); }
const std::string& DeviceContext::name() const { not_built(); }
backend::DevicePool& DeviceContext::pool() { not_built(); }
const backend::DevicePool& DeviceContext::pool() const { not_built(); }
void* DeviceContext::stream() const { not_built(); }
void DeviceContext::synchronize() const { not_built(); }
void DeviceContext::download(void*, const void*, std::size_t) const { not_built(); }
void DeviceContext::upload(void*, const void*, std::size_t) const { not_built(); }

struct CapturedGraph::Impl {};
CapturedGraph::CapturedGraph(DeviceContext&, const std::function<void()>&) { not_built(); }
CapturedGraph::~CapturedGraph() = default;
void CapturedGraph::launch() { not_built(); }
std::size_t CapturedGraph::nodes() const { not_built(); }

struct FusedOptimizer::Impl {};
FusedOptimizer::FusedOptimizer(DeviceContext&, const FusedStepConfig&, std::vector<DeviceParameter>) { not_built(); }
FusedOptimizer::~FusedOptimizer() = default;
void FusedOptimizer::step(float, const float*) { not_built(); }
void FusedOptimizer::set_lr_table(const std::vector<float>&) { not_built(); }
void FusedOptimizer::step_from_table(const float*) { not_built(); }
const float* FusedOptimizer::device_loss_scale() const { not_built(); }
FusedStepRecord FusedOptimizer::record() const { not_built(); }
void FusedOptimizer::load(const FusedStepRecord&) { not_built(); }

}  // namespace mpx::cuda

namespace mpx::cuda {
struct Matmul::Impl {};
Matmul::Matmul(DeviceContext&) { not_built(); }
Matmul::~Matmul() = default;
void Matmul::run(const MatmulProblem&, const void*, const void*, void*, const float*) { not_built(); }
double time_matmul(DeviceContext&, std::int64_t, std::int64_t, std::int64_t, DType, bool, int) { not_built(); }
}  // namespace mpx::cuda

namespace mpx::cuda::kernels {
void im2col(DeviceContext&, const backend::ConvShape&, const void*, DType, void*) { not_built(); }
void col2im(DeviceContext&, const backend::ConvShape&, const float*, void*, DType) { not_built(); }
std::size_t reduction_workspace_floats(std::int64_t, std::int64_t) { not_built(); }
void column_sums(DeviceContext&, const void*, DType, std::int64_t, std::int64_t, float*, float*) { not_built(); }
void batch_norm_forward_training(DeviceContext&, const BatchNormShape&, const void*, DType, const float*, const float*,
                                 float*, float*, bool, float*, float*, float*, void*) { not_built(); }
void batch_norm_forward_inference(DeviceContext&, const BatchNormShape&, const void*, DType, const float*, const float*,
                                  const float*, const float*, float*, void*) { not_built(); }
void batch_norm_backward(DeviceContext&, const BatchNormShape&, const void*, const void*, DType, const float*,
                         const float*, const float*, const float*, float*, void*, float*, float*) { not_built(); }
void layer_norm_forward(DeviceContext&, const LayerNormShape&, const void*, DType, const float*, const float*, float*,
                        float*, void*) { not_built(); }
void layer_norm_backward(DeviceContext&, const LayerNormShape&, const void*, const void*, DType, const float*,
                         const float*, const float*, float*, void*, float*, float*) { not_built(); }
void max_pool_forward(DeviceContext&, const void*, DType, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                      std::int64_t, void*) { not_built(); }
void max_pool_backward(DeviceContext&, const void*, const void*, const void*, DType, std::int64_t, std::int64_t,
                       std::int64_t, std::int64_t, std::int64_t, void*) { not_built(); }
void relu_backward(DeviceContext&, const void*, const void*, DType, std::int64_t, void*) { not_built(); }
void relu_forward(DeviceContext&, const void*, DType, std::int64_t, void*) { not_built(); }
void gelu_forward(DeviceContext&, const void*, DType, std::int64_t, bool, void*) { not_built(); }
void gelu_backward(DeviceContext&, const void*, const void*, DType, std::int64_t, bool, void*) { not_built(); }
void add(DeviceContext&, const void*, const void*, DType, std::int64_t, void*) { not_built(); }
void convert_elements(DeviceContext&, const void*, DType, void*, DType, std::int64_t) { not_built(); }
void fill_zero(DeviceContext&, void*, std::size_t) { not_built(); }
void fill_bytes(DeviceContext&, void*, std::uint8_t, std::size_t) { not_built(); }
void cross_entropy_forward(DeviceContext&, const void*, DType, const void*, DType, std::int64_t, std::int64_t, float*,
                           double*) { not_built(); }
void cross_entropy_backward(DeviceContext&, const float*, const void*, DType, std::int64_t, std::int64_t, float, void*,
                            DType) { not_built(); }
void embedding_forward(DeviceContext&, const std::int32_t*, std::int64_t, const float*, std::int64_t, std::int64_t,
                       void*, DType, std::int32_t*) { not_built(); }
std::size_t embedding_backward_workspace_bytes(std::int64_t, std::int64_t) { not_built(); }
void embedding_backward(DeviceContext&, const std::int32_t*, std::int64_t, const void*, DType, std::int64_t,
                        std::int64_t, float*, void*, std::size_t) { not_built(); }
void attention_forward(DeviceContext&, const AttentionShape&, const void*, DType, float*, void*) { not_built(); }
std::size_t attention_backward_workspace_floats(const AttentionShape&) { not_built(); }
void attention_backward(DeviceContext&, const AttentionShape&, const void*, const float*, const void*, DType, float*,
                        void*) { not_built(); }
void attention_step(DeviceContext&, const AttentionShape&, const void*, DType, std::int64_t, float*, float*, void*) {
  not_built();
}
void copy(DeviceContext&, void*, const void*, std::size_t) { not_built(); }
void dropout_forward(DeviceContext&, const DropoutArgs&, const std::uint64_t*, const void*, DType, std::int64_t, void*,
                     std::uint8_t*) { not_built(); }
void dropout_backward(DeviceContext&, const DropoutArgs&, const void*, const std::uint8_t*, DType, std::int64_t, void*) {
  not_built();
}
void softmax_cross_entropy(DeviceContext&, const float*, const std::uint8_t*, std::int64_t, std::int64_t, const float*,
                           float*, int*, void*, DType, float*) { not_built(); }
void gather_batch(DeviceContext&, const std::uint8_t*, const std::uint8_t*, std::int64_t, const std::int64_t*,
                  std::int64_t, float, float, void*, DType, std::uint8_t*) { not_built(); }
void increment(DeviceContext&, std::uint64_t*) { not_built(); }
void prepare_gradient_bucket(DeviceContext&, const GradientBucketPointers&, std::int64_t, float) { not_built(); }
void poison(DeviceContext&, void*, DType, std::int64_t, std::int64_t, std::uint32_t) { not_built(); }
}  // namespace mpx::cuda::kernels

namespace mpx::backend {
std::unique_ptr<Backend> make_cuda_backend(int) { cuda::not_built(); }
}  // namespace mpx::backend
