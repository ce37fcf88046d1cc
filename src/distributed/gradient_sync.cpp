#include "mpx/distributed/gradient_sync.h"

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

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

// A run of parameters, contiguous in one buffer, all-reduced as one message.
struct GradientSync::Bucket {
  struct Slice {
    nn::Parameter* parameter;
    std::size_t offset, count;
  };
  std::vector<Slice> slices;
  std::size_t elements = 0;
  std::size_t completing_layer = 0;  // after this layer's backward every slice's gradient is final
  std::vector<float> values;         // FP32: sent as is, or (16-bit modes) rounded into `wire`
  std::vector<std::uint16_t> wire;
  std::vector<float> reference;  // M9: the same gradients all-reduced in FP32 beside
  bool measured = false;
  std::vector<float> residual, next_residual;  // error feedback
};

// Runs the buckets' all-reduces in submission order, one at a time, off the compute thread.
class GradientSync::CommThread {
 public:
  CommThread(ProcessGroup& group, DType wire) : group_(group), wire_(wire), thread_([this] { loop(); }) {}
  ~CommThread() {
    {
      const std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void submit(Bucket* b) {
    {
      const std::lock_guard lock(mutex_);
      queue_.push_back(b);
    }
    cv_.notify_all();
  }
  // Waits until `count` buckets are done; rethrows what a collective threw. Returns the seconds spent in
  // collectives since the last call.
  double wait(std::size_t count) {
    std::unique_lock lock(mutex_);
    done_cv_.wait(lock, [&] { return done_ >= count; });
    done_ = 0;
    const double s = seconds_;
    seconds_ = 0;
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    return s;
  }

 private:
  void loop() {
    std::unique_lock lock(mutex_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      Bucket* b = queue_.front();
      queue_.pop_front();
      const bool failed = error_ != nullptr;
      lock.unlock();
      std::exception_ptr error;
      const auto start = Clock::now();
      if (!failed) {  // after a failure the rest only count as done: every rank stops anyway
        try {
          if (wire_ == DType::f32) {
            group_.allreduce_sum(std::span<float>(b->values));
          } else {
            group_.allreduce_sum_16(std::span<std::uint16_t>(b->wire), wire_);
          }
          if (b->measured) group_.allreduce_sum(std::span<float>(b->reference));
        } catch (...) {
          error = std::current_exception();
        }
      }
      lock.lock();
      seconds_ += seconds_since(start);
      if (error && !error_) error_ = error;
      ++done_;
      done_cv_.notify_all();
    }
  }

  ProcessGroup& group_;
  DType wire_;
  std::mutex mutex_;
  std::condition_variable cv_, done_cv_;
  std::deque<Bucket*> queue_;
  std::size_t done_ = 0;
  double seconds_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

GradientSync::GradientSync(ProcessGroup& group, nn::Sequential& model, Settings settings)
    : group_(group), settings_(settings) {
  if (settings_.bucket_bytes < 4) throw InvalidArgument("--bucket-mb must be positive");
  for (const auto& layer : model.layers()) layers_.push_back(layer.get());
  // Backward order: the last layer's parameters first, each layer's in reverse.
  auto bucket = std::make_unique<Bucket>();
  for (std::size_t i = layers_.size(); i-- > 0;) {
    const std::vector<nn::Parameter*> params = model.layers()[i]->parameters();
    for (auto it = params.rbegin(); it != params.rend(); ++it) {
      nn::Parameter* p = *it;
      if (p->grad.device() != Device::cpu) {
        throw NotAvailable("data-parallel training runs on the CPU backend: gradients on a CUDA device would need "
                           "NCCL, which this build does not use yet; train on --device cpu or with one rank");
      }
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
  for (auto& b : buckets_) {
    b->values.resize(b->elements);
    if (wire != DType::f32) b->wire.resize(b->elements);
    if (error_feedback(settings_.mode)) {
      b->residual.assign(b->elements, 0.0f);
      b->next_residual.assign(b->elements, 0.0f);
    }
  }
  comm_ = std::make_unique<CommThread>(group_, wire);
}

GradientSync::~GradientSync() = default;

int GradientSync::bucket_count() const { return static_cast<int>(buckets_.size()); }

void GradientSync::begin_step(double weight, float loss_scale, bool measure) {
  weight_ = static_cast<float>(weight);
  scale_ = loss_scale;
  measure_ = measure;
  active_ = true;
  next_bucket_ = 0;
  local_nonfinite_ = false;
  stats_ = {};
  // The residuals are in the units of the scaled gradients: a new loss scale rescales them.
  if (error_feedback(settings_.mode) && loss_scale != residual_scale_) {
    const float ratio = loss_scale / residual_scale_;
    for (auto& b : buckets_) {
      for (float& r : b->residual) r *= ratio;
    }
    residual_scale_ = loss_scale;
  }
}

void GradientSync::after_layer(const nn::Layer& layer, nn::Pass pass, const Tensor&, const Tensor&, const nn::Context&) {
  if (!active_ || pass != nn::Pass::backward) return;
  // Only the model's own layers count (a residual block's inner layers report too).
  std::size_t index = layers_.size();
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    if (layers_[i] == &layer) index = i;
  }
  while (index < layers_.size() && next_bucket_ < buckets_.size() && buckets_[next_bucket_]->completing_layer >= index) {
    pack(*buckets_[next_bucket_]);
    comm_->submit(buckets_[next_bucket_].get());
    ++next_bucket_;
  }
}

void GradientSync::pack(Bucket& b) {
  const bool ef = error_feedback(settings_.mode);
  b.measured = measure_ && &b == buckets_.front().get() && wire_dtype(settings_.mode) != DType::f32;
  if (b.measured) b.reference.resize(b.elements);
  float poison = 0;  // becomes NaN when any gradient is NaN or infinite
  for (const Bucket::Slice& s : b.slices) {
    const float* g = s.parameter->grad.data_as<float>();
    float* v = b.values.data() + s.offset;
    for (std::size_t i = 0; i < s.count; ++i) {
      v[i] = g[i] * weight_;
      poison += g[i] * 0.0f;
    }
    if (b.measured) std::copy_n(v, s.count, b.reference.data() + s.offset);
    if (ef) {
      const float* r = b.residual.data() + s.offset;
      for (std::size_t i = 0; i < s.count; ++i) v[i] += r[i];
    }
  }
  local_nonfinite_ = local_nonfinite_ || std::isnan(poison);
  if (b.wire.empty()) return;
  const DType wire = wire_dtype(settings_.mode);
  numeric::convert(b.values.data(), DType::f32, b.wire.data(), wire, b.elements);
  if (ef) {  // what the rounding lost: v - round(v), added back next step
    numeric::convert(b.wire.data(), wire, b.next_residual.data(), DType::f32, b.elements);
    for (std::size_t i = 0; i < b.elements; ++i) {
      const float lost = b.values[i] - b.next_residual[i];
      b.next_residual[i] = std::isfinite(lost) ? lost : 0.0f;
    }
  }
}

void GradientSync::unpack(Bucket& b) {
  const DType wire = wire_dtype(settings_.mode);
  for (const Bucket::Slice& s : b.slices) {
    float* g = s.parameter->grad.data_as<float>();
    if (wire == DType::f32) {
      std::copy_n(b.values.data() + s.offset, s.count, g);
    } else {
      numeric::convert(b.wire.data() + s.offset, wire, g, DType::f32, s.count);
    }
  }
}

GradientSync::Reduced GradientSync::finish(float local_loss) {
  // Buckets the observer did not see complete (a layer that reported nothing) go now, in order.
  while (next_bucket_ < buckets_.size()) {
    pack(*buckets_[next_bucket_]);
    comm_->submit(buckets_[next_bucket_].get());
    ++next_bucket_;
  }
  active_ = false;
  const auto wait_start = Clock::now();
  stats_.comm_seconds = comm_->wait(buckets_.size());
  stats_.wait_seconds = seconds_since(wait_start);
  stats_.buckets = static_cast<int>(buckets_.size());
  const std::size_t wire_size = size_bytes(wire_dtype(settings_.mode));
  const auto n = static_cast<std::uint64_t>(group_.size());
  for (auto& b : buckets_) {
    unpack(*b);
    stats_.payload_bytes += b->elements * wire_size;
    if (b->measured) {
      double diff = 0, norm = 0;
      // The bucket's gradients are now in its parameters; compare slice by slice with the FP32 reduction.
      for (const Bucket::Slice& s : b->slices) {
        const float* reduced = s.parameter->grad.data_as<float>();
        for (std::size_t i = 0; i < s.count; ++i) {
          const double d = static_cast<double>(reduced[i]) - b->reference[s.offset + i];
          diff += d * d;
          norm += static_cast<double>(b->reference[s.offset + i]) * b->reference[s.offset + i];
        }
      }
      stats_.relative_error = norm > 0 ? std::sqrt(diff / norm) : 0.0;
    }
  }
  if (measure_ && !stats_.relative_error) stats_.relative_error = 0.0;  // fp32: exact by construction
  stats_.bytes_sent = stats_.payload_bytes * 2 * (n - 1) / n;
  if (error_feedback(settings_.mode)) {
    double r2 = 0;
    for (auto& b : buckets_) {
      for (float r : b->next_residual) r2 += static_cast<double>(r) * r;
    }
    stats_.residual_norm = std::sqrt(r2) / static_cast<double>(scale_);
  }
  // The step's verdicts in one small collective (each costs a round trip, whatever its size): the
  // non-finite flags and the weighted losses summed, so that every rank skips the same step; and each
  // rank's loss scale in a slot of its own (zeros elsewhere, so the sum carries it exactly), so that every
  // rank can check that all scalers are where its own is.
  std::vector<double> verdict(2 + static_cast<std::size_t>(group_.size()), 0.0);
  verdict[0] = local_nonfinite_ ? 1.0 : 0.0;
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
  for (auto& b : buckets_) b->residual.swap(b->next_residual);
}

std::vector<std::pair<std::string, std::span<float>>> GradientSync::residuals() {
  std::vector<std::pair<std::string, std::span<float>>> out;
  for (auto& b : buckets_) {
    if (b->residual.empty()) continue;
    for (const Bucket::Slice& s : b->slices) {
      out.emplace_back(s.parameter->name, std::span<float>(b->residual.data() + s.offset, s.count));
    }
  }
  return out;
}

}  // namespace mpx::distributed
