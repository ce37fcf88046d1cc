// The layers of the CNN and MLP models (Fashion-MNIST). Shapes are batch first; images NHWC.
#pragma once

#include "mpx/nn/layer.h"

namespace mpx::nn {

// y = x W^T + b, W [out, in] as PyTorch's nn.Linear. Input [N, in] or [N, ..., in] (every row alike).
class Linear : public Layer {
 public:
  Linear(std::string name, std::int64_t in_features, std::int64_t out_features, std::uint64_t init_seed);
  // Weight tying (GPT-2's lm_head): a projection without bias whose weight is `shared` ([out, in], e.g. a
  // token embedding's table). The layer that owns it lists it among its parameters and plans it first; the
  // gradient is the sum over both uses.
  static std::unique_ptr<Linear> tied(std::string name, Parameter& shared, std::int64_t in_features,
                                      std::int64_t out_features);
  std::string kind() const override { return "linear"; }
  TensorSpec plan(const TensorSpec& input, Context& ctx) override;
  Tensor forward(const Tensor& x, Context& ctx, bool training) override;
  Tensor backward(const Tensor& dy, Context& ctx) override;
  std::vector<Parameter*> parameters() override;
  Parameter& weight() { return shared_ ? *shared_ : own_weight_; }
  Parameter& bias() { return bias_; }
  bool has_bias() const { return shared_ == nullptr; }
  std::int64_t in_features() const { return in_; }
  std::int64_t out_features() const { return out_; }
  // Before plan(): weights U(-bound, bound) instead of PyTorch's default (bound 1/sqrt(in)), biases zero
  // when `zero_bias` (GPT-2's initialisation).
  void set_initialisation(float bound, bool zero_bias) {
    init_bound_ = bound;
    zero_bias_ = zero_bias;
  }
  // Whether model files keep this weight as [in, out] (Hugging Face's Conv1D, GPT-2) instead of [out, in].
  void set_file_layout_transposed(bool transposed) { file_transposed_ = transposed; }
  bool file_layout_transposed() const { return file_transposed_; }

 private:
  std::int64_t in_, out_;
  std::uint64_t seed_;
  float init_bound_ = 0;  // 0: PyTorch's default
  bool zero_bias_ = false, file_transposed_ = false;
  Parameter own_weight_, bias_;
  Parameter* shared_ = nullptr;  // the tied weight, owned by another layer
  Tensor input_, output_, grad_input_, grad_output_;  // input_/grad_output_: backend-dtype copies when needed
  Tensor grad_input_wide_;  // FP32 input gradient before rounding, when the backend cannot write it directly
  Tensor saved_input_;  // what the backend read in forward, for the weight gradient
};

// 2-D convolution, square kernel, NHWC input, OIHW weight [out, in, k, k] as PyTorch's nn.Conv2d.
class Conv2d : public Layer {
 public:
  Conv2d(std::string name, std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel,
         std::int64_t stride, std::int64_t padding, std::uint64_t init_seed);
  std::string kind() const override { return "conv2d"; }
  TensorSpec plan(const TensorSpec& input, Context& ctx) override;
  Tensor forward(const Tensor& x, Context& ctx, bool training) override;
  Tensor backward(const Tensor& dy, Context& ctx) override;
  std::vector<Parameter*> parameters() override { return {&weight_, &bias_}; }
  Parameter& weight() { return weight_; }
  Parameter& bias() { return bias_; }
  // The geometry for the planned batch (batch, channels, size, kernel, stride, padding).
  const backend::ConvShape& shape() const { return shape_; }

 private:
  backend::ConvShape shape_;
  std::uint64_t seed_;
  Parameter weight_, bias_;
  Tensor input_, output_, grad_input_, grad_output_;  // input_/grad_output_: backend-dtype copies when needed
  Tensor grad_input_wide_;  // FP32 input gradient before rounding, when the backend cannot write it directly
  Tensor saved_input_;
};

// Batch normalisation over N, H, W per channel (NHWC); statistics and running statistics in FP32.
// With `fused_relu` the output is max(0, BN(x)) in the same pass (one memory pass less each way).
class BatchNorm2d : public Layer {
 public:
  BatchNorm2d(std::string name, std::int64_t channels, float momentum = 0.1f, float eps = 1e-5f,
              bool fused_relu = false);
  std::string kind() const override { return fused_relu_ ? "batch_norm2d_relu" : "batch_norm2d"; }
  TensorSpec plan(const TensorSpec& input, Context& ctx) override;
  Tensor forward(const Tensor& x, Context& ctx, bool training) override;
  Tensor backward(const Tensor& dy, Context& ctx) override;
  std::vector<Parameter*> parameters() override { return {&gamma_, &beta_}; }
  std::vector<std::pair<std::string, Tensor*>> buffers() override {
    return {{name() + ".running_mean", &running_mean_}, {name() + ".running_var", &running_var_}};
  }
  void end_step(Context& ctx, bool applied) override;
  const Tensor& running_mean() const { return running_mean_; }
  const Tensor& running_var() const { return running_var_; }
  std::int64_t channels() const { return channels_; }
  float momentum() const { return momentum_; }
  float eps() const { return eps_; }
  bool fused_relu() const { return fused_relu_; }

