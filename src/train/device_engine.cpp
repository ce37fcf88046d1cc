#include "device_engine.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <optional>
#include <string>

#include "mpx/backend/cpu_backend.h"
#include "mpx/backend/cuda_context.h"
#include "mpx/backend/cuda_fused_optimizer.h"
#include "mpx/backend/cuda_kernels.h"
#include "mpx/backend/cuda_matmul.h"
#include "mpx/core/error.h"
#include "mpx/nn/layers.h"
#include "mpx/telemetry/numerics_monitor.h"
#include "mpx/train/device_plan.h"
#include "mpx/numeric/convert.h"

namespace mpx::train {

namespace kernels = cuda::kernels;
using Block = std::shared_ptr<void>;

namespace {

struct DeviceParameterState {
  nn::Parameter* host = nullptr;
  Block master, grad, m1, m2, working;
  std::size_t count = 0;
  const void* weights() const { return working ? working.get() : master.get(); }
  float* grad_f32() const { return static_cast<float*>(grad.get()); }
};

// A planned op with its device buffers.
struct Op : DeviceOpPlan {
  int weight = -1, bias = -1;  // indices into the parameter states
  Block y, dx, cols, dcols, mean, inv_std, keep, workspace;
  Block running_mean, running_var;  // batch_norm: the layer's buffers on the device
  const void* x = nullptr;   // what the last forward read
  const void* dy = nullptr;  // the gradient the last backward received
  const void* out = nullptr; // what the last forward handed on
  const void* handed = nullptr;  // the gradient the last backward handed to the layer before (or none)

  // conv: the convolution as a GEMM over `images`: its shape, output positions (GEMM rows), patch length.
  struct ConvGemm {
    backend::ConvShape shape;
    std::int64_t positions, patch;
  };
  ConvGemm conv_gemm(std::int64_t images) const {
    backend::ConvShape s = conv;
    s.batch = images;
    return {s, images * s.out_height() * s.out_width(), s.in_channels * s.kernel * s.kernel};
  }
};

}  // namespace

struct DeviceEngine::Impl {
  cuda::DeviceContext context;
  backend::CpuBackend host_backend;  // refreshes the host layers' working copies
  std::unique_ptr<cuda::Matmul> matmul;
  std::unique_ptr<cuda::FusedOptimizer> optimizer;
  std::unique_ptr<cuda::CapturedGraph> graph;
  nn::Sequential& model;
  amp::PrecisionPolicy policy;
  TrainConfig config;
  DType act = DType::f32;  // activations, their gradients and working weights
  io::PixelNormalisation normalise;
  std::vector<DeviceParameterState> params;
  std::vector<Op> ops;
  std::int64_t batch = 0, classes = 0, pixels = 0, train_count = 0, test_count = 0;
  Block train_images, train_labels, test_images, test_labels, test_index, order, x, labels, logits_grad, loss, correct,
      loss_workspace, step_counter;

  Impl(nn::Sequential& m, const amp::PrecisionPolicy& p, const TrainConfig& c) : model(m), policy(p), config(c) {}

  Block allocate(std::size_t bytes, MemoryCategory category) { return context.pool().allocate(bytes, category); }

  // Every product of the step: FP32 inputs go through TF32 only when the policy allows it.
  void product(cuda::MatmulProblem p, const void* a, const void* b, void* c, const float* bias = nullptr) {
    p.allow_tf32 = policy.allow_tf32;
    matmul->run(p, a, b, c, bias);
  }

  template <class T>
  Block upload_vector(const std::vector<T>& v, MemoryCategory category) {
    Block b = allocate(std::max<std::size_t>(1, v.size() * sizeof(T)), category);
    if (!v.empty()) context.upload(b.get(), v.data(), v.size() * sizeof(T));
    return b;
  }

