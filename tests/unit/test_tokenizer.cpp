// Tokenizers: GPT-2 ids against an independent implementation, the
// pre-tokenizer against GPT-2's regex, round trips, the special token, the
// cache, and bad tokenizer files.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "catch.h"
#include "srgpt/error.h"
#include "srgpt/tokenizer.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using srgpt_test::contains;
using srgpt_test::error_message;
using srgpt_test::TempDir;

// The GPT-2 files are installed by scripts/get_tokenizer.sh (the CI script
// runs it); without them the GPT-2 tests fail rather than pass vacuously.
std::string gpt2_dir() {
  const std::string dir = std::string(SRGPT_SOURCE_DIR) + "/" + srgpt::kDefaultGpt2TokenizerDir;
  if (!fs::exists(dir + "/encoder.json") || !fs::exists(dir + "/vocab.bpe")) {
    FAIL("GPT-2 tokenizer files not found in " << dir << ": run scripts/get_tokenizer.sh");
  }
  return dir;
}

std::unique_ptr<srgpt::Gpt2Tokenizer> load_gpt2(size_t cache_entries = srgpt::Gpt2Tokenizer::kDefaultCacheEntries) {
  return srgpt::Gpt2Tokenizer::from_directory(gpt2_dir(), cache_entries);
}

struct ReferenceCase {
  std::string name, text;
  std::vector<uint32_t> ids;
};

std::vector<ReferenceCase> reference_cases() {
  std::ifstream in(std::string(SRGPT_SOURCE_DIR) + "/tests/data/gpt2_reference_ids.json");
  REQUIRE(in.good());
  const auto json = nlohmann::json::parse(in);
  std::vector<ReferenceCase> cases;
  for (const auto& c : json.at("cases")) {
    cases.push_back({c.at("name").get<std::string>(), c.at("text").get<std::string>(),
                     c.at("ids").get<std::vector<uint32_t>>()});
  }
  return cases;
}

// Random bytes, biased towards what text is made of so that pre-tokens of
// every kind occur, with stray UTF-8 lead and continuation bytes.
std::string random_bytes(std::mt19937_64& rng, size_t max_length) {
  static const std::string kPalette = "aZ e's 09\n\t\r.,!'-";
  std::uniform_int_distribution<size_t> length(0, max_length);
  std::uniform_int_distribution<int> kind(0, 3), any_byte(0, 255);
  std::uniform_int_distribution<size_t> palette(0, kPalette.size() - 1);
  std::string s(length(rng), '\0');
  for (char& c : s) c = static_cast<char>(kind(rng) == 0 ? any_byte(rng) : kPalette[palette(rng)]);
  return s;
}

void write_file(const fs::path& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary);
  out << contents;
}

// A tiny GPT-2-format vocabulary: the 256 byte tokens (bytes 'a'..'z' are
// printable, so their keys are the letters), merges "a a" -> "aa" (rank 0),
// "aa aa" -> "aaaa" (rank 1), "b c" -> "bc" (rank 2), then <|endoftext|>.
struct TinyVocabulary {
  nlohmann::json encoder = nlohmann::json::object();
  std::string merges = "#version: 0.2\na a\naa aa\nb c\n";

  TinyVocabulary() {
    uint32_t next_unprintable = 256;
    for (unsigned b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? b : next_unprintable++;
      std::string key;
      if (cp < 0x80) {
        key += static_cast<char>(cp);
      } else {
        key += static_cast<char>(0xC0 | (cp >> 6));
        key += static_cast<char>(0x80 | (cp & 0x3F));
      }
      encoder[key] = b;
    }
    encoder["aa"] = 256;
    encoder["aaaa"] = 257;
    encoder["bc"] = 258;
    encoder["<|endoftext|>"] = 259;
  }

  void write(const fs::path& dir) const {
    write_file(dir / "encoder.json", encoder.dump());
    write_file(dir / "vocab.bpe", merges);
  }
};

std::string load_error(const fs::path& dir) {
  return error_message([&] { srgpt::Gpt2Tokenizer::from_directory(dir.string()); });
}

}  // namespace

