// GPT-2 byte-level BPE (docs/tokenizer.md): UTF-8 decoding, code point
// classes, the hand-written pre-tokenizer, loading encoder.json + vocab.bpe,
// BPE merges by rank and the pre-token cache.
#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "srgpt/error.h"
#include "srgpt/json_parse.h"
#include "srgpt/tokenizer.h"

namespace srgpt {
namespace {

// ---- Unicode: UTF-8 decoding and the classes the GPT-2 regex tells apart

enum class CodePointClass : uint8_t { Other, Letter, Number, Space };
struct CodePointRange {
  uint32_t first, last;
  CodePointClass cls;
};
#include "unicode_table.inc"

constexpr uint32_t kInvalidCodePoint = 0xFFFFFFFF;

struct Utf8Char {
  uint32_t code_point;  // kInvalidCodePoint for a byte that starts no valid sequence
  size_t length;
};

// Decodes the character at p (p < end). Overlong forms, surrogates and code
// points above U+10FFFF are invalid; an invalid byte is reported alone, so
// decoding resynchronizes on the next byte.
Utf8Char decode_utf8(const unsigned char* p, const unsigned char* end) {
  const unsigned lead = p[0];
  if (lead < 0x80) return {lead, 1};
  size_t length;
  uint32_t code_point;
  unsigned low = 0x80, high = 0xBF;  // allowed range of the first continuation byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
    code_point = lead & 0x1F;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    code_point = lead & 0x0F;
    if (lead == 0xE0) low = 0xA0;   // overlong
    if (lead == 0xED) high = 0x9F;  // surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    code_point = lead & 0x07;
    if (lead == 0xF0) low = 0x90;   // overlong
    if (lead == 0xF4) high = 0x8F;  // above U+10FFFF
  } else {
    return {kInvalidCodePoint, 1};
  }
  if (static_cast<size_t>(end - p) < length) return {kInvalidCodePoint, 1};
  for (size_t k = 1; k < length; ++k) {
    const unsigned byte = p[k];
    if (byte < low || byte > high) return {kInvalidCodePoint, 1};
    low = 0x80;
    high = 0xBF;
    code_point = (code_point << 6) | (byte & 0x3F);
  }
  return {code_point, length};
}

CodePointClass classify_by_table(uint32_t code_point) {
  const auto* end = std::end(kCodePointRanges);
  const auto* range = std::upper_bound(std::begin(kCodePointRanges), end, code_point,
                                       [](uint32_t cp, const CodePointRange& r) { return cp < r.first; });
  if (range == std::begin(kCodePointRanges)) return CodePointClass::Other;
  --range;
  return code_point <= range->last ? range->cls : CodePointClass::Other;
}

const std::array<CodePointClass, 128> kAsciiClasses = [] {
  std::array<CodePointClass, 128> classes{};
  for (uint32_t c = 0; c < 128; ++c) classes[c] = classify_by_table(c);
  return classes;
}();

struct CharInfo {
  CodePointClass cls;
  size_t length;
};

CharInfo char_at(const unsigned char* text, size_t size, size_t i) {
  if (text[i] < 0x80) return {kAsciiClasses[text[i]], 1};
  const Utf8Char c = decode_utf8(text + i, text + size);
  return {classify_by_table(c.code_point), c.length};
}

// End of the run of characters of class `cls` that starts at i.
size_t run_end(const unsigned char* text, size_t size, size_t i, CodePointClass cls) {
  while (i < size) {
    const CharInfo c = char_at(text, size, i);
    if (c.cls != cls) break;
    i += c.length;
  }
  return i;
}

// Length of the contraction 's 't 're 've 'm 'll 'd at i (text[i] == '\''),
// or 0. Case-sensitive, and no word boundary is needed after it, as in GPT-2.
size_t contraction_length(const unsigned char* text, size_t size, size_t i) {
  if (i + 1 >= size) return 0;
  switch (text[i + 1]) {
    case 's':
    case 't':
    case 'm':
    case 'd':
      return 2;
    case 'r':
    case 'v':
      return i + 2 < size && text[i + 2] == 'e' ? 3 : 0;
    case 'l':
      return i + 2 < size && text[i + 2] == 'l' ? 3 : 0;
    default:
      return 0;
  }
}

// End of the pre-token that starts at i < size: the alternatives of the
// GPT-2 regex tried in order, as a backtracking regex engine would.
size_t pretoken_end(const unsigned char* text, size_t size, size_t i) {
  if (text[i] == '\'') {
    if (const size_t length = contraction_length(text, size, i)) return i + length;
  }
  // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+` with the optional space.
  if (text[i] == ' ' && i + 1 < size) {
    const CharInfo next = char_at(text, size, i + 1);
    if (next.cls != CodePointClass::Space) return run_end(text, size, i + 1 + next.length, next.cls);
  }
  const CharInfo c = char_at(text, size, i);
  if (c.cls != CodePointClass::Space) return run_end(text, size, i + c.length, c.cls);
  // `\s+(?!\S)` leaves the last whitespace character of a run that a
  // non-space follows, so that a final ' ' can join the next word; `\s+`
  // takes a lone whitespace character.
  size_t last = i;
  size_t end = i + c.length;
  while (end < size) {
    const CharInfo w = char_at(text, size, end);
    if (w.cls != CodePointClass::Space) break;
    last = end;
    end += w.length;
  }
  return end == size || last == i ? end : last;
}

template <typename Visit>
void for_each_pretoken(std::string_view text, Visit&& visit) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  for (size_t begin = 0; begin < text.size();) {
    const size_t end = pretoken_end(bytes, text.size(), begin);
    visit(text.substr(begin, end - begin));
    begin = end;
  }
}

