// `srgpt prepare`: reads text files (memory-mapped), cuts them into
// documents, assigns each to train or val by a hash, tokenizes and writes
// llm.c shards plus summary.json.
#include "srgpt/prepare.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <set>
#include <string_view>
#include <type_traits>

#include "srgpt/data.h"
#include "srgpt/error.h"
#include "srgpt/json_parse.h"
#include "srgpt/mapped_read.h"
#include "srgpt/posix_file.h"
#include "srgpt/tokenizer.h"

namespace srgpt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kSummaryFormat = "srgpt-prepare-summary";
constexpr int kSummaryVersion = 1;
constexpr const char* kSummaryFile = "summary.json";

bool is_blank(std::string_view line) { return line.find_first_not_of(" \t\r\f\v") == std::string_view::npos; }

// Calls visit(line) for each line, without its "\n" or "\r\n".
template <typename Visit>
void for_each_line(std::string_view text, Visit&& visit) {
  for (size_t begin = 0; begin < text.size();) {
    size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(begin, end - begin);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    visit(line);
    begin = end + 1;
  }
}

// Calls visit(document) for each document of a file's contents. Documents
// are views of the contents: a paragraph keeps its inner line breaks as they
// are and loses only the break after its last line.
template <typename Visit>
void for_each_document(std::string_view contents, DocumentSplit split, Visit&& visit) {
  switch (split) {
    case DocumentSplit::Files:
      if (!contents.empty()) visit(contents);
      return;
    case DocumentSplit::Lines:
      for_each_line(contents, [&](std::string_view line) {
        if (!is_blank(line)) visit(line);
      });
      return;
    case DocumentSplit::Paragraphs: {
      const char* first = nullptr;  // start of the open paragraph
      const char* last = nullptr;   // end of its last line
      for_each_line(contents, [&](std::string_view line) {
        if (is_blank(line)) {
          if (first) visit(std::string_view(first, static_cast<size_t>(last - first)));
          first = nullptr;
          return;
        }
        if (!first) first = line.data();
        last = line.data() + line.size();
      });
      if (first) visit(std::string_view(first, static_cast<size_t>(last - first)));
      return;
    }
  }
}

uint64_t mix64(uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

uint64_t document_hash(uint64_t seed, int64_t index) { return mix64(mix64(seed) ^ static_cast<uint64_t>(index)); }

double hash_fraction(uint64_t hash) { return static_cast<double>(hash >> 11) * 0x1p-53; }

std::vector<std::string> expand_inputs(const std::vector<std::string>& patterns) {
  if (patterns.empty()) fail("--input: no input files given");
  std::vector<std::string> files;
  // By device and inode: a file named twice (txt/a.txt, ./txt/a.txt, a
  // symlink or a hard link) would have its documents twice, some of them
  // in both splits.
  std::set<FileIdentity> seen;
  for (const auto& pattern : patterns) {
    for (auto& file : expand_shard_pattern(pattern, "--input")) {
      if (seen.insert(file_identity(file, "--input")).second) files.push_back(std::move(file));
    }
  }
  return files;
}

bool is_shard_file_name(const std::string& name) {
  for (const std::string prefix : {"train_", "val_"}) {
    if (name.size() > prefix.size() + 4 && name.compare(0, prefix.size(), prefix) == 0 &&
        name.compare(name.size() - 4, 4, ".bin") == 0) {
      const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - 4);
      return digits.find_first_not_of("0123456789") == std::string::npos;
    }
  }
  return false;
}