  int add_parameter(nn::Parameter& p) {
    DeviceParameterState s;
    s.host = &p;
    s.count = static_cast<std::size_t>(p.value.numel());
    s.master = allocate(s.count * 4, policy.master_weights ? MemoryCategory::master_weights : MemoryCategory::weights);
    s.grad = allocate(s.count * 4, MemoryCategory::gradients);
    s.m1 = allocate(s.count * 4, MemoryCategory::optimizer_state);
    if (config.optimizer == OptimizerKind::adamw) s.m2 = allocate(s.count * 4, MemoryCategory::optimizer_state);
    if (act != DType::f32) s.working = allocate(s.count * 2, MemoryCategory::weights);
    params.push_back(std::move(s));
    return static_cast<int>(params.size()) - 1;
  }

  void plan(std::int64_t height, std::int64_t width, std::int64_t channels) {
    for (const DeviceOpPlan& planned : plan_device_ops(model, act, batch, height, width, channels, config.seed)) {
      Op op;
      static_cast<DeviceOpPlan&>(op) = planned;
      const auto parameters = op.layer->parameters();
      if (parameters.size() == 2) {  // weight (or gamma) and bias (or beta)
        op.weight = add_parameter(*parameters[0]);
        op.bias = add_parameter(*parameters[1]);
      }
      switch (op.kind) {
        case DeviceOpKind::conv: {
          const auto [shape, rows, patch] = op.conv_gemm(batch);
          op.cols = allocate(static_cast<std::size_t>(rows * patch) * size_bytes(act), MemoryCategory::workspace);
          op.dcols = allocate(static_cast<std::size_t>(rows * patch) * 4, MemoryCategory::workspace);
          op.workspace = allocate(kernels::reduction_workspace_floats(rows, op.conv.out_channels) * 4, MemoryCategory::workspace);
          break;
        }
        case DeviceOpKind::batch_norm: {
          const auto c = static_cast<std::size_t>(op.norm.channels);
          op.mean = allocate(c * 4, MemoryCategory::activations);
          op.inv_std = allocate(c * 4, MemoryCategory::activations);
          op.running_mean = allocate(c * 4, MemoryCategory::activations);
          op.running_var = allocate(c * 4, MemoryCategory::activations);
          op.workspace = allocate(kernels::reduction_workspace_floats(batch * op.norm.rows, op.norm.channels) * 4,
                                  MemoryCategory::workspace);
          break;
        }
        case DeviceOpKind::linear:
          op.workspace = allocate(kernels::reduction_workspace_floats(batch, op.out_features) * 4, MemoryCategory::workspace);
          break;
        case DeviceOpKind::dropout:
          op.keep = allocate(static_cast<std::size_t>(batch * op.in_features), MemoryCategory::activations);
          break;
        default:
          break;
      }
      if (!op.passes_through) {
        op.y = allocate(static_cast<std::size_t>(batch * op.out_features) * size_bytes(op.out_dtype), MemoryCategory::activations);
      }
      if (op.input_gradient || op.kind == DeviceOpKind::batch_norm) {  // BatchNorm's backward always writes dx
        op.dx = allocate(static_cast<std::size_t>(batch * op.in_features) * size_bytes(act), MemoryCategory::activations);
      }
      ops.push_back(std::move(op));
    }
    if (ops.empty()) throw InvalidArgument("the CUDA engine got an empty model");
    classes = ops.back().out_features;
  }

