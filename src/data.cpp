#include "srgpt/data.h"

#include <glob.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "srgpt/checkpoint.h"
#include "srgpt/error.h"
#include "srgpt/json_parse.h"
#include "srgpt/mapped_read.h"
#include "srgpt/posix_file.h"
#include "srgpt/sr_hash.h"

namespace srgpt {

namespace {

constexpr int32_t kShardMagic = 20240520;
constexpr size_t kHeaderInts = 256;
constexpr size_t kHeaderBytes = kHeaderInts * sizeof(int32_t);
// Magics of llm.c's other binary files (model weights, debug state,
// tokenizer, eval examples): such a file is a mistake, not raw tokens.
constexpr int32_t kOtherLlmcMagics[] = {20240326, 20240327, 20240328, 20240522};

// Bytes per token of an llm.c shard version: 2 (uint16) for version 1, 4
// (uint32) for srgpt's version 2, 0 for any other.
int llmc_token_bytes(int32_t version) { return version == 1 ? 2 : version == 2 ? 4 : 0; }

int32_t read_int32(const unsigned char* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

// ---------------------------------------------------------------- TokenShard

TokenShard::TokenShard(const std::string& path) : path_(path), file_("token shard", path) {
  if (file_.size() == 0) fail("token shard {} is empty", path);
  const size_t bytes_in_file = file_.size();
  // The header is read from the mapping too: the file may shrink after it
  // was opened.
  read_mapped("token shard", path, [&] {
    const unsigned char* bytes = file_.data();
    int32_t first = bytes_in_file >= 4 ? read_int32(bytes) : 0;
    if (first == kShardMagic) {
      if (bytes_in_file < kHeaderBytes)
        fail("token shard {} is truncated: {} bytes, shorter than the {}-byte llm.c header", path, bytes_in_file,
             kHeaderBytes);
      int32_t version = read_int32(bytes + 4);
      if (llmc_token_bytes(version) == 0)
        fail("token shard {} has unsupported version {} (1 = uint16 tokens, 2 = uint32 tokens)", path, version);
      int32_t count = read_int32(bytes + 8);
      if (count < 0) fail("token shard {} has a negative token count {} in its header", path, count);
      token_bytes_ = llmc_token_bytes(version);
      size_t expected = kHeaderBytes + size_t(count) * size_t(token_bytes_);
      if (bytes_in_file < expected)
        fail("token shard {} is truncated: its header says {} tokens ({} bytes) but the file has {} bytes", path,
             count, expected, bytes_in_file);
      if (bytes_in_file > expected)
        fail("token shard {} has {} extra bytes after the {} tokens its header declares", path,
             bytes_in_file - expected, count);
      tokens_ = bytes + kHeaderBytes;
      count_ = size_t(count);
      llmc_ = true;
    } else {
      for (int32_t magic : kOtherLlmcMagics)
        if (first == magic)
          fail("{} starts with llm.c magic {}, which is not a token shard (token shards have magic {})", path, magic,
               kShardMagic);
      // A raw shard whose second and third uint32 happen to be a valid
      // version and the exact token count of the file's size is not
      // credible: this is an llm.c shard with a damaged magic, and reading
      // it raw would train on its header.
      if (bytes_in_file >= kHeaderBytes) {
        const int32_t version = read_int32(bytes + 4);
        const int32_t count = read_int32(bytes + 8);
        if (llmc_token_bytes(version) != 0 && count >= 0 &&
            kHeaderBytes + size_t(count) * size_t(llmc_token_bytes(version)) == bytes_in_file)
          fail("token shard {} has an llm.c header (version {}, {} tokens, matching its size) but magic {} instead "
               "of {}: the file is damaged",
               path, version, count, first, kShardMagic);
      }
      if (bytes_in_file % 2 != 0)
        fail("token shard {} has odd size {} bytes: a raw (nanoGPT) shard is a sequence of uint16 tokens", path,
             bytes_in_file);
      token_bytes_ = 2;
      tokens_ = bytes;
      count_ = bytes_in_file / 2;
      llmc_ = false;
    }
  });
}

uint32_t TokenShard::at(size_t i) const {
  if (i >= count_) fail("token shard {}: token index {} is out of range (the shard has {} tokens)", path_, i, count_);
  uint32_t id = 0;
  read_mapped("token shard", path_, [&] { id = token(i); });
  return id;
}

uint32_t TokenShard::token(size_t i) const {
  if (token_bytes_ == 2) {
    uint16_t v;
    std::memcpy(&v, tokens_ + 2 * i, 2);
    return v;
  }
  uint32_t v;
  std::memcpy(&v, tokens_ + 4 * i, 4);
  return v;
}

uint32_t TokenShard::head_crc32(size_t count) const {
  std::vector<unsigned char> bytes(4 * std::min(count, count_));
  read_mapped("token shard", path_, [&] {
    for (size_t i = 0; i < bytes.size() / 4; ++i) {
      const uint32_t id = token(i);
      for (size_t b = 0; b < 4; ++b) bytes[4 * i + b] = static_cast<unsigned char>(id >> (8 * b));
    }
  });
  return crc32(bytes.data(), bytes.size());
}

void TokenShard::copy(size_t begin, size_t count, int32_t* out, int vocab_size) const {
  if (begin > count_ || count > count_ - begin)
    fail("token shard {}: tokens [{}, {}) are out of range (the shard has {} tokens)", path_, begin, begin + count,
         count_);
  read_mapped("token shard", path_, [&] {
    for (size_t i = 0; i < count; ++i) {
      const uint32_t id = token(begin + i);
      if (id >= uint32_t(vocab_size))
        fail("token shard {}: token {} at index {} is outside the vocabulary (vocab_size {})", path_, id, begin + i,
             vocab_size);
      out[i] = int32_t(id);
    }
  });
}

// ---------------------------------------------------------------- files

void write_token_shard(const std::string& path, const std::vector<uint32_t>& tokens) {
  if (tokens.size() > size_t(std::numeric_limits<int32_t>::max()))
    fail("cannot write token shard {}: {} tokens exceed the format's limit of {}", path, tokens.size(),
         std::numeric_limits<int32_t>::max());
  bool narrow = std::all_of(tokens.begin(), tokens.end(), [](uint32_t t) { return t < 65536; });
  int32_t header[kHeaderInts] = {};
  header[0] = kShardMagic;
  header[1] = narrow ? 1 : 2;
  header[2] = int32_t(tokens.size());

  // A reader never sees half a shard.
  write_file_atomically(path, [&](const ByteSink& sink) {
    sink(header, sizeof header);
    if (narrow) {
      const std::vector<uint16_t> narrowed(tokens.begin(), tokens.end());
      sink(narrowed.data(), narrowed.size() * sizeof(uint16_t));
    } else {
      sink(tokens.data(), tokens.size() * sizeof(uint32_t));
    }
  });
}

std::vector<std::string> expand_shard_pattern(const std::string& pattern, const std::string& what) {
  struct GlobResult {
    glob_t g{};
    ~GlobResult() { globfree(&g); }
  } result;
  int rc = ::glob(pattern.c_str(), 0, nullptr, &result.g);
  if (rc == GLOB_NOMATCH) fail("{}: no files match '{}'", what, pattern);
  if (rc != 0) fail("{}: cannot expand '{}' (glob error {})", what, pattern, rc == GLOB_ABORTED ? "read error" : "out of memory");
  std::vector<std::string> files(result.g.gl_pathv, result.g.gl_pathv + result.g.gl_pathc);
  // glob sorts by the locale's collation; sort bytewise so the order is the same everywhere.
  std::sort(files.begin(), files.end());
  std::set<std::filesystem::path> directories;
  for (const std::string& file : files) directories.insert(std::filesystem::path(file).parent_path());
  for (const std::filesystem::path& dir : directories) {
    std::error_code ec;
    if (std::filesystem::exists(dir / kIncompleteDatasetMarker, ec))
      fail("{}: '{}' matches shards in {}, an incomplete dataset ({} is there: srgpt prepare was interrupted or "
           "failed while writing it); run prepare again",
           what, pattern, dir.empty() ? "." : dir.string(), kIncompleteDatasetMarker);
  }
  return files;
}

// ---------------------------------------------------------------- positions

nlohmann::json to_json(const LoaderPosition& p) {
  return {{"epoch", p.epoch}, {"shard", p.shard}, {"sample", p.sample}};
}

LoaderPosition loader_position_from_json(const nlohmann::json& j) {
  if (!j.is_object()) fail("loader position must be a JSON object, got {}", j.dump());
  auto field = [&](const char* key) {
    if (!j.contains(key)) fail("loader position {} has no \"{}\"", j.dump(), key);
    const nlohmann::json& v = j.at(key);
    const std::optional<int64_t> n = json_integer<int64_t>(v);
    if (!n || *n < 0) fail("loader position \"{}\" must be a non-negative integer, got {}", key, v.dump());
    return *n;
  };
  LoaderPosition p;
  p.epoch = field("epoch");
  p.shard = field("shard");
  p.sample = field("sample");
  return p;
}

// ---------------------------------------------------------------- TokenLoader

namespace {

// Keys of the permutations, derived from (seed, epoch[, shard]) with a
// counter-based mix so they are identical on every platform.
uint64_t combine(uint64_t key, uint64_t value) { return mix64(key ^ mix64(value + 0x9e3779b97f4a7c15ull)); }

std::vector<int64_t> identity(int64_t n) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[size_t(i)] = i;
  return order;
}

// Fisher-Yates driven by mix64(key, i); std::shuffle is not portable across
// standard libraries. The modulo bias is below 2^-32 for any real shard.
std::vector<int64_t> permutation(int64_t n, uint64_t key) {
  std::vector<int64_t> order = identity(n);
  for (int64_t i = n - 1; i > 0; --i) {
    uint64_t j = combine(key, uint64_t(i)) % uint64_t(i + 1);
    std::swap(order[size_t(i)], order[size_t(j)]);
  }
  return order;
}

// Whole samples (windows of T+1 tokens at multiples of T) in a shard.
int64_t samples_in(const TokenShard& shard, int T) { return (int64_t(shard.size()) - 1) / T; }

constexpr uint64_t kShardOrderStream = 0;
constexpr uint64_t kSampleOrderStream = 1;

}  // namespace

TokenLoader::TokenLoader(const std::vector<std::string>& files, int B, int T, int rank, int world_size,
                         int vocab_size, bool shuffle, uint64_t seed)
    : B_(B), T_(T), rank_(rank), world_(world_size), vocab_(vocab_size), shuffle_(shuffle), seed_(seed) {
  if (files.empty()) fail("token loader: no shard files given");
  if (B <= 0 || T <= 0) fail("token loader: batch size {} and sequence length {} must be positive", B, T);
  if (world_size <= 0 || rank < 0 || rank >= world_size)
    fail("token loader: rank {} is not in [0, world_size {})", rank, world_size);
  if (vocab_size <= 0) fail("token loader: vocab_size {} must be positive", vocab_size);
  shards_.reserve(files.size());
  for (const std::string& f : files) {
    shards_.emplace_back(f);
    head_crc32_.push_back(shards_.back().head_crc32(kShardHeadTokens));
  }
  if (batches_per_epoch() == 0) {
    size_t largest = 0;
    for (size_t i = 1; i < shards_.size(); ++i)
      if (shards_[i].size() > shards_[largest].size()) largest = i;
    fail("no token shard holds {}; the largest of the {} shards, {}, has {} tokens: use a smaller {}, or more data",
         global_batch_description(), shards_.size(), shards_[largest].path(), shards_[largest].size(),
         world_ * B_ == 1 ? "sequence length" : "batch or sequence length");
  }
  seek(LoaderPosition{});
}

int64_t TokenLoader::global_batch_tokens() const { return int64_t(world_) * B_ * T_ + 1; }

std::string TokenLoader::global_batch_description() const {
  if (world_ * B_ == 1) return fmt::format("one sequence, {} tokens (seq_len {} + 1)", global_batch_tokens(), T_);
  return fmt::format("one global batch, {} tokens (world_size {} x batch {} x seq_len {} + 1)", global_batch_tokens(),
                     world_, B_, T_);
}

std::optional<std::string> TokenLoader::skipped_shards_warning(const std::string& what) const {
  std::vector<size_t> skipped;
  for (size_t i = 0; i < shards_.size(); ++i)
    if (int64_t(shards_[i].size()) < global_batch_tokens()) skipped.push_back(i);
  if (skipped.empty()) return std::nullopt;
  const TokenShard& first = shards_[skipped.front()];
  constexpr const char* why = "(srgpt prepare's last shard of a split holds what is left over and can be small)";
  if (skipped.size() == 1)
    return fmt::format("{}: 1 of its {} shards holds less than {} and is passed over: {} with {} tokens {}", what,
                       shards_.size(), global_batch_description(), first.path(), first.size(), why);
  return fmt::format("{}: {} of its {} shards hold less than {} and are passed over, {} with {} tokens among them {}",
                     what, skipped.size(), shards_.size(), global_batch_description(), first.path(), first.size(), why);
}

uint64_t TokenLoader::epoch_key(int64_t epoch) const { return combine(mix64(seed_), uint64_t(epoch)); }

std::vector<int64_t> TokenLoader::shard_order(int64_t epoch) const {
  const int64_t n = int64_t(shards_.size());
  return shuffle_ ? permutation(n, combine(epoch_key(epoch), kShardOrderStream)) : identity(n);
}

void TokenLoader::prepare_epoch_shard() {
  shard_order_ = shard_order(pos_.epoch);
  const int64_t shard_id = shard_order_[size_t(pos_.shard)];
  const int64_t samples = samples_in(shards_[size_t(shard_id)], T_);
  sample_order_ = shuffle_ ? permutation(samples, combine(combine(epoch_key(pos_.epoch), kSampleOrderStream),
                                                          uint64_t(shard_id)))
                           : identity(samples);
}

int64_t TokenLoader::shard_samples(size_t index) const { return samples_in(shards_.at(index), T_); }

void TokenLoader::read_sample(size_t index, int64_t sample, int32_t* inputs, int32_t* targets) const {
  if (sample < 0 || sample >= shard_samples(index))
    fail("internal: sample {} of shard {}, which holds {}", sample, shards_.at(index).path(), shard_samples(index));
  const TokenShard& shard = shards_[index];
  const size_t start = size_t(sample) * size_t(T_);
  shard.copy(start, size_t(T_), inputs, vocab_);
  std::copy(inputs + 1, inputs + T_, targets);
  shard.copy(start + size_t(T_), 1, targets + T_ - 1, vocab_);
}

void TokenLoader::next_batch(int32_t* inputs, int32_t* targets) {
  const size_t shard = size_t(shard_order_[size_t(pos_.shard)]);
  const int64_t first = pos_.sample + int64_t(rank_) * B_;
  for (int b = 0; b < B_; ++b)
    read_sample(shard, sample_order_[size_t(first + b)], inputs + size_t(b) * size_t(T_),
                targets + size_t(b) * size_t(T_));
  LoaderPosition next = pos_;
  next.sample += int64_t(world_) * B_;
  seek(next);
}

// Accepts any sample index up to the shard's end, so a run may resume with a
// different world size or batch size; a position with less than one global
// batch left in its shard moves on to the next shard that holds one (or the
// next epoch's).
void TokenLoader::seek(const LoaderPosition& p) {
  const int64_t n = int64_t(shards_.size());
  // The last epoch number is out of range too: moving past its end would overflow it.
  if (p.epoch < 0 || p.epoch == std::numeric_limits<int64_t>::max() || p.shard < 0 || p.shard >= n || p.sample < 0)
    fail("token loader: position (epoch {}, shard {}, sample {}) is out of range ({} shards; epochs below 2^63-1)",
         p.epoch, p.shard, p.sample, n);
  std::vector<int64_t> order = shard_order(p.epoch);
  const TokenShard& shard = shards_[size_t(order[size_t(p.shard)])];
  const int64_t samples = samples_in(shard, T_);
  if (p.sample > samples)
    fail("token loader: position (epoch {}, shard {}, sample {}) is past the end of shard {} ({} samples)", p.epoch,
         p.shard, p.sample, shard.path(), samples);

  // Shards too small for a global batch are passed over; the constructor
  // made sure one is not, so this ends within an epoch's worth of shards.
  LoaderPosition target = p;
  while (samples_in(shards_[size_t(order[size_t(target.shard)])], T_) - target.sample < int64_t(world_) * B_) {
    target.sample = 0;
    if (++target.shard == n) {
      target.shard = 0;
      order = shard_order(++target.epoch);
    }
  }
  // Moving within a shard keeps its permutations; they cost O(samples).
  const bool same_shard = target.epoch == pos_.epoch && target.shard == pos_.shard && !sample_order_.empty();
  pos_ = target;
  if (!same_shard) prepare_epoch_shard();
}

int64_t TokenLoader::batches_per_epoch() const {
  int64_t batches = 0;
  for (const TokenShard& s : shards_) batches += samples_in(s, T_) / (int64_t(world_) * B_);
  return batches;
}

size_t TokenLoader::total_tokens() const {
  size_t total = 0;
  for (const TokenShard& s : shards_) total += s.size();
  return total;
}

std::vector<size_t> TokenLoader::shard_tokens() const {
  std::vector<size_t> tokens;
  for (const TokenShard& s : shards_) tokens.push_back(s.size());
  return tokens;
}

}  // namespace srgpt
