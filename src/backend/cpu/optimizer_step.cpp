// The CPU backend's optimizer step: amp's AdamW/SGD, clipping and unscaling on the parameters' host
// memory (one span per tensor, built once), with the LossScaler deciding.
#include <cmath>
#include <optional>
#include <span>
#include <vector>

#include "mpx/amp/detail/update_rules.h"
#include "mpx/backend/cpu_backend.h"
#include "mpx/numeric/stochastic_rounding.h"

namespace mpx::backend {

namespace {

class CpuOptimizerStep final : public OptimizerStep {
 public:
  CpuOptimizerStep(CpuBackend& backend, const OptimizerSettings& settings, std::vector<ParameterTensors> parameters)
      : backend_(backend), settings_(settings), parameters_(std::move(parameters)) {
    if (settings.loss_scaling) scaler_.emplace();
    std::uint64_t first_index = 0;
    for (ParameterTensors& p : parameters_) {
      const auto n = static_cast<std::size_t>(p.value.numel());
      first_index_.push_back(first_index);
      first_index += n;
      grads_.emplace_back(p.grad.data_as<float>(), n);
      slots_.push_back({{p.value.data_as<float>(), n},
                        {p.grad.data_as<float>(), n},
                        {p.state1.data_as<float>(), n},
                        p.state2.defined() ? std::span<float>(p.state2.data_as<float>(), n) : std::span<float>(),
                        p.decay});
      // BF16 working copies of master weights are written by the optimizer in its own pass.
      if (settings.master_weights && p.working.defined() && p.working.dtype() == DType::bf16) {
        slots_.back().bf16_working = {static_cast<std::uint16_t*>(p.working.data()), n};
      } else if (p.compute != DType::f32) {
        needs_refresh_.push_back(first_index_.size() - 1);
      }
    }
  }

  bool unscale_and_check(float loss, float) override {
    return amp::unscale_and_check(grads_, 1.0f / loss_scale()) || !std::isfinite(loss);
  }

  bool apply(bool found_inf, float lr) override {
    const bool apply = scaler_ ? scaler_->update(found_inf) : !found_inf;
    if (!apply) return false;
    if (settings_.clip_norm > 0) amp::clip_grad_norm(grads_, settings_.clip_norm);
    ++optimizer_steps_;
    if (settings_.algorithm == OptimizerSettings::Algorithm::adamw) {
      amp::adamw_step(settings_.adamw, lr, optimizer_steps_, slots_);
    } else {
      amp::sgd_step(settings_.sgd, lr, slots_);
    }
    // The working copy is the FP32 value rounded once (and, without master weights, the value itself).
    const std::uint64_t stream = amp::detail::weight_rounding_stream(settings_.rounding_seed, optimizer_steps_);
    for (const std::size_t i : needs_refresh_) {
      const ParameterTensors& p = parameters_[i];
      if (!settings_.master_weights && settings_.stochastic_rounding && p.working.dtype() == DType::bf16) {
        const auto n = static_cast<std::size_t>(p.value.numel());
        numeric::stochastic_round({p.value.data_as<float>(), n}, {static_cast<numeric::BFloat16*>(p.working.data()), n},
                                  stream, first_index_[i]);
      } else {
        backend_.round_for_compute(p.value, p.working, p.compute);
      }
      if (!settings_.master_weights) backend_.convert(p.working, p.value);
    }
    return true;
  }

  float loss_scale() const override { return scaler_ ? scaler_->scale() : 1.0f; }
  amp::LossScalerState scaler_state() const override { return scaler_ ? scaler_->state() : amp::LossScalerState{}; }
  std::int64_t optimizer_steps() const override { return optimizer_steps_; }
  void load(const amp::LossScalerState& scaler, std::int64_t optimizer_steps) override {
    if (scaler_) scaler_->load_state(scaler);
    optimizer_steps_ = optimizer_steps;
  }

 private:
  CpuBackend& backend_;
  OptimizerSettings settings_;
  std::vector<ParameterTensors> parameters_;
  std::optional<amp::LossScaler> scaler_;
  std::vector<std::span<float>> grads_;
  std::vector<amp::ParameterSlot> slots_;
  std::vector<std::size_t> needs_refresh_;     // parameters whose working copy the optimizer does not write
  std::vector<std::uint64_t> first_index_;     // each parameter's first element in the list (rounding stream)
  std::int64_t optimizer_steps_ = 0;
};

}  // namespace

std::unique_ptr<OptimizerStep> CpuBackend::make_optimizer(const OptimizerSettings& settings,
                                                          std::vector<ParameterTensors> parameters) {
  return std::make_unique<CpuOptimizerStep>(*this, settings, std::move(parameters));
}

}  // namespace mpx::backend
