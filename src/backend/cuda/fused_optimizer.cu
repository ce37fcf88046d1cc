// The fused mixed-precision optimizer step (see mpx/backend/cuda_fused_optimizer.h). Three launches:
//  1. grad_stats: one block per chunk of the multi-tensor plan; unscales each gradient element (as the
//     CPU does: g * (1/scale) in float), counts non-finite ones and sums squares in double; one partial
//     per chunk, so the global sum has a fixed order (deterministic, unlike atomics).
//  2. decide: one block; adds the partials, takes the norm, applies the loss scaler's rule and, when the
//     step is applied, computes the clip factor and the optimizer's per-step factors from the device's
//     step count. Everything it decides stays in device memory.
//  3. update: one block per chunk; returns at once on a skipped step, otherwise updates master weights
//     and state and writes the working copy in one pass: 28 bytes per parameter with FP16 gradients and
//     a BF16 copy (read grad 2, master 4, moments 8; write master 4, moments 8, copy 2).
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "check.h"
#include "elements.cuh"
#include "launch.cuh"
#include "mpx/amp/detail/update_rules.h"
#include "mpx/backend/cuda_fused_optimizer.h"
#include "mpx/backend/multi_tensor.h"
#include "mpx/core/error.h"
#include "mpx/numeric/detail/formats.h"
#include "mpx/numeric/philox.h"

