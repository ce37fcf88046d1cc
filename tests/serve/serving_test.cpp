// The serving engine and its endpoints without sockets: variants against mpx predict's logits, canary
// routing, the shadow against an offline comparison, rollback of a bad variant with no failed request,
// the endpoints' statuses and error bodies, the admin token.
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <regex>
#include <cstdio>
#include <sstream>
#include <thread>

#include "../support/fashion_mnist.h"
#include "mpx/artifacts/convert.h"
#include "mpx/artifacts/predict.h"
#include "mpx/core/error.h"
#include "mpx/serve/engine.h"
#include "mpx/serve/service.h"
#include "serve_test_support.h"

namespace mpx::serve {
namespace {

using test::metric;

struct Served {
  std::FILE* log = std::tmpfile();
  EventLog events{log};
  std::unique_ptr<ServingEngine> engine;
  explicit Served(ServeOptions o) : engine(std::make_unique<ServingEngine>(o, events)) {}
  ~Served() {
    engine.reset();
    std::fclose(log);
  }
  std::string event_lines() {
    std::fflush(log);
    std::rewind(log);
    std::string text;
    char buffer[4096];
    while (std::fgets(buffer, sizeof buffer, log)) text += buffer;
    return text;
  }
};

ServeOptions options_for(const std::string& file) {
  ServeOptions o;
  o.model_or_run = file;
  o.batching.max_batch = 64;
  return o;
}

Answer infer(ServingEngine& e, const std::string& id, const std::vector<float>& images, std::int64_t first, std::int64_t rows) {
  return e.infer(id, std::vector<float>(images.begin() + first * 784, images.begin() + (first + rows) * 784), rows);
}

TEST(Serving, EachVariantAnswersWithTheLogitsMpxPredictComputesForTheSameImages) {
  MPX_NEED_DATA();
  const io::FashionMnist& data = *test::fashion_mnist();
  const io::PixelNormalisation n = io::pixel_normalisation(data.train);
  const std::string file = test::write_served_model("cnn", 3, n.mean, 1.0f / n.inv_std);
  std::vector<float> images(static_cast<std::size_t>(200 * 784));
  for (std::size_t i = 0; i < images.size(); ++i) images[i] = static_cast<float>(data.test.pixels[i]) / 255.0f;
  for (const std::string precision : {"fp32", "bf16", "fp16"}) {
    ServeOptions o = options_for(file);
    o.precision = precision;
    Served s(o);
    const std::vector<float> offline = artifacts::test_logits("cnn", file, serving_preset(precision), data, 50, nullptr);
    for (std::int64_t first = 0; first < 200; first += 50) {  // the batches mpx predict ran
      const Answer a = infer(*s.engine, "", images, first, 50);
      ASSERT_EQ(a.status, Answer::Status::ok) << a.error;
      EXPECT_EQ(a.variant, precision);
      for (std::size_t k = 0; k < a.logits.size(); ++k) {
        ASSERT_EQ(a.logits[k], offline[static_cast<std::size_t>(first * 10) + k]) << precision << " logit " << k;
      }
    }
  }
}

TEST(Serving, AVariantLoadedFromAConvertedFileAnswersWhatMpxPredictComputesOnThatFile) {
  MPX_NEED_DATA();
  const io::FashionMnist& data = *test::fashion_mnist();
  const io::PixelNormalisation n = io::pixel_normalisation(data.train);
  const std::string file = test::write_served_model("cnn", 9, n.mean, 1.0f / n.inv_std);
  const std::string converted = test::serve_temp_path("converted_bf16.safetensors");
  artifacts::ConvertSpec spec;
  spec.to = DType::bf16;
  ASSERT_TRUE(artifacts::convert_checkpoint(file, converted, spec).written);
  ServeOptions o = options_for(file);
  o.precision = "bf16";
  o.weights = converted;
  Served s(o);
  EXPECT_EQ(s.engine->routing()["variants"][0]["weights"], converted);  // "bf16" sorts before "fp32"
  std::vector<float> images(static_cast<std::size_t>(50 * 784));
  for (std::size_t i = 0; i < images.size(); ++i) images[i] = static_cast<float>(data.test.pixels[i]) / 255.0f;
  const std::vector<float> offline = artifacts::test_logits("cnn", converted, "bf16-true", data, 50, nullptr);
  const Answer a = infer(*s.engine, "", images, 0, 50);
  ASSERT_EQ(a.status, Answer::Status::ok) << a.error;
  EXPECT_EQ(a.variant, "bf16");
  for (std::size_t k = 0; k < a.logits.size(); ++k) ASSERT_EQ(a.logits[k], offline[k]) << k;
}

TEST(Serving, RoutesTheCanaryShareOfTenThousandRequestsWithinOnePoint) {
  ServeOptions o = options_for(test::write_served_model("mlp", 1));
  o.canary_precision = "bf16";
  o.canary_share = 0.05;
  Served s(o);
  const std::vector<float> image = test::random_images(1, 9);
  int canary = 0, failed = 0;
  for (int i = 0; i < 10000; ++i) {
    const Answer a = s.engine->infer("req-" + std::to_string(i), image, 1);
    failed += a.status != Answer::Status::ok;
    canary += a.variant == "bf16";
  }
  EXPECT_EQ(failed, 0);
  EXPECT_NEAR(canary / 10000.0, 0.05, 0.01);
  EXPECT_EQ(metric(s.engine->metrics().text(), "mpx_serve_canary_share_ratio"), 0.05);
  const std::string same = s.engine->infer("req-17", image, 1).variant;
  for (int i = 0; i < 5; ++i) EXPECT_EQ(s.engine->infer("req-17", image, 1).variant, same);
}

TEST(Serving, ShadowAgreementEqualsAnOfflineComparisonOfTheSameRequests) {
  const std::string file = test::write_served_model("cnn", 5);
  ServeOptions o = options_for(file);
  o.canary_precision = "fp16";
  o.canary_share = 1.0;
  o.shadow = true;
  o.shadow_queue = 1000;
  Served s(o);
  const std::vector<float> images = test::random_images(300, 11);
  ModelSource source = resolve_model(file, "", "");
  ModelVariant fp32(source, "32-true", 64), fp16(source, "16-true", 64);
  std::int64_t offline_agree = 0, compared = 0;
  for (std::int64_t first = 0, rows = 1; first < 300; first += rows, rows = rows % 5 + 1) {
    rows = std::min<std::int64_t>(rows, 300 - first);
    const Answer a = infer(*s.engine, "r" + std::to_string(first), images, first, rows);
    ASSERT_EQ(a.status, Answer::Status::ok);
    ASSERT_EQ(a.variant, "fp16");
    std::vector<float> ref(static_cast<std::size_t>(rows * 10)), low(ref.size());
    fp32.infer(images.data() + first * 784, rows, ref.data());
    fp16.infer(images.data() + first * 784, rows, low.data());
    EXPECT_EQ(low, a.logits);  // the canary answered what fp16 computes for this batch
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* x = ref.data() + r * 10;
      const float* y = low.data() + r * 10;
      offline_agree += std::max_element(x, x + 10) - x == std::max_element(y, y + 10) - y;
      ++compared;
    }
  }
  s.engine->drain_shadow();
  const std::string text = s.engine->metrics().text();
  EXPECT_EQ(metric(text, R"(mpx_serve_shadow_comparisons_total{variant="fp16"})"), compared);
  EXPECT_EQ(metric(text, R"(mpx_serve_shadow_agreements_total{variant="fp16"})"), offline_agree);
  EXPECT_DOUBLE_EQ(metric(text, R"(mpx_serve_shadow_agreement_ratio{variant="fp16"})"),
                   static_cast<double>(offline_agree) / static_cast<double>(compared));
  EXPECT_GE(metric(text, R"(mpx_serve_shadow_max_abs_logit_delta{variant="fp16"})"), 0);
}

// Requests from several threads while the windows are judged: none may fail, whatever the routing does.
struct Load {
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0}, nonfinite{0};
  std::vector<float> image;
  std::vector<std::thread> threads;
  Load(ServingEngine& e, std::vector<float> one_image) : image(std::move(one_image)) {
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; !stop.load(); ++i) {
          const Answer a = e.infer(std::to_string(t) + "-" + std::to_string(i), image, 1);
          (a.status == Answer::Status::ok ? ok : failed)++;
          for (const float v : a.logits) nonfinite += !std::isfinite(v);
        }
      });
    }
  }
  void finish() {
    stop = true;
    for (std::thread& t : threads) t.join();
  }
};

