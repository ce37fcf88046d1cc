// The one interface every layer computes through: matrix products and convolutions (low-precision in,
// FP32 accumulation), normalisations, pooling, pointwise ops, softmax + cross-entropy, conversions and
// reductions, on tensors that live on the backend's device. Implementations: src/backend/cpu (oneDNN and
// vectorised loops) and src/backend/cuda (cuBLASLt and mpx's kernels); make_backend() picks one by device.
// A backend says which (op, dtype) it can do; layers ask before the first step, so an unsupported
// combination is one clear error naming op, dtype and device, never a wrong result.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "mpx/amp/loss_scaler.h"
#include "mpx/amp/optimizer.h"
#include "mpx/backend/device_collectives.h"
#include "mpx/tensor/tensor.h"

namespace mpx::backend {

struct ConvShape {
  std::int64_t batch = 1, in_channels = 1, height = 1, width = 1;
  std::int64_t out_channels = 1, kernel = 3, stride = 1, padding = 1;
  constexpr std::int64_t out_height() const { return (height + 2 * padding - kernel) / stride + 1; }
  constexpr std::int64_t out_width() const { return (width + 2 * padding - kernel) / stride + 1; }
};

// What a layer asks a backend for. Append only (tests and messages name them).
enum class Op : std::uint8_t {
  matmul,
  conv2d,
  batch_norm,
  layer_norm,
  max_pool,
  relu,
  gelu,
  dropout,
  embedding,
  cross_entropy,
  add,
  convert,
  column_sums,
  attention,
};
const char* name(Op op);

// Element i of step s keeps when Philox(key, s * planned_elements + element_offset + i) >= probability * 2^32
// (data parallel: planned_elements is the global batch's and element_offset where this rank's rows begin).
struct DropoutArgs {
  float probability = 0;
  std::uint64_t key = 0;               // the layer's Philox key (Dropout::key(seed))
  std::uint64_t planned_elements = 0;  // elements of the planned (largest) batch
  std::uint64_t step = 0;              // the training step
  std::uint64_t element_offset = 0;    // of this rank's first row in the global batch
};

struct BatchNormArgs {
  float eps = 1e-5f, momentum = 0.1f;
  bool relu = false;            // fused ReLU on the output
  bool training = true;         // batch statistics (else the running ones)
  bool update_running = true;   // training: blend the batch statistics into the running ones
};

// A BatchNorm's FP32 tensors, all [channels]. mean/inv_std: written by forward (batch or running
// statistics), read by backward.
struct BatchNormState {
  Tensor gamma, beta, running_mean, running_var, mean, inv_std;
};

// The mixed-precision optimizer step over every parameter, on the backend's device: unscale the
// gradients, find inf/NaN, take the loss scaler's decision (GradScaler's rule), clip the global norm, apply
// AdamW or SGD to the FP32 values and state, refresh the working copies.
struct OptimizerSettings {
  enum class Algorithm : std::uint8_t { adamw, sgd };
  Algorithm algorithm = Algorithm::adamw;
  amp::AdamWConfig adamw;
  amp::SgdConfig sgd;
  double clip_norm = 0;       // 0: no clipping
  bool loss_scaling = false;  // dynamic loss scaling (else scale 1; non-finite steps are still skipped)
  bool master_weights = true; // false (*-true): the FP32 value is kept rounded to the compute dtype
  // Without master weights: round BF16 weights stochastically (amp::detail::weight_rounding_stream), else
  // to nearest.
  bool stochastic_rounding = false;
  std::uint64_t rounding_seed = 0;
};
// One parameter's tensors on the backend's device (value, grad, states FP32; working: the operand copy).
struct ParameterTensors {
  Tensor value, grad, state1, state2, working;
  DType compute = DType::f32;
  bool decay = true;
};
// One data-parallel gradient bucket (distributed::GradientSync), 1-D tensors of one element count on the
// backend's device. `values` holds the gathered FP32 gradients; prepare_gradient_bucket turns it into what
// is sent: values = weight * values (rounded once), then + residual (error feedback); `reference` (when
// defined) receives weight * values before the residual (M9's FP32 copy); `wire` (f16/bf16, when defined)
// values rounded to nearest even, and `next_residual` (with residual and wire) values - wire, 0 where that
// is not finite. `nonfinite` (u8 [1]) is set to 1 when a gradient is not finite (and left alone otherwise).
struct GradientBucket {
  Tensor values, reference, residual, wire, next_residual, nonfinite;
};

class OptimizerStep {
 public:
  virtual ~OptimizerStep() = default;
  // Multiplies the gradients by 1 / loss_scale() and reports whether any of them (or `loss`) is not finite.
  // A device may take the whole step here (the decision then lives on it); apply() then reports it.
  virtual bool unscale_and_check(float loss, float lr) = 0;
  // The scaler's decision for a step with `found_inf`; when it applies, the update. Returns whether applied.
  virtual bool apply(bool found_inf, float lr) = 0;
  virtual float loss_scale() const = 0;  // what the next backward pass multiplies the loss by
  virtual amp::LossScalerState scaler_state() const = 0;
  virtual std::int64_t optimizer_steps() const = 0;  // applied steps (AdamW's bias correction)
  virtual void load(const amp::LossScalerState& scaler, std::int64_t optimizer_steps) = 0;  // resume
};

class Backend {
 public:
  virtual ~Backend() = default;
  Backend() = default;
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  virtual Device device() const = 0;
  virtual std::string device_name() const = 0;  // "cpu", "cuda:0 (NVIDIA H100 80GB HBM3)"
  // Whether this backend computes `op` on data of `dtype` (the op's storage or compute dtype).
  virtual bool supports(Op op, DType dtype) const = 0;
  // Throws NotAvailable "<device> cannot run <op> on <dtype> data ..." unless supports(op, dtype).
  void require(Op op, DType dtype, const std::string& layer) const;
  // Whether a step's ops can be recorded once and replayed (CUDA graphs).
  virtual bool can_capture() const = 0;
  // FP32 products may multiply through TF32 tensor cores (PrecisionPolicy::allow_tf32; CUDA only).
  virtual void set_allow_tf32(bool allowed) { (void)allowed; }