TEST_CASE("GPT-2 ids match the independent gpt-3-encoder reference", "[tokenizer]") {
  auto tokenizer = load_gpt2();
  REQUIRE(tokenizer->vocab_size() == 50257);
  REQUIRE(tokenizer->eot_token() == 50256);
  const auto cases = reference_cases();
  REQUIRE(cases.size() >= 40);
  for (const auto& c : cases) {
    INFO("case '" << c.name << "': " << c.text);
    CHECK(tokenizer->encode(c.text) == c.ids);
    CHECK(tokenizer->decode(c.ids) == c.text);
  }
}

TEST_CASE("GPT-2 pre-tokenization follows GPT-2's regex, including where gpt-3-encoder differs", "[tokenizer]") {
  using Pieces = std::vector<std::string_view>;
  // Expected pieces from GPT-2's own regex (Python `regex` module).
  CHECK(srgpt::gpt2_pretokenize("Hello  world") == Pieces{"Hello", " ", " world"});
  CHECK(srgpt::gpt2_pretokenize("a\n\nb") == Pieces{"a", "\n", "\n", "b"});
  CHECK(srgpt::gpt2_pretokenize("x \n y") == Pieces{"x", " \n", " y"});
  CHECK(srgpt::gpt2_pretokenize("  ") == Pieces{"  "});
  CHECK(srgpt::gpt2_pretokenize("it's") == Pieces{"it", "'s"});
  CHECK(srgpt::gpt2_pretokenize(" 's") == Pieces{" '", "s"});
  CHECK(srgpt::gpt2_pretokenize("''s") == Pieces{"''", "s"});
  CHECK(srgpt::gpt2_pretokenize("a \u3000b") == Pieces{"a", " ", "\u3000", "b"});
  CHECK(srgpt::gpt2_pretokenize("1\ufeff 2") == Pieces{"1", "\ufeff", " 2"});
  // U+0085 is White_Space (GPT-2) but not JavaScript \s; U+FEFF the reverse.
  CHECK(srgpt::gpt2_pretokenize("a\u0085\u0085b") == Pieces{"a", "\u0085", "\u0085", "b"});
  CHECK(srgpt::gpt2_pretokenize(" \ufeffz") == Pieces{" \ufeff", "z"});
  CHECK(srgpt::gpt2_pretokenize("x\ufeff\ufeffy") == Pieces{"x", "\ufeff\ufeff", "y"});
  // Invalid UTF-8 bytes are neither letters, numbers nor spaces.
  CHECK(srgpt::gpt2_pretokenize("ab\xff\xfe cd \x80") == Pieces{"ab", "\xff\xfe", " cd", " \x80"});

  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    const std::string text = random_bytes(rng, 200);
    std::string joined;
    for (auto piece : srgpt::gpt2_pretokenize(text)) {
      REQUIRE(!piece.empty());
      joined += piece;
    }
    REQUIRE(joined == text);
  }
}

TEST_CASE("tokenizers round-trip any bytes and decode any token sequence exactly", "[tokenizer]") {
  auto gpt2 = load_gpt2();
  srgpt::ByteTokenizer bytes;
  std::mt19937_64 rng(12);
  for (srgpt::Tokenizer* tokenizer : {static_cast<srgpt::Tokenizer*>(gpt2.get()), static_cast<srgpt::Tokenizer*>(&bytes)}) {
    INFO("tokenizer " << tokenizer->name());
    for (const auto& c : reference_cases()) REQUIRE(tokenizer->decode(tokenizer->encode(c.text)) == c.text);
    int invalid_strings = 0;
    for (int trial = 0; trial < 300; ++trial) {
      const std::string text = random_bytes(rng, 300);
      invalid_strings += !srgpt::is_valid_utf8(text);
      const auto tokens = tokenizer->encode(text);
      for (uint32_t t : tokens) REQUIRE(t < static_cast<uint32_t>(tokenizer->vocab_size()));
      REQUIRE(tokenizer->decode(tokens) == text);
    }
    CHECK(invalid_strings > 100);

    std::uniform_int_distribution<uint32_t> any_token(0, tokenizer->vocab_size() - 1);
    for (int trial = 0; trial < 100; ++trial) {
      std::vector<uint32_t> tokens(trial);
      std::string expected;
      for (uint32_t& t : tokens) {
        t = any_token(rng);
        expected += tokenizer->token_bytes(t);
      }
      const std::string text = tokenizer->decode(tokens);
      REQUIRE(text == expected);
      REQUIRE(tokenizer->decode(tokenizer->encode(text)) == text);
    }
    const auto out_of_range = static_cast<uint32_t>(tokenizer->vocab_size());
    const std::string error = error_message([&] { tokenizer->decode({1, 2, out_of_range}); });
    CHECK(error.find("position 2") != std::string::npos);
    CHECK(error.find(std::to_string(out_of_range)) != std::string::npos);
  }
}