TEST(Serving, ACanaryGoingNanIsAnsweredByFp32AndRolledBackAfterTwoWindowsWithNoFailedRequest) {
  ServeOptions o = options_for(test::write_served_model("cnn", 2));
  o.canary_precision = "bf16";
  o.canary_share = 0.5;
  o.inject_nonfinite_canary_after = 0;
  o.slo = parse_slo("nonfinite=0");
  o.rollback_after = 2;
  Served s(o);
  Load load(*s.engine, test::random_images(1, 4));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE(s.engine->end_window().breached);
  EXPECT_EQ(s.engine->routing()["canary"], "bf16");  // one breached window: not yet
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE(s.engine->end_window().breached);
  const nlohmann::json routing = s.engine->routing();
  EXPECT_EQ(routing["primary"], "fp32");
  EXPECT_TRUE(routing["canary"].is_null());
  EXPECT_EQ(routing["state"], "rolled_back");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  load.finish();
  EXPECT_GT(load.ok.load(), 100);
  EXPECT_EQ(load.failed.load(), 0);
  EXPECT_EQ(load.nonfinite.load(), 0);  // NaN answers were re-run in FP32
  const std::string text = s.engine->metrics().text();
  EXPECT_GT(metric(text, R"(mpx_serve_fp32_fallbacks_total{variant="bf16"})"), 0);
  EXPECT_EQ(metric(text, R"(mpx_serve_rollbacks_total{from="bf16",to="fp32"})"), 1);
  EXPECT_EQ(metric(text, R"(mpx_serve_active_precision{precision="fp32"})"), 1);
  EXPECT_EQ(metric(text, R"(mpx_serve_active_precision{precision="bf16"})"), 0);
  const std::string events = s.event_lines();
  EXPECT_NE(events.find(R"("type":"rollback")"), std::string::npos) << events;
  EXPECT_NE(events.find("non-finite outputs > 0"), std::string::npos) << events;
}

