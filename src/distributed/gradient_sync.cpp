#include "mpx/distributed/gradient_sync.h"

#include <chrono>
#include <cmath>

#include "bucket_transport.h"
#include "mpx/numeric/convert.h"

namespace mpx::distributed {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

constexpr struct {
  GradComm mode;
  const char* name;
} kModes[] = {{GradComm::fp32, "fp32"}, {GradComm::bf16, "bf16"}, {GradComm::fp16, "fp16"},
              {GradComm::bf16_ef, "bf16+ef"}, {GradComm::fp16_ef, "fp16+ef"}};
}  // namespace

const char* name(GradComm mode) {
  for (const auto& m : kModes) {
    if (m.mode == mode) return m.name;
  }
  return "?";
}

GradComm parse_grad_comm(const std::string& text) {
  for (const auto& m : kModes) {
    if (text == m.name) return m.mode;
  }
  throw InvalidArgument("--grad-comm " + text + ": unknown mode; use fp32, bf16, fp16, bf16+ef or fp16+ef");
}

DType wire_dtype(GradComm mode) {
  switch (mode) {
    case GradComm::bf16:
    case GradComm::bf16_ef: return DType::bf16;
    case GradComm::fp16:
    case GradComm::fp16_ef: return DType::f16;
    case GradComm::fp32: break;
  }
  return DType::f32;
}

bool error_feedback(GradComm mode) { return mode == GradComm::bf16_ef || mode == GradComm::fp16_ef; }

GradientSync::GradientSync(ProcessGroup& group, nn::Sequential& model, backend::Backend& backend, Settings settings)
    : group_(group), backend_(backend), settings_(settings) {
  if (settings_.bucket_bytes < 4) throw InvalidArgument("--bucket-mb must be positive");
  for (const auto& layer : model.layers()) layers_.push_back(layer.get());
  // Backward order: the last layer's parameters first, each layer's in reverse.
  auto bucket = std::make_unique<Bucket>();
  for (std::size_t i = layers_.size(); i-- > 0;) {
    const std::vector<nn::Parameter*> params = model.layers()[i]->parameters();
    for (auto it = params.rbegin(); it != params.rend(); ++it) {
      nn::Parameter* p = *it;
      const auto n = static_cast<std::size_t>(p->grad.numel());
      bucket->slices.push_back({p, bucket->elements, n});
      bucket->elements += n;
      bucket->completing_layer = i;
      // The first bucket is small (1 MB, as PyTorch DDP's): the last layers' gradients go out while most
      // of backward is still to run.
      const std::size_t cap = buckets_.empty() ? std::min<std::size_t>(settings_.bucket_bytes, 1u << 20) : settings_.bucket_bytes;
      if (bucket->elements * sizeof(float) >= cap) {
        buckets_.push_back(std::move(bucket));
        bucket = std::make_unique<Bucket>();
      }
    }
  }
  if (!bucket->slices.empty()) buckets_.push_back(std::move(bucket));
  const DType wire = wire_dtype(settings_.mode);
  const bool ef = error_feedback(settings_.mode);
  nonfinite_ = backend_.allocate({1}, DType::u8, MemoryCategory::workspace);
  for (auto& b : buckets_) {
    const Shape shape{static_cast<std::int64_t>(b->elements)};
    backend::GradientBucket& t = b->tensors;
    t.values = backend_.allocate(shape, DType::f32, MemoryCategory::gradients);
    t.nonfinite = nonfinite_;
    if (wire != DType::f32) t.wire = backend_.allocate(shape, wire, MemoryCategory::gradients);
    if (ef) {
      t.residual = backend_.allocate(shape, DType::f32, MemoryCategory::optimizer_state);
      t.next_residual = backend_.allocate(shape, DType::f32, MemoryCategory::optimizer_state);
      backend_.fill_zero(t.residual);
      backend_.fill_zero(t.next_residual);
    }
  }
  if (wire != DType::f32 && !buckets_.empty()) {
    buckets_.front()->reference = backend_.allocate({static_cast<std::int64_t>(buckets_.front()->elements)}, DType::f32,
                                                    MemoryCategory::workspace);
  }
  transport_ = device_transport(group_, backend_);
  if (!transport_) transport_ = host_transport(group_);
}

