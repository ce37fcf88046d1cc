#include "mpx/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "mpx/amp/optimizer.h"
#include "mpx/amp/schedule.h"
#include "mpx/core/cpu_features.h"
#include "mpx/core/error.h"
#include "mpx/backend/cuda.h"
#include "mpx/numeric/convert.h"
#include "device_engine.h"
#include "divergence_rule.h"

namespace mpx::train {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
}  // namespace

const char* name(OptimizerKind kind) { return kind == OptimizerKind::adamw ? "adamw" : "sgd"; }
const char* name(ScheduleKind kind) {
  return kind == ScheduleKind::onecycle ? "onecycle" : kind == ScheduleKind::cosine ? "cosine" : "constant";
}
const char* name(DeviceChoice choice) {
  return choice == DeviceChoice::cpu ? "cpu" : choice == DeviceChoice::cuda ? "cuda" : "auto";
}

OptimizerKind parse_optimizer(const std::string& text) {
  if (text == "adamw") return OptimizerKind::adamw;
  if (text == "sgd") return OptimizerKind::sgd;
  throw InvalidArgument("--optimizer must be adamw or sgd, got '" + text + "'");
}

ScheduleKind parse_schedule(const std::string& text) {
  if (text == "onecycle") return ScheduleKind::onecycle;
  if (text == "cosine") return ScheduleKind::cosine;
  if (text == "constant") return ScheduleKind::constant;
  throw InvalidArgument("--schedule must be onecycle, cosine or constant, got '" + text + "'");
}

DeviceChoice parse_device(const std::string& text) {
  if (text == "cpu") return DeviceChoice::cpu;
  if (text == "cuda") return DeviceChoice::cuda;
  if (text == "auto") return DeviceChoice::automatic;
  throw InvalidArgument("--device must be cpu, cuda or auto, got '" + text + "'");
}

TrainConfig resolve(TrainConfig c) {
  if (c.precision.empty()) c.precision = cpu_features().avx512_bf16 ? "bf16-mixed" : "16-mixed";
  c.precision = amp::PrecisionPolicy::preset(c.precision).name;  // validates, canonical name
  if (c.model != "cnn" && c.model != "mlp") throw InvalidArgument("--model must be cnn or mlp, got " + c.model);
  if (c.epochs < 1) throw InvalidArgument("--epochs must be at least 1");
  if (c.batch_size < 1 || c.batch_size > 65536) throw InvalidArgument("--batch-size must be in 1..65536");
  if (!(c.lr > 0 && std::isfinite(c.lr))) throw InvalidArgument("--lr must be a positive number");
  if (c.clip_norm < 0) throw InvalidArgument("--clip-norm must be >= 0");
  if (c.log_every < 1) c.log_every = 1;
  if (c.numerics_every < 0) throw InvalidArgument("--numerics-every must be >= 0 (0: off)");
  if (!c.inject_nonfinite.empty()) {
    const auto injector = telemetry::NonFiniteInjector::parse(c.inject_nonfinite);  // validates the spec
    std::string layers;  // ... and that it names a layer of the model (else the drill silently never fires)
    bool known = false;
    const nn::Sequential model = nn::make_model(c.model, c.seed);
    for (const auto& layer : model.layers()) {
      known = known || layer->name() == injector.layer();
      layers += (layers.empty() ? "" : ", ") + layer->name();
    }
    if (!known) {
      throw InvalidArgument("--inject-nonfinite: the " + c.model + " model has no layer '" + injector.layer() +
                            "'; its layers: " + layers);
    }
  }
  if (c.tf32 && c.device == DeviceChoice::cpu) {
    throw InvalidArgument("--tf32 applies to the CUDA engine (--device cuda or auto); the CPU engine computes FP32 "
                          "products in FP32");
  }
  if (c.device == DeviceChoice::automatic) c.device = cuda::devices().empty() ? DeviceChoice::cpu : DeviceChoice::cuda;
  if (c.device == DeviceChoice::cpu) c.tf32 = false;  // auto found no device: there is no TF32 to use
  if (c.device == DeviceChoice::cuda) {
    if (cuda::devices().empty()) {
      throw NotAvailable("--device cuda: " + cuda::no_device_reason() + "; use --device cpu (or auto)");
    }
  }
  return c;
}

