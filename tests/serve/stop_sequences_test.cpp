// Stop sequences: the matcher's hold-back and release, a generation ended by one (left out of the answer,
// finish_reason "stop") whole and streamed, and what the generate extension accepts and refuses.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "mpx/serve/generate_protocol.h"
#include "mpx/serve/stop_sequences.h"
#include "served_gpt_support.h"

namespace mpx::serve {
namespace {
using namespace test_gpt;  // NOLINT(google-build-using-namespace): the GPT serving helpers

using Tokens = std::vector<std::int32_t>;

TEST(StopMatcher, HoldsBackWhatMayBeginAStopSequenceAndDropsItWhenItIs) {
  StopMatcher m({{7, 8, 9}});
  EXPECT_EQ(m.push(1), Tokens{1});
  EXPECT_EQ(m.push(7), Tokens{});  // might begin 7 8 9
  EXPECT_EQ(m.push(8), Tokens{});
  EXPECT_EQ(m.push(5), (Tokens{7, 8, 5}));  // it did not
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.push(7), Tokens{});
  EXPECT_EQ(m.push(7), Tokens{7});  // the second 7 may still begin it
  EXPECT_EQ(m.push(8), Tokens{});
  EXPECT_EQ(m.push(9), Tokens{});  // 7 8 9: stopped, none of it handed on
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.matched_length(), 3u);
}

TEST(StopMatcher, ReleasesEverythingWithoutStopsAndFlushesWhatIsHeldAtTheEnd) {
  StopMatcher none({});
  EXPECT_EQ(none.push(4), Tokens{4});
  StopMatcher m({{3}, {1, 2}});
  EXPECT_EQ(m.push(1), Tokens{});
  EXPECT_EQ(m.flush(), Tokens{1});
  EXPECT_EQ(m.push(3), Tokens{});
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.matched_length(), 1u);
}

TEST(GenerationStop, AStopSequenceEndsTheAnswerAndIsLeftOutOfItWholeAndStreamed) {
  ServedGpt s(options_for(write_served_gpt(21)));
  const Tokens free = s.engine->generate(request("r", prompt_of("The "), 12)).generation.tokens;
  ASSERT_EQ(free.size(), 12u);
  GenerateRequest stopped = request("r", prompt_of("The "), 12);
  stopped.stop = {Tokens(free.begin() + 5, free.begin() + 7), {15, 1, 2, 3}};  // tokens 5-6 of the free answer
  const GenerateAnswer a = s.engine->generate(stopped);
  ASSERT_EQ(a.status, Answer::Status::ok) << a.error;
  // Greedy: the answer runs as the free one until the stop sequence first appears.
  std::size_t end = 0;
  while (end + 2 <= free.size() && !(free[end] == free[5] && free[end + 1] == free[6])) ++end;
  EXPECT_EQ(a.finish_reason, "stop");
  EXPECT_EQ(a.generation.tokens, Tokens(free.begin(), free.begin() + static_cast<std::ptrdiff_t>(end)));
  Tokens streamed;
  const GenerateAnswer b = s.engine->generate(stopped, [&](std::int32_t t) {
    streamed.push_back(t);
    return true;
  });
  EXPECT_EQ(b.finish_reason, "stop");
  EXPECT_EQ(streamed, a.generation.tokens);  // no part of the stop sequence was ever sent
  EXPECT_EQ(s.engine->generate(request("r", prompt_of("The "), 12)).finish_reason, "length");
  GenerateRequest outside = stopped;
  outside.stop = {{300}};
  EXPECT_NE(s.engine->refusal(outside).find("stop token 300"), std::string::npos);
}

TEST(GenerateProtocol, ReadsStopStringsAndStopTokenIdsAndRefusesTheRest) {
  const GenerateRequest a = parse_generate_request(R"({"text_input":"x","stop":"\nA"})", true);
  EXPECT_EQ(a.stop, (std::vector<Tokens>{{'\n', 'A'}}));
  const GenerateRequest b = parse_generate_request(R"({"text_input":"x","parameters":{"stop":["a","bc"],"stop_token_ids":[7]}})", true);
  EXPECT_EQ(b.stop, (std::vector<Tokens>{{'a'}, {'b', 'c'}, {7}}));
  EXPECT_EQ(parse_generate_request(R"({"input_ids":[1],"stop_token_ids":[50256]})", false).stop, (std::vector<Tokens>{{50256}}));
  for (const auto& [body, byte_level, words] : std::vector<std::tuple<std::string, bool, std::string>>{
           {R"({"text_input":"x","stop":""})", true, "non-empty"},
           {R"({"text_input":"x","stop":[1]})", true, "non-empty strings"},
           {R"({"text_input":"x","stop":{"a":1}})", true, "string or an array"},
           {R"({"input_ids":[1],"stop":"a"})", false, "stop_token_ids"},
           {R"({"text_input":"x","stop_token_ids":[-1]})", true, "non-negative"},
           {R"({"text_input":"x","stop_token_ids":"7"})", true, "array"}}) {
    try {
      parse_generate_request(body, byte_level);
      ADD_FAILURE() << "accepted " << body;
    } catch (const ProtocolError& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  }
  GenerateAnswer answer;
  answer.finish_reason = "stop";
  EXPECT_EQ(nlohmann::json::parse(encode_generate_response("m", a, answer, true))["finish_reason"], "stop");
}

}  // namespace
}  // namespace mpx::serve
