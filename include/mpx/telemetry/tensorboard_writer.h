// TensorBoard event files (scalars and histograms) written without TensorFlow: TFRecord framing (length,
// masked CRC-32C of the length, the serialized Event protobuf, masked CRC-32C of it) around hand-encoded
// Event / Summary / HistogramProto messages. Files go to RUN/tensorboard/events.out.tfevents.<time>.<host>,
// readable by `tensorboard --logdir RUN`.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mpx/telemetry/numerics_monitor.h"

namespace mpx::telemetry {

// CRC-32C (Castagnoli), as TFRecord frames use; and its masked form.
std::uint32_t crc32c(std::string_view bytes);
std::uint32_t masked_crc32c(std::string_view bytes);

class TensorBoardWriter {
 public:
  // Creates `dir` if needed and opens a new event file there (throws IoError naming it).
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  void scalar(const std::string& tag, double value, std::int64_t step);
  // A histogram over log2|x| of one tensor: bucket edges at whole binades (TensorBoard draws the exponent
  // distribution); zeros and values below the telemetry range sit in the lowest bucket.
  void exponent_histogram(const std::string& tag, const TensorStats& stats, std::int64_t step);
  // Every activation and gradient of a numerics sample as histograms, plus headroom scalars per layer.
  void sample(const NumericsSample& sample);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_event(const std::string& event);
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace mpx::telemetry