namespace {
// Normalised with the training set's mean and standard deviation (as the reference recipe does).
std::unique_ptr<Dataset> images(const io::ImageSet& set, const io::ImageSet& train, std::int64_t limit) {
  return std::make_unique<ImageDataset>(set, io::pixel_normalisation(train), limit);
}
}  // namespace

Trainer::Trainer(const TrainConfig& config, const io::FashionMnist& data)
    : Trainer(config, images(data.train, data.train, config.train_subset),
              images(data.test, data.train, config.test_subset), &data) {}

Trainer::Trainer(const TrainConfig& config, std::unique_ptr<Dataset> train_set, std::unique_ptr<Dataset> test_set,
                 const io::FashionMnist* images_for_device)
    : config_(resolve(config)),
      train_set_(std::move(train_set)),
      test_set_(std::move(test_set)),
      model_(nn::make_model(config_.model, config_.seed)) {
  ctx_.policy = amp::PrecisionPolicy::preset(config_.precision);
  ctx_.policy.allow_tf32 = config_.tf32;
  ctx_.seed = config_.seed;
  if (!config_.inject_nonfinite.empty()) {
    injector_.emplace(telemetry::NonFiniteInjector::parse(config_.inject_nonfinite));
    ctx_.observers.push_back(&*injector_);
  }
  ctx_.observers.push_back(&monitor_);
  const bool scaling = config_.loss_scaling.value_or(ctx_.policy.loss_scaling);
  if (scaling) scaler_.emplace();
  divergence_ = std::make_unique<DivergenceRule>(
      config_.device == DeviceChoice::cuda ? config_.precision + " on CUDA" : config_.precision,
      scaling || ctx_.policy.master_weights, config_.detect_anomaly);
  Shape input_shape = train_set_->sample_shape();
  input_shape.insert(input_shape.begin(), config_.batch_size);
  input_ = ctx_.allocate(input_shape, train_set_->sample_dtype(), MemoryCategory::activations);
  const nn::TensorSpec logits = model_.plan({input_shape, train_set_->sample_dtype()}, ctx_);
  loss_.plan(logits, ctx_);
  params_ = model_.parameters();
  for (nn::Parameter* p : params_) {
    p->state1 = ctx_.zeros(p->value.shape(), DType::f32, MemoryCategory::optimizer_state);
    if (config_.optimizer == OptimizerKind::adamw) {
      p->state2 = ctx_.zeros(p->value.shape(), DType::f32, MemoryCategory::optimizer_state);
    }
    const auto n = static_cast<std::size_t>(p->value.numel());
    grads_.emplace_back(p->grad.data_as<float>(), n);
    slots_.push_back({{p->value.data_as<float>(), n},
                      {p->grad.data_as<float>(), n},
                      {p->state1.data_as<float>(), n},
                      p->state2.defined() ? std::span<float>(p->state2.data_as<float>(), n) : std::span<float>(),
                      p->decay});
    // BF16 working copies of master weights are written by the optimizer in its own pass.
    if (ctx_.policy.master_weights && p->working.defined() && p->working.dtype() == DType::bf16) {
      slots_.back().bf16_working = {static_cast<std::uint16_t*>(p->working.data()), n};
    } else {
      needs_refresh_.push_back(p);
    }
  }
  labels_.resize(static_cast<std::size_t>(config_.batch_size));
  batch_indices_.resize(static_cast<std::size_t>(config_.batch_size));
  if (config_.device == DeviceChoice::cuda) {
    if (!images_for_device) {
      throw NotAvailable("the CUDA engine trains on Fashion-MNIST images kept on the device; a Trainer built from "
                         "other datasets runs on --device cpu");
    }
    device_ = std::make_unique<DeviceEngine>(model_, ctx_.policy, config_, *images_for_device,
                                             io::pixel_normalisation(images_for_device->train), scaling,
                                             injector_ ? &*injector_ : nullptr);
    // The initial weights, so that evaluate() is right before run() too (run() uploads again after a
    // load_checkpoint).
    device_->upload_state(scaler_ ? &scaler_->state() : nullptr, 0, 0);
  }
}