// ---- GPT-2's reversible byte <-> printable character mapping

bool byte_is_printable(unsigned b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE; }

// Code point that stands for byte b in encoder.json and vocab.bpe: printable
// bytes stand for themselves, the other 68 for U+0100.. in byte order.
std::array<uint32_t, 256> byte_code_points() {
  std::array<uint32_t, 256> code_points{};
  uint32_t next_unprintable = 256;
  for (unsigned b = 0; b < 256; ++b) code_points[b] = byte_is_printable(b) ? b : next_unprintable++;
  return code_points;
}

std::string utf8_encode(uint32_t code_point) {
  std::string s;
  if (code_point < 0x80) {
    s += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    s += static_cast<char>(0xC0 | (code_point >> 6));
    s += static_cast<char>(0x80 | (code_point & 0x3F));
  } else {  // the byte mapping uses nothing above U+0143
    s += static_cast<char>(0xE0 | (code_point >> 12));
    s += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (code_point & 0x3F));
  }
  return s;
}

// Invalid UTF-8 (a vocab.bpe line in Latin-1) is shown as U+FFFD, not thrown.
std::string json_quoted(const std::string& s) {
  // A binary file's "line" can be thousands of bytes: show its start.
  constexpr size_t kLongest = 80, kShown = 60;
  auto quoted = [](const std::string& text) {
    return nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  };
  if (s.size() <= kLongest) return quoted(s);
  return fmt::format("{}... ({} bytes)", quoted(s.substr(0, kShown)), s.size());
}

// Bytes of a token written in the byte mapping's characters.
std::string token_key_to_bytes(const std::string& key, const std::string& path) {
  static const std::unordered_map<uint32_t, char> kByteOfCodePoint = [] {
    std::unordered_map<uint32_t, char> byte_of;
    const auto code_points = byte_code_points();
    for (unsigned b = 0; b < 256; ++b) byte_of[code_points[b]] = static_cast<char>(b);
    return byte_of;
  }();
  if (key.empty()) fail("{}: the empty string is not a valid token", path);
  std::string bytes;
  const auto* p = reinterpret_cast<const unsigned char*>(key.data());
  const auto* end = p + key.size();
  while (p < end) {
    const Utf8Char c = decode_utf8(p, end);
    const auto byte = kByteOfCodePoint.find(c.code_point);
    if (byte == kByteOfCodePoint.end()) {
      fail("{}: token {} contains a character outside GPT-2's byte-to-unicode alphabet", path, json_quoted(key));
    }
    bytes += byte->second;
    p += c.length;
  }
  return bytes;
}

// encoder.json's entries in file order, from parse events rather than a
// JSON tree (json_parse.h): GPT-2's 50257 entries as a tree take several
// times the 1 MB file.
class EncoderEntries final : public JsonEventHandler {
 public:
  using json = nlohmann::json;
  struct Entry {
    std::string key;
    std::optional<uint64_t> id;  // empty for a value that is not an unsigned integer,
    std::string shown;           // which is then shown here as written
  };
  std::vector<Entry> entries;
  std::string top_level;  // "object", or the name of the other kind of value