// Creates `dir` and takes its lock, held until the dataset is complete: two
// prepares into one directory would delete and overwrite each other's
// shards and leave a summary that describes neither.
std::unique_ptr<ExclusiveFileLock> prepare_output_dir(const fs::path& dir) {
  std::error_code ec;
  const fs::file_type type = fs::status(dir, ec).type();
  if (type != fs::file_type::not_found && type != fs::file_type::directory && !ec)
    fail("--out: '{}' exists and is not a directory; give a directory for the shards and summary.json", dir.string());
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) {
    fail("--out: cannot create output directory '{}': {}", dir.string(),
         ec ? ec.message() : "a file of that name exists");
  }
  if (::access(dir.c_str(), W_OK) != 0) {
    fail("--out: output directory '{}' is not writable: {}", dir.string(), std::strerror(errno));
  }
  auto lock = std::make_unique<ExclusiveFileLock>(dir / ".srgpt-prepare.lock", fmt::format("--out '{}'", dir.string()),
                                                  "wait for that prepare to end, or write to another directory");
  // Until the summary is written, the marker makes the token loader refuse
  // these shards: a run that is interrupted or fails leaves it behind.
  {
    std::ofstream marker(dir / kIncompleteDatasetMarker);
    marker << "srgpt prepare is writing (or failed while writing) this dataset; run it again\n";
    if (!marker) fail("--out: cannot write '{}': {}", (dir / kIncompleteDatasetMarker).string(), std::strerror(errno));
  }
  // Shards of an earlier run (and temporaries of an interrupted one) would
  // otherwise be picked up by a glob with ours; the summary goes first so
  // that none describes a half-written directory.
  fs::remove(dir / kSummaryFile, ec);
  if (ec) fail("--out: cannot remove old '{}': {}", (dir / kSummaryFile).string(), ec.message());
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    const std::string written_as = name.substr(0, name.find(".tmp-"));  // write_token_shard's temporary names
    if (entry.is_regular_file() && is_shard_file_name(written_as)) {
      fs::remove(entry.path(), ec);
      if (ec) fail("--out: cannot remove old shard '{}': {}", entry.path().string(), ec.message());
    }
  }
  return lock;
}

// Collects one split's tokens and writes a shard whenever shard_tokens are
// buffered; documents may straddle shards, as in llm.c's shards.
class ShardWriter {
 public:
  ShardWriter(fs::path dir, std::string prefix, int64_t shard_tokens, SplitSummary& summary)
      : dir_(std::move(dir)), prefix_(std::move(prefix)), shard_tokens_(static_cast<size_t>(shard_tokens)),
        summary_(summary) {}

  std::vector<uint32_t>& buffer() { return buffer_; }

  void write_full_shards() {
    while (buffer_.size() >= shard_tokens_) {
      std::vector<uint32_t> rest(buffer_.begin() + static_cast<std::ptrdiff_t>(shard_tokens_), buffer_.end());
      buffer_.resize(shard_tokens_);
      write_shard();
      buffer_ = std::move(rest);
    }
  }

  void finish() {
    write_full_shards();
    if (!buffer_.empty()) write_shard();
  }

 private:
  void write_shard() {
    const std::string name = fmt::format("{}_{:06d}.bin", prefix_, summary_.shards.size());
    write_token_shard((dir_ / name).string(), buffer_);
    summary_.shards.push_back(ShardSummary{name, static_cast<int64_t>(buffer_.size())});
    buffer_.clear();
  }

  fs::path dir_;
  std::string prefix_;
  size_t shard_tokens_;
  SplitSummary& summary_;
  std::vector<uint32_t> buffer_;
};

// Progress on stderr, at most four updates a second on a terminal and one
// line every ten seconds otherwise; nothing for inputs done within a second.
class Progress {
 public:
  Progress(bool enabled, int64_t total_bytes)
      : enabled_(enabled), tty_(::isatty(STDERR_FILENO) == 1), total_bytes_(total_bytes) {}
  ~Progress() {
    if (printed_ && tty_) std::fputc('\n', stderr);
  }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void update(int64_t done_bytes, int64_t documents) {
    if (!enabled_) return;
    const auto now = Clock::now();
    const auto interval = tty_ ? std::chrono::milliseconds(250) : std::chrono::milliseconds(10000);
    if (now - start_ < std::chrono::seconds(1) || now - last_ < interval) return;
    last_ = now;
    printed_ = true;
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const double rate = static_cast<double>(done_bytes) / seconds;
    const double eta = rate > 0 ? static_cast<double>(total_bytes_ - done_bytes) / rate : 0;
    std::fprintf(stderr, "%sprepare: %5.1f%% of %.1f MB, %.1f MB/s, %lld documents, eta %.0f s%s",
                 tty_ ? "\r" : "", 100.0 * static_cast<double>(done_bytes) / static_cast<double>(total_bytes_),
                 static_cast<double>(total_bytes_) / 1e6, rate / 1e6, static_cast<long long>(documents), eta,
                 tty_ ? "   " : "\n");
    std::fflush(stderr);
  }

