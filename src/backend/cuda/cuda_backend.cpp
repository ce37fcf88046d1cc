// The CUDA backend: the Backend interface over cuBLASLt (products; convolutions as im2col + GEMM) and
// mpx's kernels (src/backend/cuda/*.cu), every op enqueued on one DeviceContext's stream. Activations are
// stored in the policy's dtype (FP16 natively, unlike the CPU); workspaces are kept per size and grow only,
// so a step after the first allocates nothing (what graph capture needs). Plain C++: the kernels' headers
// carry no CUDA types.
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../cuda_factory.h"
#include "mpx/backend/backend.h"
#include "mpx/backend/cuda.h"
#include "mpx/backend/cuda_context.h"
#include "mpx/backend/cuda_fused_optimizer.h"
#include "mpx/backend/cuda_kernels.h"
#include "mpx/backend/cuda_matmul.h"
#include "mpx/backend/cuda_transformer_kernels.h"
#include "mpx/core/error.h"
#include "nccl_collectives.h"

namespace mpx::backend {

namespace kernels = cuda::kernels;

namespace {

bool is_float(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }

// The fused multi-tensor step (cuda_fused_optimizer.h): unscale, inf check, the scaler's decision,
// clipping and the update in three launches, the decision on the device. unscale_and_check takes the whole
// step and reads the record back; apply reports the device's decision.
class CudaOptimizerStep final : public OptimizerStep {
 public:
  CudaOptimizerStep(cuda::DeviceContext& context, const OptimizerSettings& s, std::vector<ParameterTensors> parameters)
      : context_(context), parameters_(std::move(parameters)) {
    cuda::FusedStepConfig config;
    config.algorithm = s.algorithm == OptimizerSettings::Algorithm::adamw ? cuda::FusedStepConfig::Algorithm::adamw
                                                                          : cuda::FusedStepConfig::Algorithm::sgd;
    config.adamw = s.adamw;
    config.sgd = s.sgd;
    config.clip_norm = s.clip_norm;
    config.loss_scaling = s.loss_scaling;
    config.stochastic_rounding = s.stochastic_rounding;
    config.rounding_seed = s.rounding_seed;
    std::vector<cuda::DeviceParameter> device;
    for (const ParameterTensors& p : parameters_) {
      const bool working = p.working.defined();
      device.push_back({static_cast<float*>(p.value.data()), p.grad.data(), p.grad.dtype(),
                        static_cast<float*>(p.state1.data()), static_cast<float*>(p.state2.data()),
                        working ? p.working.data() : nullptr, working ? p.working.dtype() : DType::bf16,
                        static_cast<std::size_t>(p.value.numel()), p.decay, !s.master_weights && working});
    }
    loss_ = context_.pool().allocate(sizeof(float), MemoryCategory::workspace);
    fused_ = std::make_unique<cuda::FusedOptimizer>(context_, config, std::move(device));
    record_ = fused_->record();
  }

  bool unscale_and_check(float loss, float lr) override {
    context_.upload(loss_.get(), &loss, sizeof(loss));  // a non-finite loss skips the step on the device too
    fused_->step(lr, static_cast<const float*>(loss_.get()));
    record_ = fused_->record();
    return record_.found_inf || !std::isfinite(loss);
  }
  bool apply(bool, float) override { return record_.applied; }
  float loss_scale() const override { return record_.scaler.scale; }
  amp::LossScalerState scaler_state() const override { return record_.scaler; }
  std::int64_t optimizer_steps() const override { return record_.optimizer_steps; }
  void load(const amp::LossScalerState& scaler, std::int64_t optimizer_steps) override {
    cuda::FusedStepRecord r = record_;
    r.scaler = scaler;
    r.optimizer_steps = optimizer_steps;
    fused_->load(r);
    record_ = fused_->record();
  }

 private:
  cuda::DeviceContext& context_;
  std::vector<ParameterTensors> parameters_;  // keeps the tensors the device step writes alive
  std::shared_ptr<void> loss_;
  std::unique_ptr<cuda::FusedOptimizer> fused_;
  cuda::FusedStepRecord record_;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device_index) : context_(device_index), matmul_(context_) {}

