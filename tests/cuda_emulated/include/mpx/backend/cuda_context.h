// Stands in for the real mpx/backend/cuda_context.h in the emulated kernel build (launch.cuh defines it).
#pragma once

namespace mpx::cuda {
class DeviceContext;
}  // namespace mpx::cuda
