#pragma once
// Tokenizers (docs/tokenizer.md): GPT-2 byte-level BPE loaded from the
// standard encoder.json + vocab.bpe, and a byte tokenizer that needs no files.
// Both take any bytes (invalid UTF-8 included) and decode exactly:
// decode(encode(s)) == s for every byte string s.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace srgpt {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  virtual std::string name() const = 0;  // "gpt2" or "byte"
  virtual int vocab_size() const = 0;
  // The token that ends every document in prepared shards: <|endoftext|>
  // (50256) for GPT-2; byte 0 (NUL, which text documents do not contain) for
  // the byte tokenizer, which reserves no id of its own.
  virtual uint32_t eot_token() const = 0;

  // Appends the tokens of `text` to `out`. With allow_special, each
  // occurrence of a special token's text ("<|endoftext|>") becomes its id;
  // without, it is encoded as ordinary text. Encoding may update an internal
  // cache: use one tokenizer per thread.
  virtual void encode_append(std::string_view text, std::vector<uint32_t>& out, bool allow_special) = 0;
  std::vector<uint32_t> encode(std::string_view text, bool allow_special = false);

  // The exact bytes a token stands for (possibly part of a UTF-8 character);
  // an Error when id >= vocab_size(). Thread-safe.
  virtual std::string_view token_bytes(uint32_t id) const = 0;
  // Concatenated token_bytes; an Error naming the position of any id out of
  // range. Thread-safe.
  std::string decode(const std::vector<uint32_t>& tokens) const;
};

// Vocabulary of the 256 byte values: token id == byte value.
class ByteTokenizer final : public Tokenizer {
 public:
  std::string name() const override { return "byte"; }
  int vocab_size() const override { return 256; }
  uint32_t eot_token() const override { return 0; }
  void encode_append(std::string_view text, std::vector<uint32_t>& out, bool allow_special) override;
  std::string_view token_bytes(uint32_t id) const override;
};

// GPT-2's tokenizer: pre-tokenization by the GPT-2 regex (implemented by
// hand), bytes mapped to tokens, then BPE merges by rank, with a cache of the
// tokens of recently seen pre-tokens.
class Gpt2Tokenizer final : public Tokenizer {
 public:
  static constexpr size_t kDefaultCacheEntries = size_t{1} << 17;
  static constexpr const char* kEndOfText = "<|endoftext|>";

  // Loads and validates both files; any problem (missing or unreadable file,
  // not JSON, wrong structure, ids not 0..n-1, a merge naming an unknown
  // token) is an Error naming the file and, where it applies, the key or line.
  // cache_entries = 0 disables the cache; at most 2^22 entries are used.
  Gpt2Tokenizer(const std::string& encoder_json_path, const std::string& vocab_bpe_path,
                size_t cache_entries = kDefaultCacheEntries);
  // Loads DIR/encoder.json and DIR/vocab.bpe.
  static std::unique_ptr<Gpt2Tokenizer> from_directory(const std::string& dir,
                                                       size_t cache_entries = kDefaultCacheEntries);
  ~Gpt2Tokenizer() override;
  Gpt2Tokenizer(const Gpt2Tokenizer&) = delete;
  Gpt2Tokenizer& operator=(const Gpt2Tokenizer&) = delete;

  std::string name() const override { return "gpt2"; }
  int vocab_size() const override;
  uint32_t eot_token() const override;
  void encode_append(std::string_view text, std::vector<uint32_t>& out, bool allow_special) override;
  std::string_view token_bytes(uint32_t id) const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Where scripts/get_tokenizer.sh puts the GPT-2 files, relative to the
// repository root.
constexpr const char* kDefaultGpt2TokenizerDir = "data/tokenizer/gpt2";
// The standard GPT-2 vocabulary size and its <|endoftext|> id, for picking
// a tokenizer from a model's shape without loading the files.
constexpr int kGpt2VocabSize = 50257;
constexpr int kGpt2EndOfText = 50256;

// Whether a tokenizer of `tokenizer_vocab` ids pairs with a model of
// `model_vocab`: the sizes are equal, or the model's pads the tokenizer's,
// i.e. rounds it up to a multiple of a power of two from 8 to 1024 below it
// (50264, 50304, ... 51200 for GPT-2's 50257), as trainers pad the embedding
// table. The padded ids are never a tokenizer's output.
bool model_vocabulary_fits(int64_t model_vocab, int64_t tokenizer_vocab);

// "gpt2" (files from `dir`, or kDefaultGpt2TokenizerDir when empty) or
// "byte"; any other name is an Error listing the allowed ones.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name, const std::string& dir = "");

// GPT-2's pre-tokenization of `text` into the pieces BPE runs on, with the
// semantics of the regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// where \s is Unicode White_Space. A byte that is not part of valid UTF-8
// counts as a character that is neither letter, number nor space.
std::vector<std::string_view> gpt2_pretokenize(std::string_view text);

bool is_valid_utf8(std::string_view text);

}  // namespace srgpt
