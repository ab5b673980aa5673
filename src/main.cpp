// srgpt: pure-BF16 GPT training with stochastic-rounding AdamW.
#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "srgpt/cli.h"
#include "srgpt/error.h"

int main(int argc, char** argv) {
  CLI::App app{"srgpt: train GPT-2 models in pure BF16 with stochastic-rounding AdamW"};
  app.require_subcommand(1);
  srgpt::add_train_command(app);
  srgpt::add_eval_command(app);
  srgpt::add_info_command(app);
  spdlog::set_pattern("[%H:%M:%S] %v");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const srgpt::Error& e) {
    std::fprintf(stderr, "srgpt: error: %s\n", e.what());
    return 1;
  } catch (const nlohmann::json::exception& e) {
    std::fprintf(stderr, "srgpt: error: malformed JSON: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "srgpt: error: out of host memory; reduce batch.micro_batch or the model size\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "srgpt: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