 private:
  std::int64_t channels_;
  float momentum_, eps_;
  bool fused_relu_;
  Parameter gamma_, beta_;
  Tensor running_mean_, running_var_, mean_, inv_std_, output_, grad_input_;
  // A deferred forward pass blends into these copies; end_step() commits them for an applied step.
  Tensor pending_mean_, pending_var_;
  bool pending_ = false;
  Tensor input_;  // the forward input (the previous layer's output buffer): x-hat is recomputed from it
  backend::BatchNormArgs last_;  // how the last forward ran (backward follows it)

  backend::BatchNormState state() const;
};

class ReLU : public Layer {
 public:
  using Layer::Layer;
  std::string kind() const override { return "relu"; }
  TensorSpec plan(const TensorSpec& input, Context& ctx) override;
  Tensor forward(const Tensor& x, Context& ctx, bool training) override;
  Tensor backward(const Tensor& dy, Context& ctx) override;

 private:
  Tensor output_, grad_input_;
};

// 2x2 (or k x k) max pooling with stride k on NHWC.
class MaxPool2d : public Layer {
 public:
  MaxPool2d(std::string name, std::int64_t kernel);
  std::string kind() const override { return "max_pool2d"; }
  std::int64_t kernel() const { return kernel_; }
  TensorSpec plan(const TensorSpec& input, Context& ctx) override;
  Tensor forward(const Tensor& x, Context& ctx, bool training) override;
  Tensor backward(const Tensor& dy, Context& ctx) override;

 private:
  std::int64_t kernel_;
  Tensor input_, output_, grad_input_;
};

// Inverted dropout; the mask of element i at step s comes from Philox keyed by (seed, layer, s, i).
class Dropout : public Layer {
 public:
  Dropout(std::string name, float probability, std::uint64_t stream);
  std::string kind() const override { return "dropout"; }
  float probability() const { return probability_; }
  // The key of this layer's Philox stream under a run's seed (the mask depends on nothing else).
  std::uint64_t key(std::uint64_t seed) const { return seed ^ (stream_ * 0x9E3779B97F4A7C15ull); }
  TensorSpec plan(const TensorSpec& input, Context& ctx) override;
  Tensor forward(const Tensor& x, Context& ctx, bool training) override;
  Tensor backward(const Tensor& dy, Context& ctx) override;

 private:
  float probability_;
  std::uint64_t stream_;
  Tensor keep_, output_, grad_input_;  // keep_: u8, 1 where the element was kept
  bool last_training_ = false;
};

// [N, ...] -> [N, features], sharing memory.
class Flatten : public Layer {
 public:
  using Layer::Layer;
  std::string kind() const override { return "flatten"; }
  // The planned input's shape ([N, H, W, C] for images; empty before plan()).
  const Shape& input_shape() const { return input_shape_; }
  TensorSpec plan(const TensorSpec& input, Context& ctx) override;
  Tensor forward(const Tensor& x, Context& ctx, bool training) override;
  Tensor backward(const Tensor& dy, Context& ctx) override;

 private:
  Shape input_shape_;
};

// GELU, exact (erf) as PyTorch's nn.GELU() or the tanh approximation GPT-2 uses.
class GELU : public Layer {
 public:
  GELU(std::string name, bool tanh_approximation = false);
  std::string kind() const override { return "gelu"; }
  TensorSpec plan(const TensorSpec& input, Context& ctx) override;
  Tensor forward(const Tensor& x, Context& ctx, bool training) override;
  Tensor backward(const Tensor& dy, Context& ctx) override;

 private:
  bool tanh_;
  Tensor input_, output_, grad_input_;
};

// Layer normalisation over the last dimension, statistics in FP32 (accumulated in double).
class LayerNorm : public Layer {
 public:
  LayerNorm(std::string name, std::int64_t features, float eps = 1e-5f);
  std::string kind() const override { return "layer_norm"; }
  TensorSpec plan(const TensorSpec& input, Context& ctx) override;
  Tensor forward(const Tensor& x, Context& ctx, bool training) override;
  Tensor backward(const Tensor& dy, Context& ctx) override;
  std::vector<Parameter*> parameters() override { return {&gamma_, &beta_}; }

