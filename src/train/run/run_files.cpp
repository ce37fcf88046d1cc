#include "mpx/train/run/run_files.h"

#include <cerrno>
#include <cmath>
#include <cstring>
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
  fs::create_directories(path_, ec);
  if (ec || !fs::is_directory(path_)) {
    throw IoError("cannot create run directory " + path_ + ": " + (ec ? ec.message() : "not a directory"));
  }
  const std::string metrics = file("metrics.jsonl");
  metrics_ = std::fopen(metrics.c_str(), "w");
  if (!metrics_) io_fail("run directory is not writable: cannot create", metrics);
}

RunDirectory::~RunDirectory() {
  if (metrics_) std::fclose(metrics_);
}

std::string RunDirectory::file(const std::string& name) const { return (fs::path(path_) / name).string(); }

void RunDirectory::append_metrics(const nlohmann::json& record) {
  const std::string line = record.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), metrics_) != line.size() || std::fflush(metrics_) != 0) {
    io_fail("cannot append to", file("metrics.jsonl"));
  }
}

}  // namespace mpx::train
