// Each subcommand registers itself on the root CLI11 app; files are one per subcommand.
// Commands signal failure by throwing (mpx::Error or CLI::Error); main() maps that to an exit code.
#pragma once

#include <CLI/CLI.hpp>

namespace mpx::cli {

void add_info_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_report_command(CLI::App& app);
void add_bench_training_commands(CLI::App& bench);  // `bench matmul`, `bench train`

}  // namespace mpx::cli
