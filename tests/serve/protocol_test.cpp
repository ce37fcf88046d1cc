#include "mpx/serve/protocol.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "mpx/core/error.h"
#include "mpx/serve/engine.h"
#include "mpx/serve/shadow.h"
#include "mpx/serve/slo.h"

namespace mpx::serve {
namespace {

nlohmann::json one_image(const nlohmann::json& shape, const std::string& datatype, const nlohmann::json& data) {
  return {{"inputs", {{{"name", "images"}, {"shape", shape}, {"datatype", datatype}, {"data", data}}}}};
}

int status_of(const std::string& body, std::optional<std::size_t> json_length = std::nullopt) {
  try {
    parse_infer_request(body, json_length, 28, 28);
  } catch (const ProtocolError& e) {
    return e.status();
  }
  return 200;
}

std::string message_of(const std::string& body) {
  try {
    parse_infer_request(body, std::nullopt, 28, 28);
  } catch (const ProtocolError& e) {
    return e.what();
  }
  return "";
}

TEST(Protocol, AcceptsEveryImageLayoutAndScalesUint8PixelsToIntensities) {
  std::vector<int> pixels(784);
  for (int i = 0; i < 784; ++i) pixels[static_cast<std::size_t>(i)] = i % 256;
  for (const nlohmann::json& shape : {nlohmann::json{1, 28, 28, 1}, nlohmann::json{1, 28, 28}, nlohmann::json{1, 1, 28, 28},
                                      nlohmann::json{1, 784}}) {
    const InferRequest r = parse_infer_request(one_image(shape, "UINT8", pixels).dump(), std::nullopt, 28, 28);
    ASSERT_EQ(r.rows, 1) << shape;
    for (int i = 0; i < 784; ++i) EXPECT_EQ(r.pixels[static_cast<std::size_t>(i)], static_cast<float>(i % 256) / 255.0f);
  }
  // Nested row-major data is the same tensor as flat data.
  nlohmann::json nested = nlohmann::json::array();
  for (int y = 0; y < 28; ++y) {
    nlohmann::json row = nlohmann::json::array();
    for (int x = 0; x < 28; ++x) row.push_back(0.5);
    nested.push_back(row);
  }
  const InferRequest r = parse_infer_request(one_image({1, 28, 28}, "FP32", {nested}).dump(), std::nullopt, 28, 28);
  EXPECT_EQ(r.pixels[783], 0.5f);
  EXPECT_EQ(r.outputs.size(), 2u);  // none named: logits and probabilities
}

TEST(Protocol, RefusesWhatAClientCanGetWrongWithA400ThatSaysWhat) {
  const std::vector<float> ok(784, 0.25f);
  EXPECT_EQ(status_of("{not json"), 400);
  EXPECT_EQ(status_of("[1, 2]"), 400);
  EXPECT_EQ(status_of(R"({"inputs": []})"), 400);
  EXPECT_NE(message_of(one_image({1, 28, 27}, "FP32", ok).dump()).find("not a batch of 28x28 images"), std::string::npos);
  EXPECT_NE(message_of(one_image({1, 28, 28}, "FP16", ok).dump()).find("send FP32 or UINT8"), std::string::npos);
  EXPECT_NE(message_of(one_image({2, 28, 28}, "FP32", ok).dump()).find("holds 784 elements; the shape needs 1568"),
            std::string::npos);
  EXPECT_NE(message_of(one_image({1, 28, 28}, "FP32", std::vector<float>(784, 1.5f)).dump()).find("in [0, 1]"),
            std::string::npos);
  EXPECT_NE(message_of(one_image({1, 28, 28}, "UINT8", std::vector<int>(784, 256)).dump()).find("integers 0-255"),
            std::string::npos);
  EXPECT_NE(message_of(one_image({1, 28, 28}, "UINT8", std::vector<double>(784, 0.5)).dump()).find("integers 0-255"),
            std::string::npos);
  EXPECT_NE(message_of(one_image({0, 28, 28}, "FP32", ok).dump()).find("positive integers"), std::string::npos);
  nlohmann::json wrong_name = one_image({1, 28, 28}, "FP32", ok);
  wrong_name["inputs"][0]["name"] = "x";
  EXPECT_NE(message_of(wrong_name.dump()).find("named \"images\""), std::string::npos);
  nlohmann::json wrong_output = one_image({1, 28, 28}, "FP32", ok);
  wrong_output["outputs"] = {{{"name", "embeddings"}}};
  EXPECT_NE(message_of(wrong_output.dump()).find("unknown output"), std::string::npos);
}

TEST(Protocol, BinaryTensorDataRefusesNanAndInfAndWrongSizes) {
  nlohmann::json header = {{"inputs", {{{"name", "images"}, {"shape", {1, 784}}, {"datatype", "FP32"},
                                        {"parameters", {{"binary_data_size", 784 * 4}}}}}}};
  const std::string json = header.dump();
  std::vector<float> x(784, 0.75f);
  auto body_with = [&](float first) {
    x[0] = first;
    return json + std::string(reinterpret_cast<const char*>(x.data()), x.size() * 4);
  };
  const InferRequest r = parse_infer_request(body_with(0.125f), json.size(), 28, 28);
  EXPECT_EQ(r.pixels[0], 0.125f);
  EXPECT_EQ(r.pixels[783], 0.75f);
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    try {
      parse_infer_request(body_with(bad), json.size(), 28, 28);
      ADD_FAILURE() << "a non-finite input was accepted";
    } catch (const ProtocolError& e) {
      EXPECT_EQ(e.status(), 400);
      EXPECT_NE(std::string(e.what()).find("NaN and Inf inputs are refused"), std::string::npos);
    }
  }
  EXPECT_EQ(status_of(body_with(0.5f).substr(0, json.size() + 100), json.size()), 400);  // data cut short
  const std::string length = "99999999";
  EXPECT_THROW(parse_json_length(&length, 100), ProtocolError);
  const std::string letters = "12a";
  EXPECT_THROW(parse_json_length(&letters, 100), ProtocolError);
}

TEST(Protocol, EncodesBinaryOutputsAfterTheJsonAndProbabilitiesAsSoftmax) {
  InferRequest r;
  r.id = "req-7";
  r.rows = 1;
  r.outputs = {{"logits", true}, {"probabilities", false}};
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f};
  const EncodedResponse e = encode_infer_response("cnn", r, logits, 3, {{"variant", "bf16"}});
  ASSERT_TRUE(e.json_length.has_value());
  const nlohmann::json j = nlohmann::json::parse(e.body.substr(0, *e.json_length));
  EXPECT_EQ(j["id"], "req-7");
  EXPECT_EQ(j["parameters"]["variant"], "bf16");
  EXPECT_EQ(j["outputs"][0]["parameters"]["binary_data_size"], 12);
  float back[3];
  ASSERT_EQ(e.body.size(), *e.json_length + 12);
  std::memcpy(back, e.body.data() + *e.json_length, 12);
  EXPECT_EQ(back[2], 3.0f);
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  EXPECT_NEAR(j["outputs"][1]["data"][0].get<double>(), std::exp(1.0) / z, 1e-7);
  EXPECT_NEAR(j["outputs"][1]["data"][2].get<double>(), std::exp(3.0) / z, 1e-7);
}

