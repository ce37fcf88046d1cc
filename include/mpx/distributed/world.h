// Who this process is in a data-parallel job, read from the launcher's environment: OpenMPI's mpirun
// (OMPI_COMM_WORLD_*), Slurm's srun or another PMI launcher (PMI_RANK / PMI_SIZE), or torchrun (RANK,
// WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without a launcher the world is one process.
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include "mpx/core/error.h"

namespace mpx::distributed {

struct WorldInfo {
  int rank = 0, size = 1, local_rank = 0;
  int local_size = 1;  // ranks on this host (OMPI_COMM_WORLD_LOCAL_SIZE, LOCAL_WORLD_SIZE, SLURM_NTASKS_PER_NODE)
  std::string launcher = "none";  // "mpirun", "pmi", "torchrun" or "none"
  // Where rank 0 keeps the rendezvous (MASTER_ADDR / MASTER_PORT; one host: the loopback).
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;

  bool distributed() const { return size > 1; }
};

// Reads the variables through `getenv` (std::getenv unless a test passes its own). Throws InvalidArgument
// naming the variable when one is malformed or the rank is outside the world.
WorldInfo world_from_environment(const std::function<const char*(const char*)>& getenv = {});

// The GPU a rank trains on: its local rank's (as torchrun's LOCAL_RANK), one per rank since NCCL cannot
// have two ranks on one device. Throws InvalidArgument saying how many ranks to start when the host has
// more local ranks than `devices`.
int device_for_rank(const WorldInfo& world, int devices);

// A collective did not complete: a rank died, stopped, or never arrived. The message names the missing
// rank (missing_rank(), -1 when none could be named) and what was going on.
class CommunicationError : public Error {
 public:
  CommunicationError(const std::string& message, int missing_rank) : Error(message), missing_rank_(missing_rank) {}
  int missing_rank() const { return missing_rank_; }

 private:
  int missing_rank_;
};

}  // namespace mpx::distributed