GradientSync::~GradientSync() = default;

int GradientSync::bucket_count() const { return static_cast<int>(buckets_.size()); }

void GradientSync::begin_step(double weight, float loss_scale, bool measure) {
  weight_ = static_cast<float>(weight);
  scale_ = loss_scale;
  measure_ = measure;
  active_ = true;
  next_bucket_ = 0;
  stats_ = {};
  backend_.fill_zero(nonfinite_);
  // The residuals are in the units of the scaled gradients: a new loss scale rescales them.
  if (error_feedback(settings_.mode) && loss_scale != residual_scale_) {
    const float ratio = loss_scale / residual_scale_;
    for (auto& b : buckets_) {
      Tensor host = backend::host_view(backend_, b->tensors.residual);
      for (float& r : std::span<float>(host.data_as<float>(), b->elements)) r *= ratio;
      backend_.upload(b->tensors.residual, host.data());
    }
    residual_scale_ = loss_scale;
  }
}

void GradientSync::after_layer(const nn::Layer& layer, nn::Pass pass, const Tensor&, const Tensor&, const nn::Context&) {
  if (!active_ || pass != nn::Pass::backward) return;
  // Only the model's own layers count (a residual block's inner layers report too).
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    if (layers_[i] == &layer) return submit_ready_buckets(i);
  }
}

// Every bucket whose last gradient is final once layer `layer_index` has run its backward.
void GradientSync::submit_ready_buckets(std::size_t layer_index) {
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_]->completing_layer >= layer_index) {
    pack(*buckets_[next_bucket_]);
    transport_->submit(*buckets_[next_bucket_]);
    ++next_bucket_;
  }
}

void GradientSync::pack(Bucket& b) {
  b.measured = measure_ && b.reference.defined();
  for (const Bucket::Slice& s : b.slices) {
    const auto n = static_cast<std::int64_t>(s.count);
    backend_.convert(s.parameter->grad.reshaped({n}), b.tensors.values.rows(static_cast<std::int64_t>(s.offset), n));
  }
  backend::GradientBucket args = b.tensors;
  if (b.measured) args.reference = b.reference;
  backend_.prepare_gradient_bucket(args, weight_);
}

void GradientSync::unpack(Bucket& b) {
  const Tensor& sent = b.sent();
  for (const Bucket::Slice& s : b.slices) {
    const auto n = static_cast<std::int64_t>(s.count);
    backend_.convert(sent.rows(static_cast<std::int64_t>(s.offset), n), s.parameter->grad.reshaped({n}));
  }
}

