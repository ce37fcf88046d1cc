// mpx: the command-line tool. Parsing and printing only; the work lives in the library.
// Exit codes: 0 success, 1 a check failed (later: parity gates), 2 usage error or failure.
#include <cstdio>
#include <exception>

#include "commands.h"
#include "mpx/build_info.h"
#include "mpx/core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"mpx: mixed-precision training and inference (FP16/BF16/FP8 with FP32 where it matters)", "mpx"};
  app.set_version_flag("--version", std::string("mpx ") + mpx::build::kVersion);
  app.require_subcommand(1);
  mpx::cli::add_info_command(app);
  mpx::cli::add_train_command(app);
  mpx::cli::add_report_command(app);
  mpx::cli::add_inspect_command(app);
  mpx::cli::add_convert_command(app);
  mpx::cli::add_parity_command(app);
  mpx::cli::add_predict_command(app);
  mpx::cli::add_serve_command(app);
  mpx::cli::add_bench_command(app);
  mpx::cli::add_generate_command(app);
  if (argc > 1 && argv[1][0] != '-') {
    try {
      app.get_subcommand(argv[1]);
    } catch (const CLI::OptionNotFound&) {
      std::fprintf(stderr, "mpx: unknown command '%s'; run `mpx --help` for the list\n", argv[1]);
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  } catch (const mpx::cli::CheckFailed& failed) {
    return failed.code;
  } catch (const mpx::Error& e) {
    std::fprintf(stderr, "mpx: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mpx: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
