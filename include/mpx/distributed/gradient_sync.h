// Data-parallel gradients: every rank's FP32 gradients averaged over the ranks during backward. The
// parameters are grouped into buckets in backward order (as PyTorch DDP: the first 1 MB, then 25 MB by
// default); a bucket is
// packed as soon as the last layer writing into it has run its backward and is all-reduced on a
// communication thread while the earlier layers compute (overlap). Each rank's share is weighted by its
// rows of the global batch before the cast (so that 16-bit values cannot overflow from the sum), and the
// compressed modes send FP16 or BF16 values; with error feedback (+ef) what the rounding lost is kept per
// rank in FP32 and added back the next step. finish() also reduces the loss and the inf/NaN flag (MAX:
// every rank skips the same step) and checks that the loss scalers agree.
// The buckets live on the model's device: in host memory they travel through the ProcessGroup (Gloo, on a
// communication thread); on a CUDA device through the backend's collectives (NCCL, on a stream of its own),
// the bucket's preparation and the gradients' return being backend ops with the same bits on both.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "mpx/backend/backend.h"
#include "mpx/distributed/process_group.h"
#include "mpx/nn/model.h"

namespace mpx::distributed {

enum class GradComm : std::uint8_t { fp32, bf16, fp16, bf16_ef, fp16_ef };
const char* name(GradComm mode);                  // "fp32", "bf16", "fp16", "bf16+ef", "fp16+ef"
GradComm parse_grad_comm(const std::string& text);  // throws InvalidArgument listing the modes
DType wire_dtype(GradComm mode);                    // what travels: f32, bf16 or f16
bool error_feedback(GradComm mode);

// What the last step's communication did, on this rank.
struct CommStats {
  std::uint64_t payload_bytes = 0;  // the gradients' bytes in the wire dtype
  std::uint64_t bytes_sent = 0;     // what a ring all-reduce sends from this rank: 2 (n - 1) / n of the payload
  double comm_seconds = 0;          // inside the gradient collectives (host: the communication thread; CUDA: waiting)
  double wait_seconds = 0;          // after backward, waiting for the last bucket: communication not hidden
  int buckets = 0;
  // M9, on measured steps: ||AR16 - AR32|| / ||AR32|| over one bucket, AR32 being the same gradients
  // all-reduced in FP32 (0 for fp32 communication).
  std::optional<double> relative_error;
  // Error feedback, on measured steps: L2 norm of the residual (unscaled gradient units).
  std::optional<double> residual_norm;
};

class GradientSync : public nn::LayerObserver {
 public:
  struct Settings {
    GradComm mode = GradComm::fp32;
    std::size_t bucket_bytes = 25u << 20;  // of FP32 gradients
  };
  // `backend`: the one the model's parameters live on. On a device with collectives of its own (CUDA) the
  // ranks connect them now; throws CommunicationError when they cannot.
  GradientSync(ProcessGroup& group, nn::Sequential& model, backend::Backend& backend, Settings settings);
  ~GradientSync() override;

  // Before backward: this rank's rows over the global batch's, the loss scale the backward multiplies by,
  // and whether this step also measures M9.
  void begin_step(double weight, float loss_scale, bool measure);
  void after_layer(const nn::Layer& layer, nn::Pass pass, const Tensor& input, const Tensor& output,
                   const nn::Context& ctx) override;
  struct Reduced {
    float loss = 0;          // the global batch's mean loss
    bool nonfinite = false;  // on any rank, before communication
  };
  // After backward: the averaged gradients in every parameter's grad, the loss and the inf/NaN flag.
  // Throws CommunicationError when a rank is gone, Error when the loss scalers disagree.
  Reduced finish(float local_loss);
  void end_step(bool applied);  // an applied step keeps the new residuals; a skipped one the old

  const CommStats& last() const { return stats_; }
  GradComm mode() const { return settings_.mode; }
  int bucket_count() const;
  // Error feedback's residuals (scaled by residual_scale()), in parameter order, for checkpoints: a host
  // copy, and back (the same names and sizes, else InvalidArgument).
  struct Residual {
    std::string name;
    std::vector<float> values;
  };
  std::vector<Residual> residuals() const;
  void load_residuals(const std::vector<Residual>& residuals);
  float residual_scale() const { return residual_scale_; }
  void set_residual_scale(float scale) { residual_scale_ = scale; }

 private:
  struct Bucket;
  class Transport;
  class HostTransport;
  class DeviceTransport;
  static std::unique_ptr<Transport> host_transport(ProcessGroup& group);
  // Connects the backend's collectives (every rank at once); nullptr when it has none (host memory).
  static std::unique_ptr<Transport> device_transport(ProcessGroup& group, backend::Backend& backend);
  void pack(Bucket& b);
  void unpack(Bucket& b);
  void submit_ready_buckets(std::size_t layer_index);
  double relative_error(const Bucket& b);

  ProcessGroup& group_;
  backend::Backend& backend_;
  Settings settings_;
  std::vector<std::unique_ptr<Bucket>> buckets_;
  std::vector<const nn::Layer*> layers_;  // top-level, in model order
  Tensor nonfinite_;                      // u8 [1] on the device: a gradient of this step was inf/NaN
  std::unique_ptr<Transport> transport_;
  std::size_t next_bucket_ = 0;  // buckets complete in order
  bool active_ = false, measure_ = false;
  float weight_ = 1, scale_ = 1, residual_scale_ = 1;
  CommStats stats_;
};

}  // namespace mpx::distributed