TEST(Serving, ACanaryWithADamagedLayerIsRolledBackOnAgreement) {
  const std::string file = test::write_served_model("cnn", 6);
  ServeOptions o = options_for(file);
  o.canary_precision = "bf16";
  o.canary_weights = test::write_damaged_copy(file, "fc2.weight");
  o.canary_share = 1.0;
  o.shadow = true;
  o.slo = parse_slo("agreement=0.99");
  o.rollback_after = 2;
  Served s(o);
  const std::vector<float> images = test::random_images(40, 8);
  for (int window = 0; window < 2; ++window) {
    for (int i = 0; i < 40; ++i) EXPECT_EQ(infer(*s.engine, std::to_string(window * 40 + i), images, i, 1).status, Answer::Status::ok);
    s.engine->drain_shadow();
    const WindowVerdict v = s.engine->end_window();
    EXPECT_TRUE(v.breached);
    EXPECT_LT(*v.agreement, 0.9);
  }
  EXPECT_EQ(s.engine->routing()["primary"], "fp32");
  EXPECT_EQ(infer(*s.engine, "after", images, 0, 1).variant, "fp32");
}

TEST(Serving, RefusesAModelFileThatCannotBeServedAndSaysWhy) {
  ServeOptions o = options_for(test::serve_temp_path("missing.safetensors"));
  std::FILE* log = std::tmpfile();
  EventLog events(log);
  try {
    ServingEngine e(o, events);
    ADD_FAILURE() << "a missing file was served";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos);
  }
  const std::string damaged = test::serve_temp_path("garbage.safetensors");
  std::FILE* f = std::fopen(damaged.c_str(), "wb");
  std::fputs("not a safetensors file", f);
  std::fclose(f);
  o.model_or_run = damaged;
  EXPECT_THROW(ServingEngine(o, events), IoError);
  std::fclose(log);
}

