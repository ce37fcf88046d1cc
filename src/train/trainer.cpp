#include "mpx/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "divergence_rule.h"
#include "mpx/amp/schedule.h"
#include "mpx/core/error.h"
#include "mpx/numeric/convert.h"

namespace mpx::train {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Normalised with the training set's mean and standard deviation (as the reference recipe does).
std::unique_ptr<Dataset> images(const io::ImageSet& set, const io::ImageSet& train, std::int64_t limit) {
  return std::make_unique<ImageDataset>(set, io::pixel_normalisation(train), limit);
}

backend::OptimizerSettings optimizer_settings(const TrainConfig& c, bool loss_scaling, const amp::PrecisionPolicy& policy) {
  backend::OptimizerSettings s;
  s.algorithm = c.optimizer == OptimizerKind::adamw ? backend::OptimizerSettings::Algorithm::adamw
                                                    : backend::OptimizerSettings::Algorithm::sgd;
  s.adamw.weight_decay = c.weight_decay;
  s.sgd = {c.momentum, c.weight_decay, true};
  s.clip_norm = c.clip_norm;
  s.loss_scaling = loss_scaling;
  s.master_weights = policy.master_weights;
  s.stochastic_rounding = policy.stochastic_weight_rounding;
  s.rounding_seed = c.seed;
  return s;
}

// Every parameter's values and optimizer state, and every buffer (BatchNorm statistics): what a host copy
// of a device model must match.
std::vector<Tensor*> state_tensors(nn::Sequential& model) {
  std::vector<Tensor*> out;
  for (nn::Parameter* p : model.parameters()) {
    for (Tensor* t : {&p->value, &p->state1, &p->state2}) {
      if (t->defined()) out.push_back(t);
    }
  }
  for (auto& [name, t] : model.buffers()) out.push_back(t);
  return out;
}
}  // namespace

Trainer::Trainer(const TrainConfig& config, const io::FashionMnist& data)
    : Trainer(config, images(data.train, data.train, config.train_subset),
              images(data.test, data.train, config.test_subset)) {}

Trainer::Trainer(const TrainConfig& config, std::unique_ptr<Dataset> train_set, std::unique_ptr<Dataset> test_set)
    : config_(resolve(config)),
      train_set_(std::move(train_set)),
      test_set_(std::move(test_set)),
      ctx_(backend::make_backend(config_.device == DeviceChoice::cuda ? Device::cuda : Device::cpu, config_.device_index)),
      model_(build_model(config_)) {
  ctx_.policy = amp::PrecisionPolicy::preset(config_.precision);
  ctx_.policy.allow_tf32 = config_.tf32;
  ctx_.backend().set_allow_tf32(config_.tf32);
  ctx_.seed = config_.seed;
  // A skipped step (inf/NaN gradients) must leave every piece of state as it was, running statistics too.
  ctx_.running_statistics = nn::Context::RunningStatistics::defer;
  if (!config_.inject_nonfinite.empty()) {
    injector_.emplace(telemetry::NonFiniteInjector::parse(config_.inject_nonfinite));
    ctx_.observers.push_back(&*injector_);
    warn_about_a_drill_without_effect();
  }
  ctx_.observers.push_back(&monitor_);
  loss_scaling_ = config_.loss_scaling.value_or(ctx_.policy.loss_scaling);
  divergence_ = std::make_unique<DivergenceRule>(
      config_.device == DeviceChoice::cuda ? config_.precision + " on CUDA" : config_.precision,
      loss_scaling_ || ctx_.policy.master_weights, config_.detect_anomaly);
  Shape input_shape = train_set_->sample_shape();
  input_shape.insert(input_shape.begin(), config_.batch_size);
  const DType input_dtype = train_set_->sample_dtype();
  input_ = ctx_.allocate(input_shape, input_dtype, MemoryCategory::activations);
  input_host_ = input_.device() == Device::cpu ? input_
                                               : Tensor::empty(input_shape, input_dtype, MemoryCategory::workspace, nullptr);
  const nn::TensorSpec logits = model_.plan({input_shape, input_dtype}, ctx_);
  loss_.plan(logits, train_set_->label_dtype(), ctx_);
  if (test_set_->label_dtype() != train_set_->label_dtype() || test_set_->sample_shape() != train_set_->sample_shape()) {
    throw InvalidArgument("the test set's samples or labels differ from the training set's");
  }
  params_ = model_.parameters();
  std::vector<backend::ParameterTensors> tensors;
  for (nn::Parameter* p : params_) {
    p->state1 = ctx_.zeros(p->value.shape(), DType::f32, MemoryCategory::optimizer_state);
    if (config_.optimizer == OptimizerKind::adamw) {
      p->state2 = ctx_.zeros(p->value.shape(), DType::f32, MemoryCategory::optimizer_state);
    }
    tensors.push_back({p->value, p->grad, p->state1, p->state2, p->working, p->compute, p->decay});
  }
  optimizer_ = ctx_.backend().make_optimizer(optimizer_settings(config_, loss_scaling_, ctx_.policy),
                                             std::move(tensors));
  labels_.resize(static_cast<std::size_t>(config_.batch_size * train_set_->labels_per_sample()) *
                 size_bytes(train_set_->label_dtype()));
  batch_indices_.resize(static_cast<std::size_t>(config_.batch_size));
  if (ctx_.backend().device() != Device::cpu) {
    // Files are read and written from a host copy of the same model (same names, shapes and layouts).
    host_ctx_ = std::make_unique<nn::Context>();
    host_ctx_->policy = ctx_.policy;
    host_model_ = std::make_unique<nn::Sequential>(build_model(config_));
    host_model_->plan({input_shape, input_dtype}, *host_ctx_);
    for (nn::Parameter* p : host_model_->parameters()) {
      p->state1 = host_ctx_->zeros(p->value.shape(), DType::f32, MemoryCategory::optimizer_state);
      if (config_.optimizer == OptimizerKind::adamw) {
        p->state2 = host_ctx_->zeros(p->value.shape(), DType::f32, MemoryCategory::optimizer_state);
      }
    }
  }
}