namespace mpx::cuda {

namespace elements::lanes {
#include "../../numeric/kernels/stochastic_lanes.inl"
}  // namespace elements::lanes

namespace {

constexpr std::uint32_t kChunkElements = 65536;
constexpr int kThreads = 512;

struct ParamDesc {
  float* master;
  const void* grad;
  float* state1;
  float* state2;
  void* working;
  std::uint8_t grad_kind, working_kind, has_working, decay, round_master;
  std::uint8_t aligned;  // every pointer 16-byte aligned: the update takes four elements at a time
  std::uint64_t first_index;  // the parameter's first element in the list: its stochastic-rounding indices
};

struct ChunkPartial {
  double sum_squares;
  unsigned int nonfinite;
};

struct StepConfigDevice {
  FusedStepConfig::Algorithm algorithm;
  amp::AdamWConfig adamw;
  amp::SgdConfig sgd;
  double clip_norm;
  bool loss_scaling;
  amp::LossScalerConfig scaler;
  bool stochastic_rounding;
  std::uint64_t rounding_seed;
};

// Device-resident: the scaler, the counts and this step's decision.
struct DeviceState {
  amp::LossScalerState scaler;
  std::int64_t optimizer_steps;
  std::int64_t calls;
  double grad_norm;
  int found_inf, applied;
  float loss;       // the step's loss, when it was given one: read back with the decision in one copy
  float inv_scale;  // 1/scale the gradients were computed with
  float clip;       // multiplies the unscaled gradients
  float lr;
  amp::detail::AdamWFactors adamw;
};

template <class T, class Op>
__device__ T block_reduce(T value, Op op, T* shared) {
  for (int offset = 16; offset > 0; offset /= 2) value = op(value, __shfl_down_sync(0xFFFFFFFFu, value, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  value = threadIdx.x < warps ? shared[threadIdx.x] : T{};
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset /= 2) value = op(value, __shfl_down_sync(0xFFFFFFFFu, value, offset));
  }
  __syncthreads();
  return value;  // valid in thread 0
}

struct Add {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Or {
  __device__ unsigned int operator()(unsigned int a, unsigned int b) const { return a | b; }
};

// Four gradient elements from 16 (FP32) or 8 (FP16/BF16) aligned bytes.
__device__ __forceinline__ void load4(const void* base, std::uint64_t i, std::uint8_t kind, float (&out)[4]) {
  if (kind == elements::kF32) {
    const float4 v = *reinterpret_cast<const float4*>(static_cast<const float*>(base) + i);
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
    return;
  }
  const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const std::uint16_t*>(base) + i);
  const std::uint16_t h[4] = {static_cast<std::uint16_t>(raw.x), static_cast<std::uint16_t>(raw.x >> 16),
                              static_cast<std::uint16_t>(raw.y), static_cast<std::uint16_t>(raw.y >> 16)};
  for (int k = 0; k < 4; ++k) out[k] = elements::load(h, k, kind);
}

__global__ void __launch_bounds__(kThreads) grad_stats_kernel(const ParamDesc* params, const backend::TensorChunk* chunks,
                                                             const DeviceState* state, ChunkPartial* partials) {
  __shared__ double shared_sum[32];
  __shared__ unsigned int shared_bad[32];
  const backend::TensorChunk c = chunks[blockIdx.x];
  const ParamDesc p = params[c.tensor];
  const float inv_scale = 1.0f / state->scaler.scale;
  double sum = 0;
  unsigned int bad = 0;
  auto add = [&](float raw) {
    const float g = raw * inv_scale;
    bad |= elements::is_finite(g) ? 0u : 1u;
    sum += static_cast<double>(g) * g;
  };
  const std::uint32_t vector_end = p.aligned ? (c.length & ~3u) : 0u;
  for (std::uint32_t k = threadIdx.x * 4; k < vector_end; k += blockDim.x * 4) {
    float g[4];
    load4(p.grad, c.begin + k, p.grad_kind, g);
    for (float v : g) add(v);
  }
  for (std::uint32_t k = vector_end + threadIdx.x; k < c.length; k += blockDim.x) {
    add(elements::load(p.grad, c.begin + k, p.grad_kind));
  }
  sum = block_reduce(sum, Add{}, shared_sum);
  bad = block_reduce(bad, Or{}, shared_bad);
  if (threadIdx.x == 0) partials[blockIdx.x] = {sum, bad};
}

__global__ void __launch_bounds__(1024) decide_kernel(const ChunkPartial* partials, std::uint32_t chunk_count,
                                                     DeviceState* state, StepConfigDevice config, const float* lr_table,
                                                     std::int64_t lr_table_length, float lr, const float* loss) {
  __shared__ double shared_sum[32];
  __shared__ unsigned int shared_bad[32];
  double sum = 0;
  unsigned int bad = 0;
  for (std::uint32_t i = threadIdx.x; i < chunk_count; i += blockDim.x) {  // fixed order per thread
    sum += partials[i].sum_squares;
    bad |= partials[i].nonfinite;
  }
  sum = block_reduce(sum, Add{}, shared_sum);
  bad = block_reduce(bad, Or{}, shared_bad);
  if (threadIdx.x != 0) return;
  DeviceState& s = *state;
  const double norm = sqrt(sum);
  const bool found_inf = bad != 0 || !(norm - norm == 0.0) || (loss != nullptr && !elements::is_finite(*loss));
  s.inv_scale = 1.0f / s.scaler.scale;
  const bool apply = config.loss_scaling ? amp::apply_scaler_rule(config.scaler, s.scaler, found_inf) : !found_inf;
  if (lr_table != nullptr) lr = lr_table[s.calls < lr_table_length ? s.calls : lr_table_length - 1];
  ++s.calls;
  s.grad_norm = norm;
  s.loss = loss != nullptr ? *loss : 0.0f;
  s.found_inf = found_inf;
  s.applied = apply;
  s.lr = lr;
  if (!apply) return;
  ++s.optimizer_steps;
  s.clip = amp::detail::clip_factor(norm, config.clip_norm);
  if (config.algorithm == FusedStepConfig::Algorithm::adamw) s.adamw = amp::detail::adamw_factors(config.adamw, lr, s.optimizer_steps);
}

// One element's update in registers; returns the working copy's bits.
struct ElementUpdate {
  bool adamw;
  amp::detail::AdamWFactors f;
  float decay_factor, sgd_decay, lr, inv_scale, clip;
  amp::SgdConfig sgd;
  std::uint8_t working_kind;
  bool has_working, round_master;
  bool stochastic;        // round_master with a BF16 copy, stochastically (bf16-true)
  std::uint64_t stream;   // this step's rounding stream
  // `index`: the element's place in the whole parameter list.
  __device__ std::uint16_t operator()(float raw_grad, float& value, float& m1, float& m2, std::uint64_t index) const {
    float g = raw_grad * inv_scale;
    if (clip != 1.0f) g *= clip;
    value = adamw ? amp::detail::adamw_update(value, g, m1, m2, f, decay_factor)
                  : amp::detail::sgd_update(value, g, m1, sgd, lr, sgd_decay);
    if (!has_working) return 0;  // FP32 weights (32-true): nothing to round
    const std::uint16_t low =
        stochastic ? static_cast<std::uint16_t>(elements::lanes::bfloat16_stochastic_lane(__float_as_uint(value),
                                                                                numeric::random_u32(stream, index)))
                   : elements::narrow(value, working_kind);
    if (round_master) value = elements::load(&low, 0, working_kind);
    return low;
  }
};

__global__ void __launch_bounds__(kThreads) update_kernel(const ParamDesc* params, const backend::TensorChunk* chunks,
                                                         const DeviceState* state, StepConfigDevice config) {
  if (!state->applied) return;
  // Last chunk first: the gradients grad_stats read last may still be in L2 (50 MB on an H100).
  const backend::TensorChunk c = chunks[gridDim.x - 1 - blockIdx.x];
  const ParamDesc p = params[c.tensor];
  const amp::detail::AdamWFactors f = state->adamw;
  const ElementUpdate update{config.algorithm == FusedStepConfig::Algorithm::adamw,
                             f,
                             1.0f - (p.decay ? f.lr_times_decay : 0.0f),
                             p.decay ? config.sgd.weight_decay : 0.0f,
                             state->lr,
                             state->inv_scale,
                             state->clip,
                             config.sgd,
                             static_cast<std::uint8_t>(p.has_working ? p.working_kind : elements::kBF16),
                             p.has_working != 0,
                             p.round_master != 0,
                             config.stochastic_rounding && p.round_master != 0 && p.working_kind == elements::kBF16,
                             amp::detail::weight_rounding_stream(config.rounding_seed, state->optimizer_steps)};
  float unused_m2 = 0.0f;
  // Four elements per thread step with 16-byte loads and stores where every pointer allows it (chunks
  // start at multiples of kChunkElements, so alignment is the tensors'); the tail one at a time.
  const std::uint32_t vector_end = p.aligned ? (c.length & ~3u) : 0u;
  for (std::uint32_t k = threadIdx.x * 4; k < vector_end; k += blockDim.x * 4) {
    const std::uint64_t i = c.begin + k;
    float g[4];
    load4(p.grad, i, p.grad_kind, g);
    float4 value = *reinterpret_cast<const float4*>(p.master + i);
    float4 m1 = *reinterpret_cast<const float4*>(p.state1 + i);
    float4 m2 = update.adamw ? *reinterpret_cast<const float4*>(p.state2 + i) : float4{};
    const std::uint64_t at = p.first_index + i;
    const std::uint16_t low[4] = {update(g[0], value.x, m1.x, m2.x, at), update(g[1], value.y, m1.y, m2.y, at + 1),
                                  update(g[2], value.z, m1.z, m2.z, at + 2), update(g[3], value.w, m1.w, m2.w, at + 3)};
    *reinterpret_cast<float4*>(p.master + i) = value;
    *reinterpret_cast<float4*>(p.state1 + i) = m1;
    if (update.adamw) *reinterpret_cast<float4*>(p.state2 + i) = m2;
    if (p.has_working) {
      *reinterpret_cast<uint2*>(static_cast<std::uint16_t*>(p.working) + i) =
          make_uint2(low[0] | (static_cast<std::uint32_t>(low[1]) << 16), low[2] | (static_cast<std::uint32_t>(low[3]) << 16));
    }
  }
  for (std::uint32_t k = vector_end + threadIdx.x; k < c.length; k += blockDim.x) {
    const std::uint64_t i = c.begin + k;
    float value = p.master[i], m1 = p.state1[i];
    float& m2 = update.adamw ? p.state2[i] : unused_m2;
    const std::uint16_t low = update(elements::load(p.grad, i, p.grad_kind), value, m1, m2, p.first_index + i);
    p.master[i] = value;
    p.state1[i] = m1;
    if (p.has_working) static_cast<std::uint16_t*>(p.working)[i] = low;
  }
}

}  // namespace

struct FusedOptimizer::Impl {
  DeviceContext& context;
  StepConfigDevice config;
  std::uint32_t chunk_count = 0;
  std::shared_ptr<void> params, chunks, partials, state, lr_table;
  std::int64_t lr_table_length = 0;