  explicit EncoderEntries(const std::string& path)
      : JsonEventHandler(path, "GPT-2's encoder.json, an object mapping token strings to ids") {}

  bool null() override { return value("null", "null"); }
  bool boolean(bool v) override { return value("boolean", v ? "true" : "false"); }
  bool number_integer(json::number_integer_t v) override { return value("number", std::to_string(v)); }
  bool number_unsigned(json::number_unsigned_t v) override {
    if (depth_ == 1) {
      entries.push_back(Entry{std::move(key_), v, ""});
      return true;
    }
    return value("number", "");
  }
  bool number_float(json::number_float_t, const json::string_t& text) override { return value("number", text); }
  bool string(json::string_t& v) override { return value("string", depth_ == 1 ? json_quoted(v) : ""); }
  bool binary(json::binary_t&) override { return value("binary", "binary data"); }
  bool start_object(std::size_t) override { return open("object", "{...}"); }
  bool start_array(std::size_t) override { return open("array", "[...]"); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }
  bool key(json::string_t& k) override {
    if (depth_ == 1) key_ = std::move(k);
    return true;
  }

 private:
  int depth_ = 0;    // 1: inside the top-level object
  std::string key_;  // the top-level object's current key

  // A value other than an id: at the top, the file's kind (which ends the
  // parse unless it is an object); as an entry's value, a bad id.
  bool value(const char* kind, const std::string& shown) {
    if (depth_ == 0) {
      top_level = kind;
      return false;
    }
    if (depth_ == 1) entries.push_back(Entry{std::move(key_), std::nullopt, shown});
    return true;
  }
  bool open(const char* kind, const char* shown) {
    if (depth_ == 0 && std::string(kind) == "object") {
      top_level = kind;
    } else if (!value(kind, shown)) {
      return false;
    }
    ++depth_;
    return true;
  }
  bool close() {
    --depth_;
    return true;
  }
};

std::string read_tokenizer_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    fail("GPT-2 tokenizer file '{}' does not exist; run scripts/get_tokenizer.sh to install encoder.json and "
         "vocab.bpe into {}, or pass the directory that holds them",
         path, kDefaultGpt2TokenizerDir);
  }
  if (!std::filesystem::is_regular_file(path, ec)) fail("GPT-2 tokenizer file '{}' is not a regular file", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open GPT-2 tokenizer file '{}': {}", path, std::strerror(errno));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) fail("cannot read GPT-2 tokenizer file '{}'", path);
  return contents.str();
}

// ---- the pre-token cache

// Open-addressing map from a pre-token's bytes to its tokens; keys and token
// ids live in two arenas. When full it is cleared: the cache only saves time,
// it never changes a result.
class WordCache {
 public:
  explicit WordCache(size_t max_entries) : max_entries_(std::min(max_entries, kMaxEntries)) {
    if (max_entries_ == 0) return;
    size_t capacity = 16;
    while (capacity < 2 * max_entries_) capacity <<= 1;
    slots_.resize(capacity);
  }

  // Appends the cached tokens of `word` to `out`; false when not cached.
  bool append_cached(std::string_view word, size_t hash, std::vector<uint32_t>& out) const {
    if (slots_.empty()) return false;
    const size_t mask = slots_.size() - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
      const Slot& slot = slots_[i];
      if (slot.ids_length == 0) return false;
      if (slot.hash == hash && slot.key_length == word.size() &&
          std::memcmp(keys_.data() + slot.key_offset, word.data(), word.size()) == 0) {
        const uint32_t* ids = ids_.data() + slot.ids_offset;
        out.insert(out.end(), ids, ids + slot.ids_length);
        return true;
      }
    }
  }

  void insert(std::string_view word, size_t hash, const uint32_t* ids, size_t count) {
    if (slots_.empty() || word.size() > kMaxWordBytes || count == 0) return;
    if (entries_ == max_entries_) clear();
    const size_t mask = slots_.size() - 1;
    size_t i = hash & mask;
    while (slots_[i].ids_length != 0) i = (i + 1) & mask;
    slots_[i] = Slot{hash, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(ids_.size()),
                     static_cast<uint16_t>(word.size()), static_cast<uint16_t>(count)};
    keys_.append(word);
    ids_.insert(ids_.end(), ids, ids + count);
    ++entries_;
  }

 private:
  // Long pieces rarely repeat. The entry cap bounds the slot array (about
  // 200 MB at most) and keeps arena offsets in 32 bits.
  static constexpr size_t kMaxWordBytes = 64;
  static constexpr size_t kMaxEntries = size_t{1} << 22;
  struct Slot {
    size_t hash = 0;
    uint32_t key_offset = 0, ids_offset = 0;
    uint16_t key_length = 0, ids_length = 0;  // ids_length 0: empty slot
  };

  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    keys_.clear();
    ids_.clear();
    entries_ = 0;
  }

  size_t max_entries_;
  size_t entries_ = 0;
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<uint32_t> ids_;
};

