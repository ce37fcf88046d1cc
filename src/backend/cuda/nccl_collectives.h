// The CUDA backend's collectives (backend::DeviceCollectives): NCCL on a communication stream of its own,
// each all-reduce ordered after the compute stream's work so far. Plain C++; the emulated engine
// (tests/cuda_emulated) links a stand-in that reduces among ranks as threads.
#pragma once

#include <memory>

#include "mpx/backend/cuda_context.h"
#include "mpx/backend/device_collectives.h"

namespace mpx::cuda {

std::unique_ptr<backend::DeviceCollectives> connect_nccl(DeviceContext& context,
                                                         const backend::CollectivesRendezvous& rendezvous);

}  // namespace mpx::cuda