Trainer::~Trainer() = default;

void Trainer::join(distributed::ProcessGroup& group) {
  if (train_set_->size() < group.size()) {
    throw InvalidArgument("the training set's " + std::to_string(train_set_->size()) + " samples cannot be shared out among " +
                          std::to_string(group.size()) + " ranks (each needs at least one): use fewer ranks or more data");
  }
  group_ = &group;
  ctx_.replicas = static_cast<std::uint64_t>(group.size());
  sync_ = std::make_unique<distributed::GradientSync>(
      group, model_, ctx_.backend(),
      distributed::GradientSync::Settings{config_.grad_comm, static_cast<std::size_t>(config_.bucket_mb * (1 << 20))});
  ctx_.observers.push_back(sync_.get());  // after the monitor and drills: it sees the gradients they saw
}

std::int64_t steps_per_epoch(std::int64_t samples, std::int64_t rank_batch, int world) {
  const std::int64_t batch = rank_batch * world;
  std::int64_t steps = (samples + batch - 1) / batch;
  if (samples % batch != 0 && samples % batch < world) --steps;
  return steps;
}

std::int64_t Trainer::steps_per_epoch() const {
  return train::steps_per_epoch(train_set_->size(), config_.batch_size, world_size());
}

void Trainer::warn_about_a_drill_without_effect() {
  const std::int64_t epoch_steps = steps_per_epoch() * config_.epochs;
  const std::int64_t total = config_.max_steps > 0 ? std::min(epoch_steps, config_.max_steps) : epoch_steps;
  const std::string drill = "--inject-nonfinite " + config_.inject_nonfinite;
  if (injector_->step() > total) {
    warnings_.push_back(drill + " can have no effect: the run has " + std::to_string(total) + " steps");
  }
  // The first layer computes no gradient for its input (the images): a backward drill there poisons nothing.
  const auto& layers = model_.layers();
  if (injector_->pass() == nn::Pass::backward && !layers.empty() && layers.front()->name() == injector_->layer()) {
    warnings_.push_back(drill + " can have no effect: " + injector_->layer() +
                        " is the first layer, and no gradient is computed for the model's input");
  }
}

std::string Trainer::device_name() const { return ctx_.backend().device_name(); }
std::size_t Trainer::peak_bytes() const { return memory().peak_total(); }
const MemoryTracker& Trainer::memory() const { return ctx_.memory(); }

