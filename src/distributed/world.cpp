#include "mpx/distributed/world.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>

namespace mpx::distributed {

namespace {
int integer(const char* name, const char* text, int low, int high) {
  int value = 0;
  const char* end = text + std::char_traits<char>::length(text);
  const auto [ptr, ec] = std::from_chars(text, end, value);
  if (ec != std::errc() || ptr != end || value < low || value > high) {
    throw InvalidArgument(std::string(name) + "=" + text + " is not a whole number in [" + std::to_string(low) + ", " +
                          std::to_string(high) + "]; check how the job was launched");
  }
  return value;
}
}  // namespace

WorldInfo world_from_environment(const std::function<const char*(const char*)>& getenv_fn) {
  const auto env = [&](const char* name) -> const char* {
    const char* v = getenv_fn ? getenv_fn(name) : std::getenv(name);
    return v && *v ? v : nullptr;
  };
  WorldInfo w;
  // The launcher's own names first: mpirun sets OMPI_*, srun PMI_*, torchrun RANK/WORLD_SIZE.
  const struct {
    const char *rank, *size, *local, *launcher;
  } launchers[] = {{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "mpirun"},
                   {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "pmi"},
                   {"RANK", "WORLD_SIZE", "LOCAL_RANK", "torchrun"}};
  for (const auto& l : launchers) {
    if (!env(l.size)) continue;
    w.size = integer(l.size, env(l.size), 1, 1 << 16);
    if (!env(l.rank)) throw InvalidArgument(std::string(l.size) + " is set but " + l.rank + " is not");
    w.rank = integer(l.rank, env(l.rank), 0, w.size - 1);
    w.local_rank = env(l.local) ? integer(l.local, env(l.local), 0, w.size - 1) : 0;
    w.launcher = l.launcher;
    break;
  }
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"}) {
    if (env(var) && w.size > 1) {
      w.local_size = integer(var, env(var), 1, w.size);
      break;
    }
  }
  if (const char* addr = env("MASTER_ADDR")) w.master_addr = addr;
  if (const char* port = env("MASTER_PORT")) w.master_port = integer("MASTER_PORT", port, 1, 65535);
  return w;
}

int device_for_rank(const WorldInfo& world, int devices) {
  if (world.local_size > devices || world.local_rank >= devices) {
    const int ranks = std::max(world.local_size, world.local_rank + 1);
    const std::string gpus = std::to_string(devices) + (devices == 1 ? " CUDA device" : " CUDA devices");
    throw InvalidArgument(std::to_string(ranks) + " ranks run on this host but it has " + gpus +
                          ": data parallel on CUDA needs one GPU per rank (NCCL); start at most " +
                          std::to_string(devices) + " per host, or train on --device cpu");
  }
  return world.local_rank;
}

}  // namespace mpx::distributed