struct Endpoints : ::testing::Test {
  std::string file = test::write_served_model("mlp", 7);
  std::unique_ptr<Served> served;
  std::unique_ptr<InferenceService> service;
  void SetUp() override {
    ServeOptions o = options_for(file);
    o.canary_precision = "bf16";
    o.canary_share = 0.5;
    served = std::make_unique<Served>(o);
    service = std::make_unique<InferenceService>(*served->engine, ServiceOptions{"fashion", "a-long-admin-token-0123"});
  }
  HttpResponse call(const std::string& method, const std::string& path, const std::string& body = "",
                    std::map<std::string, std::string> headers = {}) {
    return service->handle({method, path, body, std::move(headers)});
  }
  static std::string infer_body(const std::string& id) {
    return nlohmann::json{{"id", id}, {"inputs", {{{"name", "images"}, {"shape", {1, 784}}, {"datatype", "UINT8"},
                                                   {"data", std::vector<int>(784, 7)}}}}}.dump();
  }
};

TEST_F(Endpoints, AnswerTheOpenInferenceProtocol) {
  EXPECT_EQ(call("GET", "/v2/health/live").status, 200);
  EXPECT_EQ(call("GET", "/v2/health/ready").status, 200);
  EXPECT_EQ(nlohmann::json::parse(call("GET", "/v2").body)["extensions"][0], "binary_tensor_data");
  const nlohmann::json meta = nlohmann::json::parse(call("GET", "/v2/models/fashion").body);
  EXPECT_EQ(meta["inputs"][0]["name"], "images");
  EXPECT_EQ(meta["outputs"][1]["name"], "probabilities");
  EXPECT_EQ(call("GET", "/v2/models/fashion/versions/1").status, 200);
  EXPECT_EQ(nlohmann::json::parse(call("GET", "/v2/models/fashion/ready").body)["ready"], true);
  const HttpResponse r = call("POST", "/v2/models/fashion/infer", infer_body("abc"));
  ASSERT_EQ(r.status, 200) << r.body;
  const nlohmann::json j = nlohmann::json::parse(r.body);
  EXPECT_EQ(j["id"], "abc");
  EXPECT_EQ(j["model_name"], "fashion");
  EXPECT_EQ(j["outputs"][0]["shape"], nlohmann::json({1, 10}));
  double total = 0;
  for (const auto& p : j["outputs"][1]["data"]) total += p.get<double>();
  EXPECT_NEAR(total, 1, 1e-6);
  const std::string variant = j["parameters"]["variant"];
  EXPECT_TRUE(variant == "fp32" || variant == "bf16");
  EXPECT_EQ(call("POST", "/v2/models/fashion/versions/1/infer", infer_body("abc")).status, 200);
  const std::string metrics = call("GET", "/metrics").body;
  EXPECT_EQ(metric(metrics, "mpx_serve_requests_total{status=\"ok\",variant=\"" + variant + "\"}"), 2);
}