void Trainer::copy_state_to_host() {
  if (!host_model_) return;
  const std::vector<Tensor*> device = state_tensors(model_), host = state_tensors(*host_model_);
  for (std::size_t i = 0; i < device.size(); ++i) ctx_.backend().download(*device[i], host[i]->data());
}

void Trainer::copy_state_to_device() {
  if (host_model_) {
    const std::vector<Tensor*> device = state_tensors(model_), host = state_tensors(*host_model_);
    for (std::size_t i = 0; i < device.size(); ++i) ctx_.backend().upload(*device[i], host[i]->data());
  }
  for (nn::Parameter* p : params_) p->refresh(ctx_.backend(), ctx_.policy.master_weights);  // working copies
}

nn::Sequential& Trainer::model() {
  if (!host_model_) return model_;
  copy_state_to_host();
  return *host_model_;
}

float Trainer::lr_at(std::int64_t step, std::int64_t schedule_steps) const {
  // Computed per step, never tabulated: --epochs 10^8 must not allocate a table of 10^10 steps.
  step = std::min<std::int64_t>(step, std::max<std::int64_t>(1, schedule_steps) - 1);
  switch (config_.schedule) {
    case ScheduleKind::onecycle: return amp::OneCycleSchedule{config_.lr, schedule_steps}.lr(step);
    case ScheduleKind::cosine:
      return amp::CosineSchedule{config_.lr, config_.min_lr, config_.warmup_steps, schedule_steps}.lr(step);
    case ScheduleKind::constant: break;
  }
  return config_.lr;
}

void Trainer::load_batch(const Dataset& set, const std::vector<std::int64_t>& order, std::int64_t first,
                         std::int64_t rows) {
  for (std::int64_t r = 0; r < rows; ++r) {
    batch_indices_[static_cast<std::size_t>(r)] = order.empty() ? first + r : order[static_cast<std::size_t>(first + r)];
  }
  set.gather({batch_indices_.data(), static_cast<std::size_t>(rows)}, input_host_.data(), labels_.data());
  if (input_host_.data() != input_.data()) ctx_.backend().upload(input_.first_rows(rows), input_host_.data());
}

bool Trainer::step(const Tensor& batch, std::int64_t global_step, float lr, float& loss) {
  using Mode = telemetry::NumericsMonitor::Mode;
  ctx_.step = static_cast<std::uint64_t>(global_step);
  const std::int64_t step_number = global_step + 1;
  const float scale = optimizer_->loss_scale();
  const bool sample = config_.numerics_every > 0 && step_number % config_.numerics_every == 0;
  monitor_.begin(sample ? Mode::sample : Mode::off, step_number, scale);
  const Tensor logits = model_.forward(batch, ctx_, true);
  loss = loss_.forward(logits, labels_.data());
  // Without master weights or a loss scaler there is nothing to recover with (divergence_rule.h).
  if (divergence_->loss_is_fatal(loss)) {
    divergence_->stop_for_loss(loss, step_number, locate_nonfinite(batch, step_number, scale, false));
  }
  if (sync_) sync_->begin_step(share_, scale, sample);
  model_.backward(loss_.backward(scale), ctx_);  // data parallel: the buckets go out as layers finish
  if (sample) pending_sample_ = monitor_.take_sample();  // activations and their gradients
  bool nonfinite_on_a_rank = false;
  if (sync_) {  // the averaged gradients, the global batch's loss, and whether any rank saw inf/NaN
    const distributed::GradientSync::Reduced reduced = sync_->finish(loss);
    loss = reduced.loss;
    nonfinite_on_a_rank = reduced.nonfinite;
  }

  const bool found_inf = optimizer_->unscale_and_check(loss, lr) || nonfinite_on_a_rank;
  if (found_inf) {
    pending_origin_ = locate_nonfinite(batch, step_number, scale, true);
    if (!pending_origin_) pending_origin_ = telemetry::NonFiniteOrigin{step_number, "loss", "forward", {}, {}};
    divergence_->after_check(true, *pending_origin_);
  } else {
    divergence_->after_finite_step();
  }
  const bool apply = optimizer_->apply(found_inf, lr);
  model_.end_step(ctx_, apply);  // BatchNorm's running statistics: only a step that applied moves them
  if (sync_) sync_->end_step(apply);
  if (sample) {  // weights, gradients and optimizer state after the update
    monitor_.begin(Mode::sample, step_number, scale);
    monitor_.record_parameters(params_, ctx_.policy.master_weights, ctx_.backend());
    for (auto& t : monitor_.take_sample().tensors) pending_sample_->tensors.push_back(std::move(t));
  }
  return apply;
}

