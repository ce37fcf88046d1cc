// `mpx report RUN_DIR [--out FILE]`: the run's self-contained HTML report.
#include <fmt/format.h>

#include "commands.h"
#include "mpx/report/html_report.h"

namespace mpx::cli {

void add_report_command(CLI::App& app) {
  auto run_dir = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("report", "Write a run's HTML report (loss, loss scale, numerics, headroom)");
  cmd->add_option("run", *run_dir, "Run directory written by mpx train (runs/NAME)")->required();
  cmd->add_option("--out", *out, "Output file (default RUN/report.html)");
  cmd->callback([run_dir, out] { fmt::print("report: {}\n", report::write_run_report(*run_dir, *out)); });
}

}  // namespace mpx::cli