 private:
  using Clock = std::chrono::steady_clock;
  bool enabled_, tty_;
  int64_t total_bytes_;
  Clock::time_point start_ = Clock::now(), last_ = Clock::time_point{};
  bool printed_ = false;
};

void validate(const PrepareOptions& options) {
  if (!std::isfinite(options.val_fraction) || options.val_fraction < 0 || options.val_fraction >= 1) {
    fail("--val-fraction: {} is out of range; allowed is 0 <= F < 1", options.val_fraction);
  }
  if (options.shard_tokens < 1 || options.shard_tokens > std::numeric_limits<int32_t>::max()) {
    fail("--shard-tokens: {} is out of range; allowed is 1..{} (the llm.c header counts tokens in an int32)",
         options.shard_tokens, std::numeric_limits<int32_t>::max());
  }
  if (options.out_dir.empty()) fail("--out: no output directory given");
}

json split_to_json(const SplitSummary& split) {
  json shards = json::array();
  for (const auto& shard : split.shards) shards.push_back({{"file", shard.file}, {"tokens", shard.tokens}});
  return {{"documents", split.documents},
          {"bytes", split.bytes},
          {"tokens", split.tokens},
          {"invalid_utf8_documents", split.invalid_utf8_documents},
          {"shards", shards}};
}

template <typename T>
T field(const json& object, const char* key, const std::string& where) {
  if (!object.is_object() || !object.contains(key)) fail("{}: missing \"{}\"", where, key);
  const json& v = object.at(key);
  if (std::optional<T> read = json_value<T>(v)) return std::move(*read);
  if constexpr (std::is_integral_v<T>)
    if (v.is_number_integer()) fail("{}: \"{}\" = {} is out of range", where, key, v.dump());
  fail("{}: \"{}\" has the wrong type ({}){}", where, key, v.dump(),
       std::is_integral_v<T> ? "; expected an integer" : "");
}

// A count: an integer >= 0.
int64_t count_field(const json& object, const char* key, const std::string& where) {
  const int64_t n = field<int64_t>(object, key, where);
  if (n < 0) fail("{}: \"{}\" = {} is negative; it is a count", where, key, n);
  return n;
}

SplitSummary split_from_json(const json& object, const std::string& where) {
  SplitSummary split;
  split.documents = count_field(object, "documents", where);
  split.bytes = count_field(object, "bytes", where);
  split.tokens = count_field(object, "tokens", where);
  split.invalid_utf8_documents = count_field(object, "invalid_utf8_documents", where);
  const auto shards = field<json>(object, "shards", where);
  if (!shards.is_array()) fail("{}: \"shards\" must be an array", where);
  int64_t shard_tokens = 0;
  for (const auto& shard : shards) {
    split.shards.push_back(ShardSummary{field<std::string>(shard, "file", where + ".shards"),
                                        count_field(shard, "tokens", where + ".shards")});
    const int64_t tokens = split.shards.back().tokens;
    if (tokens > std::numeric_limits<int64_t>::max() - shard_tokens)
      fail("{}: the shards' \"tokens\" add up to more than {}", where, std::numeric_limits<int64_t>::max());
    shard_tokens += tokens;
  }
  if (shard_tokens != split.tokens)
    fail("{}: \"tokens\" = {}, but its shards hold {} tokens in all", where, split.tokens, shard_tokens);
  return split;
}

}  // namespace

DocumentSplit parse_document_split(const std::string& name) {
  if (name == "files") return DocumentSplit::Files;
  if (name == "paragraphs") return DocumentSplit::Paragraphs;
  if (name == "lines") return DocumentSplit::Lines;
  fail("--split: unknown document split '{}'; allowed are files, paragraphs, lines", name);
}

