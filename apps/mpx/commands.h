// Each subcommand registers itself on the root CLI11 app; files are one per subcommand.
// Commands signal failure by throwing (mpx::Error or CLI::Error); main() maps that to an exit code.
#pragma once

#include <CLI/CLI.hpp>

namespace mpx::cli {

// Thrown by a command whose check failed (a gate such as a checksum or a parity threshold): main() exits
// with `code` (1) after the command has printed its report.
struct CheckFailed {
  int code = 1;
};

void add_info_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_report_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_convert_command(CLI::App& app);
void add_parity_command(CLI::App& app);
void add_predict_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_bench_training_commands(CLI::App& bench);  // `bench matmul`, `bench train`
void add_bench_gpt_command(CLI::App& bench);        // `bench gpt`

}  // namespace mpx::cli
