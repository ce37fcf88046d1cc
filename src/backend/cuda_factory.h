// The CUDA backend's factory, internal to src/backend: src/backend/cuda/cuda_backend.cpp when CUDA is
// built in, else src/backend/cuda_disabled.cpp (which throws NotAvailable saying why).
#pragma once

#include <memory>

#include "mpx/backend/backend.h"

namespace mpx::backend {

std::unique_ptr<Backend> make_cuda_backend(int device_index);

}  // namespace mpx::backend
