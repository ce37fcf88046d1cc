// NCCL behind backend::DeviceCollectives. The communicator is non-blocking (config.blocking = 0) so that
// no call can hang: every call and every wait polls NCCL's state against a deadline, and a rank that died
// or stopped turns into CollectiveFailed after the timeout (the communicator aborted), which the caller
// turns into a message naming the missing rank. The token rank 0 shares is its ncclUniqueId in hex.
#include <cuda_runtime.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "check.h"
#include "mpx/backend/cuda.h"
#include "mpx/core/error.h"
#include "nccl_collectives.h"
#include "nccl_library.h"

namespace mpx::cuda {

namespace {

using Clock = std::chrono::steady_clock;
using backend::CollectiveFailed;

std::string to_hex(const ncclUniqueId& id) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (const char c : id.internal) {
    const auto byte = static_cast<unsigned char>(c);
    out += kDigits[byte >> 4];
    out += kDigits[byte & 15];
  }
  return out;
}

ncclUniqueId from_hex(const std::string& text) {
  ncclUniqueId id{};
  if (text.size() != 2 * sizeof(id.internal)) {
    throw CollectiveFailed("rank 0's NCCL id arrived malformed (" + std::to_string(text.size()) + " characters)");
  }
  auto digit = [&](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw CollectiveFailed("rank 0's NCCL id arrived malformed");
  };
  for (std::size_t i = 0; i < sizeof(id.internal); ++i) {
    id.internal[i] = static_cast<char>(digit(text[2 * i]) * 16 + digit(text[2 * i + 1]));
  }
  return id;
}

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::f16: return ncclFloat16;
    case DType::bf16: return ncclBfloat16;
    default: throw InvalidArgument("NCCL all-reduce takes f32, f16 or bf16 tensors, got " + std::string(name(t)));
  }
}

class NcclCollectives final : public backend::DeviceCollectives {
 public:
  NcclCollectives(DeviceContext& context, const backend::CollectivesRendezvous& r)
      : context_(context), nccl_(nccl()), timeout_(r.timeout) {
    try {
      connect(r);
    } catch (...) {
      release_cuda();  // the destructor does not run for a constructor that threw
      throw;
    }
  }

  ~NcclCollectives() override {
    close();
    release_cuda();
  }

  void allreduce_sum(const Tensor& t) override {
    if (aborted_) throw CollectiveFailed("the NCCL communicator was aborted after an earlier failure");
    const auto compute = static_cast<cudaStream_t>(context_.stream());
    MPX_CUDA_CHECK(cudaEventRecord(ready_, compute));  // the bucket is packed when the compute stream gets here
    MPX_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
    check(nccl_.ncclAllReduce(t.data(), t.data(), static_cast<std::size_t>(t.numel()), nccl_type(t.dtype()), ncclSum,
                              comm_, stream_),
          "ncclAllReduce");
    settle("starting an all-reduce of " + std::to_string(t.bytes()) + " bytes");
    pending_ = true;
  }

  void wait(std::chrono::milliseconds timeout) override {
    if (!pending_) return;
    MPX_CUDA_CHECK(cudaEventRecord(done_, stream_));
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      const cudaError_t q = cudaEventQuery(done_);
      if (q == cudaSuccess) break;
      if (q != cudaErrorNotReady) MPX_CUDA_CHECK(q);
      ncclResult_t state = ncclSuccess;
      nccl_.ncclCommGetAsyncError(comm_, &state);
      if (state != ncclSuccess && state != ncclInProgress) fail("an all-reduce failed: " + error_text(state));
      if (Clock::now() > deadline) {
        fail("an all-reduce did not complete within " + std::to_string(static_cast<double>(timeout.count()) / 1000.0) +
             " s: a rank stopped taking part");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    // The compute stream's next ops (the gradients' unpacking) read the sums.
    MPX_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(context_.stream()), done_, 0));
    pending_ = false;
  }


 private:
  void connect(const backend::CollectivesRendezvous& r) {
    ncclUniqueId id{};
    std::string mine;
    if (r.rank == 0) {
      check(nccl_.ncclGetUniqueId(&id), "ncclGetUniqueId");
      mine = to_hex(id);
    }
    id = from_hex(r.share_token(mine));
    MPX_CUDA_CHECK(cudaSetDevice(context_.index()));
    MPX_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    MPX_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    MPX_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    check(nccl_.ncclCommInitRankConfig(&comm_, r.size, id, r.rank, &config), "ncclCommInitRankConfig");
    settle("connecting " + std::to_string(r.size) + " ranks (rank " + std::to_string(r.rank) + " on " +
           context_.name() + ")");
  }

  // Flush and close cleanly when every rank is still there; abort when that does not finish in time.
  void close() noexcept {
    if (comm_ != nullptr && !aborted_) {
      const ncclResult_t finalize = nccl_.ncclCommFinalize(comm_);
      ncclResult_t state = finalize;
      const auto deadline = Clock::now() + timeout_;
      while (state == ncclInProgress && Clock::now() < deadline &&
             nccl_.ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state == ncclInProgress) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
      if (state == ncclSuccess) {
        nccl_.ncclCommDestroy(comm_);
      } else {
        nccl_.ncclCommAbort(comm_);
      }
    }
  }
  void release_cuda() noexcept {
    if (done_ != nullptr) cudaEventDestroy(done_);
    if (ready_ != nullptr) cudaEventDestroy(ready_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    done_ = ready_ = nullptr;
    stream_ = nullptr;
  }

  std::string error_text(ncclResult_t result) const {
    std::string text = nccl_.ncclGetErrorString(result);
    const char* last = comm_ != nullptr ? nccl_.ncclGetLastError(comm_) : nullptr;
    if (last != nullptr && *last != '\0') text += " (" + std::string(last) + ")";
    return text;
  }
  void check(ncclResult_t result, const char* call) {
    if (result != ncclSuccess && result != ncclInProgress) fail(std::string(call) + " failed: " + error_text(result));
  }
  // A non-blocking call returns before it is done: poll until NCCL settles, or the deadline.
  void settle(const std::string& what) {
    const auto deadline = Clock::now() + timeout_;
    ncclResult_t state = ncclInProgress;
    while (nccl_.ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state == ncclInProgress) {
      if (Clock::now() > deadline) {
        fail("NCCL did not finish " + what + " within " + std::to_string(static_cast<double>(timeout_.count()) / 1000.0) + " s");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    if (state != ncclSuccess) fail("NCCL failed " + what + ": " + error_text(state));
  }
  [[noreturn]] void fail(const std::string& message) {
    if (comm_ != nullptr && !aborted_) nccl_.ncclCommAbort(comm_);
    aborted_ = true;
    throw CollectiveFailed(message);
  }

  DeviceContext& context_;
  const Nccl& nccl_;
  std::chrono::milliseconds timeout_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  bool pending_ = false, aborted_ = false;
};

}  // namespace

std::unique_ptr<backend::DeviceCollectives> connect_nccl(DeviceContext& context,
                                                         const backend::CollectivesRendezvous& rendezvous) {
  return std::make_unique<NcclCollectives>(context, rendezvous);
}

}  // namespace mpx::cuda