 private:
  std::int64_t features_;
  float eps_;
  Parameter gamma_, beta_;
  Tensor input_, mean_, inv_std_, output_, grad_input_;  // mean_, inv_std_: FP32, one per row
};

// Token embedding: i32 ids [N, T] -> [N, T, dim] rows of an FP32 table [vocab, dim], output in the
// activation storage dtype (GPT-2 ties it to the
// output projection later). backward() fills the table's gradient and returns an undefined tensor.
class Embedding : public Layer {
 public:
  Embedding(std::string name, std::int64_t vocabulary, std::int64_t dim, std::uint64_t init_seed);
  std::string kind() const override { return "embedding"; }
  TensorSpec plan(const TensorSpec& input, Context& ctx) override;
  Tensor forward(const Tensor& ids, Context& ctx, bool training) override;
  // Adds into the table's gradient when the table is tied to another layer (Parameter::uses > 1).
  Tensor backward(const Tensor& dy, Context& ctx) override;
  std::vector<Parameter*> parameters() override { return {&table_}; }
  Parameter& table() { return table_; }

 private:
  std::int64_t vocabulary_, dim_;
  std::uint64_t seed_;
  Parameter table_;
  Tensor ids_, output_;
};

// Learned position embedding (GPT-2's wpe): y[n, t] = x[n, t] + table[t], table [block_size, dim] FP32.
// Inputs [N, T, dim] with T <= block_size; the gradient passes through unchanged.
class PositionEmbedding : public Layer {
 public:
  PositionEmbedding(std::string name, std::int64_t block_size, std::int64_t dim, std::uint64_t init_seed);
  std::string kind() const override { return "position_embedding"; }
  TensorSpec plan(const TensorSpec& input, Context& ctx) override;
  Tensor forward(const Tensor& x, Context& ctx, bool training) override;
  Tensor backward(const Tensor& dy, Context& ctx) override;
  std::vector<Parameter*> parameters() override { return {&table_}; }
  Parameter& table() { return table_; }

 private:
  std::int64_t block_size_, dim_;
  std::uint64_t seed_;
  Parameter table_;
  Tensor positions_, rows_, output_;  // positions_: i32 [N * T] = t; rows_: the gathered table rows
  Tensor positions_used_;             // the last forward's positions [n, T]
  std::int64_t uploaded_offset_ = -1;  // Context::position_offset the uploaded positions start at
  bool uploaded_as_rows_ = false;      // ... and whether they were Context::rows_are_positions
  Shape planned_;
};

// GPT-2's causal self-attention core between c_attn and c_proj: [N, T, 3C] packed q, k, v -> [N, T, C]
// (backend attention op: FP32 scores and softmax, later positions masked).
class CausalSelfAttention : public Layer {
 public:
  CausalSelfAttention(std::string name, std::int64_t width, std::int64_t heads);
  std::string kind() const override { return "causal_self_attention"; }
  std::int64_t heads() const { return heads_; }
  // Generation: before plan(), keep the keys and values of up to `positions` positions (FP32); the layer
  // then takes rows of one position each ([N, 1, 3C], Context::rows_are_positions): row i at
  // Context::position_offset + i, attending to every position before it and itself.
  void enable_cache(std::int64_t positions) { cache_positions_ = positions; }
  TensorSpec plan(const TensorSpec& input, Context& ctx) override;
  Tensor forward(const Tensor& qkv, Context& ctx, bool training) override;
  Tensor backward(const Tensor& dy, Context& ctx) override;

 private:
  std::int64_t width_, heads_, cache_positions_ = 0;
  Tensor input_, row_logsumexp_, output_, grad_input_;  // row_logsumexp_: FP32 [N, heads, T], for backward
  Tensor k_cache_, v_cache_;
};

// Softmax + cross-entropy over the last dimension of the logits ([N, classes], or [N, T, vocabulary] for a
// language model: every position is a row), in FP32 with a max-subtracted log-sum-exp (BF16 logits are
// widened first, as autocast does for the loss). The loss is the mean over rows.
class SoftmaxCrossEntropy {
 public:
  // Logits of f32 or bf16 storage; labels u8 (classes) or i32 (token ids), one per row. The gradient
  // returned by backward() has the logits' dtype and shape.
  void plan(const TensorSpec& logits, DType label_dtype, Context& ctx);
  void plan(const TensorSpec& logits, Context& ctx) { plan(logits, DType::u8, ctx); }
  // Mean loss over the rows (as double-accumulated FP32). Keeps the probabilities for backward.
  // `labels`: host memory, one per row of the logits, in the planned label dtype.
  float forward(const Tensor& logits, const void* labels);
  // d(scale * mean loss)/d logits.
  Tensor backward(float scale);
  const Tensor& probabilities() const { return probabilities_; }
  std::int64_t classes() const { return classes_; }

 private:
  backend::Backend* backend_ = nullptr;
  Tensor probabilities_, grad_, labels_;  // [rows, classes] views; labels_ [rows] on the backend's device
  Shape logits_shape_;                    // as planned (batch first)
  std::int64_t classes_ = 0, rows_per_sample_ = 1, rows_ = 0, samples_ = 0;
};

}  // namespace mpx::nn