  // Memory on this device, accounted by category (summary.json's peaks).
  virtual Tensor allocate(const Shape& shape, DType dtype, MemoryCategory category) = 0;
  virtual const MemoryTracker& memory() const = 0;
  virtual void fill_zero(const Tensor& t) = 0;
  // Host <-> device copies of a whole tensor (the host side holds t.bytes()).
  virtual void upload(const Tensor& t, const void* host) = 0;
  virtual void download(const Tensor& t, void* host) = 0;
  virtual void synchronize() = 0;

  // How this backend stores what flows between layers, and what its products read.
  // activation_dtype: the storage of activations (and their gradients) for a policy's activation dtype.
  virtual DType activation_dtype(DType policy_activations) const = 0;
  // operand_dtype: what matmul/convolution read for a layer computing in `compute`.
  virtual DType operand_dtype(DType compute) const = 0;
  // product_output_dtype: what a product computing in `compute` writes when activations are `stored`.
  virtual DType product_output_dtype(DType compute, DType stored) const = 0;
  // Rounds FP32 `src` to `compute` precision into `dst` (operand_dtype(compute), same element count).
  virtual void round_for_compute(const Tensor& src, const Tensor& dst, DType compute) = 0;
  // dst = src converted to dst's dtype (round to nearest even when narrowing; exact when widening).
  virtual void convert(const Tensor& src, const Tensor& dst) = 0;

  // C[m, n] = op(A) op(B) (+ bias[n]) (+ C when accumulate), row-major; A and B of `input` dtype, C of
  // `output` dtype; FP32 accumulation. `allow_tf32`: FP32 inputs may multiply through TF32 (CUDA only).
  virtual void matmul(const void* a, bool transpose_a, const void* b, bool transpose_b, DType input, void* c,
                      std::int64_t m, std::int64_t n, std::int64_t k, const float* bias = nullptr,
                      bool accumulate = false, DType output = DType::f32) = 0;
  // NHWC activations, OIHW weights; weight and bias gradients FP32 (overwritten).
  virtual void conv2d_forward(const ConvShape& shape, const void* src, const void* weights, DType input,
                              const float* bias, void* dst, DType output) = 0;
  virtual void conv2d_backward_data(const ConvShape& shape, const void* diff_dst, const void* weights, DType input,
                                    void* diff_src, DType output) = 0;
  virtual void conv2d_backward_weights(const ConvShape& shape, const void* src, const void* diff_dst, DType input,
                                       float* diff_weights, float* diff_bias) = 0;

