// Serving-test helpers for GPT models: a tiny byte-level GPT saved as `mpx train` saves one, an engine with
// its event log, requests, the HTTP-independent endpoints, and reading one series off /metrics.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "mpx/nn/gpt.h"
#include "mpx/serve/generation_engine.h"
#include "mpx/serve/service.h"
#include "serve_test_support.h"

namespace mpx::serve::test_gpt {

// A byte-level GPT small enough to generate in microseconds, saved as `mpx train --model gpt-...` saves one.
inline const nn::GptConfig kTiny{2, 2, 32, 24, 256, 0.0f};

inline std::string write_served_gpt(std::uint64_t seed, const std::string& tokenizer = "bytes") {
  nn::Context ctx;
  nn::Sequential model = nn::make_gpt(kTiny, seed);
  model.plan({{1, 1}, DType::i32}, ctx);
  const std::string path = test::serve_temp_path("gpt_" + std::to_string(seed) + tokenizer + ".safetensors");
  train::save_model(path, model,
                    {{"mpx.model", "gpt-tiny"}, {train::kGptKey, train::gpt_metadata(kTiny)}, {"mpx.tokenizer", tokenizer}});
  return path;
}

using mpx::test::metric;

struct ServedGpt {
  std::FILE* log = std::tmpfile();
  EventLog events{log};
  std::unique_ptr<GenerationEngine> engine;
  explicit ServedGpt(const ServeOptions& o) : engine(std::make_unique<GenerationEngine>(o, events)) {}
  ~ServedGpt() {
    engine.reset();
    std::fclose(log);
  }
};

inline ServeOptions options_for(const std::string& file) {
  ServeOptions o;
  o.model_or_run = file;
  o.batching.threads = 1;
  return o;
}

inline std::vector<std::int32_t> prompt_of(const std::string& text) { return {text.begin(), text.end()}; }

inline GenerateRequest request(const std::string& id, std::vector<std::int32_t> prompt, std::int64_t tokens,
                        float temperature = 0.0f, std::uint64_t seed = 0) {
  GenerateRequest r;
  r.id = id;
  r.prompt = std::move(prompt);
  r.sampling = {tokens, temperature, 0, seed};
  return r;
}

struct TextEndpoints : ::testing::Test {
  std::unique_ptr<ServedGpt> served;
  std::unique_ptr<InferenceService> service;
  void SetUp() override {
    ServeOptions o = options_for(write_served_gpt(7));
    o.canary_precision = "bf16";
    o.canary_share = 0.5;
    served = std::make_unique<ServedGpt>(o);
    service = std::make_unique<InferenceService>(*served->engine, ServiceOptions{"tiny", "a-long-admin-token-0123"});
  }
  HttpResponse call(const std::string& method, const std::string& path, const std::string& body = "") {
    return service->handle({method, path, body, {}});
  }
};

}  // namespace mpx::serve::test_gpt
