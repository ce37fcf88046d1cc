// The CPU backend's optimizer step: amp's AdamW/SGD, clipping and unscaling on the parameters' host
// memory (one span per tensor, built once), with the LossScaler deciding.
#include <cmath>
#include <optional>
#include <span>
#include <vector>

#include "mpx/backend/cpu_backend.h"

namespace mpx::backend {

namespace {

class CpuOptimizerStep final : public OptimizerStep {
 public:
  CpuOptimizerStep(CpuBackend& backend, const OptimizerSettings& settings, std::vector<ParameterTensors> parameters)
      : backend_(backend), settings_(settings), parameters_(std::move(parameters)) {
    if (settings.loss_scaling) scaler_.emplace();
    for (ParameterTensors& p : parameters_) {
      const auto n = static_cast<std::size_t>(p.value.numel());
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
        needs_refresh_.push_back(&p);
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
    for (const ParameterTensors* p : needs_refresh_) {
      backend_.round_for_compute(p->value, p->working, p->compute);
      if (!settings_.master_weights) backend_.convert(p->working, p->value);
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
  std::vector<const ParameterTensors*> needs_refresh_;  // working copies the optimizer does not write
  std::int64_t optimizer_steps_ = 0;
};

}  // namespace

std::unique_ptr<OptimizerStep> CpuBackend::make_optimizer(const OptimizerSettings& settings,
                                                          std::vector<ParameterTensors> parameters) {
  return std::make_unique<CpuOptimizerStep>(*this, settings, std::move(parameters));
}

}  // namespace mpx::backend
