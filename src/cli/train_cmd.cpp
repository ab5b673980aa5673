#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "srgpt/cli.h"
#include "srgpt/config.h"
#include "srgpt/trainer.h"

namespace srgpt {

void add_train_command(CLI::App& app) {
  struct Args {
    std::string config;
    std::vector<std::string> overrides;
    bool resume = false;
    std::string resume_from;
    int64_t stop_after = 0;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("train", "Train a model from a JSON config (docs/config.md)");
  cmd->add_option("-c,--config", args->config, "JSON run config, e.g. configs/demo.json")->required();
  cmd->add_option("--set", args->overrides,
                  "Override a config key, e.g. --set optimizer.lr=1e-3 --set precision=mixed (repeatable; the value "
                  "is parsed as JSON, else taken as a string)");
  CLI::Option* resume = cmd->add_flag(
      "--resume", args->resume, "Continue from the newest checkpoint in <out_dir>/checkpoints (start fresh if there is none)");
  cmd->add_option("--resume-from", args->resume_from,
                  "Continue from this checkpoint directory, or from the newest checkpoint of this run directory")
      ->excludes(resume)
      ->check(non_empty_path("a checkpoint or run directory"));
  cmd->add_option("--stop-after", args->stop_after,
                  "Write a checkpoint and stop after this step (for time-sliced jobs; resume later with --resume)")
      ->check(integer_at_least<int64_t>(1));
  cmd->footer(
      "Logs one line per step (loss, lr, grad norm, tokens/s) and appends metrics to <out_dir>/metrics.jsonl.\n"
      "Checkpoints go to <out_dir>/checkpoints/step_NNNNNNNN. SIGTERM or SIGINT finishes the current step,\n"
      "writes a checkpoint and exits with status 0; another one a second or more later kills at once.\n"
      "Data parallel: mpirun -np N srgpt train --config run.json (every rank runs the same command;\n"
      "dist.zero_stage and dist.communicator in the config; see docs/distributed.md).");
  cmd->callback([args]() {
    Config config = load_config(args->config, args->overrides);
    TrainOptions opts;
    opts.resume = args->resume;
    if (!args->resume_from.empty()) opts.resume_from = resolve_checkpoint_dir(args->resume_from);
    opts.stop_after_step = args->stop_after;
    Trainer trainer(std::move(config), opts);
    TrainResult r = trainer.run();
    // Every rank has the same value; one line for the job.
    if (r.val_loss && trainer.comm().rank() == 0)
      std::printf("val_loss %.6f perplexity %.4f\n", *r.val_loss, std::exp(*r.val_loss));
  });
}

}  // namespace srgpt
