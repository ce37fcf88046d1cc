// Every layer, forward and backward, through every available backend against the CPU backend (ggml's
// test-backend-ops pattern): the same layer built twice from the same seed, fed the same values (exact in
// FP32, FP16 and BF16, so every backend's storage holds them as they are), its output, input gradient and
// parameter gradients compared. Without a GPU the second backend is the CPU one with BF16 widened to FP32
// (the path AVX2-only CPUs take), and the test says so.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "mpx/backend/backend.h"
#include "mpx/backend/cpu_backend.h"
#include "mpx/backend/cuda.h"
#include "mpx/core/error.h"
#include "mpx/nn/layers.h"
#include "mpx/nn/model.h"
#include "mpx/numeric/convert.h"

namespace mpx {
namespace {

using nn::Context;
using nn::Layer;

struct LayerCase {
  std::string label;
  std::function<std::unique_ptr<Layer>()> make;
  Shape input;
  bool token_ids = false;
};

std::vector<LayerCase> layer_cases() {
  using std::make_unique;
  return {
      {"linear", [] { return make_unique<nn::Linear>("fc", 24, 16, 3); }, {6, 24}},
      {"conv2d", [] { return make_unique<nn::Conv2d>("conv", 3, 8, 3, 1, 1, 4); }, {2, 6, 6, 3}},
      {"conv2d_strided", [] { return make_unique<nn::Conv2d>("conv", 4, 6, 3, 2, 0, 5); }, {2, 7, 7, 4}},
      {"batch_norm2d", [] { return make_unique<nn::BatchNorm2d>("bn", 8); }, {4, 5, 5, 8}},
      {"batch_norm2d_relu", [] { return make_unique<nn::BatchNorm2d>("bn", 8, 0.1f, 1e-5f, true); }, {4, 5, 5, 8}},
      {"relu", [] { return make_unique<nn::ReLU>("relu"); }, {6, 40}},
      {"max_pool2d", [] { return make_unique<nn::MaxPool2d>("pool", 2); }, {2, 6, 6, 4}},
      {"max_pool2d_uncovered", [] { return make_unique<nn::MaxPool2d>("pool", 3); }, {2, 7, 7, 3}},
      {"dropout", [] { return make_unique<nn::Dropout>("dropout", 0.25f, 1); }, {6, 40}},
      {"flatten", [] { return make_unique<nn::Flatten>("flatten"); }, {2, 3, 3, 4}},
      {"gelu", [] { return make_unique<nn::GELU>("gelu"); }, {6, 40}},
      {"gelu_tanh", [] { return make_unique<nn::GELU>("gelu", true); }, {6, 40}},
      {"layer_norm", [] { return make_unique<nn::LayerNorm>("ln", 32); }, {6, 32}},
      {"residual", [] {
         auto body = std::make_unique<nn::Sequential>("block");
         body->add(std::make_unique<nn::Linear>("block.fc", 16, 16, 6));
         body->add(std::make_unique<nn::GELU>("block.gelu"));
         return std::unique_ptr<Layer>(std::make_unique<nn::Residual>("block", std::move(body)));
       }, {5, 16}},
      {"position_embedding", [] { return make_unique<nn::PositionEmbedding>("wpe", 12, 16, 8); }, {2, 9, 16}},
      // Attention: heads of 8 over 5 positions; heads of 32 over 45 (a whole 32-row tile and a leftover).
      {"causal_self_attention", [] { return make_unique<nn::CausalSelfAttention>("attn", 16, 2); }, {2, 5, 48}},
      {"causal_self_attention_tiles", [] { return make_unique<nn::CausalSelfAttention>("attn", 64, 2); }, {1, 45, 192}},
      {"embedding", [] { return make_unique<nn::Embedding>("wte", 50, 16, 7); }, {3, 5}, true},
      {"tied_embedding_and_lm_head", [] {
         auto model = std::make_unique<nn::Sequential>();
         auto wte = std::make_unique<nn::Embedding>("wte", 50, 16, 7);
         nn::Parameter& table = wte->table();
         model->add(std::move(wte));
         model->add(nn::Linear::tied("lm_head", table, 16, 50));
         return std::unique_ptr<Layer>(std::move(model));
       }, {3, 5}, true},
  };
}

// Values on a 1/64 grid in [-2, 2): exact in FP32, FP16 and BF16.
std::vector<float> grid_values(std::int64_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> step(-128, 127);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = static_cast<float>(step(rng)) / 64.0f;
  return v;
}

Tensor device_tensor(Context& ctx, const Shape& shape, DType dtype, const std::vector<float>& values) {
  Tensor t = ctx.allocate(shape, dtype, MemoryCategory::activations);
  std::vector<std::uint8_t> bytes(t.bytes());
  if (dtype == DType::f32) {
    std::memcpy(bytes.data(), values.data(), bytes.size());
  } else {
    numeric::convert(values.data(), DType::f32, bytes.data(), dtype, values.size());
  }
  ctx.backend().upload(t, bytes.data());
  return t;
}

std::vector<double> host_values(Context& ctx, const Tensor& t) {
  if (!t.defined()) return {};
  std::vector<std::uint8_t> bytes(t.bytes());
  ctx.backend().download(t, bytes.data());
  std::vector<float> f(static_cast<std::size_t>(t.numel()));
  if (t.dtype() == DType::f32) {
    std::memcpy(f.data(), bytes.data(), bytes.size());
  } else {
    numeric::convert(bytes.data(), t.dtype(), f.data(), DType::f32, f.size());
  }
  return {f.begin(), f.end()};
}

struct Results {
  std::vector<std::pair<std::string, std::vector<double>>> tensors;  // output, input gradient, parameter gradients
};

Results run_layer(const LayerCase& c, Context& ctx) {
  ctx.seed = 5;
  ctx.step = 3;
  std::unique_ptr<Layer> layer = c.make();
  const DType input_dtype = c.token_ids ? DType::i32 : ctx.activation_dtype();
  const nn::TensorSpec out = layer->plan({c.input, input_dtype}, ctx);
  Tensor x;
  if (c.token_ids) {
    x = ctx.allocate(c.input, DType::i32, MemoryCategory::activations);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(numel(c.input)));
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>((i * 7 + 3) % 50);
    ctx.backend().upload(x, ids.data());
  } else {
    x = device_tensor(ctx, c.input, input_dtype, grid_values(numel(c.input), 11));
  }
  Results r;
  const Tensor y = layer->forward(x, ctx, /*training=*/true);
  r.tensors.emplace_back("output", host_values(ctx, y));
  const Tensor dy = device_tensor(ctx, out.shape, out.dtype, grid_values(numel(out.shape), 12));
  const Tensor dx = layer->backward(dy, ctx);
  r.tensors.emplace_back("input gradient", host_values(ctx, dx));
  for (nn::Parameter* p : layer->parameters()) r.tensors.emplace_back(p->name + " gradient", host_values(ctx, p->grad));
  ctx.backend().synchronize();
  return r;
}

// How far two backends may differ, relative to the largest reference magnitude: summation order in FP32
// (and, on a GPU, FP16/BF16 outputs rounded from differently ordered FP32 sums).
double tolerance(const std::string& preset) {
  if (preset == "32-true") return 1e-5;
  if (preset == "16-mixed") return 2e-3;
  return 1e-2;
}

void expect_close(const Results& ref, const Results& got, double tol, const std::string& what) {
  ASSERT_EQ(ref.tensors.size(), got.tensors.size()) << what;
  for (std::size_t t = 0; t < ref.tensors.size(); ++t) {
    const auto& [name, a] = ref.tensors[t];
    const auto& b = got.tensors[t].second;
    ASSERT_EQ(a.size(), b.size()) << what << ": " << name;
    double scale = 1e-6, worst = 0;
    std::size_t at = 0;
    for (double v : a) scale = std::max(scale, std::abs(v));
    for (std::size_t i = 0; i < a.size(); ++i) {
      const double d = std::abs(a[i] - b[i]);
      if (!(d <= worst)) worst = d, at = i;  // a NaN difference is the worst
    }
    EXPECT_LE(worst, tol * scale) << what << ": " << name << " element " << at << ": cpu " << a[at] << ", other "
                                  << b[at] << " (scale " << scale << ")";
  }
}

struct OtherBackend {
  std::string label;
  std::function<std::unique_ptr<backend::Backend>()> make;
};

std::vector<OtherBackend> other_backends() {
  std::vector<OtherBackend> out;
  out.push_back({"cpu (bf16 widened)", [] {
                   auto cpu = std::make_unique<backend::CpuBackend>();
                   cpu->force_bf16_widening();
                   return std::unique_ptr<backend::Backend>(std::move(cpu));
                 }});
  if (!cuda::devices().empty()) {
    out.push_back({"cuda", [] { return backend::make_backend(Device::cuda); }});
  } else {
    std::cout << "[ NOTE     ] " << cuda::no_device_reason()
              << ": every layer ran on the CPU backend only, against its widened-BF16 path\n";
  }
  return out;
}

TEST(BackendOps, EveryLayerMatchesTheCpuBackendOnEveryAvailableBackend) {
  int compared = 0;
  for (const OtherBackend& other : other_backends()) {
    for (const char* preset : {"32-true", "bf16-mixed", "16-mixed"}) {
      for (const LayerCase& c : layer_cases()) {
        const std::string what = c.label + " on " + other.label + " in " + preset;
        Context reference;
        reference.policy = amp::PrecisionPolicy::preset(preset);
        Context ctx(other.make());
        ctx.policy = reference.policy;
        const DType stored = ctx.activation_dtype();
        if (c.token_ids && !ctx.backend().supports(backend::Op::embedding, stored)) {
          // Refused before the first step, naming op, dtype and device.
          try {
            run_layer(c, ctx);
            ADD_FAILURE() << what << ": an unsupported op ran";
          } catch (const NotAvailable& e) {
            const std::string message = e.what();
            EXPECT_NE(message.find("embedding"), std::string::npos) << message;
            EXPECT_NE(message.find(ctx.backend().device_name()), std::string::npos) << message;
          }
          continue;
        }
        expect_close(run_layer(c, reference), run_layer(c, ctx), tolerance(preset), what);
        ++compared;
      }
    }
  }
  EXPECT_GT(compared, 0);
}

TEST(BackendOps, AnUnsupportedOpIsRefusedNamingOpDtypeAndDevice) {
  Context ctx;
  nn::ReLU relu("relu7");
  try {
    relu.plan({{4, 4}, DType::f8_e4m3}, ctx);
    FAIL() << "planned a ReLU on f8_e4m3 activations";
  } catch (const NotAvailable& e) {
    const std::string message = e.what();
    for (const char* part : {"relu7", "relu", "f8_e4m3", "cpu"}) {
      EXPECT_NE(message.find(part), std::string::npos) << part << " missing in: " << message;
    }
  }
}

}  // namespace
}  // namespace mpx
