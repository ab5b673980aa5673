// srgpt: pure-BF16 GPT training with stochastic-rounding AdamW.
#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "srgpt/cli.h"
#include "srgpt/communicator.h"
#include "srgpt/error.h"

namespace {

// One line on stderr and a non-zero exit; under an MPI launcher the whole
// job is brought down so no other rank waits forever for this one.
int report_error(const std::string& msg) {
  bool mpi = false;
  try {
    mpi = srgpt::launched_under_mpi();
  } catch (const std::exception&) {
  }
  if (mpi) srgpt::abort_job(1, "error: " + msg);
  std::fprintf(stderr, "srgpt: error: %s\n", msg.c_str());
  return 1;
}

// The srgpt command line, every error reported as one line.
int run(int argc, char** argv) {
  CLI::App app{"srgpt: train GPT-2 models in pure BF16 with stochastic-rounding AdamW"};
  app.require_subcommand(1);
  srgpt::add_train_command(app);
  srgpt::add_eval_command(app);
  srgpt::add_info_command(app);
  srgpt::add_prepare_command(app);
  srgpt::add_sample_command(app);
  srgpt::add_export_command(app);
  srgpt::add_import_command(app);
  spdlog::set_pattern("[%H:%M:%S] %v");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const srgpt::Error& e) {
    return report_error(e.what());
  } catch (const nlohmann::json::exception& e) {
    // Parse errors are srgpt::Errors (parse_json); this is a JSON file's
    // content of an unexpected type or shape.
    return report_error(std::string("unexpected JSON content: ") + e.what());
  } catch (const std::bad_alloc&) {
    // Only training and evaluation size their memory by the config.
    const auto commands = app.get_subcommands();
    const std::string command = commands.empty() ? "" : commands.front()->get_name();
    const bool sized_by_config = command == "train" || command == "eval";
    return report_error("out of host memory in `srgpt " + command + "`" +
                        (sized_by_config ? "; a smaller batch.micro_batch or model needs less" : ""));
  } catch (const std::exception& e) {
    return report_error(e.what());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::bad_alloc&) {  // while setting up the command line
    return report_error("out of host memory while starting");
  }
}
