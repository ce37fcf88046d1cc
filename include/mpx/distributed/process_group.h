// The ranks of a data-parallel job, connected: Gloo's TCP transport for the collectives (every one with
// a timeout), a rendezvous store served by rank 0, and a heartbeat each rank keeps in it, so that when a
// collective fails or times out every survivor can name the rank that died or stopped. Collectives are
// issued in the same order on every rank, from one thread at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mpx/distributed/world.h"
#include "mpx/tensor/tensor.h"

namespace mpx::distributed {

class ProcessGroup {
 public:
  struct Options {
    int rank = 0, size = 1;
    std::string master_addr = "127.0.0.1";
    int master_port = 29500;  // rank 0 with 0: any free port (tests); port() tells which
    std::chrono::milliseconds timeout{30000};
  };
  // Rendezvous and a full mesh of connections. Throws CommunicationError within the timeout when a rank
  // does not arrive (naming it) or rank 0 cannot be reached.
  explicit ProcessGroup(const Options& options);
  ~ProcessGroup();  // waits (up to the timeout) for every rank to finish with rank 0's rendezvous
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const;
  int size() const;
  int port() const;  // the rendezvous port
  std::chrono::milliseconds timeout() const;

  void allreduce_sum(std::span<float> values);
  void allreduce_sum(std::span<double> values);
  void allreduce_max(std::span<float> values);
  // 16-bit values (f16 or bf16 bits), summed pair by pair in FP32 and rounded back to `wire` each time, as
  // a ring of 16-bit buffers does.
  void allreduce_sum_16(std::span<std::uint16_t> values, DType wire);
  // Every rank's `mine`, indexed by rank (through the rendezvous; for settings, not for tensors). A key
  // may be used again: each use exchanges afresh.
  std::vector<std::string> exchange(const std::string& key, const std::string& mine);
  // Rank 0's `value` on every rank (each use of a key afresh).
  std::string broadcast(const std::string& key, const std::string& value);
  void barrier();

  // After a failed collective: the rank that stopped answering (the oldest heartbeat, or rank 0 when its
  // rendezvous is gone), or -1.
  int missing_rank();
  // Throws CommunicationError for a failure `e` during `during` (here or in a collective of a device's
  // own), naming the rank that stopped answering.
  [[noreturn]] void fail(const std::string& during, const std::exception& e);

 private:
  struct Impl;
  template <typename T>
  void reduce(std::span<T> values, void (*add)(void*, const void*, const void*, std::size_t), const char* what);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpx::distributed
