#include "mpx/train/run/run_files.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <filesystem>

#include "mpx/core/error.h"
#include "mpx/io/atomic_file.h"

namespace mpx::train {

namespace fs = std::filesystem;

namespace {
[[noreturn]] void io_fail(const std::string& what, const std::string& path) {
  throw IoError(what + " " + path + ": " + std::strerror(errno));
}
}  // namespace

void write_json_atomic(const std::string& path, const nlohmann::json& value) {
  write_text_atomic(path, value.dump(2) + "\n");
}

void write_text_atomic(const std::string& path, const std::string& text) { io::write_file_atomic(path, text); }

RunDirectory::RunDirectory(std::string path) : path_(std::move(path)) {
  std::error_code ec;
  if (fs::exists(path_, ec) && !fs::is_directory(path_, ec)) {
    throw IoError("cannot create run directory " + path_ + ": a file of that name exists (not a directory)");
  }
  created_ = fs::create_directories(path_, ec);
  if (ec || !fs::is_directory(path_)) {
    throw IoError("cannot create run directory " + path_ + ": " + (ec ? ec.message() : "not a directory"));
  }
  // Writable? A probe file, removed at once: what the directory holds is not touched before begin().
  const std::string probe = file(".mpx-write-check");
  std::FILE* f = std::fopen(probe.c_str(), "w");
  if (!f) {
    const int error = errno;
    if (created_) fs::remove(path_, ec);
    errno = error;
    io_fail("run directory is not writable: cannot create", probe);
  }
  std::fclose(f);
  fs::remove(probe, ec);
}

RunDirectory::~RunDirectory() {
  if (metrics_) {
    std::fclose(metrics_);
  } else if (created_) {
    std::error_code ec;
    fs::remove_all(path_, ec);  // a run that failed before it began leaves nothing behind
  }
}

namespace {
// The records of a resumed run's metrics.jsonl that describe steps before its checkpoint.
bool before_checkpoint(const nlohmann::json& record, const RunDirectory::Resume& resumed) {
  if (!record.is_object()) return false;
  if (record.value("type", "") == "epoch") return record.value("epoch", 0) < resumed.epoch;
  if (record.contains("step") && record["step"].is_number()) return record["step"].get<std::int64_t>() <= resumed.step;
  return true;
}
}  // namespace

void RunDirectory::begin(const std::optional<Resume>& resumed) {
  const std::string metrics = file("metrics.jsonl");
  if (resumed && fs::exists(metrics)) {
    std::FILE* in = std::fopen(metrics.c_str(), "r");
    if (!in) io_fail("cannot read", metrics);
    std::string kept, line;
    for (int c; (c = std::fgetc(in)) != EOF;) {
      if (c != '\n') {
        line.push_back(static_cast<char>(c));
        continue;
      }
      const nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
      if (!record.is_discarded() && before_checkpoint(record, *resumed)) kept += line + "\n";
      line.clear();
    }
    std::fclose(in);  // an unterminated last line is a torn write: dropped
    write_text_atomic(metrics, kept);
  }
  metrics_ = std::fopen(metrics.c_str(), resumed ? "a" : "w");
  if (!metrics_) io_fail("run directory is not writable: cannot create", metrics);
}

std::string RunDirectory::file(const std::string& name) const { return (fs::path(path_) / name).string(); }

void RunDirectory::append_metrics(const nlohmann::json& record) {
  if (!metrics_) throw std::logic_error("RunDirectory::append_metrics before begin()");
  const std::string line = record.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), metrics_) != line.size() || std::fflush(metrics_) != 0) {
    io_fail("cannot append to", file("metrics.jsonl"));
  }
}

}  // namespace mpx::train