std::optional<telemetry::NonFiniteOrigin> Trainer::first_nonfinite_weight_gradient(std::int64_t step) const {
  for (auto it = params_.rbegin(); it != params_.rend(); ++it) {  // in backward order
    const Tensor grad = backend::host_view(ctx_.backend(), (*it)->grad);
    const telemetry::TensorStats g = telemetry::compute_stats(grad.data(), DType::f32, static_cast<std::size_t>(grad.numel()));
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
    nn::Context::RunningStatistics before;
    explicit FrozenStatistics(nn::Context& c) : ctx(c), before(c.running_statistics) {
      ctx.running_statistics = nn::Context::RunningStatistics::keep;
    }
    ~FrozenStatistics() { ctx.running_statistics = before; }
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

namespace {
// The label of row r of a batch: a class (u8) or a token id (i32).
std::int64_t label_at(const std::vector<std::byte>& labels, DType dtype, std::int64_t r) {
  if (dtype == DType::i32) return reinterpret_cast<const std::int32_t*>(labels.data())[r];
  return static_cast<std::int64_t>(labels[static_cast<std::size_t>(r)]);
}
}  // namespace

Evaluation Trainer::evaluate() {
  const Dataset& set = *test_set_;
  const std::int64_t total = set.size();
  std::int64_t correct = 0, rows_seen = 0;
  double loss_sum = 0;
  std::vector<float> z;  // FP32 view of f32 or low-precision logits
  // Data parallel: rank k evaluates batches k, k + world, ...; the counts are summed at the end.
  for (std::int64_t first = rank() * config_.batch_size; first < total; first += global_batch()) {
    const std::int64_t samples = std::min<std::int64_t>(config_.batch_size, total - first);
    load_batch(set, {}, first, samples);
    const Tensor device_logits = model_.forward(input_.first_rows(samples), ctx_, false);
    const std::int64_t classes = device_logits.shape().back(), rows = device_logits.numel() / classes;
    loss_sum += static_cast<double>(loss_.forward(device_logits, labels_.data())) * static_cast<double>(rows);
    const Tensor logits = backend::host_view(ctx_.backend(), device_logits);
    z.resize(static_cast<std::size_t>(logits.numel()));
    if (logits.dtype() == DType::f32) {
      std::copy_n(logits.data_as<float>(), z.size(), z.data());
    } else {
      numeric::convert(logits.data(), logits.dtype(), z.data(), DType::f32, z.size());
    }
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* row = z.data() + r * classes;
      const auto best = std::max_element(row, row + classes) - row;
      correct += best == label_at(labels_, set.label_dtype(), r);
    }
    rows_seen += rows;
  }
  if (group_) {
    double counts[3] = {static_cast<double>(correct), loss_sum, static_cast<double>(rows_seen)};
    group_->allreduce_sum(std::span<double>(counts, 3));
    correct = static_cast<std::int64_t>(counts[0]);
    loss_sum = counts[1];
    rows_seen = static_cast<std::int64_t>(counts[2]);
  }
  return {static_cast<double>(correct) / static_cast<double>(rows_seen), loss_sum / static_cast<double>(rows_seen)};
}

TrainResult Trainer::run(const Callbacks& callbacks) {
  const Dataset& set = *train_set_;
  const std::int64_t images = set.size();
  const std::int64_t steps_per_epoch = this->steps_per_epoch();
  const std::int64_t epoch_steps = steps_per_epoch * config_.epochs;
  const std::int64_t schedule_steps = config_.schedule_steps > 0 ? config_.schedule_steps : epoch_steps;
  const std::int64_t total_steps = config_.max_steps > 0 ? std::min(epoch_steps, config_.max_steps) : epoch_steps;
  const auto tokens_per_sample = static_cast<double>(set.label_dtype() == DType::i32 ? set.labels_per_sample() : 0);

  TrainResult result;
  result.loss_scaling = loss_scaling_;
  result.skipped_steps = position_.skipped_steps;
  result.nonfinite_steps = position_.nonfinite_steps;
  double training_seconds = position_.train_seconds;
  std::int64_t global_step = position_.global_step, images_seen = position_.images_seen;
  if (global_step >= total_steps) {
    // Resumed from a checkpoint at the run's last step: nothing to train; report the model as it is.
    result.final_loss = position_.last_loss;
    const Evaluation e = evaluate();
    result.test_accuracy = e.accuracy;
    result.test_loss = e.loss;
  }
  for (int epoch = position_.epoch; epoch <= config_.epochs && global_step < total_steps; ++epoch) {
    const auto epoch_start = Clock::now();
    std::vector<std::int64_t> order(static_cast<std::size_t>(images));
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 rng(config_.seed * 1000003u + static_cast<std::uint64_t>(epoch));
    std::shuffle(order.begin(), order.end(), rng);
    double loss_sum = 0;
    std::int64_t loss_count = 0, epoch_images = 0, skipped_before = result.skipped_steps;
    const std::int64_t first_step = epoch == position_.epoch ? position_.step_in_epoch : 0;
    for (std::int64_t s = first_step; s < steps_per_epoch && global_step < total_steps; ++s, ++global_step) {
      // The global batch s; data parallel: this rank's share of it, the rows in order (a short last batch
      // split as evenly as it goes).
      const std::int64_t global_first = s * global_batch();
      const std::int64_t global_rows = std::min<std::int64_t>(global_batch(), images - global_first);
      const std::int64_t base = global_rows / world_size(), extra = global_rows % world_size();
      const std::int64_t first = global_first + rank() * base + std::min<std::int64_t>(rank(), extra);
      const std::int64_t rows = base + (rank() < extra ? 1 : 0);
      share_ = static_cast<double>(rows) / static_cast<double>(global_rows);
      ctx_.first_row = static_cast<std::uint64_t>(first - global_first);
      const float lr = lr_at(global_step, schedule_steps);
      float loss = 0;
      load_batch(set, order, first, rows);
      const bool applied = step(input_.first_rows(rows), global_step, lr, loss);
      const float loss_scale = optimizer_->loss_scale();
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
      images_seen += global_rows;
      epoch_images += global_rows;
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
        r.tokens_per_second = r.images_per_second * tokens_per_sample;
        r.samples = {batch_indices_.data(), static_cast<std::size_t>(rows)};
        if (sync_) r.comm = &sync_->last();
        callbacks.on_step(r);
      }
      if (config_.eval_every > 0 && (global_step + 1) % config_.eval_every == 0) {
        const auto eval_start = Clock::now();
        const Evaluation e = evaluate();
        result.test_accuracy = e.accuracy;
        result.test_loss = e.loss;
        if (callbacks.on_eval) callbacks.on_eval({global_step + 1, e});
        training_seconds -= seconds_since(eval_start);  // the timers count training only
      }
      result.final_loss = loss;
      const bool last = global_step + 1 == total_steps;
      // Where the run stands after every step: a checkpoint saved now (here, or by the caller after run())
      // resumes from the next one.
      position_ = {s + 1 == steps_per_epoch ? epoch + 1 : epoch, s + 1 == steps_per_epoch ? 0 : s + 1,
                   global_step + 1, result.skipped_steps, result.nonfinite_steps, images_seen,
                   training_seconds + seconds_since(epoch_start), loss};
      if (config_.checkpoint_every > 0 && ((global_step + 1) % config_.checkpoint_every == 0 || last)) {
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
    const Evaluation evaluation = evaluate();
    e.test_accuracy = evaluation.accuracy;
    e.test_loss = evaluation.loss;
    result.test_accuracy = e.test_accuracy;
    result.test_loss = e.test_loss;
    if (callbacks.on_epoch) callbacks.on_epoch(e);
  }
  result.steps = global_step;
  result.train_seconds = training_seconds;
  result.images_per_second = static_cast<double>(images_seen) / std::max(1e-9, training_seconds);
  result.tokens_per_second = result.images_per_second * tokens_per_sample;
  if (loss_scaling_) result.loss_scaler = optimizer_->scaler_state();
  const bool fp16_run = ctx_.policy.compute == DType::f16 || ctx_.policy.activations == DType::f16;
  result.recommendation = telemetry::recommendation(result.headroom, fp16_run, result.skipped_steps, result.steps);
  return result;
}

}  // namespace mpx::train