TEST(SloSpec, ParsesObjectivesAndRefusesUnknownOnes) {
  const SloSpec s = parse_slo("p99_ms=2,agreement=0.995,nonfinite=0");
  EXPECT_EQ(*s.p99_ms, 2);
  EXPECT_EQ(*s.agreement, 0.995);
  EXPECT_EQ(*s.nonfinite, 0);
  EXPECT_THROW(parse_slo("p95_ms=2"), InvalidArgument);
  EXPECT_THROW(parse_slo("agreement=1.5"), InvalidArgument);
  EXPECT_THROW(parse_slo("nonfinite=0.5"), InvalidArgument);
  EXPECT_THROW(parse_slo("p99_ms"), InvalidArgument);
  EXPECT_EQ(parse_duration_seconds("30s", "--slo-window"), 30);
  EXPECT_EQ(parse_duration_seconds("500ms", "--slo-window"), 0.5);
  EXPECT_EQ(parse_duration_seconds("2m", "--slo-window"), 120);
  EXPECT_THROW(parse_duration_seconds("-1s", "--slo-window"), InvalidArgument);
}

TEST(SloSpec, JudgesTheNearestRankP99AndOnlyObjectivesWithData) {
  WindowStats w;
  for (int i = 1; i <= 200; ++i) w.latencies_seconds.push_back(i * 1e-3);  // 1..200 ms
  w.requests = 200;
  // Nearest rank: ceil(0.99 * 200) = 198th smallest = 198 ms.
  WindowVerdict v = judge_window(w, parse_slo("p99_ms=198,agreement=0.99"));
  EXPECT_DOUBLE_EQ(*v.p99_ms, 198);
  EXPECT_FALSE(v.breached);  // no shadow comparisons: agreement is not judged
  v = judge_window(w, parse_slo("p99_ms=197.5"));
  EXPECT_TRUE(v.breached);
  w.compared = 1000, w.agreed = 994, w.nonfinite_outputs = 1;
  v = judge_window(w, parse_slo("agreement=0.995,nonfinite=0"));
  ASSERT_EQ(v.breached_objectives.size(), 2u);
  EXPECT_EQ(v.breached_objectives[0], "agreement");
  EXPECT_EQ(v.breached_objectives[1], "nonfinite");
}

TEST(CanaryRouting, SendsTheShareWithinOnePointOverTenThousandIdsAndTheSameIdAlwaysTheSameWay) {
  for (const double share : {0.05, 0.3, 0.5}) {
    int canary = 0;
    for (int i = 0; i < 10000; ++i) canary += request_fraction("req-" + std::to_string(i)) < share;
    EXPECT_NEAR(canary / 10000.0, share, 0.01) << share;
  }
  EXPECT_EQ(request_fraction("abc"), request_fraction("abc"));
  // The shadow's draw is independent of the canary's.
  int both = 0;
  for (int i = 0; i < 10000; ++i) {
    const std::string id = std::to_string(i);
    both += request_fraction(id) < 0.5 && request_fraction(id, 0x5eed) < 0.5;
  }
  EXPECT_NEAR(both / 10000.0, 0.25, 0.015);
}

TEST(ShadowComparison, CountsTopOneAgreementLargestDeltaAndNonFiniteCandidates) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> reference = {0, 1, 2, /**/ 5, 1, 0, /**/ 0, 0, 1};
  const std::vector<float> candidate = {0, 1, 2.5f, /**/ 1, 4, 0, /**/ nan, 0, 1};
  const ShadowComparison c = compare_logits("bf16", candidate.data(), reference.data(), 3, 3);
  EXPECT_EQ(c.images, 3);
  EXPECT_EQ(c.agreed, 1);
  EXPECT_EQ(c.candidate_nonfinite, 1);
  EXPECT_EQ(c.reference_class, (std::vector<int>{2, 0, 2}));
  EXPECT_DOUBLE_EQ(c.max_abs_logit_delta, 4);
}

}  // namespace
}  // namespace mpx::serve