TEST_F(Endpoints, AnswerErrorsWithAStatusAndAJsonErrorBody) {
  auto expect_error = [&](const HttpResponse& r, int status, const std::string& words) {
    EXPECT_EQ(r.status, status) << r.body;
    const nlohmann::json j = nlohmann::json::parse(r.body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r.body;
    EXPECT_NE(j["error"].get<std::string>().find(words), std::string::npos) << r.body;
  };
  expect_error(call("POST", "/v2/models/fashion/infer", "{"), 400, "not valid JSON");
  expect_error(call("POST", "/v2/models/other/infer", infer_body("x")), 404, "unknown model 'other'");
  expect_error(call("GET", "/v2/models/fashion/versions/2"), 404, "version 1 only");
  expect_error(call("GET", "/v3/whatever"), 404, "no route");
  expect_error(call("GET", "/v2/models/fashion/infer"), 405, "takes POST");
  expect_error(call("POST", "/v2/health/live"), 405, "takes GET");
  nlohmann::json big = nlohmann::json::parse(infer_body("x"));
  big["inputs"][0]["shape"] = {65, 784};
  big["inputs"][0]["data"] = std::vector<int>(65 * 784, 1);
  expect_error(call("POST", "/v2/models/fashion/infer", big.dump()), 400, "--max-batch");
  const std::string metrics = call("GET", "/metrics").body;
  EXPECT_EQ(metric(metrics, R"(mpx_serve_requests_total{status="bad_request",variant="none"})"), 2);  // JSON, batch
  EXPECT_EQ(metric(metrics, R"(mpx_serve_requests_total{status="not_found",variant="none"})"), -1);  // not an infer
}

TEST_F(Endpoints, AdminRefusesWithoutTheTokenAndSwitchesWithIt) {
  const std::string rollback = R"({"action": "rollback"})";
  EXPECT_EQ(call("POST", "/admin/precision", rollback).status, 401);
  EXPECT_EQ(call("POST", "/admin/precision", rollback, {{"authorization", "Bearer wrong"}}).status, 401);
  EXPECT_EQ(served->engine->routing()["canary"], "bf16");  // nothing changed
  const std::map<std::string, std::string> auth = {{"authorization", "Bearer a-long-admin-token-0123"}};
  EXPECT_EQ(call("POST", "/admin/precision", R"({"action": "fly"})", auth).status, 400);
  HttpResponse r = call("POST", "/admin/precision", R"({"action": "promote"})", auth);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(nlohmann::json::parse(r.body)["primary"], "bf16");
  r = call("POST", "/admin/precision", R"({"action": "set", "precision": "fp16"})", auth);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(nlohmann::json::parse(call("POST", "/v2/models/fashion/infer", infer_body("z")).body)["parameters"]["variant"], "fp16");
  r = call("POST", "/admin/precision", R"({"action": "canary", "precision": "bf16", "share": 1.0})", auth);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(nlohmann::json::parse(call("POST", "/v2/models/fashion/infer", infer_body("z")).body)["parameters"]["variant"], "bf16");
  r = call("POST", "/admin/precision", rollback, auth);
  EXPECT_EQ(nlohmann::json::parse(r.body)["state"], "rolled_back");
  EXPECT_EQ(call("GET", "/admin/precision", "", auth).status, 200);
  InferenceService closed(*served->engine, ServiceOptions{"fashion", ""});
  EXPECT_EQ(closed.handle({"POST", "/admin/precision", rollback, {}}).status, 403);
  EXPECT_NE(served->event_lines().find(R"("type":"promote")"), std::string::npos);
}

TEST_F(Endpoints, DrainingRefusesNewRequestsWith503AndReportsNotReady) {
  served->engine->rollout().begin_drain();
  EXPECT_EQ(call("GET", "/v2/health/ready").status, 503);
  EXPECT_EQ(call("GET", "/v2/health/live").status, 200);
  const HttpResponse r = call("POST", "/v2/models/fashion/infer", infer_body("x"));
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.headers.at("Retry-After"), "1");
  EXPECT_TRUE(served->engine->rollout().wait_idle(1));
}

// Every metric the Grafana dashboard and the alert rules in docs/ query is one the server exports.
TEST(ServeMetrics, DashboardAndAlertRulesQueryExportedMetrics) {
  ServeMetrics m;
  m.record_request("bf16", "ok", 1e-3);
  m.record_phases("bf16", 1e-4, 5e-4);
  m.record_batch("bf16", 4);
  m.record_nonfinite("bf16", 1);
  m.record_fallback("bf16");
  m.record_shadow(compare_logits("bf16", std::vector<float>(10, 0).data(), std::vector<float>(10, 0).data(), 1, 10));
  m.record_shadow_dropped(1);
  m.set_routing("fp32", "bf16", 0.05);
  m.record_window("bf16", 1e-3, true);
  m.record_breach("p99_ms");
  m.record_rollback("bf16", "fp32");
  const std::string text = m.text();
  int checked = 0;
  for (const char* doc : {"/docs/grafana/mpx-serving.json", "/docs/alerts/mpx-serve.rules.yml"}) {
    std::ifstream in(std::string(MPX_SOURCE_DIR) + doc);
    ASSERT_TRUE(in) << doc << " missing";
    const std::string body((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::regex metric(R"(mpx_serve_[a-z0-9_]+)");
    for (auto it = std::sregex_iterator(body.begin(), body.end(), metric); it != std::sregex_iterator(); ++it) {
      const std::string name = it->str();  // histograms are queried as _bucket/_sum/_count, which the text holds
      EXPECT_NE(text.find("\n" + name), std::string::npos) << doc << ": " << name << " is not exported";
      ++checked;
    }
  }
  EXPECT_GT(checked, 15);
}

}  // namespace
}  // namespace mpx::serve
