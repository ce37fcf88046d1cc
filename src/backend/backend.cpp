#include "mpx/backend/backend.h"

#include "cuda_factory.h"
#include "mpx/backend/cpu_backend.h"
#include "mpx/core/error.h"

namespace mpx::backend {

const char* name(Op op) {
  switch (op) {
    case Op::matmul: return "matmul";
    case Op::conv2d: return "conv2d";
    case Op::batch_norm: return "batch_norm";
    case Op::layer_norm: return "layer_norm";
    case Op::max_pool: return "max_pool";
    case Op::relu: return "relu";
    case Op::gelu: return "gelu";
    case Op::dropout: return "dropout";
    case Op::embedding: return "embedding";
    case Op::cross_entropy: return "cross_entropy";
    case Op::add: return "add";
    case Op::convert: return "convert";
    case Op::column_sums: return "column_sums";
    case Op::attention: return "attention";
  }
  return "unknown op";
}

void Backend::require(Op op, DType dtype, const std::string& layer) const {
  if (supports(op, dtype)) return;
  throw NotAvailable("layer " + layer + ": the " + device_name() + " backend has no " + name(op) + " for " +
                     std::string(mpx::name(dtype)) + " data (use another --device or --precision)");
}

Tensor host_view(Backend& backend, const Tensor& t) {
  if (!t.defined() || t.device() == Device::cpu) return t;
  Tensor host = Tensor::empty(t.shape(), t.dtype(), MemoryCategory::workspace, nullptr);
  backend.download(t, host.data());
  return host;
}

std::unique_ptr<Backend> make_backend(Device device, int index) {
  if (device == Device::cpu) return std::make_unique<CpuBackend>();
  return make_cuda_backend(index);
}

}  // namespace mpx::backend
