#pragma once
// `srgpt prepare`: text files -> llm.c token shards with a deterministic
// train/val split and a summary.json (docs/formats.md, docs/tokenizer.md).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace srgpt {

// How input files are cut into documents; every document is followed by the
// tokenizer's eot_token() in the shards.
enum class DocumentSplit {
  Files,       // a non-empty file is one document, byte for byte
  Paragraphs,  // runs of non-blank lines, separated by blank (whitespace-only) lines
  Lines,       // each non-blank line
};
DocumentSplit parse_document_split(const std::string& name);  // "files" | "paragraphs" | "lines"
const char* document_split_name(DocumentSplit split);

struct PrepareOptions {
  std::vector<std::string> inputs;  // files or glob patterns
  std::string tokenizer = "gpt2";   // "gpt2" | "byte"
  std::string tokenizer_dir;        // GPT-2 files; empty: kDefaultGpt2TokenizerDir
  std::string out_dir;
  DocumentSplit split = DocumentSplit::Files;
  double val_fraction = 0.005;  // in [0, 1)
  int64_t shard_tokens = 100'000'000;
  uint64_t seed = 1337;
  bool show_progress = true;  // on stderr, for inputs that take more than a moment
};

struct ShardSummary {
  std::string file;  // name within the output directory
  int64_t tokens = 0;
};

struct SplitSummary {
  int64_t documents = 0;
  int64_t bytes = 0;   // document bytes, separators not included
  int64_t tokens = 0;  // including one end-of-text token per document
  int64_t invalid_utf8_documents = 0;
  std::vector<ShardSummary> shards;
};

// The contents of summary.json.
struct PrepareSummary {
  std::string tokenizer;
  int vocab_size = 0;
  uint32_t eot_token = 0;
  std::string document_split;
  double val_fraction = 0;
  uint64_t seed = 0;
  std::vector<std::string> inputs;  // the files read, in order
  int64_t input_bytes = 0;          // their total size
  SplitSummary train, val;
};
nlohmann::json to_json(const PrepareSummary& summary);
// `where` names the source in errors.
PrepareSummary prepare_summary_from_json(const nlohmann::json& json, const std::string& where);
PrepareSummary read_prepare_summary(const std::string& path);

// Whether document `index` belongs to the validation split: a hash of
// (seed, index) below val_fraction. prepare_dataset may move one document to
// make both splits non-empty (docs/formats.md).
bool document_hash_is_val(uint64_t seed, int64_t index, double val_fraction);

// Runs `srgpt prepare`: writes OUT/train_000000.bin..., OUT/val_000000.bin...
// and OUT/summary.json (last, so its presence means the shards are complete),
// after deleting shards of an earlier run in OUT. Errors: no input matches, an
// unreadable input, zero input bytes, no documents, tokenizer problems, an
// output directory that cannot be written.
PrepareSummary prepare_dataset(const PrepareOptions& options);

// Shards that `srgpt prepare` wrote: the summary.json beside them and the
// split (train or val) that lists every one of them.
struct PreparedSplit {
  PrepareSummary summary;
  bool val = false;  // the split is summary.val, else summary.train
  const SplitSummary& split() const { return val ? summary.val : summary.train; }
  // Bytes of text per token; nullopt for a split without tokens or bytes.
  // Bits per byte = loss per token in nats / ln(2) / bytes_per_token.
  std::optional<double> bytes_per_token() const;
};
// Nullopt when there is no summary beside `shard_files`, or they are not
// all from one split of it.
std::optional<PreparedSplit> prepared_split(const std::vector<std::string>& shard_files);

// What the shards are read for: the advice in vocabulary_mismatch differs.
enum class ShardUse { training, evaluation };

// A warning when prepared shards hold tokens of another vocabulary than a
// model's `vocab_size`, which no token out of range stops (byte tokens fit a
// GPT-2 model: trained on, `srgpt sample` reads them as GPT-2 tokens;
// evaluated, the loss means nothing). Nullopt when the model's vocabulary
// fits the shards' tokenizer (model_vocabulary_fits: equal, or padded as
// 50304 pads GPT-2's 50257). A model with fewer tokens than the shards'
// vocabulary is an Error: their ids would be out of its range. `what`
// names the shards.
std::optional<std::string> vocabulary_mismatch(const PreparedSplit& shards, int vocab_size, const std::string& what,
                                                ShardUse use);

}  // namespace srgpt
