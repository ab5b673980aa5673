#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "srgpt/checkpoint.h"
#include "srgpt/cli.h"
#include "srgpt/data.h"
#include "srgpt/error.h"
#include "srgpt/prepare.h"
#include "srgpt/trainer.h"

namespace srgpt {

void add_eval_command(CLI::App& app) {
  struct Args {
    std::string checkpoint, data;
    int64_t max_tokens = 0;
    int batch = 0, seq_len = 0;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("eval", "Mean loss, perplexity and bits per byte of a checkpoint on token shards");
  add_checkpoint_option(*cmd, args->checkpoint);
  cmd->add_option("--data", args->data, "Glob pattern of token shards, e.g. 'data/demo/val_*.bin'")->required();
  cmd->add_option("--max-tokens", args->max_tokens,
                  "Evaluate about this many tokens: rounded down to whole sequences, at least one; 0 (the default): "
                  "the whole split")
      ->check(integer_at_least<int64_t>(0));
  cmd->add_option("--batch", args->batch, "Sequences per batch (default: the checkpoint's batch.micro_batch)")
      ->check(integer_at_least<int>(1));
  cmd->add_option("--seq-len", args->seq_len, "Tokens per sequence (default: the checkpoint's batch.seq_len)")
      ->check(integer_at_least<int>(1));
  cmd->footer("Prints a human-readable line, then one JSON object: {\"loss\", \"perplexity\", \"tokens\", \"step\"},\n"
              "plus \"bits_per_byte\" when the shards were written by `srgpt prepare` (its summary.json gives the\n"
              "split's bytes per token): bits_per_byte = loss / ln(2) / bytes_per_token.\n"
              "Sequences are the non-overlapping windows of seq_len + 1 tokens at multiples of seq_len in each\n"
              "shard, in file order; all of them (the last batch may be partial, and is computed at full size),\n"
              "so --batch changes only the speed and memory, not the result; a --batch above the number of\n"
              "sequences is lowered to it.\n"
              "Training's val loss is measured on the same sequences (train.eval_tokens as --max-tokens).");
  cmd->callback([args]() {
    CheckpointReader reader(resolve_checkpoint_dir(args->checkpoint));
    const Config trained = checkpoint_config(reader);
    const int seq_len = inference_seq_len(trained, args->seq_len);
    const std::vector<std::string> files = expand_shard_pattern(args->data, "--data");
    const TokenLoader loader = with_error_context(
        "--data", [&] { return TokenLoader(files, 1, seq_len, 0, 1, trained.model.vocab_size, false, 0); });
    // No larger than the data: a batch of rows that would repeat sample 0
    // costs memory and time for nothing.
    const int64_t samples = evaluation_samples(loader, args->max_tokens);
    const int batch = int(std::min<int64_t>(args->batch > 0 ? args->batch : trained.batch.micro_batch, samples));
    LoadedModel lm = load_model_for_inference(reader, batch, seq_len);
    if (const auto warning = loader.skipped_shards_warning("--data"))
      std::fprintf(stderr, "srgpt: warning: %s\n", warning->c_str());
    // Read before the evaluation, so a damaged summary.json stops it at once.
    const std::optional<PreparedSplit> prepared = prepared_split(files);
    const std::optional<double> bytes_per_token = prepared ? prepared->bytes_per_token() : std::nullopt;
    if (prepared)
      if (const auto warning =
              vocabulary_mismatch(*prepared, lm.config.model.vocab_size, "--data", ShardUse::evaluation))
        std::fprintf(stderr, "srgpt: warning: %s\n", warning->c_str());
    EvalResult r = evaluate(*lm.model, loader, args->max_tokens);
    // Finite weights can still overflow the forward pass (a diverged run's).
    if (!std::isfinite(r.loss))
      fail("checkpoint at step {}: its mean loss over {} tokens is {}: its weights are finite but overflow the "
           "forward pass (the run diverged); evaluate an earlier checkpoint",
           lm.step, r.tokens, r.loss);
    std::printf("step %lld | tokens %lld | loss %.6f | perplexity %.4f", (long long)lm.step, (long long)r.tokens,
                r.loss, r.perplexity());
    nlohmann::json j{{"step", lm.step}, {"tokens", r.tokens}, {"loss", r.loss}, {"perplexity", r.perplexity()}};
    if (bytes_per_token) {
      const double bits_per_byte = r.loss / std::log(2.0) / *bytes_per_token;
      std::printf(" | bits/byte %.4f", bits_per_byte);
      j["bits_per_byte"] = bits_per_byte;
    }
    std::printf("\n");
    std::printf("%s\n", j.dump().c_str());
  });
}

}  // namespace srgpt
