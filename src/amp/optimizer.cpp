#include "mpx/amp/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../common/bf16_bits.h"
#include "mpx/amp/detail/update_rules.h"
#include "../common/vector_clones.h"
#include "mpx/core/error.h"
#include "mpx/numeric/convert.h"

namespace mpx::amp {

namespace {

using detail::AdamWFactors;
using detail::adamw_update;

// AdamW over elements [begin, end): built for AVX-512/AVX2 beside the baseline (sqrt and divide per element).
MPX_VECTOR_CLONES
void adamw_range(float* value, const float* grad, float* m1, float* m2, std::int64_t begin, std::int64_t end,
                 AdamWFactors f, float decay_factor) {
  for (std::int64_t i = begin; i < end; ++i) value[i] = adamw_update(value[i], grad[i], m1[i], m2[i], f, decay_factor);
}

// The same, also writing the BF16 working copy (one pass over the master weights instead of two).
MPX_VECTOR_CLONES
void adamw_range_bf16_copy(float* value, const float* grad, float* m1, float* m2, std::uint16_t* working,
                           std::int64_t begin, std::int64_t end, AdamWFactors f, float decay_factor) {
  for (std::int64_t i = begin; i < end; ++i) {
    value[i] = adamw_update(value[i], grad[i], m1[i], m2[i], f, decay_factor);
    working[i] = mpx::detail::round_to_bf16(value[i]);
  }
}

void check_slot(const ParameterSlot& s, bool needs_state2) {
  if (s.grad.size() != s.value.size() || s.state1.size() != s.value.size() ||
      (needs_state2 && s.state2.size() != s.value.size()) ||
      (!s.bf16_working.empty() && s.bf16_working.size() != s.value.size())) {
    throw InvalidArgument("optimizer: parameter, gradient and state sizes differ (" + std::to_string(s.value.size()) +
                          ", " + std::to_string(s.grad.size()) + ", " + std::to_string(s.state1.size()) + ")");
  }
}
}  // namespace

void sgd_step(const SgdConfig& c, float lr, std::span<const ParameterSlot> slots) {
  for (const ParameterSlot& s : slots) {
    check_slot(s, false);
    const float decay = s.decay ? c.weight_decay : 0.0f;
    const auto n = static_cast<std::int64_t>(s.value.size());
#pragma omp parallel for simd if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) s.value[i] = detail::sgd_update(s.value[i], s.grad[i], s.state1[i], c, lr, decay);
    if (!s.bf16_working.empty()) refresh_working_copy(s.value, s.bf16_working.data(), DType::bf16);
  }
}

void adamw_step(const AdamWConfig& c, float lr, std::int64_t step, std::span<const ParameterSlot> slots) {
  if (step < 1) throw InvalidArgument("adamw_step: step counts from 1");
  const AdamWFactors f = detail::adamw_factors(c, lr, step);
  // All tensors' elements in pieces of one parallel loop: a model of many small tensors (a GPT's biases,
  // LayerNorms and 128-wide matrices) would otherwise update most of them on one thread. Elementwise, so
  // the pieces change no result.
  constexpr std::int64_t kPiece = 16384;
  struct Piece {
    const ParameterSlot* slot;
    std::int64_t begin, end;
  };
  std::vector<Piece> pieces;
  std::int64_t total = 0;
  for (const ParameterSlot& s : slots) {
    check_slot(s, true);
    const auto n = static_cast<std::int64_t>(s.value.size());
    for (std::int64_t b = 0; b < n; b += kPiece) pieces.push_back({&s, b, std::min(n, b + kPiece)});
    total += n;
  }
  const auto count = static_cast<std::int64_t>(pieces.size());
#pragma omp parallel for schedule(static) if (total > 65536)
  for (std::int64_t k = 0; k < count; ++k) {
    const Piece& p = pieces[static_cast<std::size_t>(k)];
    const ParameterSlot& s = *p.slot;
    const float decay_factor = 1.0f - (s.decay ? f.lr_times_decay : 0.0f);
    if (s.bf16_working.empty()) {
      adamw_range(s.value.data(), s.grad.data(), s.state1.data(), s.state2.data(), p.begin, p.end, f, decay_factor);
    } else {
      adamw_range_bf16_copy(s.value.data(), s.grad.data(), s.state1.data(), s.state2.data(), s.bf16_working.data(),
                            p.begin, p.end, f, decay_factor);
    }
  }
}

double global_grad_norm(std::span<const std::span<const float>> grads) {
  double sum = 0.0;
  for (const auto& g : grads) {
    const auto n = static_cast<std::int64_t>(g.size());
#pragma omp parallel for reduction(+ : sum) if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) sum += static_cast<double>(g[i]) * g[i];
  }
  return std::sqrt(sum);
}

double clip_grad_norm(std::span<const std::span<float>> grads, double max_norm) {
  if (!(max_norm > 0)) throw InvalidArgument("clip_grad_norm: max_norm must be positive");
  std::vector<std::span<const float>> views(grads.begin(), grads.end());
  const double norm = global_grad_norm(views);
  const float factor = detail::clip_factor(norm, max_norm);
  if (factor != 1.0f) {
    for (const auto& g : grads) {
      for (float& x : g) x *= factor;
    }
  }
  return norm;
}

bool unscale_and_check(std::span<const std::span<float>> grads, float factor) {
  bool found_inf = false;
  for (const auto& g : grads) {
    const auto n = static_cast<std::int64_t>(g.size());
    int bad = 0;
#pragma omp parallel for reduction(| : bad) if (n > 65536)
    for (std::int64_t i = 0; i < n; ++i) {
      g[i] *= factor;
      bad |= std::isfinite(g[i]) ? 0 : 1;
    }
    found_inf = found_inf || bad != 0;
  }
  return found_inf;
}

void refresh_working_copy(std::span<const float> master, void* working, DType working_dtype) {
  if (working_dtype == DType::f32) {
    if (working != master.data()) std::memcpy(working, master.data(), master.size_bytes());
    return;
  }
  numeric::convert(master.data(), DType::f32, working, working_dtype, master.size());
}

}  // namespace mpx::amp
