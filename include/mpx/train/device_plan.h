// How the CUDA engine runs a Sequential model: one device op per layer, with the shapes, dtypes and
// fusions it will use. Pure planning (no device needed), so the mapping is tested on any machine; the
// engine (src/train/device_engine.cpp) allocates from this plan and launches the kernels.
#pragma once

#include <cstdint>
#include <vector>

#include "mpx/backend/cpu_backend.h"
#include "mpx/backend/cuda_kernels.h"
#include "mpx/nn/model.h"

namespace mpx::train {

enum class DeviceOpKind : std::uint8_t { conv, batch_norm, max_pool, flatten, linear, relu, dropout };
const char* name(DeviceOpKind kind);

struct DeviceOpPlan {
  DeviceOpKind kind{};
  nn::Layer* layer = nullptr;
  std::int64_t in_features = 0, out_features = 0;  // per sample
  DType out_dtype = DType::f32;                    // the compute dtype; FP32 for the logits
  backend::ConvShape conv;                         // conv: for the planned batch; pool: batch, channels, h, w
  std::int64_t pool = 0;                           // max_pool: window (and stride)
  cuda::kernels::BatchNormShape norm;              // batch_norm: rows per sample in norm.rows
  cuda::kernels::DropoutArgs dropout;
  bool relu_after = false;         // linear: the next ReLU runs as its cuBLASLt epilogue
  bool passes_through = false;     // flatten, the fused ReLU: no output buffer of their own
  bool input_gradient = true;      // false up to the first layer with parameters (its input is the batch)
};

// Throws NotAvailable naming a layer the CUDA engine lacks (or a ReLU it cannot fuse), InvalidArgument
// when a layer does not fit its input. Input: [batch, height, width, channels] images.
std::vector<DeviceOpPlan> plan_device_ops(nn::Sequential& model, DType compute, std::int64_t batch, std::int64_t height,
                                          std::int64_t width, std::int64_t channels, std::uint64_t seed);

}  // namespace mpx::train
