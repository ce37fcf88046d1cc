// The files of a training run: the effective config, metrics.jsonl (one JSON object per logged step and
// per epoch) and summary.json. JSON files are written atomically (temporary file, fsync, rename, fsync of
// the directory), so a crash never leaves a half-written summary over a good one.
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
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

// A run directory is touched only once everything a run needs has been checked: the constructor only
// checks (creating the directory when it is new, and removing it again unless the run starts), and
// begin() is the first write.
class RunDirectory {
 public:
  // Creates the directory if needed and checks that it is writable (without touching what is in it):
  // throws IoError before any training.
  explicit RunDirectory(std::string path);
  // A directory this object created is removed again when the run never began (it failed before step 1).
  ~RunDirectory();
  RunDirectory(const RunDirectory&) = delete;
  RunDirectory& operator=(const RunDirectory&) = delete;

  // Opens metrics.jsonl. A fresh run starts it empty; a run resumed from its own checkpoint keeps the
  // history up to that point (step records up to `resumed_step`, epoch records before `resumed_epoch`,
  // rewritten atomically; a torn last line from a killed run is dropped) and appends after it.
  struct Resume {
    std::int64_t step = 0;  // steps done at the checkpoint
    int epoch = 1;          // the epoch it continues
  };
  void begin(const std::optional<Resume>& resumed = std::nullopt);

  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const;
  void append_metrics(const nlohmann::json& record);  // one line of metrics.jsonl, flushed

 private:
  std::string path_;
  bool created_ = false;  // by this object (and so removed if the run never began)
  std::FILE* metrics_ = nullptr;
};

}  // namespace mpx::train
