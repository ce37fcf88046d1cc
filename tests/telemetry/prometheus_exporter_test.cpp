// The Prometheus exporter: exposition text that parses (and passes `promtool check metrics` when it is
// installed), the numbers it was given, HTTP serving, and a clear error for a port in use.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>
#include <string>

#include "mpx/core/error.h"
#include "mpx/telemetry/prometheus_exporter.h"
#include "../support/free_port.h"

namespace mpx::telemetry {
namespace {

using test::free_port;

std::string http_get(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return "";
  }
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  (void)!::write(fd, request.data(), request.size());
  std::string response;
  char buffer[4096];
  for (ssize_t n; (n = ::read(fd, buffer, sizeof(buffer))) > 0;) response.append(buffer, static_cast<std::size_t>(n));
  ::close(fd);
  return response;
}

NumericsSample sample_with_nan() {
  NumericsSample s;
  s.step = 10;
  const std::vector<float> out = {1.0f, NAN, 3.0f}, grad = {1e-6f, 2e-3f, 0.5f};
  s.tensors.push_back({"fc1.output", "fc1", TensorKind::activation, DType::f32, compute_stats(out.data(), DType::f32, 3)});
  s.tensors.push_back(
      {"fc1.output_grad", "fc1", TensorKind::activation_grad, DType::f32, compute_stats(grad.data(), DType::f32, 3)});
  return s;
}

// Every sample line is `name{label="value",...} number`, every family has HELP and TYPE, counters end
// in _total, names carry the mpx_ prefix.
void expect_valid_exposition(const std::string& text) {
  const std::regex sample(R"(^(mpx_[a-z0-9_]+)(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?[0-9.e+-]+|[+-]Inf|NaN)$)");
  const std::regex type(R"(^# TYPE (mpx_[a-z0-9_]+) (counter|gauge|histogram)$)");
  std::istringstream in(text);
  std::string line;
  int samples = 0;
  while (std::getline(in, line)) {
    std::smatch m;
    if (line.rfind("# HELP ", 0) == 0) continue;
    if (std::regex_match(line, m, type)) {
      if (m[2] == "counter") {
        EXPECT_TRUE(m[1].str().ends_with("_total")) << line;
      }
      continue;
    }
    EXPECT_TRUE(std::regex_match(line, sample)) << line;
    ++samples;
  }
  EXPECT_GT(samples, 10);
  if (std::system("command -v promtool >/dev/null 2>&1") == 0) {
    const std::string path = testing::TempDir() + "/mpx_metrics.txt";
    std::ofstream(path) << text;
    EXPECT_EQ(std::system(("promtool check metrics < " + path + " >/dev/null").c_str()), 0) << "promtool rejected:\n" << text;
  }
}

TEST(PrometheusExporter, ExpositionParsesAndCarriesTheNumbers) {
  PrometheusExporter exporter("127.0.0.1", 0);
  exporter.record_step(1, 2.5, 1e-3, 65536, false, 128, 0.02);
  exporter.record_step(2, 2.4, 1e-3, 32768, true, 128, 0.02);
  exporter.record_epoch(1, 2.45, 0.875);
  exporter.record_sample(sample_with_nan());
  exporter.record_memory_peak("activations", 1048576);
  const std::string text = exporter.text();
  expect_valid_exposition(text);
  EXPECT_NE(text.find("mpx_train_steps_total 2"), std::string::npos) << text;
  EXPECT_NE(text.find("mpx_train_skipped_steps_total 1"), std::string::npos);
  EXPECT_NE(text.find("mpx_loss_scale_events_total{event=\"backoff\"} 1"), std::string::npos);
  EXPECT_NE(text.find("mpx_test_accuracy_ratio 0.875"), std::string::npos);
  EXPECT_NE(text.find("mpx_tensor_nonfinite_values_total{kind=\"activation\",layer=\"fc1\",value=\"nan\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("mpx_memory_peak_bytes{category=\"activations\"} 1048576"), std::string::npos);
  EXPECT_NE(text.find("mpx_fp16_headroom_binades{layer=\"fc1\",tensor=\"activation\"}"), std::string::npos);
  // The magnitude histogram holds the finite values: 1 and 3 (NaN not observed); 2^2 is the first bound above 3.
  EXPECT_NE(text.find("mpx_tensor_magnitude_count{kind=\"activation\",layer=\"fc1\"} 2"), std::string::npos) << text;
  EXPECT_NE(text.find("mpx_tensor_magnitude_bucket{kind=\"activation\",layer=\"fc1\",le=\"1\"} 0"), std::string::npos);
  EXPECT_NE(text.find("mpx_tensor_magnitude_bucket{kind=\"activation\",layer=\"fc1\",le=\"4\"} 2"), std::string::npos);
}

TEST(PrometheusExporter, AllReduceBytesTimeAndM9ErrorCarryTheirMode) {
  PrometheusExporter exporter("127.0.0.1", 0);
  exporter.record_step(1, 2.5, 1e-3, 65536, false, 128, 0.02);
  exporter.record_allreduce("bf16+ef", 1000, 0.5, 0.25, std::nullopt, 0.125);
  exporter.record_allreduce("bf16+ef", 500, 0.5, 0.25, 0.0025, 0.0625);
  exporter.record_allreduce("bf16+ef", 500, 0.5, 0.25, std::nullopt, std::nullopt);  // an unmeasured step
  const std::string text = exporter.text();
  expect_valid_exposition(text);
  EXPECT_NE(text.find("mpx_allreduce_bytes_total{mode=\"bf16+ef\"} 2000"), std::string::npos) << text;
  EXPECT_NE(text.find("mpx_allreduce_seconds_total{mode=\"bf16+ef\"} 1.5"), std::string::npos);
  EXPECT_NE(text.find("mpx_allreduce_wait_seconds_total{mode=\"bf16+ef\"} 0.75"), std::string::npos);
  EXPECT_NE(text.find("mpx_allreduce_relative_error{mode=\"bf16+ef\"} 0.0025"), std::string::npos);
  EXPECT_NE(text.find("mpx_allreduce_residual_norm{mode=\"bf16+ef\"} 0.0625"), std::string::npos);
}

// Every metric the Grafana dashboard in docs/ queries is one the exporter produces.
TEST(PrometheusExporter, GrafanaDashboardQueriesExistingMetrics) {
  std::ifstream in(std::string(MPX_SOURCE_DIR) + "/docs/grafana/mpx-training.json");
  ASSERT_TRUE(in) << "docs/grafana/mpx-training.json missing";
  const std::string dashboard((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  PrometheusExporter exporter("127.0.0.1", 0);
  exporter.record_step(1, 2.5, 1e-3, 65536, true, 128, 0.02);
  exporter.record_step(2, 2.5, 1e-3, 32768, true, 128, 0.02);
  exporter.record_epoch(1, 2.45, 0.875);
  exporter.record_sample(sample_with_nan());
  exporter.record_nonfinite({3, "fc1", "forward", {}, {}});
  exporter.record_memory_peak("activations", 1);
  const std::string text = exporter.text();
  const std::regex metric(R"(mpx_[a-z0-9_]+)");
  int checked = 0;
  for (auto it = std::sregex_iterator(dashboard.begin(), dashboard.end(), metric); it != std::sregex_iterator(); ++it) {
    const std::string name = it->str();
    if (name == "mpx_training") continue;  // the dashboard's uid
    EXPECT_NE(text.find("\n" + name), std::string::npos) << name << " is not exported";
    ++checked;
  }
  EXPECT_GT(checked, 10);
}

TEST(PrometheusExporter, ServesMetricsOverHttpAndRejectsAPortInUse) {
  const int port = free_port();
  PrometheusExporter exporter("127.0.0.1", port);
  exporter.record_step(1, 1.0, 1e-3, 1, false, 64, 0.01);
  EXPECT_EQ(exporter.url(), "http://127.0.0.1:" + std::to_string(port) + "/metrics");
  const std::string response = http_get(port, "/metrics");
  EXPECT_NE(response.find("200 OK"), std::string::npos) << response;
  EXPECT_NE(response.find("mpx_train_steps_total 1"), std::string::npos) << response;
  try {
    PrometheusExporter second("127.0.0.1", port);
    FAIL() << "a second exporter on the same port should fail";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(port)), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mpx::telemetry