uint64_t pair_key(uint32_t left, uint32_t right) { return (uint64_t{left} << 32) | right; }

struct Merge {
  uint32_t rank;
  uint32_t merged;
};

// Merges by pair_key(left, right): open addressing with a multiplicative
// hash. The lookup is BPE's innermost operation, and std::unordered_map's
// modulo of a prime made it most of the encoding time.
class MergeTable {
 public:
  // False when the pair is already present.
  bool insert(uint64_t key, Merge merge) {
    if (2 * (entries_ + 1) > slots_.size()) grow();
    Slot& slot = slots_[slot_index(key)];
    if (slot.key == key) return false;
    slot = Slot{key, merge};
    ++entries_;
    return true;
  }
  const Merge* find(uint64_t key) const {
    if (slots_.empty()) return nullptr;
    const Slot& slot = slots_[slot_index(key)];
    return slot.key == key ? &slot.merge : nullptr;
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // no pair of ids < 2^31 has this key
  struct Slot {
    uint64_t key = kEmpty;
    Merge merge{};
  };

  // The slot holding `key`, or the empty slot where it would go.
  size_t slot_index(uint64_t key) const {
    const size_t mask = slots_.size() - 1;
    size_t i = static_cast<size_t>((key * 0x9E3779B97F4A7C15ULL) >> (64 - bits_));
    while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & mask;
    return i;
  }

  void grow() {
    std::vector<Slot> old = std::move(slots_);
    bits_ = old.empty() ? 10 : bits_ + 1;
    slots_.assign(size_t{1} << bits_, Slot{});
    for (const Slot& slot : old) {
      if (slot.key != kEmpty) slots_[slot_index(slot.key)] = slot;
    }
  }

  std::vector<Slot> slots_;
  int bits_ = 0;
  size_t entries_ = 0;
};

}  // namespace

// ---- the tokenizer

struct Gpt2Tokenizer::Impl {
  std::vector<std::string> bytes_of_token;
  std::array<uint32_t, 256> token_of_byte{};
  MergeTable merges;
  uint32_t merge_count = 0;
  uint32_t end_of_text = 0;
  WordCache cache;

  // BPE scratch space, reused across calls.
  struct Symbol {
    uint32_t id;
    int32_t prev, next;  // -1: none
  };
  struct Candidate {
    uint32_t rank;
    int32_t left;
    uint32_t left_id, right_id, merged_id;
  };
  std::vector<Symbol> symbols;
  std::vector<Candidate> candidates;  // a heap: lowest rank, then leftmost, on top

  Impl(const std::string& encoder_json_path, const std::string& vocab_bpe_path, size_t cache_entries)
      : cache(cache_entries) {
    load_merges(load_encoder(encoder_json_path), vocab_bpe_path);
  }