  cudaStream_t stream() const { return static_cast<cudaStream_t>(context.stream()); }
  DeviceState* device_state() const { return static_cast<DeviceState*>(state.get()); }

  void enqueue(const float* table, float lr, const float* loss) {
    if (chunk_count == 0) return;
    const auto* p = static_cast<const ParamDesc*>(params.get());
    const auto* c = static_cast<const backend::TensorChunk*>(chunks.get());
    auto* partial = static_cast<ChunkPartial*>(partials.get());
    grad_stats_kernel<<<chunk_count, kThreads, 0, stream()>>>(p, c, device_state(), partial);
    MPX_CUDA_CHECK_LAUNCH("fused_optimizer/grad_stats", chunk_count);
    decide_kernel<<<1, 1024, 0, stream()>>>(partial, chunk_count, device_state(), config, table, lr_table_length, lr, loss);
    MPX_CUDA_CHECK_LAUNCH("fused_optimizer/decide", chunk_count);
    update_kernel<<<chunk_count, kThreads, 0, stream()>>>(p, c, device_state(), config);
    MPX_CUDA_CHECK_LAUNCH("fused_optimizer/update", chunk_count);
  }
};

FusedOptimizer::FusedOptimizer(DeviceContext& context, const FusedStepConfig& config,
                               std::vector<DeviceParameter> parameters)
    : impl_(std::make_unique<Impl>(Impl{context, {}})) {
  const bool adamw = config.algorithm == FusedStepConfig::Algorithm::adamw;
  if (config.loss_scaling) amp::LossScaler validate(config.scaler);  // throws on bad settings
  if (!(config.clip_norm >= 0)) throw InvalidArgument("fused optimizer: clip norm must be >= 0");
  impl_->config = {config.algorithm, config.adamw, config.sgd, config.clip_norm, config.loss_scaling, config.scaler,
                   config.stochastic_rounding, config.rounding_seed};
  std::uint64_t first_index = 0;
  std::vector<ParamDesc> descs;
  std::vector<std::size_t> sizes;
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    const DeviceParameter& p = parameters[i];
    const std::string which = "fused optimizer: parameter " + std::to_string(i);
    if (p.count == 0) throw InvalidArgument(which + " is empty");
    if (p.master == nullptr || p.grad == nullptr || p.state1 == nullptr || (adamw && p.state2 == nullptr)) {
      throw InvalidArgument(which + " lacks a master, gradient or state pointer");
    }
    if (p.round_master && p.working == nullptr) throw InvalidArgument(which + ": rounding the master needs a working copy");
    if (p.working != nullptr && p.working_dtype == DType::f32) {
      throw InvalidArgument(which + ": the working copy must be f16 or bf16 (FP32 parameters need none)");
    }
    descs.push_back({p.master, p.grad, p.state1, p.state2, p.working, detail::kind_of(p.grad_dtype),
                     p.working != nullptr ? detail::kind_of(p.working_dtype) : std::uint8_t{0},
                     static_cast<std::uint8_t>(p.working != nullptr), static_cast<std::uint8_t>(p.decay),
                     static_cast<std::uint8_t>(p.round_master), 0, first_index});
    first_index += p.count;
    auto aligned = [](const void* q) { return reinterpret_cast<std::uintptr_t>(q) % 16 == 0; };
    descs.back().aligned = aligned(p.master) && aligned(p.grad) && aligned(p.state1) &&
                           (!adamw || aligned(p.state2)) && (p.working == nullptr || aligned(p.working));
    sizes.push_back(p.count);
  }
  const auto plan = backend::plan_chunks(sizes, kChunkElements);
  impl_->chunk_count = static_cast<std::uint32_t>(plan.size());
  auto& pool = context.pool();
  impl_->params = pool.allocate(descs.size() * sizeof(ParamDesc), MemoryCategory::workspace);
  impl_->chunks = pool.allocate(plan.size() * sizeof(backend::TensorChunk), MemoryCategory::workspace);
  impl_->partials = pool.allocate(plan.size() * sizeof(ChunkPartial), MemoryCategory::workspace);
  impl_->state = pool.allocate(sizeof(DeviceState), MemoryCategory::optimizer_state);
  if (!descs.empty()) context.upload(impl_->params.get(), descs.data(), descs.size() * sizeof(ParamDesc));
  if (!plan.empty()) context.upload(impl_->chunks.get(), plan.data(), plan.size() * sizeof(backend::TensorChunk));
  load(FusedStepRecord{});
}