const char* document_split_name(DocumentSplit split) {
  switch (split) {
    case DocumentSplit::Files:
      return "files";
    case DocumentSplit::Paragraphs:
      return "paragraphs";
    case DocumentSplit::Lines:
      return "lines";
  }
  return "?";
}

bool document_hash_is_val(uint64_t seed, int64_t index, double val_fraction) {
  return hash_fraction(document_hash(seed, index)) < val_fraction;
}

json to_json(const PrepareSummary& summary) {
  const SplitSummary& train = summary.train;
  const SplitSummary& val = summary.val;
  return {{"format", kSummaryFormat},
          {"version", kSummaryVersion},
          {"tokenizer", summary.tokenizer},
          {"vocab_size", summary.vocab_size},
          {"eot_token", summary.eot_token},
          {"document_split", summary.document_split},
          {"val_fraction", summary.val_fraction},
          {"seed", summary.seed},
          {"inputs", summary.inputs},
          {"input_bytes", summary.input_bytes},
          {"documents", train.documents + val.documents},
          {"bytes", train.bytes + val.bytes},
          {"tokens", train.tokens + val.tokens},
          {"invalid_utf8_documents", train.invalid_utf8_documents + val.invalid_utf8_documents},
          {"train", split_to_json(train)},
          {"val", split_to_json(val)}};
}

PrepareSummary prepare_summary_from_json(const json& object, const std::string& where) {
  if (field<std::string>(object, "format", where) != kSummaryFormat ||
      field<int>(object, "version", where) != kSummaryVersion) {
    // Another format's file need not have a "version" at all.
    fail("{}: not a version {} {} file (format {}, version {})", where, kSummaryVersion, kSummaryFormat,
         object.at("format").dump(), object.contains("version") ? object.at("version").dump() : "absent");
  }
  PrepareSummary summary;
  summary.tokenizer = field<std::string>(object, "tokenizer", where);
  summary.vocab_size = field<int>(object, "vocab_size", where);
  summary.eot_token = field<uint32_t>(object, "eot_token", where);
  summary.document_split = field<std::string>(object, "document_split", where);
  summary.val_fraction = field<double>(object, "val_fraction", where);
  summary.seed = field<uint64_t>(object, "seed", where);
  summary.inputs = field<std::vector<std::string>>(object, "inputs", where);
  summary.input_bytes = field<int64_t>(object, "input_bytes", where);
  if (summary.vocab_size < 1) fail("{}: \"vocab_size\" = {}; allowed: 1 or more", where, summary.vocab_size);
  summary.train = split_from_json(field<json>(object, "train", where), where + ".train");
  summary.val = split_from_json(field<json>(object, "val", where), where + ".val");
  std::set<std::string> files;
  for (const SplitSummary* split : {&summary.train, &summary.val})
    for (const ShardSummary& shard : split->shards)
      if (!files.insert(shard.file).second) fail("{}: shard \"{}\" is listed twice", where, shard.file);
  return summary;
}

PrepareSummary read_prepare_summary(const std::string& path) {
  if (!regular_file_exists(path, "prepare summary")) fail("prepare summary {} does not exist", path);
  std::ifstream in(path);
  if (!in) fail("cannot open prepare summary '{}': {}", path, std::strerror(errno));
  return prepare_summary_from_json(parse_json(in, path), path);
}

std::optional<double> PreparedSplit::bytes_per_token() const {
  // No bytes: bits per byte would be infinite.
  if (split().tokens <= 0 || split().bytes <= 0) return std::nullopt;
  return static_cast<double>(split().bytes) / static_cast<double>(split().tokens);
}

