// The CUDA engine's kernels for a language model's token ops, the device twins of the CPU backend's
// (src/backend/cpu/attention.cpp, cpu_backend.cpp) and tested against them: embedding gather and its
// deterministic scatter-add, causal multi-head attention (streaming: FP32 scores, an online softmax, no
// T x T matrix), and one generation step with a KV cache (softmax cross-entropy over token ids: cuda_kernels.h). Activations
// are f32, f16 or bf16 (`dtype`); tables, caches, statistics and gradients of parameters are FP32. Every
// call is enqueued on the context's stream; scratch space is passed in.
#pragma once

#include <cstddef>
#include <cstdint>

#include "mpx/backend/cuda_context.h"
#include "mpx/numeric/dtype.h"

namespace mpx::cuda::kernels {

// y[t, c] = table[ids[t], c] in `dtype`. An id outside [0, vocabulary) writes zeros and records the
// smallest such position t in *bad_position (which the caller sets to kNoBadPosition first).
constexpr std::int32_t kNoBadPosition = 0x7F7F7F7F;  // the bytes cudaMemset(0x7F) writes
void embedding_forward(DeviceContext& ctx, const std::int32_t* ids, std::int64_t count, const float* table,
                       std::int64_t vocabulary, std::int64_t dim, void* y, DType dtype, std::int32_t* bad_position);

// Scratch bytes embedding_backward needs for `count` ids.
std::size_t embedding_backward_workspace_bytes(std::int64_t count, std::int64_t vocabulary);
// dtable[id, c] += sum of dy[t, c] over the positions t holding id, added in position order (the CPU's
// order: the result is the CPU's bit for bit). The ids are sorted stably with cub's radix sort; then one
// pass per distinct id. dtable is not cleared here (zero it first for an overwrite).
void embedding_backward(DeviceContext& ctx, const std::int32_t* ids, std::int64_t count, const void* dy, DType dtype,
                        std::int64_t vocabulary, std::int64_t dim, float* dtable, void* workspace,
                        std::size_t workspace_bytes);

// qkv [batch, tokens, 3 * heads * head_dim] as c_attn writes it; see Backend::attention_forward.
struct AttentionShape {
  std::int64_t batch = 0, tokens = 0, heads = 0, head_dim = 0;
  std::int64_t width() const { return heads * head_dim; }
};
constexpr std::int64_t kMaxAttentionHeadDim = 128;  // what the kernels' registers and shared memory hold
// y [batch, tokens, width] in `dtype`; row_logsumexp FP32 [batch, heads, tokens].
void attention_forward(DeviceContext& ctx, const AttentionShape& s, const void* qkv, DType dtype, float* row_logsumexp,
                       void* y);
// Scratch floats attention_backward needs (one per query row and head).
std::size_t attention_backward_workspace_floats(const AttentionShape& s);
// dqkv (qkv's shape and dtype) overwritten: dq by query tiles, dk and dv by key tiles (no atomics).
void attention_backward(DeviceContext& ctx, const AttentionShape& s, const void* qkv, const float* row_logsumexp,
                        const void* dy, DType dtype, float* workspace, void* dqkv);
// One generated position: its k and v (from qkv [3 * width]) into row `position` of the FP32 caches
// [positions, width], and y [width] = its q attending to rows 0..position.
void attention_step(DeviceContext& ctx, const AttentionShape& s, const void* qkv, DType dtype, std::int64_t position,
                    float* k_cache, float* v_cache, void* y);

}  // namespace mpx::cuda::kernels