  // Pointwise, dtype-preserving (FP32 arithmetic). y/dx may not alias their inputs.
  virtual void relu_forward(const Tensor& x, const Tensor& y) = 0;
  virtual void relu_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) = 0;  // dy where y > 0
  virtual void gelu_forward(const Tensor& x, const Tensor& y, bool tanh_approximation) = 0;
  virtual void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool tanh_approximation) = 0;
  virtual void add(const Tensor& a, const Tensor& b, const Tensor& sum) = 0;  // residual connections
  // Inverted dropout: keep (u8) as DropoutArgs says; y = x * keep / (1 - p).
  virtual void dropout_forward(const Tensor& x, const DropoutArgs& args, const Tensor& keep, const Tensor& y) = 0;
  virtual void dropout_backward(const Tensor& dy, const Tensor& keep, float probability, const Tensor& dx) = 0;

  // k x k max pooling with stride k on NHWC; a NaN wins, ties go to the first position.
  virtual void max_pool_forward(const Tensor& x, std::int64_t kernel, const Tensor& y) = 0;
  virtual void max_pool_backward(const Tensor& x, const Tensor& y, const Tensor& dy, std::int64_t kernel,
                                 const Tensor& dx) = 0;

  // BatchNorm over N*H*W per channel of NHWC data; statistics in FP32 (accumulated in double).
  virtual void batch_norm_forward(const Tensor& x, const BatchNormArgs& args, const BatchNormState& state,
                                  const Tensor& y) = 0;
  // dgamma, dbeta overwritten (FP32 [channels]).
  virtual void batch_norm_backward(const Tensor& x, const Tensor& dy, const BatchNormArgs& args,
                                   const BatchNormState& state, const Tensor& dx, const Tensor& dgamma,
                                   const Tensor& dbeta) = 0;
  // LayerNorm over the last dimension; mean and inv_std (FP32, one per row) kept for backward.
  virtual void layer_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                                  const Tensor& mean, const Tensor& inv_std, const Tensor& y) = 0;
  virtual void layer_norm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& mean,
                                   const Tensor& inv_std, const Tensor& dx, const Tensor& dgamma,
                                   const Tensor& dbeta) = 0;

  // Rows of an FP32 table gathered by i32 ids into y (y's dtype); throws InvalidArgument for an id outside
  // the table. backward: dtable overwritten with the sums of dy's rows per id (added to it when
  // `accumulate`: a table tied to an output projection).
  virtual void embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& y) = 0;
  virtual void embedding_backward(const Tensor& ids, const Tensor& dy, const Tensor& dtable, bool accumulate) = 0;

  // Causal multi-head self-attention as GPT-2 computes it. qkv [N, T, 3C] holds q, k and v side by side
  // (c_attn's output), each C = heads x head_dim; y [N, T, C] is, per head, softmax(q k^T / sqrt(head_dim)
  // with every later position masked) v, the heads concatenated. Scores, softmax and both products are FP32
  // whatever qkv's storage. No T x T matrix is kept: `row_logsumexp` (FP32 [N, heads, T]) receives each
  // row's log-sum-exp of its scaled scores, from which backward recomputes the probabilities.
  virtual void attention_forward(const Tensor& qkv, std::int64_t heads, const Tensor& row_logsumexp,
                                 const Tensor& y) = 0;
  // Generation with a KV cache: one new position. qkv [1, 1, 3C]; its k and v go into row `position` of
  // k_cache and v_cache (FP32 [positions, C]); y [1, 1, C] is its q attending to rows 0..position.
  virtual void attention_step(const Tensor& qkv, std::int64_t heads, std::int64_t position, const Tensor& k_cache,
                              const Tensor& v_cache, const Tensor& y) = 0;
  // dqkv (qkv's shape and dtype) overwritten with the gradients of q, k and v.
  virtual void attention_backward(const Tensor& qkv, const Tensor& row_logsumexp, const Tensor& dy,
                                  std::int64_t heads, const Tensor& dqkv) = 0;

  // Softmax + cross-entropy over [N, classes] logits in FP32 (double-accumulated mean); labels [N], u8
  // (classes) or i32 (token ids).
  // Returns the mean loss; keeps the probabilities (FP32, logits' shape) for backward.
  virtual float cross_entropy_forward(const Tensor& logits, const Tensor& labels, const Tensor& probabilities) = 0;
  // d(scale * mean loss)/d logits into `grad` (its dtype).
  virtual void cross_entropy_backward(const Tensor& probabilities, const Tensor& labels, float scale,
                                      const Tensor& grad) = 0;

  // out[c] = sum over rows of x[r, c] (x [rows, columns]), FP32 out (bias gradients).
  virtual void column_sums(const Tensor& x, const Tensor& out) = 0;

  // Data parallel: see GradientBucket. The same bits on every backend.
  virtual void prepare_gradient_bucket(const GradientBucket& bucket, float weight) = 0;
  // Collectives over this backend's tensors, connected now (every rank calls it at the same point), or
  // nullptr when its tensors live in host memory and the job's ProcessGroup reduces them. Throws
  // CollectiveFailed when the ranks cannot connect within the timeout, NotAvailable without the library.
  virtual std::unique_ptr<DeviceCollectives> connect_collectives(const CollectivesRendezvous& rendezvous) {
    (void)rendezvous;
    return nullptr;
  }

  // The optimizer for these parameters (their state tensors allocated and zeroed by the caller).
  virtual std::unique_ptr<OptimizerStep> make_optimizer(const OptimizerSettings& settings,
                                                        std::vector<ParameterTensors> parameters) = 0;
};

// `t` itself when it is in host memory, else a host copy of it (what telemetry and files read).
Tensor host_view(Backend& backend, const Tensor& t);

// A backend for `device`: the CPU one always; CUDA when built with it and a device is there (else
// NotAvailable with the reason in one line). `index`: which CUDA device (data parallel: the local rank's).
std::unique_ptr<Backend> make_backend(Device device, int index = 0);

}  // namespace mpx::backend
