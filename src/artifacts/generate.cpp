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

// Prompt positions fed in one forward pass (rows of the planned model): one pass of products over 64 rows
// instead of 64 passes of one row each. Decoding feeds one row at a time.
constexpr std::int64_t kPrefillRows = 64;

struct Generator::Impl {
  explicit Impl(Device device) : ctx(backend::make_backend(device)) {}
  nn::GptConfig config;
  bool byte_level = false;
  nn::Context ctx;
  nn::Sequential model;
  Tensor input;                  // i32 [prefill rows, 1] on the backend: row i is position `position` + i
  std::vector<float> logits;     // FP32 host copy of the last position's
  std::int64_t position = 0;     // positions in the cache

  // Feeds `tokens` at the next positions (in passes of up to the planned rows); the logits after the last
  // land in `logits`, and after each one go to `each` when given.
  void feed(const std::vector<std::int32_t>& tokens, const std::function<void(const std::vector<float>&)>& each = {}) {
    const std::int64_t rows_planned = input.dim(0);
    for (std::size_t at = 0; at < tokens.size();) {
      const std::int64_t rows = std::min<std::int64_t>(rows_planned, static_cast<std::int64_t>(tokens.size() - at));
      const Tensor in = input.first_rows(rows);
      ctx.backend().upload(in, tokens.data() + at);
      ctx.position_offset = position;
      const Tensor y = backend::host_view(ctx.backend(), model.forward(in, ctx, false));
      const auto vocabulary = static_cast<std::size_t>(y.numel() / rows);
      logits.resize(vocabulary);
      for (std::int64_t r = 0; r < rows; ++r) {
        if (r + 1 < rows && !each) continue;  // only the last row's logits are needed
        const Tensor row = y.rows(r, 1);
        if (row.dtype() == DType::f32) {
          std::copy_n(row.data_as<float>(), vocabulary, logits.data());
        } else {
          numeric::convert(row.data(), row.dtype(), logits.data(), DType::f32, vocabulary);
        }
        if (each) each(logits);
      }
      position += rows;
      at += static_cast<std::size_t>(rows);
    }
  }
  void step(std::int32_t token) { feed({token}); }
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
  const std::int64_t rows = std::min(kPrefillRows, impl_->config.block_size);
  impl_->ctx.rows_are_positions = true;
  impl_->model.plan({{rows, 1}, DType::i32}, impl_->ctx);
  train::load_model(path, impl_->model, impl_->ctx);
  impl_->input = impl_->ctx.allocate({rows, 1}, DType::i32, MemoryCategory::activations);
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
  m.feed(prompt, on_prompt_logits);
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
      m.feed(std::vector<std::int32_t>(recent.begin(), recent.end() - 1));
    }
    m.step(token);
  }
  return g;
}

}  // namespace mpx::artifacts