  // Returns the logits (FP32). Pass-through ops (flatten, the fused ReLU, dropout when not training) hand on
  // their input.
  const void* forward(std::int64_t rows, bool training) {
    const void* cur = x.get();
    for (Op& op : ops) {
      op.x = cur;
      bool passes = false;
      switch (op.kind) {
        case DeviceOpKind::conv: {
          const auto [s, r, patch] = op.conv_gemm(rows);
          kernels::im2col(context, s, cur, act, op.cols.get());
          product({r, s.out_channels, patch, false, true, act, act, cuda::MatmulEpilogue::bias}, op.cols.get(),
                  params[op.weight].weights(), op.y.get(), static_cast<const float*>(params[op.bias].master.get()));
          break;
        }
        case DeviceOpKind::batch_norm: {
          kernels::BatchNormShape s = op.norm;
          s.rows = rows * op.norm.rows;
          const auto* gamma = static_cast<const float*>(params[op.weight].master.get());
          const auto* beta = static_cast<const float*>(params[op.bias].master.get());
          if (training) {
            kernels::batch_norm_forward_training(context, s, cur, act, gamma, beta, static_cast<float*>(op.running_mean.get()),
                                                 static_cast<float*>(op.running_var.get()), true,
                                                 static_cast<float*>(op.mean.get()), static_cast<float*>(op.inv_std.get()),
                                                 static_cast<float*>(op.workspace.get()), op.y.get());
          } else {
            kernels::batch_norm_forward_inference(context, s, cur, act, gamma, beta, static_cast<float*>(op.running_mean.get()),
                                                  static_cast<float*>(op.running_var.get()),
                                                  static_cast<float*>(op.workspace.get()), op.y.get());
          }
          break;
        }
        case DeviceOpKind::max_pool:
          kernels::max_pool_forward(context, cur, act, rows, op.conv.height, op.conv.width, op.conv.in_channels, op.pool,
                                    op.y.get());
          break;
        case DeviceOpKind::flatten:
        case DeviceOpKind::relu:  // the linear layer before applied it
          passes = true;          // same memory onwards
          break;
        case DeviceOpKind::linear:
          product({rows, op.out_features, op.in_features, false, true, act, op.out_dtype,
                   op.relu_after ? cuda::MatmulEpilogue::bias_relu : cuda::MatmulEpilogue::bias},
                  cur, params[op.weight].weights(), op.y.get(), static_cast<const float*>(params[op.bias].master.get()));
          break;
        case DeviceOpKind::dropout:
          passes = !training || op.dropout.probability == 0.0f;  // identity
          if (!passes) {
            kernels::dropout_forward(context, op.dropout, static_cast<const std::uint64_t*>(step_counter.get()), cur, act,
                                     rows * op.in_features, op.y.get(), static_cast<std::uint8_t*>(op.keep.get()));
          }
          break;
      }
      if (!passes) cur = op.y.get();
      op.out = cur;
      if (training) inject(op, nn::Pass::forward, cur, rows * op.out_features, op.out_dtype);
    }
    return cur;
  }

