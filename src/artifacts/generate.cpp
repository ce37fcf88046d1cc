#include "mpx/artifacts/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "mpx/amp/precision_policy.h"
#include "mpx/backend/backend.h"
#include "mpx/core/error.h"
#include "mpx/io/safetensors.h"
#include "mpx/numeric/convert.h"
#include "mpx/train/run/model_file.h"

namespace mpx::artifacts {

namespace {
std::string preset_for(const std::string& precision) {
  if (precision == "fp32") return "32-true";
  if (precision == "bf16") return "bf16-true";
  if (precision == "fp16") return "16-true";
  throw InvalidArgument("--precision must be fp32, bf16 or fp16, got '" + precision + "'");
}
}  // namespace

struct Generator::Impl {
  explicit Impl(Device device) : ctx(backend::make_backend(device)) {}
  nn::GptConfig config;
  bool byte_level = false;
  nn::Context ctx;
  nn::Sequential model;
  Tensor input;                  // i32 [1, 1] on the backend
  std::vector<float> logits;     // FP32 host copy of the last position's
  std::int64_t position = 0;     // positions in the cache

  // Feeds `token` at the next position; the logits after it land in `logits`.
  void step(std::int32_t token) {
    ctx.backend().upload(input, &token);
    ctx.position_offset = position;
    const Tensor y = backend::host_view(ctx.backend(), model.forward(input, ctx, false));
    logits.resize(static_cast<std::size_t>(y.numel()));
    if (y.dtype() == DType::f32) {
      std::copy_n(y.data_as<float>(), logits.size(), logits.data());
    } else {
      numeric::convert(y.data(), y.dtype(), logits.data(), DType::f32, logits.size());
    }
    ++position;
  }
};

Generator::Generator(const std::string& path, const std::string& precision, std::int64_t heads, Device device)
    : impl_(std::make_unique<Impl>(device)) {
  const std::string preset = preset_for(precision);
  {
    const io::SafetensorsFile file = io::SafetensorsFile::read(path);
    const auto config = train::gpt_config_of(file, path);
    if (!config) throw IoError(path + " holds no GPT model (no transformer.wte/wpe tensors and no mpx.gpt metadata)");
    impl_->config = *config;
    if (heads > 0) {
      if (file.metadata().count(train::kGptKey) && heads != config->n_head) {
        throw InvalidArgument(path + " records " + std::to_string(config->n_head) + " heads; --n-head " +
                              std::to_string(heads) + " contradicts it");
      }
      impl_->config.n_head = heads;
    }
    const auto tokenizer = file.metadata().find("mpx.tokenizer");
    impl_->byte_level = tokenizer != file.metadata().end() ? tokenizer->second == "bytes" : config->vocab_size == 256;
  }
  impl_->ctx.policy = amp::PrecisionPolicy::preset(preset);
  impl_->model = nn::make_gpt(impl_->config, 0);
  nn::visit_layers(impl_->model, [&](nn::Layer& layer) {
    if (auto* attention = dynamic_cast<nn::CausalSelfAttention*>(&layer)) attention->enable_cache(impl_->config.block_size);
  });
  impl_->model.plan({{1, 1}, DType::i32}, impl_->ctx);
  train::load_model(path, impl_->model, impl_->ctx);
  impl_->input = impl_->ctx.allocate({1, 1}, DType::i32, MemoryCategory::activations);
}

Generator::~Generator() = default;
const nn::GptConfig& Generator::config() const { return impl_->config; }
bool Generator::byte_level() const { return impl_->byte_level; }

std::int32_t sample_token(const std::vector<float>& logits, const SamplingOptions& o, double uniform) {
  const auto vocabulary = static_cast<std::int64_t>(logits.size());
  if (!(o.temperature > 0)) {
    return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  std::vector<std::int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::int64_t kept = vocabulary;
  if (o.top_k > 0 && o.top_k < vocabulary) {
    kept = o.top_k;
    std::partial_sort(order.begin(), order.begin() + kept, order.end(),
                      [&](std::int32_t a, std::int32_t b) { return logits[a] > logits[b]; });
  }
  double max = -INFINITY;
  for (std::int64_t i = 0; i < kept; ++i) max = std::max(max, static_cast<double>(logits[order[i]]));
  std::vector<double> weight(static_cast<std::size_t>(kept));
  double total = 0;
  for (std::int64_t i = 0; i < kept; ++i) {
    weight[i] = std::exp((static_cast<double>(logits[order[i]]) - max) / o.temperature);
    total += weight[i];
  }
  double target = uniform * total;
  for (std::int64_t i = 0; i < kept; ++i) {
    target -= weight[i];
    if (target < 0) return order[i];
  }
  return order[kept - 1];
}

Generation Generator::generate(std::vector<std::int32_t> prompt, const SamplingOptions& o,
                               const std::function<void(std::int32_t)>& on_token,
                               const std::function<void(const std::vector<float>&)>& on_prompt_logits,
                               const SamplingLogitsObserver& on_sampling_logits) {
  Impl& m = *impl_;
  Generation g;
  const std::int64_t context = m.config.block_size;
  for (const std::int32_t id : prompt) {
    if (id < 0 || id >= m.config.vocab_size) {
      throw InvalidArgument("prompt token " + std::to_string(id) + " is outside the model's vocabulary of " +
                            std::to_string(m.config.vocab_size));
    }
  }
  if (prompt.empty()) {
    prompt.push_back(m.byte_level ? '\n' : 0);
    g.notices.push_back(std::string("empty prompt: starting from ") + (m.byte_level ? "a newline" : "token 0"));
  }
  if (static_cast<std::int64_t>(prompt.size()) > context) {
    g.notices.push_back("the prompt's " + std::to_string(prompt.size()) + " tokens exceed the model's context of " +
                        std::to_string(context) + ": the last " + std::to_string(context) + " are kept");
    prompt.erase(prompt.begin(), prompt.end() - context);
  }
  g.prompt = prompt;
  m.position = 0;
  for (const std::int32_t id : prompt) {
    m.step(id);
    if (on_prompt_logits) on_prompt_logits(m.logits);
  }
  std::mt19937_64 rng(o.seed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<std::int32_t> recent = prompt;  // what a refilled cache starts from
  bool refilled = false;
  for (std::int64_t n = 0; n < o.max_new_tokens; ++n) {
    if (on_sampling_logits && !on_sampling_logits(m.logits)) {
      g.stopped = true;
      break;
    }
    const std::int32_t token = sample_token(m.logits, o, uniform(rng));
    g.tokens.push_back(token);
    recent.push_back(token);
    if (on_token) on_token(token);
    if (n + 1 == o.max_new_tokens) break;
    if (m.position == context) {
      // The cache is full: start it again from the last half context (each token still costs one position
      // until the next refill).
      if (!refilled) {
        g.notices.push_back("the context of " + std::to_string(context) + " filled up: it restarts from the last " +
                            std::to_string(context / 2) + " tokens whenever it does");
        refilled = true;
      }
      recent.erase(recent.begin(), recent.end() - context / 2);
      m.position = 0;
      for (std::size_t i = 0; i + 1 < recent.size(); ++i) m.step(recent[i]);
    }
    m.step(token);
  }
  return g;
}

}  // namespace mpx::artifacts