TEST_CASE("GPT-2 long runs and every single token round-trip", "[tokenizer]") {
  auto tokenizer = load_gpt2();
  // A 200 KB pre-token: BPE must stay fast (heap of candidate merges).
  std::mt19937_64 rng(13);
  std::string long_word(200000, 'a');
  std::uniform_int_distribution<int> letter('a', 'z');
  for (char& c : long_word) c = static_cast<char>(letter(rng));
  REQUIRE(tokenizer->decode(tokenizer->encode(long_word)) == long_word);
  for (uint32_t id = 0; id < static_cast<uint32_t>(tokenizer->vocab_size()); ++id) {
    const std::string text(tokenizer->token_bytes(id));
    REQUIRE(!text.empty());
    REQUIRE(tokenizer->decode(tokenizer->encode(text)) == text);
  }
}

TEST_CASE("GPT-2 <|endoftext|> is a special token only when allowed", "[tokenizer]") {
  auto tokenizer = load_gpt2();
  const uint32_t eot = tokenizer->eot_token();
  CHECK(tokenizer->decode({eot}) == "<|endoftext|>");
  CHECK(tokenizer->encode("<|endoftext|>", true) == std::vector<uint32_t>{eot});
  CHECK(tokenizer->encode("<|endoftext|><|endoftext|>", true) == std::vector<uint32_t>{eot, eot});

  const std::string before = "The end.", after = "\nA new beginning";
  std::vector<uint32_t> expected = tokenizer->encode(before);
  expected.push_back(eot);
  const auto after_tokens = tokenizer->encode(after);
  expected.insert(expected.end(), after_tokens.begin(), after_tokens.end());
  CHECK(tokenizer->encode(before + "<|endoftext|>" + after, true) == expected);

  const auto ordinary = tokenizer->encode(before + "<|endoftext|>" + after, false);
  CHECK(std::count(ordinary.begin(), ordinary.end(), eot) == 0);
  CHECK(tokenizer->decode(ordinary) == before + "<|endoftext|>" + after);
  const auto partial = tokenizer->encode("<|endoftext|", true);
  CHECK(std::count(partial.begin(), partial.end(), eot) == 0);
}

TEST_CASE("GPT-2 cache never changes a result", "[tokenizer]") {
  auto uncached = load_gpt2(0);
  auto tiny_cache = load_gpt2(8);  // cleared over and over
  auto default_cache = load_gpt2();
  // Text from a small random vocabulary, so words repeat and hit the cache.
  std::mt19937_64 rng(14);
  std::vector<std::string> words;
  for (int w = 0; w < 60; ++w) words.push_back(random_bytes(rng, 12));
  std::uniform_int_distribution<size_t> pick(0, words.size() - 1);
  for (int trial = 0; trial < 40; ++trial) {
    std::string text;
    for (int k = 0; k < 200; ++k) text += words[pick(rng)] + (k % 7 == 0 ? "\n" : " ");
    const auto expected = uncached->encode(text);
    REQUIRE(tiny_cache->encode(text) == expected);
    REQUIRE(default_cache->encode(text) == expected);
    REQUIRE(default_cache->encode(text) == expected);  // now from the cache
    REQUIRE(default_cache->decode(expected) == text);
  }
}

TEST_CASE("GPT-2 BPE merges the lowest rank first, left to right", "[tokenizer]") {
  TempDir dir("tokenizer-tiny");
  TinyVocabulary().write(dir.path());
  auto tokenizer = srgpt::Gpt2Tokenizer::from_directory(dir.path().string());
  REQUIRE(tokenizer->vocab_size() == 260);
  CHECK(tokenizer->eot_token() == 259);
  // "a a" applies to both pairs of "aaaa" before "aa aa"; the fifth 'a' stays.
  CHECK(tokenizer->encode("aaaaa") == std::vector<uint32_t>{257, 'a'});
  CHECK(tokenizer->encode("aaa") == std::vector<uint32_t>{256, 'a'});
  CHECK(tokenizer->encode("abca") == std::vector<uint32_t>{'a', 258, 'a'});
  CHECK(tokenizer->encode("cb") == std::vector<uint32_t>{'c', 'b'});
  // A space is the token of U+0120 'Ġ', whose id is 32 in this vocabulary.
  CHECK(tokenizer->encode("b aa") == std::vector<uint32_t>{'b', ' ', 256});
}