// ||AR16 - AR32|| / ||AR32|| over the bucket, after its sums arrived.
double GradientSync::relative_error(const Bucket& b) {
  const Tensor sent = backend::host_view(backend_, b.sent()), reference = backend::host_view(backend_, b.reference);
  std::vector<float> reduced(b.elements);
  numeric::convert(sent.data(), sent.dtype(), reduced.data(), DType::f32, b.elements);
  const float* r = reference.data_as<float>();
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < b.elements; ++i) {
    const double d = static_cast<double>(reduced[i]) - r[i];
    diff += d * d;
    norm += static_cast<double>(r[i]) * r[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : 0.0;
}

GradientSync::Reduced GradientSync::finish(float local_loss) {
  // Buckets the observer did not see complete (a layer that reported nothing) go now, in order.
  submit_ready_buckets(0);
  active_ = false;
  const auto wait_start = Clock::now();
  stats_.comm_seconds = transport_->wait(buckets_.size());
  stats_.wait_seconds = seconds_since(wait_start);
  stats_.buckets = static_cast<int>(buckets_.size());
  const std::size_t wire_size = size_bytes(wire_dtype(settings_.mode));
  const auto n = static_cast<std::uint64_t>(group_.size());
  for (auto& b : buckets_) {
    unpack(*b);
    stats_.payload_bytes += b->elements * wire_size;
    if (b->measured) stats_.relative_error = relative_error(*b);
  }
  if (measure_ && !stats_.relative_error) stats_.relative_error = 0.0;  // fp32: exact by construction
  stats_.bytes_sent = stats_.payload_bytes * 2 * (n - 1) / n;
  if (error_feedback(settings_.mode) && measure_) {  // a pass over (on a device: a copy of) every residual
    double r2 = 0;
    for (auto& b : buckets_) {
      const Tensor next = backend::host_view(backend_, b->tensors.next_residual);
      for (float r : std::span<const float>(next.data_as<float>(), b->elements)) r2 += static_cast<double>(r) * r;
    }
    stats_.residual_norm = std::sqrt(r2) / static_cast<double>(scale_);
  }
  std::uint8_t local_nonfinite = 0;
  backend_.download(nonfinite_, &local_nonfinite);
  // The step's verdicts in one small collective (each costs a round trip, whatever its size): the
  // non-finite flags and the weighted losses summed, so that every rank skips the same step; and each
  // rank's loss scale in a slot of its own (zeros elsewhere, so the sum carries it exactly), so that every
  // rank can check that all scalers are where its own is.
  std::vector<double> verdict(2 + static_cast<std::size_t>(group_.size()), 0.0);
  verdict[0] = local_nonfinite != 0 ? 1.0 : 0.0;
  verdict[1] = static_cast<double>(local_loss) * weight_;
  verdict[2 + static_cast<std::size_t>(group_.rank())] = scale_;
  group_.allreduce_sum(std::span<double>(verdict));
  for (int k = 1; k < group_.size(); ++k) {
    if (verdict[2 + static_cast<std::size_t>(k)] != verdict[2]) {
      throw Error("the ranks' loss scales differ (rank 0 " + std::to_string(verdict[2]) + ", rank " + std::to_string(k) +
                  " " + std::to_string(verdict[2 + static_cast<std::size_t>(k)]) +
                  "): their gradients or skipped steps diverged; this is a bug in mpx, please report it");
    }
  }
  return {static_cast<float>(verdict[1]), verdict[0] > 0};
}

void GradientSync::end_step(bool applied) {
  if (!applied || !error_feedback(settings_.mode)) return;
  for (auto& b : buckets_) std::swap(b->tensors.residual, b->tensors.next_residual);
}

std::vector<GradientSync::Residual> GradientSync::residuals() const {
  std::vector<Residual> out;
  for (const auto& b : buckets_) {
    if (!b->tensors.residual.defined()) continue;
    const Tensor host = backend::host_view(backend_, b->tensors.residual);
    for (const Bucket::Slice& s : b->slices) {
      const float* first = host.data_as<float>() + s.offset;
      out.push_back({s.parameter->name, std::vector<float>(first, first + s.count)});
    }
  }
  return out;
}

void GradientSync::load_residuals(const std::vector<Residual>& residuals) {
  std::size_t next = 0;
  for (auto& b : buckets_) {
    if (!b->tensors.residual.defined()) continue;
    Tensor host = backend::host_view(backend_, b->tensors.residual);
    for (const Bucket::Slice& s : b->slices) {
      if (next >= residuals.size() || residuals[next].name != s.parameter->name || residuals[next].values.size() != s.count) {
        throw InvalidArgument("error-feedback residuals do not match the model at " + s.parameter->name);
      }
      std::copy(residuals[next].values.begin(), residuals[next].values.end(), host.data_as<float>() + s.offset);
      ++next;
    }
    backend_.upload(b->tensors.residual, host.data());
  }
  if (next != residuals.size()) throw InvalidArgument("more error-feedback residuals than the model has parameters");
}

}  // namespace mpx::distributed