  void backward(std::int64_t rows, const void* dlogits) {
    const void* g = dlogits;
    for (auto it = ops.rbegin(); it != ops.rend(); ++it) {
      Op& op = *it;
      op.dy = g;
      const bool input_grad = op.input_gradient;
      if (!input_grad && op.weight < 0) break;  // nothing before this needs a gradient
      bool passes = false;
      switch (op.kind) {
        case DeviceOpKind::conv: {
          const auto [s, r, patch] = op.conv_gemm(rows);
          product({s.out_channels, patch, r, true, false, act, DType::f32}, g, op.cols.get(), params[op.weight].grad.get());
          kernels::column_sums(context, g, act, r, s.out_channels, params[op.bias].grad_f32(),
                               static_cast<float*>(op.workspace.get()));
          if (input_grad) {
            product({r, patch, s.out_channels, false, false, act, DType::f32}, g, params[op.weight].weights(),
                    op.dcols.get());
            kernels::col2im(context, s, static_cast<const float*>(op.dcols.get()), op.dx.get(), act);
          }
          break;
        }
        case DeviceOpKind::batch_norm: {
          kernels::BatchNormShape s = op.norm;
          s.rows = rows * op.norm.rows;
          kernels::batch_norm_backward(context, s, op.x, g, act, static_cast<const float*>(params[op.weight].master.get()),
                                       static_cast<const float*>(params[op.bias].master.get()),
                                       static_cast<const float*>(op.mean.get()), static_cast<const float*>(op.inv_std.get()),
                                       static_cast<float*>(op.workspace.get()), op.dx.get(), params[op.weight].grad_f32(),
                                       params[op.bias].grad_f32());
          break;
        }
        case DeviceOpKind::max_pool:
          kernels::max_pool_backward(context, op.x, op.y.get(), g, act, rows, op.conv.height, op.conv.width,
                                     op.conv.in_channels, op.pool, op.dx.get());
          break;
        case DeviceOpKind::flatten:
          passes = true;  // same memory, same gradient
          break;
        case DeviceOpKind::relu:
          kernels::relu_backward(context, op.x, g, act, rows * op.in_features, op.dx.get());
          break;
        case DeviceOpKind::linear:
          product({op.out_features, op.in_features, rows, true, false, act, DType::f32}, g, op.x,
                  params[op.weight].grad.get());
          kernels::column_sums(context, g, act, rows, op.out_features, params[op.bias].grad_f32(),
                               static_cast<float*>(op.workspace.get()));
          if (input_grad) {
            product({rows, op.in_features, op.out_features, false, false, act, act}, g, params[op.weight].weights(),
                    op.dx.get());
          }
          break;
        case DeviceOpKind::dropout:
          passes = op.dropout.probability == 0.0f;
          if (!passes) {
            kernels::dropout_backward(context, op.dropout, g, static_cast<const std::uint8_t*>(op.keep.get()), act,
                                      rows * op.in_features, op.dx.get());
          }
          break;
      }
      // What this layer hands to the one before; none where its input needs no gradient (the first conv).
      op.handed = passes ? g : input_grad || op.kind == DeviceOpKind::batch_norm ? op.dx.get() : nullptr;
      if (op.handed) inject(op, nn::Pass::backward, op.handed, rows * op.in_features, act);
      if (!op.handed) break;
      g = op.handed;
    }
  }

  // The non-finite drill (--inject-nonfinite): the CPU injector's elements of this op's output at its step.
  std::optional<telemetry::NonFiniteInjector> injector;
  std::int64_t steps_done = 0;  // training steps before the one being enqueued (host mirror of step_counter)
  bool injecting() const { return injector && injector->step() == steps_done + 1; }
  void inject(const Op& op, nn::Pass pass, const void* data, std::int64_t n, DType dtype) {
    if (!injecting() || injector->pass() != pass || injector->layer() != op.layer->name()) return;
    kernels::poison(context, const_cast<void*>(data), dtype, n, injector->count(),
                    telemetry::NonFiniteInjector::bits(dtype, injector->nan()));
  }

  std::int64_t last_rows = 0;
  bool warmed_up = false;  // a full batch ran eagerly: the graph may be captured