Trainer::~Trainer() = default;

std::string Trainer::device_name() const { return device_ ? device_->device_name() : "cpu"; }

std::size_t Trainer::peak_bytes() const { return memory().peak_total(); }
const MemoryTracker& Trainer::memory() const { return device_ ? device_->memory() : ctx_.memory(); }

void Trainer::sync_from_device() {
  if (!device_) return;
  amp::LossScalerState state;
  device_->download_state(scaler_ ? &state : nullptr, optimizer_steps_);
  if (scaler_) scaler_->load_state(state);
}

std::vector<float> Trainer::lr_schedule(std::int64_t schedule_steps) const {
  const amp::OneCycleSchedule one_cycle{config_.lr, schedule_steps};
  const amp::CosineSchedule cosine{config_.lr, 0.0f, 0, schedule_steps};
  std::vector<float> lr(static_cast<std::size_t>(std::max<std::int64_t>(1, schedule_steps)));
  for (std::size_t s = 0; s < lr.size(); ++s) {
    const auto step = static_cast<std::int64_t>(s);
    lr[s] = config_.schedule == ScheduleKind::onecycle ? one_cycle.lr(step)
            : config_.schedule == ScheduleKind::cosine ? cosine.lr(step)
                                                        : config_.lr;
  }
  return lr;
}

void Trainer::load_batch(const Dataset& set, const std::vector<std::int64_t>& order, std::int64_t first,
                         std::int64_t rows) {
  for (std::int64_t r = 0; r < rows; ++r) {
    batch_indices_[static_cast<std::size_t>(r)] = order.empty() ? first + r : order[static_cast<std::size_t>(first + r)];
  }
  set.gather({batch_indices_.data(), static_cast<std::size_t>(rows)}, input_.data(), labels_.data());
}

bool Trainer::step(const Tensor& batch, std::int64_t global_step, float lr, float& loss) {
  using Mode = telemetry::NumericsMonitor::Mode;
  ctx_.step = static_cast<std::uint64_t>(global_step);
  const std::int64_t step_number = global_step + 1;
  const float scale = scaler_ ? scaler_->scale() : 1.0f;
  const bool sample = config_.numerics_every > 0 && step_number % config_.numerics_every == 0;
  monitor_.begin(sample ? Mode::sample : Mode::off, step_number, scale);
  const Tensor logits = model_.forward(batch, ctx_, true);
  loss = loss_.forward(logits, labels_.data());
  // Without master weights or a loss scaler there is nothing to recover with (divergence_rule.h).
  if (divergence_->loss_is_fatal(loss)) {
    divergence_->stop_for_loss(loss, step_number, locate_nonfinite(batch, step_number, scale, false));
  }
  model_.backward(loss_.backward(scale), ctx_);
  if (sample) pending_sample_ = monitor_.take_sample();  // activations and their gradients

  const bool found_inf = amp::unscale_and_check(grads_, 1.0f / scale) || !std::isfinite(loss);
  if (found_inf) {
    pending_origin_ = locate_nonfinite(batch, step_number, scale, true);
    if (!pending_origin_) pending_origin_ = telemetry::NonFiniteOrigin{step_number, "loss", "forward", {}, {}};
    divergence_->after_check(true, *pending_origin_);
  } else {
    divergence_->after_finite_step();
  }
  const bool apply = scaler_ ? scaler_->update(found_inf) : !found_inf;
  if (apply) {
    if (config_.clip_norm > 0) amp::clip_grad_norm(grads_, config_.clip_norm);
    ++optimizer_steps_;
    if (config_.optimizer == OptimizerKind::adamw) {
      amp::AdamWConfig adamw;
      adamw.weight_decay = config_.weight_decay;
      amp::adamw_step(adamw, lr, optimizer_steps_, slots_);
    } else {
      amp::sgd_step({config_.momentum, config_.weight_decay, true}, lr, slots_);
    }
    for (nn::Parameter* p : needs_refresh_) p->refresh(ctx_.backend(), ctx_.policy.master_weights);
  }
  if (sample) {  // weights, gradients and optimizer state after the update
    monitor_.begin(Mode::sample, step_number, scale);
    monitor_.record_parameters(params_, ctx_.policy.master_weights);
    for (auto& t : monitor_.take_sample().tensors) pending_sample_->tensors.push_back(std::move(t));
  }
  return apply;
}