FusedOptimizer::~FusedOptimizer() = default;

void FusedOptimizer::step(float lr, const float* device_loss) { impl_->enqueue(nullptr, lr, device_loss); }

void FusedOptimizer::set_lr_table(const std::vector<float>& lr_per_step) {
  if (lr_per_step.empty()) throw InvalidArgument("fused optimizer: the learning-rate table is empty");
  impl_->lr_table = impl_->context.pool().allocate(lr_per_step.size() * sizeof(float), MemoryCategory::workspace);
  impl_->context.upload(impl_->lr_table.get(), lr_per_step.data(), lr_per_step.size() * sizeof(float));
  impl_->lr_table_length = static_cast<std::int64_t>(lr_per_step.size());
}

void FusedOptimizer::step_from_table(const float* device_loss) {
  if (!impl_->lr_table) throw InvalidArgument("fused optimizer: step_from_table before set_lr_table");
  impl_->enqueue(static_cast<const float*>(impl_->lr_table.get()), 0.0f, device_loss);
}

const float* FusedOptimizer::device_loss_scale() const { return &impl_->device_state()->scaler.scale; }

FusedStepRecord FusedOptimizer::record() const {
  DeviceState s{};
  impl_->context.download(&s, impl_->state.get(), sizeof(s));
  FusedStepRecord r;
  r.scaler = s.scaler;
  r.optimizer_steps = s.optimizer_steps;
  r.calls = s.calls;
  r.grad_norm = s.grad_norm;
  r.loss = s.loss;
  r.found_inf = s.found_inf != 0;
  r.applied = s.applied != 0;
  return r;
}

void FusedOptimizer::load(const FusedStepRecord& record) {
  DeviceState s{};
  s.scaler = record.scaler;
  if (!impl_->config.loss_scaling) s.scaler.scale = 1.0f;
  else if (record.scaler.steps == 0 && record.optimizer_steps == 0) s.scaler.scale = impl_->config.scaler.init_scale;
  if (!(s.scaler.scale > 0)) throw InvalidArgument("fused optimizer: the loss scale must be positive");
  s.optimizer_steps = record.optimizer_steps;
  s.calls = record.calls;
  s.clip = 1.0f;
  impl_->context.upload(impl_->state.get(), &s, sizeof(s));
}

}  // namespace mpx::cuda