TEST_CASE("bad GPT-2 tokenizer files are clear errors", "[tokenizer]") {
  TempDir dir("tokenizer-bad");
  const fs::path path = dir.path();

  std::string error = load_error(path / "missing");
  CHECK(error.find("does not exist") != std::string::npos);
  CHECK(error.find("scripts/get_tokenizer.sh") != std::string::npos);

  auto expect_error = [&](const TinyVocabulary& vocabulary, const std::string& encoder_text,
                          const std::vector<std::string>& fragments) {
    vocabulary.write(path);
    if (!encoder_text.empty()) write_file(path / "encoder.json", encoder_text);
    const std::string message = load_error(path);
    INFO("error: " << message);
    REQUIRE(!message.empty());
    for (const auto& fragment : fragments) CHECK(message.find(fragment) != std::string::npos);
  };

  SECTION("encoder.json is not JSON") { expect_error(TinyVocabulary(), "{\"a\": 1,", {"encoder.json", "not valid JSON"}); }
  SECTION("encoder.json is not an object") { expect_error(TinyVocabulary(), "[1, 2, 3]", {"encoder.json", "array"}); }
  SECTION("encoder.json is empty") { expect_error(TinyVocabulary(), "{}", {"encoder.json", "empty object"}); }
  SECTION("an id is not an integer") {
    TinyVocabulary v;
    v.encoder["aa"] = "256";
    expect_error(v, "", {"encoder.json", "\"aa\"", "0..259"});
  }
  SECTION("vocab.bpe makes too few of the tokens (here none)") {
    TinyVocabulary v;
    v.merges = "#version: 0.2\n";
    expect_error(v, "", {"vocab.bpe", "no merge makes token", "0 merges"});
  }
  SECTION("an id is a fraction, or an object") {
    TinyVocabulary v;
    v.encoder["aa"] = 256.5;
    expect_error(v, "", {"encoder.json", "token \"aa\" has id 256.5", "0..259"});
    v.encoder["aa"] = {{"id", 256}};
    expect_error(v, "", {"encoder.json", "token \"aa\" has id {...}"});
  }
  SECTION("a token is listed twice") {
    TinyVocabulary v;
    std::string text = v.encoder.dump();
    text.insert(text.size() - 1, ",\"aa\":260");  // a second "aa", with the one id not yet used
    expect_error(v, text, {"encoder.json", "token \"aa\" is listed twice"});
  }
  SECTION("an id is used twice") {
    TinyVocabulary v;
    v.encoder["aa"] = 257;
    expect_error(v, "", {"encoder.json", "each used once"});
  }
  SECTION("a token is missing: the message names the id without one") {
    TinyVocabulary v;
    v.encoder.erase("aaaa");  // id 257 of 0..259
    v.merges = "#version: 0.2\na a\nb c\n";
    expect_error(v, "", {"encoder.json", "the ids must be the integers 0..258, each used once (no token has id 257)"});
  }
  SECTION("a binary vocab.bpe line is shown by its start and length") {
    TinyVocabulary v;
    v.merges = "#version: 0.2\n" + std::string(500, '\x01') + "\n";
    expect_error(v, "", {"vocab.bpe:2: expected a merge", "... (500 bytes)"});
  }
  SECTION("a token is outside the byte alphabet") {
    TinyVocabulary v;
    v.encoder.erase("bc");
    v.encoder["b c"] = 258;
    v.merges = "#version: 0.2\na a\naa aa\n";
    expect_error(v, "", {"encoder.json", "\"b c\"", "byte-to-unicode"});
  }
  SECTION("a byte has no token") {
    TinyVocabulary v;
    v.encoder.erase("z");
    v.encoder["zz"] = 'z';
    expect_error(v, "", {"encoder.json", "0x7A"});
  }
  SECTION("no <|endoftext|>") {
    TinyVocabulary v;
    v.encoder.erase("<|endoftext|>");
    expect_error(v, "", {"encoder.json", "<|endoftext|>"});
  }
  SECTION("a merge line is malformed") {
    TinyVocabulary v;
    v.merges += "abc\n";
    expect_error(v, "", {"vocab.bpe:5", "LEFT RIGHT"});
  }
  SECTION("a merge names an unknown token") {
    TinyVocabulary v;
    v.merges += "bc bc\n";
    expect_error(v, "", {"vocab.bpe:5", "\"bcbc\"", "not in encoder.json"});
  }
  SECTION("a merge uses a token no earlier merge made") {
    TinyVocabulary v;
    v.merges = "#version: 0.2\naa aa\na a\n";
    expect_error(v, "", {"vocab.bpe:2", "\"aa\"", "earlier merge"});
  }
  SECTION("a merge is repeated") {
    TinyVocabulary v;
    v.merges += "a a\n";
    expect_error(v, "", {"vocab.bpe:5", "duplicate"});
  }
  SECTION("vocab.bpe is missing") {
    TinyVocabulary().write(path);
    fs::remove(path / "vocab.bpe");
    error = load_error(path);
    CHECK(error.find("vocab.bpe") != std::string::npos);
    CHECK(error.find("does not exist") != std::string::npos);
  }
}