  Device device() const override { return Device::cuda; }
  std::string device_name() const override { return context_.name(); }
  bool supports(Op op, DType dtype) const override {
    if (op == Op::embedding && dtype == DType::i32) return true;  // the ids' dtype
    return is_float(dtype);
  }
  bool can_capture() const override { return true; }
  void set_allow_tf32(bool allowed) override { allow_tf32_ = allowed; }

  Tensor allocate(const Shape& shape, DType dtype, MemoryCategory category) override {
    const auto bytes = static_cast<std::size_t>(numel(shape)) * size_bytes(dtype);
    return Tensor::wrap(context_.pool().allocate(std::max<std::size_t>(bytes, 1), category), shape, dtype,
                        Device::cuda);
  }
  const MemoryTracker& memory() const override { return context_.pool().memory(); }
  void fill_zero(const Tensor& t) override { kernels::fill_zero(context_, t.data(), t.bytes()); }
  void upload(const Tensor& t, const void* host) override { context_.upload(t.data(), host, t.bytes()); }
  void download(const Tensor& t, void* host) override { context_.download(host, t.data(), t.bytes()); }
  void synchronize() override { context_.synchronize(); }

  DType activation_dtype(DType policy_activations) const override { return policy_activations; }
  DType operand_dtype(DType compute) const override { return compute; }
  // cuBLASLt writes FP32 or the input dtype.
  DType product_output_dtype(DType compute, DType stored) const override {
    return stored == compute ? stored : DType::f32;
  }
  void round_for_compute(const Tensor& src, const Tensor& dst, DType) override { convert(src, dst); }
  void convert(const Tensor& src, const Tensor& dst) override {
    if (src.dtype() == dst.dtype()) {
      kernels::copy(context_, dst.data(), src.data(), src.bytes());
    } else {
      kernels::convert_elements(context_, src.data(), src.dtype(), dst.data(), dst.dtype(), src.numel());
    }
  }

  void matmul(const void* a, bool transpose_a, const void* b, bool transpose_b, DType input, void* c, std::int64_t m,
              std::int64_t n, std::int64_t k, const float* bias, bool accumulate, DType output) override {
    cuda::MatmulProblem p{m, n, k, transpose_a, transpose_b, input, output,
                          bias ? cuda::MatmulEpilogue::bias : cuda::MatmulEpilogue::none, accumulate, allow_tf32_};
    matmul_.run(p, a, b, c, bias);
  }

  // y[rows, O] = cols[rows, C*K*K] W[O, C*K*K]^T + bias, rows = N*OH*OW (NHWC output as it is).
  void conv2d_forward(const ConvShape& s, const void* src, const void* weights, DType input, const float* bias,
                      void* dst, DType output) override {
    const Gemm g = gemm_of(s);
    void* cols = scratch(Slot::columns, static_cast<std::size_t>(g.rows * g.patch) * size_bytes(input));
    kernels::im2col(context_, s, src, input, cols);
    matmul(cols, false, weights, true, input, dst, g.rows, s.out_channels, g.patch, bias, false, output);
  }
  // dcols[rows, C*K*K] = dy[rows, O] W[O, C*K*K] in FP32, gathered back into dx.
  void conv2d_backward_data(const ConvShape& s, const void* diff_dst, const void* weights, DType input,
                            void* diff_src, DType output) override {
    const Gemm g = gemm_of(s);
    auto* dcols = static_cast<float*>(scratch(Slot::column_gradients, static_cast<std::size_t>(g.rows * g.patch) * 4));
    matmul(diff_dst, false, weights, false, input, dcols, g.rows, g.patch, s.out_channels, nullptr, false, DType::f32);
    kernels::col2im(context_, s, dcols, diff_src, output);
  }
  // dW[O, C*K*K] = dy^T cols (the columns rebuilt from src), db = column sums of dy.
  void conv2d_backward_weights(const ConvShape& s, const void* src, const void* diff_dst, DType input,
                               float* diff_weights, float* diff_bias) override {
    const Gemm g = gemm_of(s);
    void* cols = scratch(Slot::columns, static_cast<std::size_t>(g.rows * g.patch) * size_bytes(input));
    kernels::im2col(context_, s, src, input, cols);
    matmul(diff_dst, true, cols, false, input, diff_weights, s.out_channels, g.patch, g.rows, nullptr, false, DType::f32);
    kernels::column_sums(context_, diff_dst, input, g.rows, s.out_channels, diff_bias, reduction_scratch(g.rows, s.out_channels));
  }

