// `mpx inspect FILE [--json]`: a safetensors file's tensors (dtype, shape, bytes, min, max, mean,
// non-finite count), its metadata and whether its checksums verify (the data's; a checkpoint's training
// state's). Exit 1 when a recorded checksum does not match, 2 when the file is missing or not a valid
// safetensors file.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "mpx/io/safetensors.h"
#include "mpx/io/tensor_values.h"
#include "mpx/telemetry/json.h"
#include "mpx/train/trainer.h"

namespace mpx::cli {

namespace {

struct InspectOptions {
  std::string file;
  bool json = false;
};

int run_inspect(const InspectOptions& o) {
  const io::SafetensorsFile f = io::SafetensorsFile::read(o.file, /*verify_checksum=*/false);
  nlohmann::json tensors = nlohmann::json::array();
  std::uint64_t total_bytes = 0;
  if (!o.json) fmt::print("{}\n", o.file);
  for (const io::SafetensorsEntry& e : f.tensors()) {
    const auto values = io::widen_to_double(f.data(e), e.dtype);
    const io::ValueSummary s = io::summarize(values);
    f.release(e);
    total_bytes += e.end - e.begin;
    tensors.push_back({{"name", e.name}, {"dtype", std::string(name(e.dtype))}, {"shape", e.shape},
                       {"bytes", e.end - e.begin}, {"min", telemetry::json_number(s.min)},
                       {"max", telemetry::json_number(s.max)}, {"mean", telemetry::json_number(s.mean)},
                       {"nonfinite", s.nonfinite}});
    if (!o.json) {
      fmt::print("  {:<28} {:<8} {:<18} {:>10} B  min {:<11.4g} max {:<11.4g} mean {:<11.4g} non-finite {}\n", e.name,
                 name(e.dtype), to_string(e.shape), e.end - e.begin, s.min, s.max, s.mean, s.nonfinite);
    }
  }
  const bool checkpoint = f.metadata().count("mpx.checkpoint") > 0;
  const std::string state = train::checkpoint_state_status(f);
  if (o.json) {
    nlohmann::json out = {{"file", o.file},           {"tensors", tensors},
                          {"metadata", f.metadata()}, {"data_bytes", total_bytes},
                          {"checksum", f.checksum_status()}};
    if (checkpoint) out["state_checksum"] = state;
    fmt::print("{}\n", out.dump(2));
  } else {
    fmt::print("  {} tensors, {} bytes of data\n", f.tensors().size(), total_bytes);
    for (const auto& [key, value] : f.metadata()) fmt::print("  metadata {} = {}\n", key, value);
    fmt::print("  checksum: {}\n", f.checksum_status());
    if (checkpoint) fmt::print("  checkpoint state checksum: {}\n", state);
  }
  int code = 0;
  if (f.checksum_status() == "mismatch") {
    fmt::print(stderr, "mpx: {}: checksum mismatch: the data differs from what was written (the file is damaged)\n",
               o.file);
    code = 1;
  }
  if (state == "mismatch") {
    fmt::print(stderr, "mpx: {}: checksum mismatch: the checkpoint's training state differs from what was written "
               "(the file is damaged or was edited)\n", o.file);
    code = 1;
  }
  return code;
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto o = std::make_shared<InspectOptions>();
  CLI::App* cmd = app.add_subcommand("inspect", "Tensors, statistics, metadata and checksum of a safetensors file");
  cmd->add_option("file", o->file, "A .safetensors file")->required();
  cmd->add_flag("--json", o->json, "Print JSON");
  cmd->callback([o] {
    const int code = run_inspect(*o);
    if (code != 0) throw CheckFailed{code};
  });
}

}  // namespace mpx::cli