void Trainer::sample_device_step(std::int64_t step_number, float scale) {
  using Mode = telemetry::NumericsMonitor::Mode;
  monitor_.begin(Mode::sample, step_number, scale);
  device_->visit_last_step([&](const nn::Layer& layer, nn::Pass pass, const Tensor& input, const Tensor& output) {
    monitor_.after_layer(layer, pass, input, output, ctx_);
  });
  sync_from_device();  // weights after the update, their gradients and the optimizer state
  for (nn::Parameter* p : params_) {  // the device keeps gradients scaled; the CPU samples them unscaled
    float* g = p->grad.data_as<float>();
    for (std::int64_t i = 0; i < p->grad.numel(); ++i) g[i] *= 1.0f / scale;
  }
  monitor_.record_parameters(params_, ctx_.policy.master_weights);
  pending_sample_ = monitor_.take_sample();
}

void Trainer::note_device_nonfinite(bool found_inf, float loss, std::int64_t step_number, float scale) {
  if (!found_inf) {
    divergence_->after_finite_step();
    return;
  }
  // No replay needed: the step's activations and gradients are still in the device's buffers.
  monitor_.begin(telemetry::NumericsMonitor::Mode::locate, step_number, scale);
  device_->visit_last_step(
      [&](const nn::Layer& layer, nn::Pass pass, const Tensor& input, const Tensor& output) {
        monitor_.after_layer(layer, pass, input, output, ctx_);
      },
      true);
  pending_origin_ = monitor_.take_origin();
  if (!pending_origin_) {
    sync_from_device();  // the step was not applied: the same weights, and this step's gradients
    pending_origin_ = first_nonfinite_weight_gradient(step_number);
  }
  if (!pending_origin_) pending_origin_ = telemetry::NonFiniteOrigin{step_number, "loss", "forward", {}, {}};
  if (divergence_->loss_is_fatal(loss)) divergence_->stop_for_loss(loss, step_number, pending_origin_);
  divergence_->after_check(true, *pending_origin_);
}

std::optional<telemetry::NonFiniteOrigin> Trainer::first_nonfinite_weight_gradient(std::int64_t step) const {
  for (auto it = params_.rbegin(); it != params_.rend(); ++it) {  // in backward order
    const telemetry::TensorStats g =
        telemetry::compute_stats((*it)->grad.data(), DType::f32, static_cast<std::size_t>((*it)->grad.numel()));
    if (g.nonfinite() > 0) return telemetry::NonFiniteOrigin{step, (*it)->name, "backward (weight gradient)", {}, g};
  }
  return std::nullopt;
}

std::optional<telemetry::NonFiniteOrigin> Trainer::locate_nonfinite(const Tensor& batch, std::int64_t step, float scale,
                                                                    bool backward) {
  // The same batch, weights, dropout masks (keyed by the step) and scale: the replay computes the same
  // values, this time checking each layer's output. BatchNorm keeps its running statistics as they are.
  struct FrozenStatistics {  // restored however the replay ends
    nn::Context& ctx;
    explicit FrozenStatistics(nn::Context& c) : ctx(c) { ctx.update_running_statistics = false; }
    ~FrozenStatistics() { ctx.update_running_statistics = true; }
  } frozen(ctx_);
  monitor_.begin(telemetry::NumericsMonitor::Mode::locate, step, scale);
  const Tensor logits = model_.forward(batch, ctx_, true);
  loss_.forward(logits, labels_.data());
  if (backward) model_.backward(loss_.backward(scale), ctx_);
  auto origin = monitor_.take_origin();
  // Every layer output was finite: the first weight gradient (in backward order) that is not.
  if (!origin && backward) origin = first_nonfinite_weight_gradient(step);
  return origin;
}

