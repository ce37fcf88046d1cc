// `mpx generate RUN|FILE --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K] [--seed S]
// [--precision fp32|bf16|fp16]`: samples a continuation from a GPT model file with a KV cache. A
// byte-level model (mpx train --text) prints text; a GPT-2-vocabulary one takes --prompt-tokens and prints
// token ids (mpx has no GPT-2 BPE tokenizer). --logits-out writes the prompt's logits (f32 [T, vocabulary]).
#include <fmt/format.h>

#include <cstdio>
#include <sstream>

#include "commands.h"
#include "validators.h"
#include "mpx/artifacts/generate.h"
#include "mpx/train/run/model_file.h"
#include "mpx/core/error.h"
#include "mpx/io/safetensors.h"

namespace mpx::cli {

namespace {

struct GenerateOptions {
  std::string model, prompt, prompt_tokens, precision = "fp32", logits_out, device = "cpu";
  std::int64_t heads = 0;
  artifacts::SamplingOptions sampling;
};

std::vector<std::int32_t> parse_token_list(const std::string& text) {
  std::vector<std::int32_t> ids;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      std::size_t used = 0;
      const long long id = std::stoll(item, &used);
      if (used != item.size() || id < 0 || id > 0x7fffffff) throw std::invalid_argument(item);
      ids.push_back(static_cast<std::int32_t>(id));
    } catch (const std::exception&) {
      throw InvalidArgument("--prompt-tokens takes comma-separated token ids, got '" + item + "'");
    }
  }
  return ids;
}

void run_generate(const GenerateOptions& o) {
  const std::string path = train::model_file_in(o.model);
  artifacts::Generator generator(path, o.precision, o.heads, o.device == "cuda" ? Device::cuda : Device::cpu);
  std::vector<std::int32_t> prompt;
  if (!o.prompt_tokens.empty()) {
    prompt = parse_token_list(o.prompt_tokens);
  } else if (generator.byte_level()) {
    for (const char c : o.prompt) prompt.push_back(static_cast<unsigned char>(c));
  } else if (!o.prompt.empty()) {
    throw InvalidArgument(path + " is a GPT-2-vocabulary model and mpx has no GPT-2 tokenizer: give the prompt as "
                          "--prompt-tokens ID,ID,... (and read the output as token ids)");
  }
  std::vector<float> prompt_logits;
  const bool text = generator.byte_level();
  if (text) {
    std::fwrite(o.prompt.data(), 1, o.prompt.size(), stdout);
  }
  const artifacts::Generation g = generator.generate(
      prompt, o.sampling,
      [&](std::int32_t token) {
        if (text) {
          std::fputc(token, stdout);
        } else {
          fmt::print("{} ", token);
        }
        std::fflush(stdout);
      },
      [&](const std::vector<float>& logits) {
        if (!o.logits_out.empty()) prompt_logits.insert(prompt_logits.end(), logits.begin(), logits.end());
      });
  std::fputc('\n', stdout);
  std::fflush(stdout);
  for (const std::string& notice : g.notices) fmt::print(stderr, "note: {}\n", notice);
  if (!o.logits_out.empty()) {
    const auto rows = static_cast<std::int64_t>(g.prompt.size());
    io::write_safetensors(o.logits_out,
                          {{"logits", DType::f32, {rows, generator.config().vocab_size}, prompt_logits.data()},
                           {"prompt", DType::i32, {rows}, g.prompt.data()}},
                          {{"mpx.source_file", path}, {"mpx.precision", o.precision}});
    fmt::print(stderr, "prompt logits: {}\n", o.logits_out);
  }
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "Sample a continuation from a GPT model file (KV cache: one position per token)");
  cmd->add_option("model", o->model, "A run directory or a model file (mpx's, or a Hugging Face GPT-2 safetensors file)")
      ->required();
  CLI::Option* text = cmd->add_option("--prompt", o->prompt, "Text to continue (byte-level models)");
  cmd->add_option("--prompt-tokens", o->prompt_tokens, "Token ids to continue, comma-separated (any GPT model)")
      ->check(non_empty())
      ->excludes(text);
  cmd->add_option("--max-new-tokens", o->sampling.max_new_tokens, "Tokens to sample")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1} << 30))
      ->capture_default_str();
  cmd->add_option("--temperature", o->sampling.temperature, "Softmax temperature (0: always the most likely token)")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  cmd->add_option("--top-k", o->sampling.top_k, "Sample among the K most likely tokens only (0: all)")
      ->check(non_negative())
      ->capture_default_str();
  cmd->add_option("--seed", o->sampling.seed, "Sampling seed")->check(unsigned_64())->capture_default_str();
  cmd->add_option("--precision", o->precision, "fp32, bf16 or fp16 (weights and products; FP32 accumulation and softmax)")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}))
      ->capture_default_str();
  cmd->add_option("--n-head", o->heads, "Attention heads of a file without mpx's metadata (default: width / 64, as GPT-2)")
      ->check(positive());
  cmd->add_option("--device", o->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  cmd->add_option("--logits-out", o->logits_out, "Write the logits after each prompt position (f32) to this safetensors file");
  cmd->callback([o] { run_generate(*o); });
}

}  // namespace mpx::cli