  std::unordered_map<std::string, uint32_t> load_encoder(const std::string& path) {
    EncoderEntries read(path);
    parse_json_events(read_tokenizer_file(path), read);
    if (read.top_level != "object" || read.entries.empty()) {
      fail("{}: expected a non-empty JSON object mapping token strings to ids, found {}", path,
           read.top_level == "object" ? "an empty object" : read.top_level);
    }
    if (read.entries.size() > size_t(std::numeric_limits<int32_t>::max()))
      fail("{}: too many tokens ({})", path, read.entries.size());
    const size_t vocab = read.entries.size();
    bytes_of_token.assign(vocab, std::string());
    std::vector<char> id_seen(vocab, 0);
    std::unordered_map<std::string, uint32_t> id_of_token;
    id_of_token.reserve(vocab);
    for (const auto& [key, id, shown] : read.entries) {
      if (!id || *id >= vocab || id_seen[*id]) {
        // Past the last id: some id below it has no token (a deleted entry).
        std::string unused;
        if (id && *id >= vocab) {
          std::vector<char> used(vocab, 0);
          for (const EncoderEntries::Entry& entry : read.entries)
            if (entry.id && *entry.id < vocab) used[*entry.id] = 1;
          unused = fmt::format(" (no token has id {})", std::find(used.begin(), used.end(), 0) - used.begin());
        }
        fail("{}: token {} has id {}; the ids must be the integers 0..{}, each used once{}", path, json_quoted(key),
             id ? std::to_string(*id) : shown, vocab - 1, unused);
      }
      if (!id_of_token.emplace(key, uint32_t(*id)).second) fail("{}: token {} is listed twice", path, json_quoted(key));
      id_seen[*id] = 1;
      bytes_of_token[*id] = token_key_to_bytes(key, path);
    }
    const auto code_points = byte_code_points();
    for (unsigned b = 0; b < 256; ++b) {
      const auto token = id_of_token.find(utf8_encode(code_points[b]));
      if (token == id_of_token.end()) {
        fail("{}: no token for the single byte 0x{:02X} (key {}); every byte needs one", path, b,
             json_quoted(utf8_encode(code_points[b])));
      }
      token_of_byte[b] = token->second;
    }
    const auto eot = id_of_token.find(kEndOfText);
    if (eot == id_of_token.end()) fail("{}: no \"{}\" token", path, kEndOfText);
    end_of_text = eot->second;
    return id_of_token;
  }

