// GPT on the GPU: GPT-2 124M's forward and backward on the CUDA backend follow the CPU backend's on the
// same weights and tokens (logits, loss and parameter gradients within BF16 tolerance in bf16-mixed, FP32
// reduction-order tolerance in 32-true); gpt-tiny's first training steps on the GPU follow the CPU's losses.
// Label `gpu`: skips without a device (and the training case without the default corpus).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "../support/gpu.h"
#include "mpx/backend/backend.h"
#include "mpx/io/token_corpus.h"
#include "mpx/nn/gpt.h"
#include "mpx/nn/layers.h"
#include "mpx/numeric/convert.h"
#include "mpx/train/trainer.h"

namespace mpx {
namespace {

std::vector<float> host_floats(nn::Context& ctx, const Tensor& t) {
  std::vector<std::uint8_t> bytes(t.bytes());
  ctx.backend().download(t, bytes.data());
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  if (t.dtype() == DType::f32) {
    std::memcpy(out.data(), bytes.data(), bytes.size());
  } else {
    numeric::convert(bytes.data(), t.dtype(), out.data(), DType::f32, out.size());
  }
  return out;
}

struct Pass {
  float loss = 0;
  std::vector<float> logits;
  std::map<std::string, std::vector<float>> grads;  // the parameters the check reads
};

// One forward and backward of `config` (seeded weights) on `ctx`'s backend over fixed tokens.
Pass run_gpt(const nn::GptConfig& config, nn::Context& ctx, std::int64_t batch, std::int64_t tokens) {
  nn::Sequential model = nn::make_gpt(config, 11);
  const nn::TensorSpec out = model.plan({{batch, tokens}, DType::i32}, ctx);
  nn::SoftmaxCrossEntropy loss;
  loss.plan(out, DType::i32, ctx);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(batch * tokens)), targets(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<std::int32_t>((i * 7919 + 13) % static_cast<std::size_t>(config.vocab_size));
    targets[i] = static_cast<std::int32_t>((i * 104729 + 1) % static_cast<std::size_t>(config.vocab_size));
  }
  Tensor x = ctx.allocate({batch, tokens}, DType::i32, MemoryCategory::activations);
  ctx.backend().upload(x, ids.data());
  Pass p;
  const Tensor logits = model.forward(x, ctx, true);
  p.loss = loss.forward(logits, targets.data());
  model.backward(loss.backward(1.0f), ctx);
  p.logits = host_floats(ctx, logits);
  for (nn::Parameter* param : model.parameters()) {
    for (const char* name : {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight",
                             "transformer.h.11.mlp.c_proj.weight", "transformer.ln_f.weight"}) {
      if (param->name == name) p.grads[name] = host_floats(ctx, param->grad);
    }
  }
  return p;
}

double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double scale = 1e-12, worst = 0;
  for (float v : a) scale = std::max(scale, static_cast<double>(std::fabs(v)));
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (!(d <= worst)) worst = d;
  }
  return worst / scale;
}

TEST(CudaGpt, Gpt2ForwardAndBackwardFollowTheCpuOnTheSameWeights) {
  MPX_SKIP_WITHOUT_GPU();
  const nn::GptConfig gpt2 = *nn::gpt_preset("gpt2");
  for (const char* precision : {"32-true", "bf16-mixed"}) {
    nn::Context cpu, gpu(backend::make_backend(Device::cuda));
    cpu.policy = gpu.policy = amp::PrecisionPolicy::preset(precision);
    const Pass reference = run_gpt(gpt2, cpu, 1, 64), device = run_gpt(gpt2, gpu, 1, 64);
    // 32-true: FP32 sums in another order through twelve blocks; bf16-mixed: BF16 operands (8 bits) and
    // differently rounded activations.
    const bool fp32 = std::string(precision) == "32-true";
    const double tol = fp32 ? 1e-4 : 3e-2;
    EXPECT_NEAR(device.loss, reference.loss, (fp32 ? 1e-5 : 1e-2) * reference.loss) << precision;
    EXPECT_LE(relative_difference(reference.logits, device.logits), tol) << precision << ": logits";
    ASSERT_EQ(reference.grads.size(), 5u);
    for (const auto& [name, grad] : reference.grads) {
      EXPECT_LE(relative_difference(grad, device.grads.at(name)), fp32 ? 1e-3 : 1e-1) << precision << ": " << name;
    }
  }
}

const io::TokenCorpus* corpus() {
  static const std::optional<io::TokenCorpus> c = []() -> std::optional<io::TokenCorpus> {
    const std::string path = std::string(MPX_SOURCE_DIR) + "/" + io::kDefaultTextCorpus;
    if (!std::filesystem::exists(path)) return std::nullopt;
    return io::read_text_corpus(path);
  }();
  return c ? &*c : nullptr;
}

TEST(CudaGpt, GptTinyTrainsOnTheGpuAsOnTheCpu) {
  MPX_SKIP_WITHOUT_GPU();
  if (!corpus()) GTEST_SKIP() << io::kDefaultTextCorpus << " is missing: scripts/setup.sh writes it";
  for (const char* precision : {"32-true", "bf16-mixed", "16-mixed"}) {
    std::map<std::string, std::vector<float>> losses;
    for (const char* device : {"cpu", "cuda"}) {
      train::TrainConfig c;
      c.model = "gpt-tiny";
      c.precision = precision;
      c.device = train::parse_device(device);
      c.batch_size = 12;
      c.lr = 1e-3f;
      c.epochs = 100;
      c.max_steps = 20;
      c.numerics_every = 0;
      auto windows = [](const auto& tokens, std::int64_t limit) {
        return std::make_unique<train::TokenWindows>(tokens, 64, "the corpus", limit);
      };
      train::Trainer trainer(c, windows(corpus()->train, 0), windows(corpus()->validation, 24));
      train::Callbacks callbacks;
      callbacks.on_step = [&](const train::StepReport& s) { losses[device].push_back(s.loss); };
      const train::TrainResult r = trainer.run(callbacks);
      EXPECT_EQ(r.skipped_steps, 0) << precision << " on " << device;
    }
    ASSERT_EQ(losses["cuda"].size(), losses["cpu"].size()) << precision;
    for (std::size_t s = 0; s < losses["cpu"].size(); ++s) {
      const float reference = losses["cpu"][s];
      EXPECT_NEAR(losses["cuda"][s], reference, (std::string(precision) == "32-true" ? 1e-4 : 2e-2) * reference)
          << precision << " step " << s + 1;
    }
  }
}

}  // namespace
}  // namespace mpx
