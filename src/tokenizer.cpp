// Tokenizer interface, the byte tokenizer and the factory. The GPT-2 BPE
// tokenizer is in tokenizer_gpt2.cpp.
#include "srgpt/tokenizer.h"

#include <array>

#include "srgpt/error.h"

namespace srgpt {

std::vector<uint32_t> Tokenizer::encode(std::string_view text, bool allow_special) {
  std::vector<uint32_t> tokens;
  encode_append(text, tokens, allow_special);
  return tokens;
}

std::string Tokenizer::decode(const std::vector<uint32_t>& tokens) const {
  std::string text;
  text.reserve(tokens.size() * 4);
  const auto vocab = static_cast<uint32_t>(vocab_size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] >= vocab) {
      fail("cannot decode token id {} at position {}: the {} tokenizer has ids 0..{}", tokens[i], i, name(),
           vocab - 1);
    }
    text += token_bytes(tokens[i]);
  }
  return text;
}

void ByteTokenizer::encode_append(std::string_view text, std::vector<uint32_t>& out, bool /*allow_special*/) {
  out.reserve(out.size() + text.size());
  for (char c : text) out.push_back(static_cast<unsigned char>(c));
}

std::string_view ByteTokenizer::token_bytes(uint32_t id) const {
  static const std::array<char, 256> kAllBytes = [] {
    std::array<char, 256> bytes{};
    for (int b = 0; b < 256; ++b) bytes[b] = static_cast<char>(b);
    return bytes;
  }();
  if (id >= 256) fail("byte tokenizer: token id {} is out of range (ids 0..255)", id);
  return std::string_view(&kAllBytes[id], 1);
}

bool model_vocabulary_fits(int64_t model_vocab, int64_t tokenizer_vocab) {
  if (model_vocab == tokenizer_vocab) return true;
  if (model_vocab < tokenizer_vocab) return false;
  for (int64_t multiple = 8; multiple <= 1024 && multiple < tokenizer_vocab; multiple *= 2)
    if ((tokenizer_vocab + multiple - 1) / multiple * multiple == model_vocab) return true;
  return false;
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name, const std::string& dir) {
  if (name == "byte") return std::make_unique<ByteTokenizer>();
  if (name == "gpt2") return Gpt2Tokenizer::from_directory(dir.empty() ? kDefaultGpt2TokenizerDir : dir);
  fail("unknown tokenizer '{}': allowed are 'gpt2' and 'byte'", name);
}

}  // namespace srgpt
