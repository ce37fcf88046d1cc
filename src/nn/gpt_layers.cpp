// The layers GPT-2 adds to the shared set: learned position embeddings and the causal self-attention core
// (c_attn and c_proj around it are Linear layers). Both compute through the backend's ops.
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "init.h"
#include "mpx/core/error.h"
#include "mpx/nn/layers.h"

namespace mpx::nn {

PositionEmbedding::PositionEmbedding(std::string name, std::int64_t block_size, std::int64_t dim,
                                     std::uint64_t init_seed)
    : Layer(std::move(name)), block_size_(block_size), dim_(dim), seed_(init_seed) {
  table_.name = this->name() + ".weight";
}

TensorSpec PositionEmbedding::plan(const TensorSpec& in, Context& ctx) {
  if (in.shape.size() != 3 || in.shape[2] != dim_ || in.shape[1] > block_size_) {
    throw InvalidArgument("layer " + name() + " (position embedding, " + std::to_string(block_size_) + " positions of " +
                          std::to_string(dim_) + ") got input of shape " + to_string(in.shape) +
                          "; expected [N, T <= " + std::to_string(block_size_) + ", " + std::to_string(dim_) + "]");
  }
  ctx.backend().require(backend::Op::embedding, in.dtype, name());
  ctx.backend().require(backend::Op::add, in.dtype, name());
  // GPT-2 initialises position embeddings N(0, 0.01); a uniform of the same standard deviation.
  detail::init_parameter(table_, {block_size_, dim_}, ctx, DType::f32, 0.01f * std::sqrt(3.0f), seed_, false);
  planned_ = in.shape;
  positions_ = ctx.allocate({in.shape[0] * in.shape[1]}, DType::i32, MemoryCategory::activations);
  rows_ = ctx.allocate(in.shape, in.dtype, MemoryCategory::activations);
  output_ = ctx.allocate(in.shape, in.dtype, MemoryCategory::activations);
  return in;
}

Tensor PositionEmbedding::forward(const Tensor& x, Context& ctx, bool) {
  detail::require_dtype(x, output_.dtype(), name(), "input");
  const std::int64_t n = x.dim(0), tokens = x.dim(1);
  const std::int64_t offset = ctx.position_offset;
  const std::int64_t last = offset + (ctx.rows_are_positions ? n : tokens);
  if (x.shape().size() != 3 || tokens > planned_[1] || n > planned_[0] || offset < 0 || last > block_size_ ||
      (ctx.rows_are_positions && tokens != 1)) {
    throw InvalidArgument("layer " + name() + " got input of shape " + to_string(x.shape()) + " at position " +
                          std::to_string(offset) + "; planned for " + to_string(planned_) + ", " +
                          std::to_string(block_size_) + " positions");
  }
  const Tensor positions = positions_.first_rows(n * tokens).reshaped({n, tokens});
  if (!positions_used_.defined() || positions_used_.shape() != positions.shape() || uploaded_offset_ != offset ||
      uploaded_as_rows_ != ctx.rows_are_positions) {
    std::vector<std::int32_t> ids(static_cast<std::size_t>(n * tokens));
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const auto at = static_cast<std::int64_t>(i);
      ids[i] = static_cast<std::int32_t>(offset + (ctx.rows_are_positions ? at : at % tokens));
    }
    ctx.backend().upload(positions, ids.data());
    uploaded_offset_ = offset;
    uploaded_as_rows_ = ctx.rows_are_positions;
  }
  const Tensor rows = rows_.reshaped({planned_[0] * planned_[1] * dim_}).first_rows(n * tokens * dim_).reshaped(x.shape());
  ctx.backend().embedding_forward(positions, table_.value, rows);
  Tensor y = output_.reshaped({planned_[0] * planned_[1] * dim_}).first_rows(n * tokens * dim_).reshaped(x.shape());
  ctx.backend().add(x, rows, y);
  positions_used_ = positions;
  return y;
}

Tensor PositionEmbedding::backward(const Tensor& dy, Context& ctx) {
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  ctx.backend().embedding_backward(positions_used_, dy, table_.grad, /*accumulate=*/false);
  return dy;
}