std::optional<PreparedSplit> prepared_split(const std::vector<std::string>& shard_files) {
  if (shard_files.empty()) return std::nullopt;
  const fs::path dir = fs::path(shard_files.front()).parent_path();
  const fs::path summary_path = dir / kSummaryFile;
  // Not there: shards from elsewhere. Anything but a file is an error.
  std::error_code ec;
  if (fs::symlink_status(summary_path, ec).type() == fs::file_type::not_found) return std::nullopt;
  PreparedSplit prepared{read_prepare_summary(summary_path.string())};
  for (const bool val : {false, true}) {
    prepared.val = val;
    std::set<std::string> names;
    for (const auto& shard : prepared.split().shards) names.insert(shard.file);
    const bool all_listed = std::all_of(shard_files.begin(), shard_files.end(), [&](const std::string& file) {
      const fs::path path(file);
      return path.parent_path() == dir && names.count(path.filename().string()) > 0;
    });
    if (!all_listed) continue;
    // Names alone would pair the shards with another dataset's summary.
    for (const ShardSummary& listed : prepared.split().shards) {
      const std::string file = (dir / listed.file).string();
      if (std::find(shard_files.begin(), shard_files.end(), file) == shard_files.end()) continue;
      const size_t tokens = TokenShard(file).size();
      if (tokens != size_t(listed.tokens))
        fail("{}: it lists {} with {} tokens, but that file holds {}: the summary describes other shards (an older "
             "prepare's?); prepare the data again, or remove the summary",
             summary_path.string(), listed.file, listed.tokens, tokens);
    }
    return prepared;
  }
  return std::nullopt;
}

std::optional<std::string> vocabulary_mismatch(const PreparedSplit& shards, int vocab_size, const std::string& what,
                                                ShardUse use) {
  const PrepareSummary& s = shards.summary;
  if (model_vocabulary_fits(vocab_size, s.vocab_size)) return std::nullopt;
  if (vocab_size < s.vocab_size)
    fail("{}: these shards hold tokens of the {} tokenizer (vocabulary {}, by their summary.json), but the model's "
         "vocabulary (model.vocab_size) has only {} tokens: their ids from {} up are out of its range, so {}",
         what, s.tokenizer, s.vocab_size, vocab_size, vocab_size,
         use == ShardUse::training ? fmt::format("training would stop at the first; set model.vocab_size = {}",
                                                 s.vocab_size)
                                   : std::string("evaluate the model on shards of its own tokenizer"));
  const std::string consequence =
      use == ShardUse::training
          ? fmt::format("the ids fit, but `srgpt sample` pairs a model with the tokenizer of its vocabulary size, "
                        "which reads them as other tokens; set model.vocab_size = {}",
                        s.vocab_size)
          : std::string("unless the model was trained on tokens of that tokenizer, its loss on them means nothing");
  return fmt::format("{}: these shards hold tokens of the {} tokenizer (vocabulary {}, by their summary.json), but "
                     "the model's vocabulary (model.vocab_size) has {} tokens: {}",
                     what, s.tokenizer, s.vocab_size, vocab_size, consequence);
}

