#pragma once
// Token shards and the rank-aware batch loader (docs/formats.md).
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "srgpt/mapped_read.h"

namespace srgpt {

// A read-only memory-mapped shard of token ids. Two formats:
//  - llm.c: 256 x int32 header (magic 20240520, version 1 = uint16 tokens,
//    version 2 = uint32 tokens [srgpt extension], token count), then tokens;
//  - nanoGPT: a headerless file of uint16 tokens (any file whose first int32
//    is not the llm.c magic; its size must be even).
// Malformed files (wrong magic/version, size not matching the header) are an
// Error naming the file and what is wrong.
class TokenShard {
 public:
  explicit TokenShard(const std::string& path);
  // Movable: the tokens stay where they are mapped.
  TokenShard(TokenShard&& other) noexcept = default;
  TokenShard& operator=(TokenShard&& other) noexcept = default;

  const std::string& path() const { return path_; }
  size_t size() const { return count_; }  // tokens
  int token_bytes() const { return token_bytes_; }
  bool llmc_format() const { return llmc_; }
  uint32_t at(size_t i) const;
  // Copies tokens [begin, begin+count) as int32; any id >= vocab_size is an
  // Error naming the file and token offset.
  void copy(size_t begin, size_t count, int32_t* out, int vocab_size) const;
  // CRC-32 of the first min(size(), count) ids, each as 4 little-endian
  // bytes: the same for the ids in a uint16 or a uint32 file.
  uint32_t head_crc32(size_t count) const;
  // at(), copy() and head_crc32() are an Error naming the file, not a crash,
  // if it shrank since it was opened (the shard is memory-mapped: SIGBUS is
  // caught).

 private:
  uint32_t token(size_t i) const;  // unchecked read from the mapping
  std::string path_;
  MappedFile file_;
  const unsigned char* tokens_ = nullptr;
  size_t count_ = 0;
  int token_bytes_ = 2;
  bool llmc_ = true;
};

// Writes an llm.c-format shard (uint16 when every id < 65536, else uint32).
void write_token_shard(const std::string& path, const std::vector<uint32_t>& tokens);

// `srgpt prepare` keeps this file in its output directory until the
// dataset is complete (summary.json written): shards beside it are from an
// interrupted or failed run.
constexpr const char* kIncompleteDatasetMarker = ".prepare-incomplete";

// Sorted list of files matching a glob pattern; an Error naming `what` (the
// config key) and the pattern when nothing matches, or when a matching
// file's directory holds an incomplete dataset (kIncompleteDatasetMarker).
std::vector<std::string> expand_shard_pattern(const std::string& pattern, const std::string& what);

// Where a loader is in its stream; saved in checkpoints.
struct LoaderPosition {
  int64_t epoch = 0;
  int64_t shard = 0;   // index into this epoch's shard order
  int64_t sample = 0;  // index into the shard's sample order
};
nlohmann::json to_json(const LoaderPosition& p);
LoaderPosition loader_position_from_json(const nlohmann::json& j);

// Yields batches of B sequences of T tokens (inputs and next-token targets).
// A global batch is world_size * B sequences; each rank reads a disjoint
// slice of it. A sample is a window of T+1 tokens starting at a multiple of
// T within a shard. With shuffle, shard order and sample order are permuted
// deterministically by (seed, epoch); without, both are in file order.
// Shards too small for one global batch are passed over; an Error if every
// shard is.
class TokenLoader {
 public:
  TokenLoader(const std::vector<std::string>& files, int B, int T, int rank, int world_size, int vocab_size,
              bool shuffle, uint64_t seed);
  // Fills inputs[B*T] and targets[B*T] for this rank and advances.
  void next_batch(int32_t* inputs, int32_t* targets);
  LoaderPosition position() const { return pos_; }
  void seek(const LoaderPosition& p);  // Error if out of range
  void reset() { seek(LoaderPosition{}); }
  // Global batches available per epoch.
  int64_t batches_per_epoch() const;
  // Tokens a shard needs to hold one global batch: world_size * B * T + 1.
  int64_t global_batch_tokens() const;
  int seq_len() const { return T_; }
  size_t shard_count() const { return shards_.size(); }
  // The samples of shard `index` (in the order of the files), and sample
  // `sample` of it in file order, whatever the loader's shuffle and
  // position (evaluation reads every sample this way).
  int64_t shard_samples(size_t index) const;
  void read_sample(size_t index, int64_t sample, int32_t* inputs, int32_t* targets) const;
  // A warning naming the shards passed over, for the data's config key or
  // option `what`; none when every shard holds a global batch.
  std::optional<std::string> skipped_shards_warning(const std::string& what) const;
  size_t total_tokens() const;
  // Tokens of each shard, in the order of the files: what a position means.
  std::vector<size_t> shard_tokens() const;
  // CRC-32 of each shard's first kShardHeadTokens ids, in the order of the
  // files: tells apart what shard_tokens() cannot, such as shards of one
  // size in another selection or order.
  const std::vector<uint32_t>& shard_head_crc32() const { return head_crc32_; }
  const std::string& shard_path(size_t index) const { return shards_.at(index).path(); }
  static constexpr size_t kShardHeadTokens = 65536;

 private:
  std::vector<TokenShard> shards_;
  std::vector<uint32_t> head_crc32_;
  int B_, T_, rank_, world_, vocab_;
  bool shuffle_;
  uint64_t seed_;
  LoaderPosition pos_;
  std::vector<int64_t> shard_order_;   // this epoch's shard order
  std::vector<int64_t> sample_order_;  // the current shard's sample order
  uint64_t epoch_key(int64_t epoch) const;
  std::vector<int64_t> shard_order(int64_t epoch) const;
  void prepare_epoch_shard();
  // "one global batch, N tokens (world_size W x batch B x seq_len T + 1)",
  // or "one sequence, ..." for a loader of single sequences.
  std::string global_batch_description() const;
};

}  // namespace srgpt
