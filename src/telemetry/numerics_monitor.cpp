#include "mpx/telemetry/numerics_monitor.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include <fmt/format.h>

#include "mpx/core/error.h"

namespace mpx::telemetry {

const char* kind_name(TensorKind kind) {
  switch (kind) {
    case TensorKind::activation: return "activation";
    case TensorKind::activation_grad: return "activation_grad";
    case TensorKind::weight: return "weight";
    case TensorKind::master_weight: return "master_weight";
    case TensorKind::weight_grad: return "weight_grad";
    case TensorKind::optimizer_state: return "optimizer_state";
  }
  return "?";
}

namespace {
// Statistics of a tensor on any device (a device tensor is copied to the host first).
TensorStats stats_of(const Tensor& tensor, backend::Backend& backend) {
  const Tensor t = backend::host_view(backend, tensor);
  return compute_stats(t.data(), t.dtype(), static_cast<std::size_t>(t.numel()));
}

std::string range_of(const TensorStats& s) {
  std::string text = s.elements > s.nonfinite() ? fmt::format("[{:.4g}, {:.4g}]", s.min, s.max) : "no finite values";
  if (s.nonfinite() > 0) text += fmt::format(", {} NaN, {} +inf, {} -inf", s.nan, s.pos_inf, s.neg_inf);
  return text;
}
}  // namespace

std::string NonFiniteOrigin::describe() const {
  return fmt::format("step {}: {} {} wrote {} non-finite of {} values ({} NaN, {} +inf, {} -inf) from input {}", step,
                     layer, pass, output.nonfinite(), output.elements, output.nan, output.pos_inf, output.neg_inf,
                     range_of(input));
}

void NumericsMonitor::begin(Mode mode, std::int64_t step, float loss_scale) {
  mode_ = mode;
  if (mode == Mode::sample) {
    sample_ = NumericsSample{step, loss_scale, {}};
    sampled_step_ = step;
  }
  if (mode == Mode::locate) origin_.reset();
  locate_step_ = step;
}

void NumericsMonitor::add(TensorRecord record) {
  const TensorStats& s = record.stats;
  if (s.nan) totals_[{record.layer, kind_name(record.kind), "nan"}] += s.nan;
  if (s.pos_inf + s.neg_inf) totals_[{record.layer, kind_name(record.kind), "inf"}] += s.pos_inf + s.neg_inf;
  sample_.tensors.push_back(std::move(record));
}

void NumericsMonitor::after_layer(const nn::Layer& layer, nn::Pass pass, const Tensor& input, const Tensor& output,
                                  const nn::Context& ctx) {
  backend::Backend& backend = ctx.backend();
  if (mode_ == Mode::off) return;
  if (mode_ == Mode::locate) {
    if (origin_ || !output.defined()) return;
    const TensorStats out = stats_of(output, backend);
    if (out.nonfinite() == 0) return;
    origin_ = NonFiniteOrigin{locate_step_, layer.name(), nn::pass_name(pass),
                              input.defined() && input.dtype() != DType::i32 && input.dtype() != DType::u8
                                  ? stats_of(input, backend)
                                  : TensorStats{},
                              out};
    if (sampled_step_ == locate_step_) return;  // the sample of this step counted them already
    const char* kind = pass == nn::Pass::forward ? "activation" : "activation_grad";
    if (out.nan) totals_[{layer.name(), kind, "nan"}] += out.nan;
    if (out.pos_inf + out.neg_inf) totals_[{layer.name(), kind, "inf"}] += out.pos_inf + out.neg_inf;
    return;
  }
  // Sample: each layer's output in forward, and the gradient it receives in backward.
  if (pass == nn::Pass::forward) {
    add({layer.name() + ".output", layer.name(), TensorKind::activation, output.dtype(), stats_of(output, backend)});
  } else {
    add({layer.name() + ".output_grad", layer.name(), TensorKind::activation_grad, input.dtype(), stats_of(input, backend)});
  }
}

void NumericsMonitor::record_parameters(const std::vector<nn::Parameter*>& params, bool master_weights,
                                        backend::Backend& backend) {
  if (mode_ != Mode::sample) return;
  for (const nn::Parameter* p : params) {
    const std::string layer = p->name.substr(0, p->name.rfind('.'));
    const bool master = master_weights && p->working.defined();
    add({p->name, layer, master ? TensorKind::master_weight : TensorKind::weight, p->value.dtype(), stats_of(p->value, backend)});
    if (p->working.defined()) {
      add({p->name + ".working", layer, TensorKind::weight, p->working.dtype(), stats_of(p->working, backend)});
    }
    add({p->name + ".grad", layer, TensorKind::weight_grad, p->grad.dtype(), stats_of(p->grad, backend)});
    if (p->state1.defined()) {
      add({p->name + ".state1", layer, TensorKind::optimizer_state, p->state1.dtype(), stats_of(p->state1, backend)});
    }
    if (p->state2.defined()) {
      add({p->name + ".state2", layer, TensorKind::optimizer_state, p->state2.dtype(), stats_of(p->state2, backend)});
    }
  }
}

NumericsSample NumericsMonitor::take_sample() {
  mode_ = Mode::off;
  return std::move(sample_);
}

std::optional<NonFiniteOrigin> NumericsMonitor::take_origin() {
  mode_ = Mode::off;
  auto o = std::move(origin_);
  origin_.reset();
  return o;
}

std::vector<LayerHeadroom> layer_headroom(const NumericsSample& sample) {
  std::vector<LayerHeadroom> out;
  const int scale_binades = sample.loss_scale > 0 ? static_cast<int>(std::lround(std::log2(sample.loss_scale))) : 0;
  for (const TensorRecord& r : sample.tensors) {
    if (r.kind != TensorKind::activation) continue;
    LayerHeadroom h;
    h.layer = r.layer;
    h.activation_headroom = r.stats.fp16_headroom_binades();
    h.gradient_headroom = std::numeric_limits<double>::infinity();
    for (const TensorRecord& g : sample.tensors) {
      if (g.kind != TensorKind::activation_grad || g.layer != r.layer || g.stats.elements == 0) continue;
      const auto n = static_cast<double>(g.stats.elements);
      h.gradient_headroom = g.stats.fp16_headroom_binades();
      // Stored gradients carry the scale: a true value below 2^-14 is a stored value below 2^(-14 + k).
      h.underflow_scaled = static_cast<double>(g.stats.nonzero_below(kFp16MinNormalBinade)) / n;
      h.underflow_unscaled = static_cast<double>(g.stats.nonzero_below(kFp16MinNormalBinade + scale_binades)) / n;
    }
    if (h.activation_headroom < 1.0) {
      h.advice = "keep in FP32";
    } else if (h.gradient_headroom < 1.0) {
      h.advice = "lower the loss scale";
    } else if (h.underflow_scaled > 0.01) {
      h.advice = sample.loss_scale > 1 ? "raise the initial scale" : "needs loss scaling in FP16";
    } else {
      h.advice = "keep";
    }
    out.push_back(std::move(h));
  }
  return out;
}

std::string recommendation(const std::vector<LayerHeadroom>& headroom, bool fp16_run, std::int64_t skipped_steps,
                           std::int64_t steps) {
  std::vector<std::string> fp32_layers, raise, unscaled, lower;
  for (const LayerHeadroom& h : headroom) {
    if (h.advice == "keep in FP32") fp32_layers.push_back(h.layer);
    if (h.advice == "raise the initial scale") raise.push_back(h.layer);
    if (h.advice == "needs loss scaling in FP16") unscaled.push_back(h.layer);
    if (h.advice == "lower the loss scale") lower.push_back(h.layer);
  }
  auto join = [](const std::vector<std::string>& v) {  // at most six names, then a count
    std::string s;
    for (std::size_t i = 0; i < v.size() && i < 6; ++i) s += (s.empty() ? "" : ", ") + v[i];
    if (v.size() > 6) s += " and " + std::to_string(v.size() - 6) + " more layers";
    return s;
  };
  std::string text;
  if (!fp32_layers.empty()) {
    text += "Keep " + join(fp32_layers) + " in FP32 under FP16 (activations within a factor 2 of 65504) or use bf16. ";
  }
  if (!raise.empty()) {
    text += "Raise the initial loss scale: " + join(raise) + " lose over 1% of their gradients below FP16's smallest "
            "normal at the current scale. ";
  }
  if (!unscaled.empty()) {
    text += (fp16_run ? "Use loss scaling: " : "For FP16, use loss scaling (16-mixed): ") + join(unscaled) +
            " would lose over 1% of their gradients below FP16's smallest normal without it. ";
  }
  if (!lower.empty()) text += "Lower the loss scale: the scaled gradients of " + join(lower) + " come within 2x of 65504. ";
  const double skipped = steps > 0 ? static_cast<double>(skipped_steps) / static_cast<double>(steps) : 0;
  if (skipped > 0.05) {
    text += fmt::format("{:.1f}% of steps were skipped as non-finite: {}. ", 100 * skipped,
                        fp16_run ? "switch to bf16 or lower the initial scale" : "lower the learning rate");
  }
  if (text.empty()) text = "Keep: every layer has FP16 headroom and its gradients stay above FP16's smallest normal.";
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

NonFiniteInjector::NonFiniteInjector(std::string layer, nn::Pass pass, std::int64_t step, std::int64_t count, bool nan)
    : layer_(std::move(layer)), pass_(pass), step_(step), count_(count), nan_(nan) {
  if (step < 1 || count < 1) throw InvalidArgument("fault injection needs a step >= 1 and a count >= 1");
}

NonFiniteInjector NonFiniteInjector::parse(const std::string& spec) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (std::size_t pos; (pos = spec.find(':', start)) != std::string::npos; start = pos + 1) {
    parts.push_back(spec.substr(start, pos - start));
  }
  parts.push_back(spec.substr(start));
  const std::string usage = "'" + spec + "': expected LAYER:forward|backward:STEP[:COUNT[:nan]]";
  if (parts.size() < 3 || parts.size() > 5 || parts[0].empty() || (parts[1] != "forward" && parts[1] != "backward")) {
    throw InvalidArgument("bad fault injection " + usage);
  }
  try {
    const std::int64_t step = std::stoll(parts[2]);
    const std::int64_t count = parts.size() > 3 ? std::stoll(parts[3]) : 1;
    if (parts.size() > 4 && parts[4] != "nan") throw InvalidArgument("bad fault injection " + usage);
    return NonFiniteInjector(parts[0], parts[1] == "forward" ? nn::Pass::forward : nn::Pass::backward, step, count,
                             parts.size() > 4);
  } catch (const std::logic_error&) {
    throw InvalidArgument("bad fault injection " + usage);
  }
}

void NonFiniteInjector::after_layer(const nn::Layer& layer, nn::Pass pass, const Tensor&, const Tensor& output,
                                    const nn::Context& ctx) {
  if (pass != pass_ || layer.name() != layer_ || static_cast<std::int64_t>(ctx.step) + 1 != step_ ||
      !output.defined()) {
    return;
  }
  // A device tensor is poisoned through a host copy written back (a drill: speed does not matter).
  const Tensor host = backend::host_view(ctx.backend(), output);
  const std::int64_t n = host.numel();
  const std::uint32_t value = bits(host.dtype(), nan_);
  for (std::int64_t k = 0; k < std::min(count_, n); ++k) {
    const std::int64_t i = index(k, n, count_);
    if (host.dtype() == DType::f32) {
      static_cast<std::uint32_t*>(host.data())[i] = value;
    } else {
      static_cast<std::uint16_t*>(host.data())[i] = static_cast<std::uint16_t>(value);
    }
  }
  if (host.data() != output.data()) ctx.backend().upload(output, host.data());
}

std::uint32_t NonFiniteInjector::bits(DType dtype, bool nan) {
  switch (dtype) {
    case DType::f32: return nan ? 0x7FC00000u : 0x7F800000u;
    case DType::bf16: return nan ? 0x7FC0u : 0x7F80u;
    case DType::f16: return nan ? 0x7E00u : 0x7C00u;
    default: throw InvalidArgument("fault injection into a " + std::string(name(dtype)) + " tensor is not supported");
  }
}

}  // namespace mpx::telemetry
