// `srgpt prepare`: text files -> token shards + summary.json.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "srgpt/cli.h"
#include "srgpt/prepare.h"

namespace srgpt {

namespace {

void print_split(const char* name, const SplitSummary& split) {
  std::printf("%-5s  %10lld documents  %14lld bytes  %14lld tokens  %4zu shard(s)  %lld with invalid UTF-8\n", name,
              static_cast<long long>(split.documents), static_cast<long long>(split.bytes),
              static_cast<long long>(split.tokens), split.shards.size(),
              static_cast<long long>(split.invalid_utf8_documents));
}

}  // namespace

void add_prepare_command(CLI::App& app) {
  struct Args {
    PrepareOptions options;
    std::string split = "files";
    bool no_progress = false;
  };
  auto args = std::make_shared<Args>();
  PrepareOptions& options = args->options;
  CLI::App* cmd = app.add_subcommand(
      "prepare", "Tokenize text files into train/val token shards (llm.c format) and a summary.json");
  cmd->add_option("--input", options.inputs, "Text files or glob patterns (quote globs: 'corpus/*.txt')")
      ->required();
  cmd->add_option("--tokenizer", options.tokenizer, "Tokenizer: gpt2 or byte")
      ->check(CLI::IsMember({"gpt2", "byte"}))
      ->capture_default_str();
  const CLI::Option* tokenizer_dir =
      cmd->add_option("--tokenizer-dir", options.tokenizer_dir,
                      "Directory with GPT-2's encoder.json and vocab.bpe (default data/tokenizer/gpt2)");
  cmd->add_option("--out", options.out_dir, "Output directory for the shards and summary.json")
      ->required()
      ->check(non_empty_path("the directory to write the shards to"));
  cmd->add_option("--split", args->split,
                  "Documents: files (one per file), paragraphs (blank-line separated) or lines (one per line)")
      ->check(CLI::IsMember({"files", "paragraphs", "lines"}))
      ->capture_default_str();
  cmd->add_option("--val-fraction", options.val_fraction, "Fraction of documents that go to the val split, in [0, 1)")
      ->check(real_number())
      ->capture_default_str();
  cmd->add_option("--shard-tokens", options.shard_tokens, "Tokens per shard")
      ->check(integer_in_range(1, std::numeric_limits<int32_t>::max()))
      ->capture_default_str();
  cmd->add_option("--seed", options.seed, "Seed of the train/val assignment")
      ->check(integer_at_least<uint64_t>(0))
      ->capture_default_str();
  cmd->add_flag("--no-progress", args->no_progress, "Print no progress on stderr");
  cmd->callback([args, tokenizer_dir]() {
    if (args->options.tokenizer == "byte") warn_unused_option(*tokenizer_dir, "the byte tokenizer reads no files");
    args->options.split = parse_document_split(args->split);
    args->options.show_progress = !args->no_progress;
    const PrepareSummary summary = prepare_dataset(args->options);
    std::printf("prepared %zu input file(s), %lld bytes, with the %s tokenizer (vocab %d, documents by %s)\n",
                summary.inputs.size(), static_cast<long long>(summary.input_bytes), summary.tokenizer.c_str(),
                summary.vocab_size, summary.document_split.c_str());
    print_split("train", summary.train);
    print_split("val", summary.val);
    std::printf("wrote %s/summary.json\n", args->options.out_dir.c_str());
    if (summary.val.documents == 0 && summary.val_fraction > 0) {
      std::fprintf(stderr,
                   "srgpt: warning: the val split is empty: a single document cannot be split; "
                   "try --split paragraphs or --split lines\n");
    }
  });
}

}  // namespace srgpt