  // Everything a training step enqueues after the batch is in place.
  void step_body(std::int64_t rows) {
    const void* logits = forward(rows, true);
    kernels::softmax_cross_entropy(context, static_cast<const float*>(logits), static_cast<const std::uint8_t*>(labels.get()),
                                   rows, classes, optimizer->device_loss_scale(), static_cast<float*>(loss.get()),
                                   static_cast<int*>(correct.get()), logits_grad.get(), act,
                                   static_cast<float*>(loss_workspace.get()));
    backward(rows, logits_grad.get());
    optimizer->step_from_table(static_cast<const float*>(loss.get()));
    kernels::increment(context, static_cast<std::uint64_t*>(step_counter.get()));
  }
};

DeviceEngine::DeviceEngine(nn::Sequential& model, const amp::PrecisionPolicy& policy, const TrainConfig& config,
                           const io::FashionMnist& data, io::PixelNormalisation normalise, bool loss_scaling,
                           const telemetry::NonFiniteInjector* injector)
    : impl_(std::make_unique<Impl>(model, policy, config)) {
  Impl& m = *impl_;
  if (injector) m.injector = *injector;
  m.act = policy.compute;
  if (m.act != DType::f32 && m.act != DType::f16 && m.act != DType::bf16) {
    throw NotAvailable("the CUDA engine computes in f32, f16 or bf16, not " + std::string(name(m.act)));
  }
  // The device engine runs every layer in the policy's compute dtype: a per-layer override is refused here
  // rather than ignored.
  for (const auto& layer : model.layers()) {
    const DType wanted = policy.compute_for(layer->name());
    if (wanted != policy.compute) {
      throw NotAvailable("layer " + layer->name() + " is set to compute in " + std::string(name(wanted)) +
                         " but the CUDA engine runs every layer in " + std::string(name(policy.compute)) +
                         "; drop the override or use --device cpu");
    }
  }
  m.normalise = normalise;
  m.batch = config.batch_size;
  m.pixels = data.train.height * data.train.width;
  m.matmul = std::make_unique<cuda::Matmul>(m.context);
  m.plan(data.train.height, data.train.width, 1);
  m.train_count = config.train_subset > 0 ? std::min(config.train_subset, data.train.count) : data.train.count;
  m.test_count = config.test_subset > 0 ? std::min(config.test_subset, data.test.count) : data.test.count;
  m.train_images = m.upload_vector(data.train.pixels, MemoryCategory::workspace);
  m.train_labels = m.upload_vector(data.train.labels, MemoryCategory::workspace);
  m.test_images = m.upload_vector(data.test.pixels, MemoryCategory::workspace);
  m.test_labels = m.upload_vector(data.test.labels, MemoryCategory::workspace);
  std::vector<std::int64_t> identity(static_cast<std::size_t>(data.test.count));
  std::iota(identity.begin(), identity.end(), 0);
  m.test_index = m.upload_vector(identity, MemoryCategory::workspace);
  m.order = m.allocate(static_cast<std::size_t>(std::max<std::int64_t>(1, data.train.count)) * 8, MemoryCategory::workspace);
  m.x = m.allocate(static_cast<std::size_t>(m.batch * m.pixels) * size_bytes(m.act), MemoryCategory::activations);
  m.labels = m.allocate(static_cast<std::size_t>(m.batch), MemoryCategory::activations);
  m.logits_grad = m.allocate(static_cast<std::size_t>(m.batch * m.classes) * size_bytes(m.act), MemoryCategory::activations);
  m.loss = m.allocate(4, MemoryCategory::activations);
  m.correct = m.allocate(4, MemoryCategory::activations);
  m.loss_workspace = m.allocate(static_cast<std::size_t>(m.batch) * 8, MemoryCategory::workspace);
  m.step_counter = m.allocate(8, MemoryCategory::workspace);

  cuda::FusedStepConfig step;
  step.algorithm = config.optimizer == OptimizerKind::adamw ? cuda::FusedStepConfig::Algorithm::adamw : cuda::FusedStepConfig::Algorithm::sgd;
  step.adamw.weight_decay = config.weight_decay;
  step.sgd = {config.momentum, config.weight_decay, true};
  step.clip_norm = config.clip_norm;
  step.loss_scaling = loss_scaling;
  std::vector<cuda::DeviceParameter> device_params;
  for (const DeviceParameterState& p : m.params) {
    device_params.push_back({static_cast<float*>(p.master.get()), p.grad.get(), DType::f32, static_cast<float*>(p.m1.get()),
                             static_cast<float*>(p.m2.get()), p.working.get(), m.act == DType::f32 ? DType::bf16 : m.act,
                             p.count, p.host->decay, !policy.master_weights && p.working != nullptr});
  }
  m.optimizer = std::make_unique<cuda::FusedOptimizer>(m.context, step, device_params);
}

DeviceEngine::~DeviceEngine() = default;

std::string DeviceEngine::device_name() const { return impl_->context.name(); }
std::size_t DeviceEngine::peak_bytes() const { return memory().peak_total(); }
const MemoryTracker& DeviceEngine::memory() const { return impl_->context.pool().memory(); }

void DeviceEngine::upload_state(const amp::LossScalerState* scaler, std::int64_t optimizer_steps, std::int64_t global_step) {
  Impl& m = *impl_;
  for (DeviceParameterState& p : m.params) {
    m.context.upload(p.master.get(), p.host->value.data(), p.count * 4);
    const std::vector<float> zeros(p.count, 0.0f);
    m.context.upload(p.m1.get(), p.host->state1.defined() ? p.host->state1.data() : zeros.data(), p.count * 4);
    if (p.m2) m.context.upload(p.m2.get(), p.host->state2.defined() ? p.host->state2.data() : zeros.data(), p.count * 4);
    if (p.working) {
      std::vector<std::uint16_t> low(p.count);
      numeric::convert(p.host->value.data(), DType::f32, low.data(), m.act, p.count);
      m.context.upload(p.working.get(), low.data(), p.count * 2);
    }
  }
  for (Op& op : m.ops) {
    if (op.kind != DeviceOpKind::batch_norm) continue;
    auto* bn = static_cast<nn::BatchNorm2d*>(op.layer);
    m.context.upload(op.running_mean.get(), bn->running_mean().data(), bn->running_mean().bytes());
    m.context.upload(op.running_var.get(), bn->running_var().data(), bn->running_var().bytes());
  }
  cuda::FusedStepRecord record;
  if (scaler) record.scaler = *scaler;
  record.optimizer_steps = optimizer_steps;
  record.calls = global_step;
  m.optimizer->load(record);
  const auto step = static_cast<std::uint64_t>(global_step);
  m.context.upload(m.step_counter.get(), &step, 8);
  m.steps_done = global_step;
}

void DeviceEngine::download_state(amp::LossScalerState* scaler, std::int64_t& optimizer_steps) {
  Impl& m = *impl_;
  for (DeviceParameterState& p : m.params) {
    m.context.download(p.host->value.data(), p.master.get(), p.count * 4);
    m.context.download(p.host->grad.data(), p.grad.get(), p.count * 4);  // the last step's, still scaled
    if (p.host->state1.defined()) m.context.download(p.host->state1.data(), p.m1.get(), p.count * 4);
    if (p.m2 && p.host->state2.defined()) m.context.download(p.host->state2.data(), p.m2.get(), p.count * 4);
    p.host->refresh(m.host_backend, m.policy.master_weights);  // the host working copy follows the weights
  }
  for (Op& op : m.ops) {
    if (op.kind != DeviceOpKind::batch_norm) continue;
    auto* bn = static_cast<nn::BatchNorm2d*>(op.layer);
    m.context.download(bn->running_mean().data(), op.running_mean.get(), bn->running_mean().bytes());
    m.context.download(bn->running_var().data(), op.running_var.get(), bn->running_var().bytes());
  }
  const cuda::FusedStepRecord record = m.optimizer->record();
  if (scaler) *scaler = record.scaler;
  optimizer_steps = record.optimizer_steps;
}

void DeviceEngine::set_lr_schedule(const std::vector<float>& lr_per_step) { impl_->optimizer->set_lr_table(lr_per_step); }

void DeviceEngine::set_order(const std::vector<std::int64_t>& order) {
  impl_->context.upload(impl_->order.get(), order.data(), order.size() * 8);
}

DeviceStepOutcome DeviceEngine::step(std::int64_t first, std::int64_t rows) {
  try {
    return run_step(first, rows);
  } catch (const CudaError& e) {
    // Kernels run asynchronously: a fault inside one surfaces at the next synchronisation, far from it.
    throw CudaError(std::string(e.what()) + " [training step on images " + std::to_string(first) + ".." +
                    std::to_string(first + rows) + " of the epoch, batch " + std::to_string(rows) +
                    "; rerun with CUDA_LAUNCH_BLOCKING=1 so that the error names the kernel]");
  }
}

DeviceStepOutcome DeviceEngine::run_step(std::int64_t first, std::int64_t rows) {
  Impl& m = *impl_;
  kernels::gather_batch(m.context, static_cast<const std::uint8_t*>(m.train_images.get()),
                        static_cast<const std::uint8_t*>(m.train_labels.get()), m.pixels,
                        static_cast<const std::int64_t*>(m.order.get()) + first, rows, m.normalise.mean,
                        m.normalise.inv_std, m.x.get(), m.act, static_cast<std::uint8_t*>(m.labels.get()));
  m.last_rows = rows;
  // The first full batch runs eagerly (lazy module loading, cuBLASLt plans and heuristics happen outside
  // the capture, as CUDA's graph guidance asks); the second is captured and every later one replays it.
  // A drill's step runs eagerly too: the graph holds no injection.
  if (rows == m.batch && m.config.cuda_graph && m.warmed_up && !m.injecting()) {
    if (!m.graph) m.graph = std::make_unique<cuda::CapturedGraph>(m.context, [&] { m.step_body(rows); });
    m.graph->launch();
  } else {
    m.step_body(rows);
    m.warmed_up = m.warmed_up || rows == m.batch;
  }
  ++m.steps_done;
  DeviceStepOutcome out;
  const cuda::FusedStepRecord record = m.optimizer->record();  // the one synchronisation of a step
  out.loss = record.loss;
  out.applied = record.applied;
  out.found_inf = record.found_inf;
  out.loss_scale = record.scaler.scale;
  return out;
}

void DeviceEngine::visit_last_step(const TensorVisitor& visit, bool gradients_handed_on) {
  Impl& m = *impl_;
  if (m.last_rows == 0) return;
  auto host_copy = [&](const void* device, std::int64_t features, DType dtype) {
    Tensor t = Tensor::empty({m.last_rows, features}, dtype, MemoryCategory::workspace, nullptr);
    m.context.download(t.data(), device, t.bytes());
    return t;
  };
  Tensor input = host_copy(m.x.get(), m.pixels, m.act);  // each layer reads what the one before wrote
  for (const Op& op : m.ops) {
    if (op.out == nullptr) continue;
    Tensor output = host_copy(op.out, op.out_features, op.out_dtype);
    visit(*op.layer, nn::Pass::forward, input, output);
    input = std::move(output);
  }
  for (auto it = m.ops.rbegin(); it != m.ops.rend(); ++it) {
    if (it->dy == nullptr) continue;
    const Tensor handed = gradients_handed_on && it->handed ? host_copy(it->handed, it->in_features, m.act) : Tensor{};
    visit(*it->layer, nn::Pass::backward, host_copy(it->dy, it->out_features, m.act), handed);
  }
}

std::int64_t DeviceEngine::count_correct(std::int64_t total) {
  Impl& m = *impl_;
  std::int64_t correct = 0;
  for (std::int64_t first = 0; first < std::min(total, m.test_count); first += m.batch) {
    const std::int64_t rows = std::min(m.batch, total - first);
    kernels::gather_batch(m.context, static_cast<const std::uint8_t*>(m.test_images.get()),
                          static_cast<const std::uint8_t*>(m.test_labels.get()), m.pixels,
                          static_cast<const std::int64_t*>(m.test_index.get()) + first, rows, m.normalise.mean,
                          m.normalise.inv_std, m.x.get(), m.act, static_cast<std::uint8_t*>(m.labels.get()));
    const void* logits = m.forward(rows, false);
    kernels::softmax_cross_entropy(m.context, static_cast<const float*>(logits), static_cast<const std::uint8_t*>(m.labels.get()),
                                   rows, m.classes, nullptr, static_cast<float*>(m.loss.get()),
                                   static_cast<int*>(m.correct.get()), m.logits_grad.get(), m.act,
                                   static_cast<float*>(m.loss_workspace.get()));
    int batch_correct = 0;
    m.context.download(&batch_correct, m.correct.get(), 4);
    correct += batch_correct;
  }
  return correct;
}

}  // namespace mpx::train