  void relu_forward(const Tensor& x, const Tensor& y) override {
    kernels::relu_forward(context_, x.data(), x.dtype(), x.numel(), y.data());
  }
  void relu_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) override {
    kernels::relu_backward(context_, y.data(), dy.data(), dy.dtype(), dy.numel(), dx.data());
  }
  void gelu_forward(const Tensor& x, const Tensor& y, bool tanh_approximation) override {
    kernels::gelu_forward(context_, x.data(), x.dtype(), x.numel(), tanh_approximation, y.data());
  }
  void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool tanh_approximation) override {
    kernels::gelu_backward(context_, x.data(), dy.data(), dy.dtype(), dy.numel(), tanh_approximation, dx.data());
  }
  void add(const Tensor& a, const Tensor& b, const Tensor& sum) override {
    kernels::add(context_, a.data(), b.data(), a.dtype(), a.numel(), sum.data());
  }
  // The kernel reads the step from device memory (a captured graph replays with the counter it finds);
  // eagerly it is set from the host whenever it differs.
  void dropout_forward(const Tensor& x, const DropoutArgs& args, const Tensor& keep, const Tensor& y) override {
    if (!step_counter_) {
      step_counter_ = context_.pool().allocate(sizeof(std::uint64_t), MemoryCategory::workspace);
      counter_value_ = ~args.step;
    }
    if (counter_value_ != args.step) {
      context_.upload(step_counter_.get(), &args.step, sizeof(args.step));
      counter_value_ = args.step;
    }
    const kernels::DropoutArgs device_args{args.probability, args.key, args.planned_elements, args.element_offset};
    kernels::dropout_forward(context_, device_args, static_cast<const std::uint64_t*>(step_counter_.get()), x.data(),
                             x.dtype(), x.numel(), y.data(), static_cast<std::uint8_t*>(keep.data()));
  }
  void dropout_backward(const Tensor& dy, const Tensor& keep, float probability, const Tensor& dx) override {
    const kernels::DropoutArgs device_args{probability, 0, 0, 0};
    kernels::dropout_backward(context_, device_args, dy.data(), static_cast<const std::uint8_t*>(keep.data()),
                              dy.dtype(), dy.numel(), dx.data());
  }

  void max_pool_forward(const Tensor& x, std::int64_t kernel, const Tensor& y) override {
    kernels::max_pool_forward(context_, x.data(), x.dtype(), x.dim(0), x.dim(1), x.dim(2), x.dim(3), kernel, y.data());
  }
  void max_pool_backward(const Tensor& x, const Tensor& y, const Tensor& dy, std::int64_t kernel,
                         const Tensor& dx) override {
    if ((x.dim(1) % kernel) != 0 || (x.dim(2) % kernel) != 0) fill_zero(dx);  // rows/columns no window covers
    kernels::max_pool_backward(context_, x.data(), y.data(), dy.data(), dy.dtype(), x.dim(0), x.dim(1), x.dim(2),
                               x.dim(3), kernel, dx.data());
  }

  void batch_norm_forward(const Tensor& x, const BatchNormArgs& args, const BatchNormState& st,
                          const Tensor& y) override {
    const kernels::BatchNormShape s = norm_shape(x, args, st);
    float* workspace = reduction_scratch(s.rows, s.channels);
    if (args.training) {
      kernels::batch_norm_forward_training(context_, s, x.data(), x.dtype(), f32(st.gamma), f32(st.beta),
                                           f32(st.running_mean), f32(st.running_var), args.update_running,
                                           f32(st.mean), f32(st.inv_std), workspace, y.data());
    } else {
      kernels::batch_norm_forward_inference(context_, s, x.data(), x.dtype(), f32(st.gamma), f32(st.beta),
                                            f32(st.running_mean), f32(st.running_var), workspace, y.data());
    }
  }
  void batch_norm_backward(const Tensor& x, const Tensor& dy, const BatchNormArgs& args, const BatchNormState& st,
                           const Tensor& dx, const Tensor& dgamma, const Tensor& dbeta) override {
    const kernels::BatchNormShape s = norm_shape(x, args, st);
    kernels::batch_norm_backward(context_, s, x.data(), dy.data(), dy.dtype(), f32(st.gamma), f32(st.beta),
                                 f32(st.mean), f32(st.inv_std), reduction_scratch(s.rows, s.channels), dx.data(),
                                 f32(dgamma), f32(dbeta));
  }
  void layer_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, const Tensor& mean,
                          const Tensor& inv_std, const Tensor& y) override {
    const kernels::LayerNormShape s{x.numel() / gamma.numel(), gamma.numel(), eps};
    kernels::layer_norm_forward(context_, s, x.data(), x.dtype(), f32(gamma), f32(beta), f32(mean), f32(inv_std),
                                y.data());
  }
  void layer_norm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& mean,
                           const Tensor& inv_std, const Tensor& dx, const Tensor& dgamma,
                           const Tensor& dbeta) override {
    const kernels::LayerNormShape s{x.numel() / gamma.numel(), gamma.numel(), 0.0f};
    kernels::layer_norm_backward(context_, s, x.data(), dy.data(), dy.dtype(), f32(gamma), f32(mean), f32(inv_std),
                                 reduction_scratch(s.rows, s.features), dx.data(), f32(dgamma), f32(dbeta));
  }

  // An id outside the table is found on the device; its position comes back with one 4-byte copy (the
  // CPU backend's check, at the cost of one wait per call).
  void embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& y) override {
    require_ids(ids, "embedding");
    const std::int64_t vocabulary = table.dim(0), dim = table.dim(1);
    auto* bad = static_cast<std::int32_t*>(scratch(Slot::bad_position, sizeof(std::int32_t)));
    kernels::fill_bytes(context_, bad, 0x7F, sizeof(std::int32_t));
    kernels::embedding_forward(context_, ids.data_as<std::int32_t>(), ids.numel(), f32(table), vocabulary, dim, y.data(),
                               y.dtype(), bad);
    std::int32_t position = kernels::kNoBadPosition;
    context_.download(&position, bad, sizeof(position));
    if (position != kernels::kNoBadPosition) {
      std::int32_t id = 0;
      context_.download(&id, ids.data_as<std::int32_t>() + position, sizeof(id));
      throw InvalidArgument("token id " + std::to_string(id) + " at position " + std::to_string(position) +
                            " is outside the vocabulary of " + std::to_string(vocabulary));
    }
  }
  void embedding_backward(const Tensor& ids, const Tensor& dy, const Tensor& dtable, bool accumulate) override {
    require_ids(ids, "embedding backward");
    const std::int64_t vocabulary = dtable.dim(0), dim = dtable.dim(1);
    if (!accumulate) fill_zero(dtable);
    const std::size_t bytes = kernels::embedding_backward_workspace_bytes(ids.numel(), vocabulary);
    kernels::embedding_backward(context_, ids.data_as<std::int32_t>(), ids.numel(), dy.data(), dy.dtype(), vocabulary,
                                dim, f32(dtable), scratch(Slot::sort, bytes), bytes);
  }
  void attention_forward(const Tensor& qkv, std::int64_t heads, const Tensor& row_logsumexp,
                         const Tensor& y) override {
    kernels::attention_forward(context_, attention_shape(qkv, heads, "attention"), qkv.data(), qkv.dtype(),
                               f32(row_logsumexp), y.data());
  }
  void attention_backward(const Tensor& qkv, const Tensor& row_logsumexp, const Tensor& dy, std::int64_t heads,
                          const Tensor& dqkv) override {
    const kernels::AttentionShape s = attention_shape(qkv, heads, "attention backward");
    auto* weighted = static_cast<float*>(
        scratch(Slot::attention_rows, kernels::attention_backward_workspace_floats(s) * sizeof(float)));
    kernels::attention_backward(context_, s, qkv.data(), f32(row_logsumexp), dy.data(), qkv.dtype(), weighted,
                                dqkv.data());
  }
  void attention_step(const Tensor& qkv, std::int64_t heads, std::int64_t position, const Tensor& k_cache,
                      const Tensor& v_cache, const Tensor& y) override {
    const kernels::AttentionShape s = attention_shape(qkv, heads, "attention step");
    if (s.batch != 1 || s.tokens != 1 || position < 0 || position >= k_cache.dim(0) || k_cache.dim(1) != s.width()) {
      throw InvalidArgument("attention step: qkv " + to_string(qkv.shape()) + " at position " + std::to_string(position) +
                            " does not fit a cache of " + to_string(k_cache.shape()));
    }
    kernels::attention_step(context_, s, qkv.data(), qkv.dtype(), position, f32(k_cache), f32(v_cache), y.data());
  }

  // The rows' losses come back to the host and are added in double, as the CPU backend adds them.
  float cross_entropy_forward(const Tensor& logits, const Tensor& labels, const Tensor& probabilities) override {
    const std::int64_t rows = logits.dim(0), classes = logits.dim(1);
    auto* row_loss = static_cast<double*>(scratch(Slot::row_losses, static_cast<std::size_t>(rows) * sizeof(double)));
    kernels::cross_entropy_forward(context_, logits.data(), logits.dtype(), labels.data(), labels.dtype(), rows, classes,
                                   f32(probabilities), row_loss);
    std::vector<double> host(static_cast<std::size_t>(rows));
    context_.download(host.data(), row_loss, host.size() * sizeof(double));
    double total = 0.0;
    for (std::size_t r = 0; r < host.size(); ++r) {
      if (std::isnan(host[r])) {
        if (const std::optional<std::int64_t> label = label_outside(labels, r, classes)) {
          throw InvalidArgument("label " + std::to_string(*label) + " at row " + std::to_string(r) +
                                " is out of range for " + std::to_string(classes) + " classes");
        }
      }
      total += host[r];
    }
    return static_cast<float>(total / static_cast<double>(rows));
  }
  void cross_entropy_backward(const Tensor& probabilities, const Tensor& labels, float scale,
                              const Tensor& grad) override {
    const std::int64_t rows = grad.dim(0), classes = grad.dim(1);
    kernels::cross_entropy_backward(context_, f32(probabilities), labels.data(), labels.dtype(), rows, classes,
                                    scale / static_cast<float>(rows), grad.data(), grad.dtype());
  }

  std::unique_ptr<OptimizerStep> make_optimizer(const OptimizerSettings& settings,
                                                std::vector<ParameterTensors> parameters) override {
    return std::make_unique<CudaOptimizerStep>(context_, settings, std::move(parameters));
  }

  void column_sums(const Tensor& x, const Tensor& out) override {
    const std::int64_t columns = out.numel(), rows = x.numel() / columns;
    kernels::column_sums(context_, x.data(), x.dtype(), rows, columns, f32(out), reduction_scratch(rows, columns));
  }

  void prepare_gradient_bucket(const GradientBucket& b, float weight) override {
    auto floats = [](const Tensor& t) { return t.defined() ? static_cast<float*>(t.data()) : nullptr; };
    kernels::GradientBucketPointers p{floats(b.values), floats(b.reference), floats(b.residual),
                                      b.wire.defined() ? b.wire.data() : nullptr,
                                      b.wire.defined() ? b.wire.dtype() : DType::f16,
                                      b.wire.defined() && b.residual.defined() ? floats(b.next_residual) : nullptr,
                                      b.nonfinite.data_as<std::uint8_t>()};
    kernels::prepare_gradient_bucket(context_, p, b.values.numel(), weight);
  }
  std::unique_ptr<DeviceCollectives> connect_collectives(const CollectivesRendezvous& rendezvous) override {
    return cuda::connect_nccl(context_, rendezvous);
  }

 private:
  enum class Slot { columns, column_gradients, reduction, row_losses, bad_position, sort, attention_rows };
  struct Gemm {
    std::int64_t rows, patch;
  };
  static Gemm gemm_of(const ConvShape& s) {
    return {s.batch * s.out_height() * s.out_width(), s.in_channels * s.kernel * s.kernel};
  }
  static float* f32(const Tensor& t) { return static_cast<float*>(t.data()); }
  static kernels::BatchNormShape norm_shape(const Tensor& x, const BatchNormArgs& args, const BatchNormState& st) {
    const std::int64_t channels = st.gamma.numel();
    return {x.numel() / channels, channels, args.eps, args.momentum, args.relu};
  }
  static void require_ids(const Tensor& ids, const char* what) {
    if (ids.dtype() != DType::i32) {
      throw InvalidArgument(std::string(what) + " reads i32 token ids, got " + std::string(name(ids.dtype())));
    }
  }
  static kernels::AttentionShape attention_shape(const Tensor& qkv, std::int64_t heads, const char* what) {
    if (qkv.shape().size() != 3 || qkv.dim(2) % 3 != 0 || heads <= 0 || (qkv.dim(2) / 3) % heads != 0) {
      throw InvalidArgument(std::string(what) + ": qkv must be [N, T, 3C] with C a multiple of " +
                            std::to_string(heads) + " heads, got " + to_string(qkv.shape()));
    }
    return {qkv.dim(0), qkv.dim(1), heads, qkv.dim(2) / 3 / heads};
  }
  // Row r's label when it lies outside [0, classes) (the rows whose loss came back NaN), else nullopt: a NaN
  // loss from NaN logits is a numeric fault the step's checks report, not a bad label.
  std::optional<std::int64_t> label_outside(const Tensor& labels, std::size_t r, std::int64_t classes) const {
    std::int64_t label = 0;
    if (labels.dtype() == DType::i32) {
      std::int32_t id = 0;
      context_.download(&id, labels.data_as<std::int32_t>() + r, sizeof(id));
      label = id;
    } else {
      std::uint8_t value = 0;
      context_.download(&value, labels.data_as<std::uint8_t>() + r, sizeof(value));
      label = value;
    }
    if (label >= 0 && label < classes) return std::nullopt;
    return label;
  }

  // A workspace of at least `bytes` for `slot`, grown (never shrunk) from the pool.
  void* scratch(Slot slot, std::size_t bytes) {
    Workspace& w = workspaces_[slot];
    if (w.bytes < bytes) {
      w.block.reset();
      w.block = context_.pool().allocate(bytes, MemoryCategory::workspace);
      w.bytes = bytes;
    }
    return w.block.get();
  }
  float* reduction_scratch(std::int64_t rows, std::int64_t columns) {
    return static_cast<float*>(scratch(Slot::reduction, kernels::reduction_workspace_floats(rows, columns) * 4));
  }

  struct Workspace {
    std::shared_ptr<void> block;
    std::size_t bytes = 0;
  };
  cuda::DeviceContext context_;
  cuda::Matmul matmul_;
  bool allow_tf32_ = false;
  std::map<Slot, Workspace> workspaces_;
  std::shared_ptr<void> step_counter_;
  std::uint64_t counter_value_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device_index) {
  cuda::require_device();
  return std::make_unique<CudaBackend>(device_index);
}

}  // namespace mpx::backend