PrepareSummary prepare_dataset(const PrepareOptions& options) {
  validate(options);
  const std::vector<std::string> files = expand_inputs(options.inputs);
  auto tokenizer = make_tokenizer(options.tokenizer, options.tokenizer_dir);

  // Pass 1: read every file (so unreadable ones fail before anything is
  // written) and count the documents.
  int64_t input_bytes = 0, documents = 0;
  for (const auto& file : files) {
    const MappedFile mapped("input file", file);
    mapped.advise_sequential();
    input_bytes += static_cast<int64_t>(mapped.text().size());
    read_mapped("input file", file, [&] {
      for_each_document(mapped.text(), options.split, [&](std::string_view) { ++documents; });
    });
  }
  if (input_bytes == 0) fail("--input: empty input: the {} input file(s) hold no bytes", files.size());
  if (documents == 0) {
    fail("--input: no documents: the {} input file(s) hold only blank lines (--split {})", files.size(),
         document_split_name(options.split));
  }

  // With two or more documents and val_fraction > 0, both splits get at
  // least one: the document with the lowest hash goes to val, or the one with
  // the highest to train, when the fraction alone left that split empty.
  int64_t forced_val = -1, forced_train = -1;
  if (documents >= 2 && options.val_fraction > 0) {
    bool any_val = false, any_train = false;
    int64_t lowest = 0, highest = 0;
    uint64_t lowest_hash = std::numeric_limits<uint64_t>::max(), highest_hash = 0;
    for (int64_t index = 0; index < documents; ++index) {
      const uint64_t hash = document_hash(options.seed, index);
      if (hash_fraction(hash) < options.val_fraction) {
        any_val = true;
      } else {
        any_train = true;
      }
      if (hash < lowest_hash) {
        lowest_hash = hash;
        lowest = index;
      }
      if (hash >= highest_hash) {
        highest_hash = hash;
        highest = index;
      }
    }
    if (!any_val) forced_val = lowest;
    if (!any_train) forced_train = highest;
  }

  const fs::path out_dir(options.out_dir);
  // prepare_output_dir deletes the old shards and summary: none may be an input.
  for (const std::string& file : files) {
    std::error_code ec;
    const std::string name = fs::path(file).filename().string();
    const bool replaced = is_shard_file_name(name) || name.rfind(kSummaryFile, 0) == 0;
    if (replaced && fs::equivalent(fs::path(file).parent_path().empty() ? "." : fs::path(file).parent_path(), out_dir,
                                   ec))
      fail("--input: '{}' is in --out '{}', whose old shards and summary.json prepare deletes before writing new "
           "ones; write the new dataset to another directory",
           file, out_dir.string());
  }
  const std::unique_ptr<ExclusiveFileLock> out_dir_lock = prepare_output_dir(out_dir);
  PrepareSummary summary;
  summary.tokenizer = tokenizer->name();
  summary.vocab_size = tokenizer->vocab_size();
  summary.eot_token = tokenizer->eot_token();
  summary.document_split = document_split_name(options.split);
  summary.val_fraction = options.val_fraction;
  summary.seed = options.seed;
  summary.inputs = files;
  summary.input_bytes = input_bytes;
  ShardWriter train_writer(out_dir, "train", options.shard_tokens, summary.train);
  ShardWriter val_writer(out_dir, "val", options.shard_tokens, summary.val);

  // Pass 2: tokenize. Text that looks like <|endoftext|> inside a document
  // stays text: only the separators we add are end-of-text tokens.
  Progress progress(options.show_progress, input_bytes);
  int64_t index = 0, bytes_before_file = 0;
  for (const auto& file : files) {
    const MappedFile mapped("input file", file);
    mapped.advise_sequential();
    const std::string_view contents = mapped.text();
    // Only the scan and the tokenizer touch the mapping; neither holds more
    // than memory (read_mapped's condition).
    read_mapped("input file", file, [&] {
      for_each_document(contents, options.split, [&](std::string_view document) {
        const bool val = index == forced_val ||
                         (index != forced_train && document_hash_is_val(options.seed, index, options.val_fraction));
        ShardWriter& writer = val ? val_writer : train_writer;
        SplitSummary& split = val ? summary.val : summary.train;
        std::vector<uint32_t>& tokens = writer.buffer();
        const size_t before = tokens.size();
        tokenizer->encode_append(document, tokens, false);
        tokens.push_back(tokenizer->eot_token());
        split.documents += 1;
        split.bytes += static_cast<int64_t>(document.size());
        split.tokens += static_cast<int64_t>(tokens.size() - before);
        split.invalid_utf8_documents += is_valid_utf8(document) ? 0 : 1;
        writer.write_full_shards();
        ++index;
        const auto done = static_cast<int64_t>(document.data() + document.size() - contents.data());
        progress.update(bytes_before_file + done, index);
      });
    });
    bytes_before_file += static_cast<int64_t>(contents.size());
  }
  train_writer.finish();
  val_writer.finish();

  // File names need not be UTF-8, which JSON is: their other bytes are
  // written as U+FFFD (summary.json's "inputs" is a record, not read back).
  const std::string summary_text = to_json(summary).dump(2, ' ', false, json::error_handler_t::replace) + "\n";
  write_file_atomically(out_dir / kSummaryFile,
                        [&](const ByteSink& sink) { sink(summary_text.data(), summary_text.size()); });
  std::error_code ec;
  fs::remove(out_dir / kIncompleteDatasetMarker, ec);
  if (ec) fail("--out: cannot remove '{}': {}", (out_dir / kIncompleteDatasetMarker).string(), ec.message());
  return summary;
}

}  // namespace srgpt
