// Streamed generations (POST .../generate_stream): tokens handed on as they are drawn, the same tokens as a
// whole answer, a canary going NaN midway continued by FP32 after what was sent, a client that leaves
// stopping the generation, server-sent events with UTF-8 characters held back until complete, and what
// is refused before the stream starts.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "mpx/artifacts/generate.h"
#include "mpx/serve/generate_protocol.h"
#include "served_gpt_support.h"

namespace mpx::serve {
namespace {
using namespace test_gpt;  // NOLINT(google-build-using-namespace): the GPT serving helpers

TEST(GenerationStream, HandsOnEachTokenAsDrawnTheSameTokensAsAWholeAnswer) {
  ServedGpt s(options_for(write_served_gpt(11)));
  for (const float temperature : {0.0f, 0.9f}) {
    std::vector<std::int32_t> streamed;
    const GenerateAnswer a = s.engine->generate(request("r", prompt_of("The "), 10, temperature, 3), [&](std::int32_t t) {
      streamed.push_back(t);
      return true;
    });
    ASSERT_EQ(a.status, Answer::Status::ok) << a.error;
    EXPECT_FALSE(a.cancelled);
    EXPECT_EQ(streamed, a.generation.tokens);
    EXPECT_EQ(streamed, s.engine->generate(request("r", prompt_of("The "), 10, temperature, 3)).generation.tokens);
  }
}

TEST(GenerationStream, ACanaryGoingNanMidwayIsContinuedByFp32AfterTheTokensAlreadySent) {
  const std::string file = write_served_gpt(12);
  ServeOptions o = options_for(file);
  o.canary_precision = "bf16";
  o.canary_share = 1.0;
  o.inject_nonfinite_canary_after = 0;  // every canary request ...
  o.inject_nonfinite_from_token = 4;    // ... from its fifth token on
  ServedGpt s(o);
  std::vector<std::int32_t> streamed;
  const GenerateAnswer a = s.engine->generate(request("r", prompt_of("Ab"), 9), [&](std::int32_t t) {
    streamed.push_back(t);
    return true;
  });
  ASSERT_EQ(a.status, Answer::Status::ok) << a.error;
  EXPECT_EQ(a.variant, "fp32");
  EXPECT_EQ(a.fallback_from, "bf16");
  ASSERT_EQ(streamed.size(), 9u);
  EXPECT_EQ(streamed, a.generation.tokens);
  EXPECT_EQ(a.generation.prompt, prompt_of("Ab"));
  // The first four are the canary's, the rest FP32's continuation of the prompt and those four.
  artifacts::Generator bf16(file, "bf16"), fp32(file, "fp32");
  const std::vector<std::int32_t> first = bf16.generate(prompt_of("Ab"), {4, 0.0f, 0, 0}).tokens;
  EXPECT_EQ(std::vector<std::int32_t>(streamed.begin(), streamed.begin() + 4), first);
  std::vector<std::int32_t> continued = prompt_of("Ab");
  continued.insert(continued.end(), first.begin(), first.end());
  EXPECT_EQ(std::vector<std::int32_t>(streamed.begin() + 4, streamed.end()), fp32.generate(continued, {5, 0.0f, 0, 0}).tokens);
  // Without a stream the same drill is answered by FP32 from the start.
  const GenerateAnswer whole = s.engine->generate(request("r", prompt_of("Ab"), 9));
  EXPECT_EQ(whole.fallback_from, "bf16");
  EXPECT_EQ(whole.generation.tokens, fp32.generate(prompt_of("Ab"), {9, 0.0f, 0, 0}).tokens);
}

TEST(GenerationStream, AClientThatLeavesStopsTheGeneration) {
  ServedGpt s(options_for(write_served_gpt(13)));
  int handed = 0;
  const GenerateAnswer a = s.engine->generate(request("r", prompt_of("x"), 20), [&](std::int32_t) { return ++handed < 3; });
  ASSERT_EQ(a.status, Answer::Status::ok) << a.error;
  EXPECT_TRUE(a.cancelled);
  EXPECT_EQ(handed, 3);
  EXPECT_EQ(a.generation.tokens.size(), 3u);
}

TEST(GenerationStream, HoldsBackTheBytesOfAnUnfinishedUtf8Character) {
  EXPECT_EQ(complete_utf8_prefix("abc"), 3u);
  EXPECT_EQ(complete_utf8_prefix("a\xc3"), 1u);              // é's first byte
  EXPECT_EQ(complete_utf8_prefix("a\xc3\xa9"), 3u);          // é complete
  EXPECT_EQ(complete_utf8_prefix("\xe2\x82"), 0u);           // two of €'s three bytes
  EXPECT_EQ(complete_utf8_prefix("\xf0\x9f\x98"), 0u);       // three of an emoji's four
  EXPECT_EQ(complete_utf8_prefix("\xf0\x9f\x98\x80"), 4u);   // the emoji complete
  EXPECT_EQ(complete_utf8_prefix("a\xff"), 2u);              // never UTF-8: sent (and replaced)
  EXPECT_EQ(complete_utf8_prefix("\x80\x80"), 2u);           // stray continuation bytes: sent
  EXPECT_EQ(server_sent_event({{"a", 1}}), "data: {\"a\":1}\n\n");
}

std::vector<nlohmann::json> events_of(const std::string& stream) {
  std::vector<nlohmann::json> events;
  for (std::size_t at = 0; (at = stream.find("data: ", at)) != std::string::npos;) {
    const std::size_t end = stream.find("\n\n", at);
    events.push_back(nlohmann::json::parse(stream.substr(at + 6, end - at - 6)));
    at = end;
  }
  return events;
}

TEST_F(TextEndpoints, StreamServerSentEventsThatAddUpToTheWholeAnswer) {
  const std::string body = R"({"id":"s","text_input":"Hello","max_tokens":7,"temperature":0})";
  const HttpResponse r = call("POST", "/v2/models/tiny/generate_stream", body);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.content_type, "text/event-stream");
  ASSERT_TRUE(r.stream);
  std::string stream;
  r.stream([&](const std::string& chunk) {
    stream += chunk;
    return true;
  });
  const std::vector<nlohmann::json> events = events_of(stream);
  ASSERT_EQ(events.size(), 8u) << stream;
  std::string text;
  std::vector<std::int32_t> ids;
  for (const nlohmann::json& e : events) {
    EXPECT_EQ(e["id"], "s");
    text += e["text_output"].get<std::string>();
    for (const auto& id : e["output_ids"]) ids.push_back(id);
  }
  EXPECT_EQ(events.back()["finish_reason"], "length");
  EXPECT_EQ(events.back()["output_tokens"], 7);
  const nlohmann::json whole = nlohmann::json::parse(call("POST", "/v2/models/tiny/generate", body).body);
  EXPECT_EQ(events.back()["variant"], whole["variant"]);  // the same id takes the same way
  EXPECT_EQ(nlohmann::json(ids), whole["output_ids"]);
  EXPECT_EQ(nlohmann::json::parse(nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)),
            whole["text_output"]);
  EXPECT_EQ(metric(call("GET", "/metrics").body,
                   "mpx_serve_requests_total{status=\"ok\",variant=\"" + whole["variant"].get<std::string>() + "\"}"), 2);
}

TEST_F(TextEndpoints, RefuseAStreamTheModelCannotTakeBeforeItStarts) {
  const HttpResponse context = call("POST", "/v2/models/tiny/generate_stream", R"({"input_ids":[1,2,3],"max_tokens":30})");
  EXPECT_EQ(context.status, 400);
  EXPECT_FALSE(context.stream);
  EXPECT_NE(nlohmann::json::parse(context.body)["error"].get<std::string>().find("context"), std::string::npos);
  EXPECT_EQ(call("POST", "/v2/models/tiny/generate_stream", "{").status, 400);
  EXPECT_EQ(call("GET", "/v2/models/tiny/generate_stream").status, 405);
  served->engine->rollout().begin_drain();
  EXPECT_EQ(call("POST", "/v2/models/tiny/generate_stream", R"({"text_input":"a"})").status, 503);
}

}  // namespace
}  // namespace mpx::serve