CausalSelfAttention::CausalSelfAttention(std::string name, std::int64_t width, std::int64_t heads)
    : Layer(std::move(name)), width_(width), heads_(heads) {
  if (heads <= 0 || width % heads != 0) {
    throw InvalidArgument("layer " + this->name() + ": " + std::to_string(width) + " features do not split into " +
                          std::to_string(heads) + " heads");
  }
}

TensorSpec CausalSelfAttention::plan(const TensorSpec& in, Context& ctx) {
  if (in.shape.size() != 3 || in.shape[2] != 3 * width_) {
    throw InvalidArgument("layer " + name() + " (causal self-attention, " + std::to_string(heads_) + " heads of " +
                          std::to_string(width_ / heads_) + ") got input of shape " + to_string(in.shape) +
                          "; expected packed q, k, v [N, T, " + std::to_string(3 * width_) + "]");
  }
  ctx.backend().require(backend::Op::attention, in.dtype, name());
  const std::int64_t n = in.shape[0], tokens = in.shape[1];
  if (cache_positions_ > 0) {
    if (tokens != 1 || n > cache_positions_) {
      throw InvalidArgument("layer " + name() + " keeps a KV cache of " + std::to_string(cache_positions_) +
                            " positions and takes rows of one position each ([N <= positions, 1, 3C]), got " +
                            to_string(in.shape));
    }
    k_cache_ = ctx.zeros({cache_positions_, width_}, DType::f32, MemoryCategory::activations);
    v_cache_ = ctx.zeros({cache_positions_, width_}, DType::f32, MemoryCategory::activations);
  }
  row_logsumexp_ = ctx.allocate({n, heads_, tokens}, DType::f32, MemoryCategory::activations);
  output_ = ctx.allocate({n, tokens, width_}, in.dtype, MemoryCategory::activations);
  grad_input_ = ctx.allocate(in.shape, in.dtype, MemoryCategory::activations);
  return {output_.shape(), in.dtype};
}

Tensor CausalSelfAttention::forward(const Tensor& qkv, Context& ctx, bool) {
  detail::require_dtype(qkv, output_.dtype(), name(), "input");
  if (qkv.shape().size() != 3 || qkv.dim(1) != output_.dim(1)) {
    throw InvalidArgument("layer " + name() + " got input of shape " + to_string(qkv.shape()) + "; planned for " +
                          std::to_string(output_.dim(1)) + " positions");
  }
  input_ = qkv;
  const std::int64_t n = qkv.dim(0);
  Tensor y = output_.first_rows(n);
  if (k_cache_.defined()) {
    // Row i is position offset + i: its k and v enter the cache before row i + 1 attends (causal order).
    if (n > 1 && !ctx.rows_are_positions) {
      throw InvalidArgument("layer " + name() + " keeps one sequence's KV cache: " + std::to_string(n) +
                            " rows are positions of that sequence only with Context::rows_are_positions set");
    }
    if (ctx.position_offset < 0 || ctx.position_offset + n > cache_positions_) {
      throw InvalidArgument("layer " + name() + ": positions " + std::to_string(ctx.position_offset) + " to " +
                            std::to_string(ctx.position_offset + n) + " do not fit its KV cache of " +
                            std::to_string(cache_positions_));
    }
    for (std::int64_t i = 0; i < n; ++i) {
      ctx.backend().attention_step(qkv.rows(i, 1), heads_, ctx.position_offset + i, k_cache_, v_cache_, y.rows(i, 1));
    }
    return y;
  }
  ctx.backend().attention_forward(qkv, heads_, row_logsumexp_.first_rows(n), y);
  return y;
}

Tensor CausalSelfAttention::backward(const Tensor& dy, Context& ctx) {
  detail::require_dtype(dy, output_.dtype(), name(), "gradient");
  const std::int64_t n = dy.dim(0);
  Tensor dx = grad_input_.first_rows(n);
  ctx.backend().attention_backward(input_, row_logsumexp_.first_rows(n), dy, heads_, dx);
  return dx;
}

}  // namespace mpx::nn