TEST_CASE("byte tokenizer, factory and UTF-8 validation", "[tokenizer]") {
  srgpt::ByteTokenizer bytes;
  CHECK(bytes.vocab_size() == 256);
  CHECK(bytes.eot_token() == 0);
  CHECK(bytes.encode(std::string("A\0\xff", 3)) == std::vector<uint32_t>{65, 0, 255});
  CHECK(error_message([&] { bytes.token_bytes(256); }).find("0..255") != std::string::npos);

  CHECK(srgpt::make_tokenizer("byte")->name() == "byte");
  CHECK(srgpt::make_tokenizer("gpt2", gpt2_dir())->vocab_size() == 50257);
  const std::string error = error_message([] { srgpt::make_tokenizer("sentencepiece"); });
  CHECK(error.find("sentencepiece") != std::string::npos);
  CHECK(error.find("'gpt2'") != std::string::npos);

  CHECK(srgpt::is_valid_utf8("plain ascii"));
  CHECK(srgpt::is_valid_utf8("caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf"));
  CHECK_FALSE(srgpt::is_valid_utf8("\xc0\x80"));          // overlong NUL
  CHECK_FALSE(srgpt::is_valid_utf8("\xe0\x80\xaf"));      // overlong '/'
  CHECK_FALSE(srgpt::is_valid_utf8("\xed\xa0\x80"));      // surrogate
  CHECK_FALSE(srgpt::is_valid_utf8("\xf4\x90\x80\x80"));  // above U+10FFFF
  CHECK_FALSE(srgpt::is_valid_utf8("ok \xe2\x82"));       // truncated
  CHECK_FALSE(srgpt::is_valid_utf8("\x80"));              // lone continuation
}

TEST_CASE("a model's vocabulary fits a tokenizer's when equal or padded to a power-of-two multiple", "[tokenizer]") {
  // GPT-2's 50257 rounded up to multiples of 8, 16, ..., 1024.
  for (const int64_t padded : {50257, 50264, 50272, 50304, 50432, 50688, 51200})
    CHECK(srgpt::model_vocabulary_fits(padded, 50257));
  for (const int64_t other : {50256, 50258, 50300, 50305, 50560, 51199, 52224, 100514})
    CHECK_FALSE(srgpt::model_vocabulary_fits(other, 50257));
  // 256 is a multiple of every power of two below it: only 256 fits, and 512
  // (a multiple of 512, which is not below 256) is another vocabulary.
  CHECK(srgpt::model_vocabulary_fits(256, 256));
  CHECK_FALSE(srgpt::model_vocabulary_fits(264, 256));
  CHECK_FALSE(srgpt::model_vocabulary_fits(512, 256));
  // A tokenizer's vocabulary never fits a smaller model.
  CHECK_FALSE(srgpt::model_vocabulary_fits(50256, 50304));
  CHECK(srgpt::model_vocabulary_fits(104, 100));
}
