// The files of a training run: the effective config, metrics.jsonl (one JSON object per logged step and
// per epoch) and summary.json. JSON files are written atomically (temporary file, fsync, rename, fsync of
// the directory), so a crash never leaves a half-written summary over a good one.
#pragma once

#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "mpx/telemetry/json.h"

namespace mpx::train {

// A JSON value for a double that keeps non-finite values explicit ("NaN", "Infinity", "-Infinity")
// instead of nlohmann's null.
using telemetry::json_number;

// Writes `value` to `path` atomically. Throws IoError naming the path (and leaves any old file intact).
void write_json_atomic(const std::string& path, const nlohmann::json& value);
void write_text_atomic(const std::string& path, const std::string& text);

class RunDirectory {
 public:
  // Creates the directory if needed and checks that it is writable: throws IoError before any training.
  explicit RunDirectory(std::string path);
  ~RunDirectory();
  RunDirectory(const RunDirectory&) = delete;
  RunDirectory& operator=(const RunDirectory&) = delete;

  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const;
  void append_metrics(const nlohmann::json& record);  // one line of metrics.jsonl, flushed

 private:
  std::string path_;
  std::FILE* metrics_ = nullptr;
};

}  // namespace mpx::train