double Trainer::evaluate() {
  const Dataset& set = *test_set_;
  const std::int64_t total = set.size();
  if (device_) return static_cast<double>(device_->count_correct(total)) / static_cast<double>(total);
  std::int64_t correct = 0;
  for (std::int64_t first = 0; first < total; first += config_.batch_size) {
    const std::int64_t rows = std::min<std::int64_t>(config_.batch_size, total - first);
    load_batch(set, {}, first, rows);
    const Tensor logits = model_.forward(input_.first_rows(rows), ctx_, false);
    const std::int64_t classes = logits.dim(1);
    std::vector<float> z(static_cast<std::size_t>(logits.numel()));  // FP32 view of f32 or bf16 logits
    if (logits.dtype() == DType::f32) {
      std::copy_n(logits.data_as<float>(), z.size(), z.data());
    } else {
      numeric::convert(logits.data(), logits.dtype(), z.data(), DType::f32, z.size());
    }
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* row = z.data() + r * classes;
      const auto best = std::max_element(row, row + classes) - row;
      correct += best == labels_[static_cast<std::size_t>(r)];
    }
  }
  return static_cast<double>(correct) / static_cast<double>(total);
}

TrainResult Trainer::run(const Callbacks& callbacks) {
  const Dataset& set = *train_set_;
  const std::int64_t images = set.size();
  const std::int64_t steps_per_epoch = (images + config_.batch_size - 1) / config_.batch_size;
  const std::int64_t schedule_steps = steps_per_epoch * config_.epochs;
  const std::int64_t total_steps =
      config_.max_steps > 0 ? std::min(schedule_steps, config_.max_steps) : schedule_steps;
  const std::vector<float> lr_per_step = lr_schedule(schedule_steps);
  if (device_) {
    device_->set_lr_schedule(lr_per_step);
    device_->upload_state(scaler_ ? &scaler_->state() : nullptr, optimizer_steps_, position_.global_step);
    device_loss_scale_ = scaler_ ? scaler_->scale() : 1.0f;
  }

  TrainResult result;
  result.loss_scaling = scaler_.has_value();
  result.skipped_steps = position_.skipped_steps;
  result.nonfinite_steps = position_.nonfinite_steps;
  double training_seconds = position_.train_seconds;
  std::int64_t global_step = position_.global_step, images_seen = position_.images_seen;
  for (int epoch = position_.epoch; epoch <= config_.epochs && global_step < total_steps; ++epoch) {
    const auto epoch_start = Clock::now();
    std::vector<std::int64_t> order(static_cast<std::size_t>(images));
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 rng(config_.seed * 1000003u + static_cast<std::uint64_t>(epoch));
    std::shuffle(order.begin(), order.end(), rng);
    if (device_) device_->set_order(order);
    double loss_sum = 0;
    std::int64_t loss_count = 0, epoch_images = 0, skipped_before = result.skipped_steps;
    const std::int64_t first_step = epoch == position_.epoch ? position_.step_in_epoch : 0;
    for (std::int64_t s = first_step; s < steps_per_epoch && global_step < total_steps; ++s, ++global_step) {
      const std::int64_t first = s * config_.batch_size;
      const std::int64_t rows = std::min<std::int64_t>(config_.batch_size, images - first);
      const float lr = lr_per_step[static_cast<std::size_t>(std::min<std::int64_t>(global_step, schedule_steps - 1))];
      float loss = 0;
      float loss_scale = scaler_ ? scaler_->scale() : 1.0f;
      bool applied = true;
      if (device_) {
        const float scale_used = device_loss_scale_;
        const DeviceStepOutcome outcome = device_->step(first, rows);
        loss = outcome.loss;
        applied = outcome.applied;
        loss_scale = device_loss_scale_ = outcome.loss_scale;
        if (config_.numerics_every > 0 && (global_step + 1) % config_.numerics_every == 0) {
          sample_device_step(global_step + 1, scale_used);  // first, as on the CPU: totals count once
        }
        note_device_nonfinite(outcome.found_inf, outcome.loss, global_step + 1, scale_used);
      } else {
        load_batch(set, order, first, rows);
        applied = step(input_.first_rows(rows), global_step, lr, loss);
        loss_scale = scaler_ ? scaler_->scale() : 1.0f;
      }
      if (!applied) ++result.skipped_steps;
      // The sample of a step first, then where it went non-finite (consumers count each value once).
      if (pending_sample_) {
        result.headroom = telemetry::layer_headroom(*pending_sample_);
        if (callbacks.on_numerics) callbacks.on_numerics(*pending_sample_);
        pending_sample_.reset();
      }
      if (pending_origin_) {
        ++result.nonfinite_steps;
        if (result.nonfinite_origins.size() < 10) result.nonfinite_origins.push_back(*pending_origin_);
        if (callbacks.on_nonfinite) callbacks.on_nonfinite(*pending_origin_);
        pending_origin_.reset();
      }
      if (std::isfinite(loss)) {
        loss_sum += loss;
        ++loss_count;
      }
      images_seen += rows;
      epoch_images += rows;
      if (callbacks.on_step) {
        StepReport r;
        r.epoch = epoch;
        r.step = global_step + 1;
        r.steps_per_epoch = steps_per_epoch;
        r.total_steps = total_steps;
        r.loss = loss;
        r.lr = lr;
        r.loss_scale = loss_scale;
        r.skipped = !applied;
        r.elapsed_seconds = training_seconds + seconds_since(epoch_start);
        r.images_per_second = static_cast<double>(images_seen) / r.elapsed_seconds;
        callbacks.on_step(r);
      }
      result.final_loss = loss;
      const bool last = global_step + 1 == total_steps;
      if (config_.checkpoint_every > 0 && ((global_step + 1) % config_.checkpoint_every == 0 || last)) {
        position_ = {s + 1 == steps_per_epoch ? epoch + 1 : epoch, s + 1 == steps_per_epoch ? 0 : s + 1,
                     global_step + 1, result.skipped_steps, result.nonfinite_steps, images_seen,
                     training_seconds + seconds_since(epoch_start)};
        sync_from_device();
        save_checkpoint(config_.checkpoint_path);
      }
    }
    const double epoch_seconds = seconds_since(epoch_start);
    training_seconds += epoch_seconds;
    EpochReport e;
    e.epoch = epoch;
    e.train_loss = loss_count ? loss_sum / static_cast<double>(loss_count) : NAN;
    e.seconds = epoch_seconds;
    e.images_per_second = static_cast<double>(epoch_images) / epoch_seconds;
    e.skipped_steps = result.skipped_steps - skipped_before;
    e.test_accuracy = evaluate();
    result.test_accuracy = e.test_accuracy;
    if (callbacks.on_epoch) callbacks.on_epoch(e);
  }
  sync_from_device();  // the host layers hold the trained state from here on (model file, checkpoints)
  result.steps = global_step;
  result.train_seconds = training_seconds;
  result.images_per_second = static_cast<double>(images_seen) / std::max(1e-9, training_seconds);
  if (scaler_) result.loss_scaler = scaler_->state();
  const bool fp16_run = ctx_.policy.compute == DType::f16 || ctx_.policy.activations == DType::f16;
  result.recommendation = telemetry::recommendation(result.headroom, fp16_run, result.skipped_steps, result.steps);
  return result;
}

}  // namespace mpx::train
