#include "mpx/nn/layer.h"

#include "mpx/backend/cpu_backend.h"

namespace mpx::nn {

const char* pass_name(Pass pass) { return pass == Pass::forward ? "forward" : "backward"; }

Context::Context() : backend_(std::make_unique<backend::CpuBackend>()) {}
Context::Context(std::unique_ptr<backend::Backend> backend) : backend_(std::move(backend)) {}

DType Parameter::backend_dtype() const { return working.defined() ? working.dtype() : DType::f32; }

void Parameter::refresh(backend::Backend& backend, bool master_weights) {
  if (compute == DType::f32) return;
  // The working copy is the FP32 value rounded once to the compute dtype (every non-FP32 parameter has one).
  backend.round_for_compute(value, working, compute);
  // *-true: the weights themselves live in the low precision; take the rounded values back (exactly).
  if (!master_weights) backend.convert(working, value);
}

}  // namespace mpx::nn
