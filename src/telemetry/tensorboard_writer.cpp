#include "mpx/telemetry/tensorboard_writer.h"

#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "mpx/core/error.h"

namespace mpx::telemetry {

namespace {

constexpr std::array<std::uint32_t, 256> make_crc32c_table() {
  std::array<std::uint32_t, 256> table{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // reflected Castagnoli
    table[i] = c;
  }
  return table;
}
constexpr auto kCrc32cTable = make_crc32c_table();

// Protocol-buffer encoding, the few wire forms Event needs.
void varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
void tag(std::string& out, int field, int wire) { varint(out, static_cast<std::uint64_t>(field << 3 | wire)); }
void fixed64(std::string& out, double v) {
  const auto bits = std::bit_cast<std::uint64_t>(v);
  for (int i = 0; i < 8; ++i) out += static_cast<char>((bits >> (8 * i)) & 0xFF);
}
void fixed32(std::string& out, float v) {
  const auto bits = std::bit_cast<std::uint32_t>(v);
  for (int i = 0; i < 4; ++i) out += static_cast<char>((bits >> (8 * i)) & 0xFF);
}
void double_field(std::string& out, int field, double v) {
  tag(out, field, 1);
  fixed64(out, v);
}
void bytes_field(std::string& out, int field, std::string_view bytes) {
  tag(out, field, 2);
  varint(out, bytes.size());
  out.append(bytes);
}
void packed_doubles(std::string& out, int field, const std::vector<double>& values) {
  std::string body;
  for (double v : values) fixed64(body, v);
  bytes_field(out, field, body);
}

double wall_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Event { double wall_time = 1; int64 step = 2; oneof { string file_version = 3; Summary summary = 5; } }
std::string event(std::int64_t step, const std::string* file_version, const std::string* summary) {
  std::string e;
  double_field(e, 1, wall_time());
  tag(e, 2, 0);
  varint(e, static_cast<std::uint64_t>(step));
  if (file_version) bytes_field(e, 3, *file_version);
  if (summary) bytes_field(e, 5, *summary);
  return e;
}

}  // namespace

std::uint32_t crc32c(std::string_view bytes) {
  std::uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : bytes) c = kCrc32cTable[(c ^ b) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

std::uint32_t masked_crc32c(std::string_view bytes) {
  const std::uint32_t c = crc32c(bytes);
  return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  char host[256] = "localhost";
  ::gethostname(host, sizeof(host) - 1);
  path_ = (std::filesystem::path(dir) /
           ("events.out.tfevents." + std::to_string(static_cast<long long>(wall_time())) + "." + host + ".mpx"))
              .string();
  file_ = std::fopen(path_.c_str(), "wb");
  if (!file_) throw IoError("cannot create TensorBoard event file " + path_ + ": " + std::strerror(errno));
  const std::string version = "brain.Event:2";
  write_event(event(0, &version, nullptr));
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_) std::fclose(file_);
}

void TensorBoardWriter::write_event(const std::string& data) {
  std::string header;
  const std::uint64_t length = data.size();
  for (int i = 0; i < 8; ++i) header += static_cast<char>((length >> (8 * i)) & 0xFF);
  std::string record = header;
  const std::uint32_t header_crc = masked_crc32c(header), data_crc = masked_crc32c(data);
  for (int i = 0; i < 4; ++i) record += static_cast<char>((header_crc >> (8 * i)) & 0xFF);
  record += data;
  for (int i = 0; i < 4; ++i) record += static_cast<char>((data_crc >> (8 * i)) & 0xFF);
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size()) {
    throw IoError("cannot write TensorBoard event file " + path_ + " (disk full?): " + std::strerror(errno));
  }
}

void TensorBoardWriter::flush() { std::fflush(file_); }

// Summary { repeated Value value = 1; }  Value { string tag = 1; float simple_value = 2; HistogramProto histo = 5; }
void TensorBoardWriter::scalar(const std::string& name, double value, std::int64_t step) {
  std::string v;
  bytes_field(v, 1, name);
  tag(v, 2, 5);
  fixed32(v, static_cast<float>(value));
  std::string summary;
  bytes_field(summary, 1, v);
  write_event(event(step, nullptr, &summary));
}

// HistogramProto { double min = 1, max = 2, num = 3, sum = 4, sum_squares = 5;
//                  repeated double bucket_limit = 6 [packed]; repeated double bucket = 7 [packed]; }
void TensorBoardWriter::exponent_histogram(const std::string& name, const TensorStats& s, std::int64_t step) {
  std::vector<double> limits, counts;
  double num = 0, sum = 0, sum_sq = 0, lo = 0, hi = 0;
  bool any = false;
  for (int b = 0; b < TensorStats::kBuckets; ++b) {
    const auto n = static_cast<double>(s.histogram[static_cast<std::size_t>(b)]);
    const double binade = TensorStats::kMinBinade + b - 1;  // bucket b holds [2^binade, 2^(binade+1))
    limits.push_back(binade + 1);
    counts.push_back(n);
    if (n == 0) continue;
    const double centre = binade + 0.5;
    if (!any) lo = binade;
    hi = binade + 1;
    any = true;
    num += n;
    sum += n * centre;
    sum_sq += n * centre * centre;
  }
  std::string h;
  double_field(h, 1, lo);
  double_field(h, 2, hi);
  double_field(h, 3, num);
  double_field(h, 4, sum);
  double_field(h, 5, sum_sq);
  packed_doubles(h, 6, limits);
  packed_doubles(h, 7, counts);
  std::string v;
  bytes_field(v, 1, name);
  bytes_field(v, 5, h);
  std::string summary;
  bytes_field(summary, 1, v);
  write_event(event(step, nullptr, &summary));
}

void TensorBoardWriter::sample(const NumericsSample& sample) {
  for (const TensorRecord& r : sample.tensors) {
    if (r.kind == TensorKind::activation || r.kind == TensorKind::activation_grad || r.kind == TensorKind::weight_grad) {
      exponent_histogram("log2_abs/" + r.tensor, r.stats, sample.step);
    }
    if (r.stats.nonfinite() > 0) scalar("nonfinite/" + r.tensor, static_cast<double>(r.stats.nonfinite()), sample.step);
  }
  for (const LayerHeadroom& h : layer_headroom(sample)) {
    if (std::isfinite(h.activation_headroom)) {
      scalar("fp16_headroom_binades/" + h.layer, h.activation_headroom, sample.step);
    }
    scalar("fp16_gradient_underflow/" + h.layer, h.underflow_unscaled, sample.step);
  }
  flush();
}

}  // namespace mpx::telemetry