  // vocab.bpe: an optional "#version" line, then one merge "LEFT RIGHT" per
  // line, by rank. Every merge must combine tokens that are single bytes or
  // made by earlier merges: then merging the lowest-ranked pair first, as
  // bpe() does, gives GPT-2's result.
  void load_merges(const std::unordered_map<std::string, uint32_t>& id_of_token, const std::string& path) {
    const std::string text = read_tokenizer_file(path);
    std::vector<char> available(bytes_of_token.size(), 0);
    for (uint32_t token : token_of_byte) available[token] = 1;
    size_t line_number = 0;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
      ++line_number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || (line_number == 1 && line.rfind("#version", 0) == 0)) continue;
      const size_t space = line.find(' ');
      if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
          line.find(' ', space + 1) != std::string::npos) {
        fail("{}:{}: expected a merge \"LEFT RIGHT\" (two tokens separated by one space), found {}", path,
             line_number, json_quoted(line));
      }
      const std::string left = line.substr(0, space);
      const std::string right = line.substr(space + 1);
      auto token_id = [&](const std::string& key) {
        const auto token = id_of_token.find(key);
        if (token == id_of_token.end()) {
          fail("{}:{}: token {} is not in encoder.json", path, line_number, json_quoted(key));
        }
        return token->second;
      };
      const uint32_t left_id = token_id(left), right_id = token_id(right), merged_id = token_id(left + right);
      for (uint32_t part : {left_id, right_id}) {
        if (!available[part]) {
          fail("{}:{}: merge uses token {}, which is neither a single byte nor made by an earlier merge", path,
               line_number, json_quoted(part == left_id ? left : right));
        }
      }
      const auto rank = merge_count++;
      if (!merges.insert(pair_key(left_id, right_id), Merge{rank, merged_id})) {
        fail("{}:{}: duplicate merge {}", path, line_number, json_quoted(line));
      }
      available[merged_id] = 1;
    }
    // Every token but end-of-text is a byte or a merge's result; one that
    // no merge makes means vocab.bpe is short (or empty) or not this
    // encoder.json's.
    for (uint32_t id = 0; id < available.size(); ++id)
      if (!available[id] && id != end_of_text)
        fail("{}: no merge makes token {} (id {}) of encoder.json; its {} merges do not match the vocabulary of {} "
             "tokens",
             path, json_quoted(bytes_of_token[id]), id, merge_count, available.size());
  }

  void push_candidate(int32_t left) {
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    const Merge* merge = merges.find(pair_key(symbols[left].id, symbols[right].id));
    if (!merge) return;
    candidates.push_back(Candidate{merge->rank, left, symbols[left].id, symbols[right].id, merge->merged});
    std::push_heap(candidates.begin(), candidates.end(), later_candidate);
  }

  static bool later_candidate(const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
  }

  // Merges the lowest-ranked adjacent pair (leftmost first among equals)
  // until no pair has a merge. A heap of candidate pairs, checked for
  // staleness when popped, keeps this O(n log n) for long pieces.
  void bpe(std::string_view piece, std::vector<uint32_t>& out) {
    if (piece.size() >= static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
      fail("gpt2 tokenizer: a pre-token of {} bytes is too long to encode", piece.size());
    }
    const auto n = static_cast<int32_t>(piece.size());
    symbols.resize(n);
    for (int32_t i = 0; i < n; ++i) {
      symbols[i] = Symbol{token_of_byte[static_cast<unsigned char>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
    }
    candidates.clear();
    for (int32_t i = 0; i + 1 < n; ++i) push_candidate(i);
    constexpr uint32_t kRemoved = std::numeric_limits<uint32_t>::max();
    while (!candidates.empty()) {
      std::pop_heap(candidates.begin(), candidates.end(), later_candidate);
      const Candidate c = candidates.back();
      candidates.pop_back();
      Symbol& left = symbols[c.left];
      if (left.id != c.left_id || left.next < 0 || symbols[left.next].id != c.right_id) continue;  // stale
      Symbol& right = symbols[left.next];
      left.id = c.merged_id;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = c.left;
      right.id = kRemoved;
      if (left.prev >= 0) push_candidate(left.prev);
      push_candidate(c.left);
    }
    for (int32_t i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
  }

  void encode_piece(std::string_view piece, std::vector<uint32_t>& out) {
    if (piece.size() == 1) {
      out.push_back(token_of_byte[static_cast<unsigned char>(piece[0])]);
      return;
    }
    const size_t hash = std::hash<std::string_view>{}(piece);
    if (cache.append_cached(piece, hash, out)) return;
    const size_t first = out.size();
    bpe(piece, out);
    cache.insert(piece, hash, out.data() + first, out.size() - first);
  }

  void encode_ordinary(std::string_view text, std::vector<uint32_t>& out) {
    for_each_pretoken(text, [&](std::string_view piece) { encode_piece(piece, out); });
  }
};

Gpt2Tokenizer::Gpt2Tokenizer(const std::string& encoder_json_path, const std::string& vocab_bpe_path,
                             size_t cache_entries)
    : impl_(std::make_unique<Impl>(encoder_json_path, vocab_bpe_path, cache_entries)) {}

std::unique_ptr<Gpt2Tokenizer> Gpt2Tokenizer::from_directory(const std::string& dir, size_t cache_entries) {
  const std::filesystem::path base(dir);
  return std::make_unique<Gpt2Tokenizer>((base / "encoder.json").string(), (base / "vocab.bpe").string(),
                                         cache_entries);
}

Gpt2Tokenizer::~Gpt2Tokenizer() = default;

int Gpt2Tokenizer::vocab_size() const { return static_cast<int>(impl_->bytes_of_token.size()); }

uint32_t Gpt2Tokenizer::eot_token() const { return impl_->end_of_text; }

void Gpt2Tokenizer::encode_append(std::string_view text, std::vector<uint32_t>& out, bool allow_special) {
  if (!allow_special) {
    impl_->encode_ordinary(text, out);
    return;
  }
  const std::string_view special = kEndOfText;
  size_t begin = 0;
  for (size_t at; (at = text.find(special, begin)) != std::string_view::npos; begin = at + special.size()) {
    impl_->encode_ordinary(text.substr(begin, at - begin), out);
    out.push_back(impl_->end_of_text);
  }
  impl_->encode_ordinary(text.substr(begin), out);
}

std::string_view Gpt2Tokenizer::token_bytes(uint32_t id) const {
  if (id >= impl_->bytes_of_token.size()) {
    fail("gpt2 tokenizer: token id {} is out of range (ids 0..{})", id, impl_->bytes_of_token.size() - 1);
  }
  return impl_->bytes_of_token[id];
}

std::vector<std::string_view> gpt2_pretokenize(std::string_view text) {
  std::vector<std::string_view> pieces;
  for_each_pretoken(text, [&](std::string_view piece) { pieces.push_back(piece); });
  return pieces;
}

bool is_valid_utf8(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    if (*p < 0x80) {
      ++p;
      continue;
    }
    const Utf8Char c = decode_utf8(p, end);
    if (c.code_point == kInvalidCodePoint) return false;
    p += c.length;
  }
  return true;
}

}  // namespace srgpt
