// Serving a GPT without sockets: the generate extension's parsing and answers, each variant answering what
// the generator computes run directly, canary routing by request id, the FP32 shadow against an offline
// teacher-forced comparison, a NaN canary answered by FP32 and rolled back, requests the model cannot take,
// the endpoints of a text model, and the bounded per-class series.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "mpx/artifacts/generate.h"
#include "mpx/core/error.h"
#include "mpx/nn/gpt.h"
#include "mpx/serve/generate_protocol.h"
#include "mpx/serve/generation_engine.h"
#include "mpx/serve/rollout.h"
#include "mpx/serve/service.h"
#include "served_gpt_support.h"

namespace mpx::serve {
namespace {
using namespace test_gpt;  // NOLINT(google-build-using-namespace): the GPT serving helpers

void expect_refused(const std::string& body, bool byte_level, const std::string& words) {
  try {
    parse_generate_request(body, byte_level);
    ADD_FAILURE() << "accepted " << body;
  } catch (const ProtocolError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
}

TEST(GenerateProtocol, ReadsThePromptAndTheSamplingSettingsAtTheTopLevelOrUnderParameters) {
  const GenerateRequest a = parse_generate_request(R"({"id":"q1","text_input":"Ab\u00e9","max_tokens":5,"temperature":0,"top_k":3,"seed":9})", true);
  EXPECT_EQ(a.id, "q1");
  EXPECT_EQ(a.prompt, (std::vector<std::int32_t>{65, 98, 0xc3, 0xa9}));  // UTF-8 bytes are the tokens
  EXPECT_EQ(a.sampling.max_new_tokens, 5);
  EXPECT_EQ(a.sampling.temperature, 0.0f);
  EXPECT_EQ(a.sampling.top_k, 3);
  EXPECT_EQ(a.sampling.seed, 9u);
  const GenerateRequest b = parse_generate_request(R"({"input_ids":[1,2,300],"parameters":{"max_tokens":2,"seed":4,"stream":false}})", false);
  EXPECT_EQ(b.prompt, (std::vector<std::int32_t>{1, 2, 300}));
  EXPECT_EQ(b.sampling.max_new_tokens, 2);
  EXPECT_EQ(b.sampling.seed, 4u);
  const GenerateRequest c = parse_generate_request(R"({"text_input":"x"})", true);  // the defaults
  EXPECT_EQ(c.sampling.max_new_tokens, 16);
  EXPECT_EQ(c.sampling.temperature, 1.0f);
  EXPECT_EQ(c.sampling.top_k, 0);
}

TEST(GenerateProtocol, RefusesWhatItCannotReadSayingWhatToSend) {
  expect_refused("{", true, "not valid JSON");
  expect_refused("[1]", true, "JSON object");
  expect_refused(R"({"max_tokens":3})", true, "one of them");
  expect_refused(R"({"text_input":"a","input_ids":[1]})", true, "one of them");
  expect_refused(R"({"text_input":"a"})", false, "input_ids");  // a GPT-2 vocabulary: no tokenizer here
  expect_refused(R"({"text_input":7})", true, "must be a string");
  expect_refused(R"({"input_ids":[1,-2]})", true, "non-negative");
  expect_refused(R"({"input_ids":[1.5]})", true, "non-negative");
  expect_refused(R"({"input_ids":"12"})", true, "array");
  expect_refused(R"({"text_input":"a","max_tokens":2,"parameters":{"max_tokens":3}})", true, "given twice");
  expect_refused(R"({"text_input":"a","max_tokens":0})", true, "max_tokens");
  expect_refused(R"({"text_input":"a","max_tokens":"4"})", true, "integer");
  expect_refused(R"({"text_input":"a","temperature":-1})", true, "temperature");
  expect_refused(R"({"text_input":"a","seed":-1})", true, "non-negative");
  expect_refused(R"({"text_input":"a","stream":true})", true, "stream");
  expect_refused(R"({"text_input":"a","parameters":[]})", true, "parameters");
  expect_refused(R"({"text_input":"a","id":3})", true, "id");
}

TEST(GenerateProtocol, AnswersTextReplacingBytesThatAreNotUtf8) {
  GenerateRequest r = request("q", prompt_of("hi"), 3);
  GenerateAnswer a;
  a.variant = "fp32";
  a.fallback_from = "bf16";
  a.generation.prompt = r.prompt;
  a.generation.tokens = {'o', 0xff, 'k'};
  const nlohmann::json j = nlohmann::json::parse(encode_generate_response("tiny", r, a, true));
  EXPECT_EQ(j["id"], "q");
  EXPECT_EQ(j["model_name"], "tiny");
  EXPECT_EQ(j["text_output"], "o\xef\xbf\xbdk");
  EXPECT_EQ(j["output_ids"], nlohmann::json({'o', 0xff, 'k'}));
  EXPECT_EQ(j["variant"], "fp32");
  EXPECT_EQ(j["fallback_from"], "bf16");
  EXPECT_EQ(j["prompt_tokens"], 2);
  EXPECT_EQ(j["finish_reason"], "length");
  EXPECT_FALSE(nlohmann::json::parse(encode_generate_response("tiny", r, a, false)).contains("text_output"));
}

TEST(GenerationServing, EachVariantAnswersWhatTheGeneratorComputesRunDirectly) {
  const std::string file = write_served_gpt(1);
  for (const std::string precision : {"fp32", "bf16", "fp16"}) {
    ServeOptions o = options_for(file);
    o.precision = precision;
    ServedGpt s(o);
    artifacts::Generator direct(file, precision);
    for (const auto& [temperature, seed] : std::vector<std::pair<float, std::uint64_t>>{{0.0f, 0}, {1.0f, 7}, {0.8f, 11}}) {
      const GenerateAnswer a = s.engine->generate(request("r", prompt_of("The "), 12, temperature, seed));
      ASSERT_EQ(a.status, Answer::Status::ok) << a.error;
      EXPECT_EQ(a.variant, precision);
      EXPECT_EQ(a.generation.tokens, direct.generate(prompt_of("The "), {12, temperature, 0, seed}).tokens)
          << precision << " at temperature " << temperature;
    }
  }
}

TEST(GenerationServing, RoutesTheCanaryShareByRequestId) {
  ServeOptions o = options_for(write_served_gpt(2));
  o.canary_precision = "bf16";
  o.canary_share = 0.3;
  ServedGpt s(o);
  int canary = 0, expected = 0;
  const int requests = 1000;
  for (int i = 0; i < requests; ++i) {
    const std::string id = "req-" + std::to_string(i);
    const GenerateAnswer a = s.engine->generate(request(id, {1, 2}, 1));
    ASSERT_EQ(a.status, Answer::Status::ok) << a.error;
    canary += a.variant == "bf16";
    expected += request_fraction(id) < 0.3;
    EXPECT_EQ(a.variant, s.engine->generate(request(id, {3}, 1)).variant) << "one id, one variant";
  }
  EXPECT_EQ(canary, expected);
  EXPECT_NEAR(canary / static_cast<double>(requests), 0.3, 0.04);
  const std::string text = s.engine->metrics().text();
  EXPECT_EQ(metric(text, R"(mpx_serve_generated_tokens_total{variant="bf16"})"), 2 * canary);
}

// The offline comparison: the bf16 generator of `candidate` (its logits at each step; argmax and largest
// logits by this test's own reckoning) against the FP32 generator of `file` reading the prompt and the
// generated tokens.
struct Offline {
  std::int64_t compared = 0, agreed = 0;
  double max_delta = 0;
};

Offline compare_offline(const std::string& file, const std::string& candidate,
                        const std::vector<std::vector<std::int32_t>>& prompts, std::int64_t tokens) {
  artifacts::Generator bf16(candidate, "bf16"), fp32(file, "fp32");
  Offline out;
  for (const auto& prompt : prompts) {
    std::vector<std::vector<float>> steps;
    const artifacts::Generation g = bf16.generate(prompt, {tokens, 0.0f, 0, 0}, {}, {}, [&](const std::vector<float>& l) {
      steps.push_back(l);
      return true;
    });
    std::vector<std::int32_t> sequence = prompt;
    sequence.insert(sequence.end(), g.tokens.begin(), g.tokens.end());
    std::vector<std::vector<float>> reference;
    fp32.generate(sequence, {0, 0.0f, 0, 0}, {}, [&](const std::vector<float>& l) { reference.push_back(l); });
    for (std::size_t j = 0; j < g.tokens.size(); ++j) {
      const std::vector<float>& candidate = steps[j];
      const std::vector<float>& ref = reference[prompt.size() - 1 + j];
      const auto argmax = [](const std::vector<float>& v) { return std::max_element(v.begin(), v.end()) - v.begin(); };
      ++out.compared;
      out.agreed += argmax(candidate) == argmax(ref);
      std::vector<float> sorted = candidate;
      std::sort(sorted.begin(), sorted.end(), std::greater<>());
      for (std::size_t k = 0; k < candidate.size(); ++k) {
        if (candidate[k] >= sorted[kKeptLogits - 1]) out.max_delta = std::max(out.max_delta, std::fabs(double{candidate[k]} - ref[k]));
      }
    }
  }
  return out;
}

// The canary is loaded from a copy with a quarter of the final LayerNorm gains negated, so that about half
// of its tokens disagree with FP32 (a freshly initialised GPT otherwise predicts its last token in every
// precision).
TEST(GenerationServing, ShadowAgreementEqualsAnOfflineTeacherForcedComparison) {
  const std::string file = write_served_gpt(3);
  const std::string damaged = test::write_damaged_copy(file, "transformer.ln_f.weight", 4);
  ServeOptions o = options_for(file);
  o.canary_precision = "bf16";
  o.canary_weights = damaged;
  o.canary_share = 1.0;
  o.shadow = true;
  ServedGpt s(o);
  std::vector<std::vector<std::int32_t>> prompts;
  for (int i = 0; i < 12; ++i) prompts.push_back(prompt_of("prompt " + std::to_string(i * 37)));
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const GenerateAnswer a = s.engine->generate(request("s" + std::to_string(i), prompts[i], 10));
    ASSERT_EQ(a.status, Answer::Status::ok) << a.error;
    ASSERT_EQ(a.variant, "bf16");
  }
  s.engine->drain_shadow();
  const Offline offline = compare_offline(file, damaged, prompts, 10);
  const std::string text = s.engine->metrics().text();
  EXPECT_EQ(offline.compared, 120);
  EXPECT_EQ(metric(text, R"(mpx_serve_shadow_comparisons_total{variant="bf16"})"), offline.compared);
  EXPECT_EQ(metric(text, R"(mpx_serve_shadow_agreements_total{variant="bf16"})"), offline.agreed);
  EXPECT_NEAR(metric(text, R"(mpx_serve_shadow_max_abs_logit_delta{variant="bf16"})"), offline.max_delta, 1e-6);
  EXPECT_GT(offline.agreed, 0);
  EXPECT_LT(offline.agreed, offline.compared);
  EXPECT_EQ(metric(text, R"(mpx_serve_shadow_comparisons_total{variant="fp32"})"), -1);  // FP32 is never shadowed
}

TEST(GenerationServing, ACanaryGoingNanIsAnsweredByFp32AndRolledBackAfterTwoWindows) {
  const std::string file = write_served_gpt(4);
  ServeOptions o = options_for(file);
  o.canary_precision = "bf16";
  o.canary_share = 0.5;
  o.inject_nonfinite_canary_after = 0;
  o.slo = parse_slo("nonfinite=0");
  ServedGpt s(o);
  artifacts::Generator fp32(file, "fp32");
  int fallbacks = 0;
  auto serve_some = [&](int first) {
    for (int i = first; i < first + 20; ++i) {
      const GenerateAnswer a = s.engine->generate(request("n" + std::to_string(i), prompt_of("ab"), 4));
      ASSERT_EQ(a.status, Answer::Status::ok) << a.error;
      ASSERT_EQ(a.variant, "fp32");  // never a NaN answer
      EXPECT_EQ(a.generation.tokens, fp32.generate(prompt_of("ab"), {4, 0.0f, 0, 0}).tokens);
      fallbacks += a.fallback_from == "bf16";
    }
  };
  serve_some(0);
  EXPECT_TRUE(s.engine->end_window().breached);
  EXPECT_EQ(s.engine->routing()["canary"], "bf16");
  serve_some(20);
  EXPECT_TRUE(s.engine->end_window().breached);
  EXPECT_EQ(s.engine->routing()["state"], "rolled_back");
  EXPECT_TRUE(s.engine->routing()["canary"].is_null());
  const int before = fallbacks;
  serve_some(40);
  EXPECT_EQ(fallbacks, before);  // after the rollback FP32 answers first hand
  EXPECT_GT(before, 5);
  const std::string text = s.engine->metrics().text();
  EXPECT_EQ(metric(text, R"(mpx_serve_fp32_fallbacks_total{variant="bf16"})"), before);
  EXPECT_EQ(metric(text, R"(mpx_serve_rollbacks_total{from="bf16",to="fp32"})"), 1);
}

TEST(GenerationServing, RefusesRequestsTheModelCannotTakeSayingWhy) {
  ServeOptions o = options_for(write_served_gpt(5));
  o.max_new_tokens = 8;
  ServedGpt s(o);
  auto expect_bad = [&](const GenerateRequest& r, const std::string& words) {
    const GenerateAnswer a = s.engine->generate(r);
    EXPECT_EQ(a.status, Answer::Status::bad_request);
    EXPECT_NE(a.error.find(words), std::string::npos) << a.error;
  };
  expect_bad(request("a", {1}, 9), "--max-tokens");
  expect_bad(request("b", std::vector<std::int32_t>(20, 1), 5), "context of 24");
  expect_bad(request("c", {1, 256}, 2), "vocabulary of 256");
  const GenerateAnswer ok = s.engine->generate(request("d", std::vector<std::int32_t>(16, 1), 8));  // exactly the context
  EXPECT_EQ(ok.status, Answer::Status::ok) << ok.error;
  EXPECT_EQ(ok.generation.tokens.size(), 8u);
  const GenerateAnswer empty = s.engine->generate(request("e", {}, 3));  // no prompt: generation starts from token 0
  EXPECT_EQ(empty.status, Answer::Status::ok) << empty.error;
  s.engine->rollout().begin_drain();
  EXPECT_EQ(s.engine->generate(request("f", {1}, 1)).status, Answer::Status::unavailable);
}

TEST(GenerationServing, RefusesAModelOfOtherSizesAsAVariant) {
  const std::string file = write_served_gpt(6);
  nn::Context ctx;
  nn::Sequential wider = nn::make_gpt({2, 2, 64, 24, 256, 0.0f}, 1);
  wider.plan({{1, 1}, DType::i32}, ctx);
  const std::string other = test::serve_temp_path("gpt_wider.safetensors");
  train::save_model(other, wider, {{train::kGptKey, train::gpt_metadata({2, 2, 64, 24, 256, 0.0f})}});
  ServeOptions o = options_for(file);
  o.canary_precision = "bf16";
  o.canary_weights = other;
  std::FILE* log = std::tmpfile();
  EventLog events(log);
  EXPECT_THROW(GenerationEngine(o, events), InvalidArgument);
  std::fclose(log);
  EXPECT_TRUE(holds_gpt(file));
  EXPECT_FALSE(holds_gpt(test::write_served_model("mlp", 1)));
}

TEST_F(TextEndpoints, AnswerTheGenerateExtensionAndDescribeTheModel) {
  EXPECT_EQ(nlohmann::json::parse(call("GET", "/v2").body)["extensions"][0], "generate");
  const nlohmann::json meta = nlohmann::json::parse(call("GET", "/v2/models/tiny").body);
  EXPECT_EQ(meta["parameters"]["architecture"], "gpt");
  EXPECT_EQ(meta["parameters"]["context"], 24);
  EXPECT_EQ(meta["parameters"]["tokenizer"], "bytes");
  const HttpResponse r = call("POST", "/v2/models/tiny/generate", R"({"id":"g","text_input":"Hello","max_tokens":6,"temperature":0})");
  ASSERT_EQ(r.status, 200) << r.body;
  const nlohmann::json j = nlohmann::json::parse(r.body);
  EXPECT_EQ(j["id"], "g");
  EXPECT_EQ(j["output_ids"].size(), 6u);
  EXPECT_EQ(j["prompt_tokens"], 5);
  const std::string variant = j["variant"];
  EXPECT_TRUE(variant == "fp32" || variant == "bf16") << variant;
  EXPECT_EQ(call("POST", "/v2/models/tiny/versions/1/generate", R"({"id":"g","text_input":"Hello","max_tokens":6,"temperature":0})").body, r.body);
  const std::string metrics = call("GET", "/metrics").body;
  EXPECT_EQ(metric(metrics, "mpx_serve_requests_total{status=\"ok\",variant=\"" + variant + "\"}"), 2);
  EXPECT_EQ(metric(metrics, "mpx_serve_generated_tokens_total{variant=\"" + variant + "\"}"), 12);
  EXPECT_EQ(metric(metrics, "mpx_serve_time_per_output_token_seconds_count{variant=\"" + variant + "\"}"), 2);
}

TEST_F(TextEndpoints, AnswerErrorsWithAStatusAndAJsonErrorBody) {
  auto error_of = [](const HttpResponse& r) { return nlohmann::json::parse(r.body)["error"].get<std::string>(); };
  const HttpResponse infer = call("POST", "/v2/models/tiny/infer", "{}");
  EXPECT_EQ(infer.status, 400);
  EXPECT_NE(error_of(infer).find("/generate"), std::string::npos);
  const HttpResponse context = call("POST", "/v2/models/tiny/generate", R"({"input_ids":[1,2,3],"max_tokens":30})");
  EXPECT_EQ(context.status, 400);
  EXPECT_NE(error_of(context).find("context"), std::string::npos);
  EXPECT_EQ(call("POST", "/v2/models/tiny/generate", R"({"text_input":"a","stream":true})").status, 400);
  EXPECT_EQ(call("POST", "/v2/models/other/generate", R"({"text_input":"a"})").status, 404);
  EXPECT_EQ(call("GET", "/v2/models/tiny/generate").status, 405);
  const std::string metrics = call("GET", "/metrics").body;
  EXPECT_EQ(metric(metrics, R"(mpx_serve_requests_total{status="bad_request",variant="none"})"), 2);  // the context and the stream (the /infer route is refused before counting)
  served->engine->rollout().begin_drain();
  const HttpResponse draining = call("POST", "/v2/models/tiny/generate", R"({"text_input":"a"})");
  EXPECT_EQ(draining.status, 503);
  EXPECT_EQ(draining.headers.at("Retry-After"), "1");
}

TEST(GenerationServing, PerClassShadowSeriesStopAtTheLabelCapAndCountTheRestAsOther) {
  ServeMetrics metrics;
  ShadowComparison c;
  c.variant = "bf16";
  for (int cls = 0; cls < 300; ++cls) {
    c.reference_class.push_back(cls);
    c.agree.push_back(cls % 2 == 0);
  }
  c.images = 300;
  c.agreed = 150;
  metrics.record_shadow(c);
  const std::string text = metrics.text();
  EXPECT_EQ(metric(text, R"(mpx_serve_shadow_class_agreement_ratio{class="255",variant="bf16"})"), 0);
  EXPECT_EQ(metric(text, R"(mpx_serve_shadow_class_agreement_ratio{class="256",variant="bf16"})"), -1);
  EXPECT_EQ(metric(text, R"(mpx_serve_shadow_class_agreement_ratio{class="other",variant="bf16"})"), 0.5);  // 44 classes, 22 agreed
  std::size_t series = 0;
  for (std::size_t at = text.find("mpx_serve_shadow_class_agreement_ratio{"); at != std::string::npos;
       at = text.find("mpx_serve_shadow_class_agreement_ratio{", at + 1)) {
    ++series;
  }
  EXPECT_EQ(series, kMaxClassLabels + 1);
}

}  // namespace
}  // namespace mpx::serve
