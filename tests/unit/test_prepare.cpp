// `srgpt prepare`: document splitting, the deterministic train/val split,
// shards that decode back to the documents, summary.json, and bad inputs.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "catch.h"
#include "srgpt/data.h"
#include "srgpt/error.h"
#include "srgpt/posix_file.h"
#include "srgpt/prepare.h"
#include "srgpt/tokenizer.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using srgpt_test::contains;
using srgpt_test::error_message;
using srgpt_test::read_file;
using srgpt_test::TempDir;

void write_file(const fs::path& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary);
  out << contents;
}

std::string gpt2_dir() {
  const std::string dir = std::string(SRGPT_SOURCE_DIR) + "/" + srgpt::kDefaultGpt2TokenizerDir;
  if (!fs::exists(dir + "/encoder.json") || !fs::exists(dir + "/vocab.bpe")) {
    FAIL("GPT-2 tokenizer files not found in " << dir << ": run scripts/get_tokenizer.sh");
  }
  return dir;
}

srgpt::PrepareOptions options_for(const TempDir& dir, const std::string& tokenizer) {
  srgpt::PrepareOptions options;
  options.inputs = {(dir.path() / "in").string() + "/*.txt"};
  options.tokenizer = tokenizer;
  if (tokenizer == "gpt2") options.tokenizer_dir = gpt2_dir();
  options.out_dir = (dir.path() / "out").string();
  options.show_progress = false;
  return options;
}

// The documents in a split's shards, read back with TokenShard and cut at
// the end-of-text token.
std::vector<std::string> documents_in_shards(const std::string& out_dir, const srgpt::SplitSummary& split,
                                             srgpt::Tokenizer& tokenizer) {
  std::vector<std::string> documents;
  std::vector<uint32_t> current;
  for (const auto& shard_summary : split.shards) {
    const srgpt::TokenShard shard((fs::path(out_dir) / shard_summary.file).string());
    REQUIRE(static_cast<int64_t>(shard.size()) == shard_summary.tokens);
    for (size_t i = 0; i < shard.size(); ++i) {
      const uint32_t token = shard.at(i);
      if (token == tokenizer.eot_token()) {
        documents.push_back(tokenizer.decode(current));
        current.clear();
      } else {
        current.push_back(token);
      }
    }
  }
  REQUIRE(current.empty());  // every document ends with its separator
  return documents;
}

// A random paragraph of words, some with accents, emoji or invalid UTF-8.
std::string random_paragraph(std::mt19937_64& rng) {
  static const std::vector<std::string> kWords = {"the", "model", "trains", "in", "pure", "bf16", "café", "日本",
                                                  "😀", "don't", "42", "x\xff", "rounding", "\t", "data,"};
  std::uniform_int_distribution<size_t> word(0, kWords.size() - 1), count(1, 40), line_break(0, 9);
  std::string text;
  for (size_t k = 0, n = count(rng); k < n; ++k) {
    if (k > 0) text += line_break(rng) == 0 ? "\n" : " ";
    text += kWords[word(rng)];
  }
  return text;
}

}  // namespace

TEST_CASE("prepare writes shards that decode back to the documents, split deterministically", "[prepare]") {
  for (const std::string tokenizer_name : {"byte", "gpt2"}) {
    INFO("tokenizer " << tokenizer_name);
    TempDir dir("prepare-e2e");
    fs::create_directories(dir.path() / "in");
    // Three files of paragraphs separated by blank lines (one with spaces).
    std::mt19937_64 rng(21);
    std::vector<std::string> documents;
    for (int file = 0; file < 3; ++file) {
      std::string contents;
      for (int p = 0; p < 12; ++p) {
        documents.push_back(random_paragraph(rng));
        contents += documents.back() + (p % 3 == 0 ? "\n  \n\n" : "\n\n");
      }
      write_file(dir.path() / ("in/part" + std::to_string(file) + ".txt"), contents);
    }
    auto options = options_for(dir, tokenizer_name);
    options.split = srgpt::DocumentSplit::Paragraphs;
    options.val_fraction = 0.25;
    options.shard_tokens = 97;
    options.seed = 5;
    auto tokenizer = srgpt::make_tokenizer(tokenizer_name, options.tokenizer_dir);

    std::vector<std::string> expected_train, expected_val;
    int64_t train_bytes = 0, val_bytes = 0, invalid_utf8 = 0;
    for (size_t i = 0; i < documents.size(); ++i) {
      const bool val = srgpt::document_hash_is_val(options.seed, static_cast<int64_t>(i), options.val_fraction);
      (val ? expected_val : expected_train).push_back(documents[i]);
      (val ? val_bytes : train_bytes) += static_cast<int64_t>(documents[i].size());
      invalid_utf8 += !srgpt::is_valid_utf8(documents[i]);
    }
    REQUIRE(!expected_val.empty());
    REQUIRE(!expected_train.empty());
    REQUIRE(invalid_utf8 > 0);

    const srgpt::PrepareSummary summary = srgpt::prepare_dataset(options);
    CHECK(summary.tokenizer == tokenizer_name);
    CHECK(summary.vocab_size == tokenizer->vocab_size());
    CHECK(summary.inputs.size() == 3);
    CHECK(summary.train.documents == static_cast<int64_t>(expected_train.size()));
    CHECK(summary.val.documents == static_cast<int64_t>(expected_val.size()));
    CHECK(summary.train.bytes == train_bytes);
    CHECK(summary.val.bytes == val_bytes);
    CHECK(summary.train.invalid_utf8_documents + summary.val.invalid_utf8_documents == invalid_utf8);
    CHECK(documents_in_shards(options.out_dir, summary.train, *tokenizer) == expected_train);
    CHECK(documents_in_shards(options.out_dir, summary.val, *tokenizer) == expected_val);

    // Tokens: each document's encoding plus its separator, in full shards.
    int64_t train_tokens = 0;
    for (const auto& d : expected_train) train_tokens += static_cast<int64_t>(tokenizer->encode(d).size()) + 1;
    CHECK(summary.train.tokens == train_tokens);
    REQUIRE(summary.train.shards.size() == static_cast<size_t>((train_tokens + 96) / 97));
    for (size_t s = 0; s + 1 < summary.train.shards.size(); ++s) CHECK(summary.train.shards[s].tokens == 97);
    CHECK(summary.train.shards[0].file == "train_000000.bin");

    // summary.json holds the same numbers.
    const auto reread = srgpt::read_prepare_summary(options.out_dir + "/summary.json");
    CHECK(srgpt::to_json(reread) == srgpt::to_json(summary));
    const auto json = nlohmann::json::parse(read_file(fs::path(options.out_dir) / "summary.json"));
    CHECK(json.at("documents") == documents.size());
    CHECK(json.at("tokens") == summary.train.tokens + summary.val.tokens);
    CHECK(json.at("invalid_utf8_documents") == invalid_utf8);
    // Counts of another kind than integer are errors, not truncated.
    for (const char* bad : {"1.5", "true", "1e300", "-1e300"}) {
      auto damaged = json;
      damaged["train"]["shards"][0]["tokens"] = nlohmann::json::parse(bad);
      write_file(dir.path() / "damaged_summary.json", damaged.dump());
      CHECK(contains(error_message([&] { srgpt::read_prepare_summary((dir.path() / "damaged_summary.json").string()); }),
                     "\"tokens\" has the wrong type (" + damaged["train"]["shards"][0]["tokens"].dump() +
                         "); expected an integer"));
    }

    // Same seed: byte-identical shards. Another seed: another split.
    auto again = options;
    again.out_dir = (dir.path() / "again").string();
    const auto summary_again = srgpt::prepare_dataset(again);
    REQUIRE(summary_again.train.shards.size() == summary.train.shards.size());
    for (const auto& shard : summary.train.shards) {
      CHECK(read_file(fs::path(again.out_dir) / shard.file) == read_file(fs::path(options.out_dir) / shard.file));
    }
    auto reseeded = options;
    reseeded.out_dir = (dir.path() / "reseeded").string();
    reseeded.seed = 6;
    const auto summary_reseeded = srgpt::prepare_dataset(reseeded);
    CHECK(documents_in_shards(reseeded.out_dir, summary_reseeded.val, *tokenizer) != expected_val);
  }
}

TEST_CASE("prepare cuts files into documents by file, paragraph or line", "[prepare]") {
  TempDir dir("prepare-split");
  fs::create_directories(dir.path() / "in");
  const std::string contents = "first line\n\n\nsecond b\r\nsecond c\n \t\nthird\n\n";
  write_file(dir.path() / "in/a.txt", contents);
  write_file(dir.path() / "in/b.txt", "last, no newline");
  write_file(dir.path() / "in/empty.txt", "");
  srgpt::ByteTokenizer tokenizer;
  auto documents_for = [&](srgpt::DocumentSplit split) {
    auto options = options_for(dir, "byte");
    options.split = split;
    options.val_fraction = 0;
    const auto summary = srgpt::prepare_dataset(options);
    CHECK(summary.val.documents == 0);
    CHECK(summary.val.shards.empty());
    CHECK(summary.input_bytes == static_cast<int64_t>(contents.size() + 16));
    return documents_in_shards(options.out_dir, summary.train, tokenizer);
  };
  using Documents = std::vector<std::string>;
  CHECK(documents_for(srgpt::DocumentSplit::Files) == Documents{contents, "last, no newline"});
  CHECK(documents_for(srgpt::DocumentSplit::Paragraphs) ==
        Documents{"first line", "second b\r\nsecond c", "third", "last, no newline"});
  CHECK(documents_for(srgpt::DocumentSplit::Lines) ==
        Documents{"first line", "second b", "second c", "third", "last, no newline"});

  // A file named twice, in other spellings or through links, is read once.
  fs::create_symlink("a.txt", dir.path() / "in/alias.txt");
  fs::create_hard_link(dir.path() / "in/b.txt", dir.path() / "in/b-link.txt");
  auto options = options_for(dir, "byte");
  options.split = srgpt::DocumentSplit::Files;
  options.val_fraction = 0;
  options.inputs = {dir.str("in/a.txt"), dir.str("in/./a.txt"), dir.str("in") + "/*.txt"};
  const auto summary = srgpt::prepare_dataset(options);
  CHECK(documents_in_shards(options.out_dir, summary.train, tokenizer) == Documents{contents, "last, no newline"});
}

TEST_CASE("prepare keeps both splits non-empty when it can", "[prepare]") {
  TempDir dir("prepare-min");
  fs::create_directories(dir.path() / "in");
  write_file(dir.path() / "in/two.txt", "one document\ntwo documents\n");
  auto options = options_for(dir, "byte");
  options.split = srgpt::DocumentSplit::Lines;
  for (double fraction : {1e-12, 0.999999999}) {
    options.val_fraction = fraction;
    const auto summary = srgpt::prepare_dataset(options);
    CHECK(summary.train.documents == 1);
    CHECK(summary.val.documents == 1);
  }
  write_file(dir.path() / "in/two.txt", "a single document\n");
  options.val_fraction = 0.5;
  const auto summary = srgpt::prepare_dataset(options);
  CHECK(summary.train.documents + summary.val.documents == 1);
}

TEST_CASE("prepare replaces the shards of an earlier run and reports bytes per token", "[prepare]") {
  TempDir dir("prepare-rerun");
  fs::create_directories(dir.path() / "in");
  fs::create_directories(dir.path() / "out");
  write_file(dir.path() / "in/a.txt", "alpha beta\n\ngamma delta\n\nepsilon\n\nzeta eta theta\n");
  write_file(dir.path() / "out/train_000007.bin", "stale");
  write_file(dir.path() / "out/val_000003.bin", "stale");
  write_file(dir.path() / "out/train_000001.bin.tmp-4242", "an interrupted run's temporary");
  write_file(dir.path() / "out/notes.txt", "kept");
  auto options = options_for(dir, "byte");
  options.split = srgpt::DocumentSplit::Paragraphs;
  options.val_fraction = 0.3;
  const auto summary = srgpt::prepare_dataset(options);
  CHECK_FALSE(fs::exists(dir.path() / "out/train_000007.bin"));
  CHECK_FALSE(fs::exists(dir.path() / "out/val_000003.bin"));
  CHECK_FALSE(fs::exists(dir.path() / "out/train_000001.bin.tmp-4242"));
  CHECK(fs::exists(dir.path() / "out/notes.txt"));
  // Complete: the loader takes the shards (no incomplete-dataset marker left).
  CHECK_FALSE(fs::exists(dir.path() / "out" / srgpt::kIncompleteDatasetMarker));
  CHECK(srgpt::expand_shard_pattern((dir.path() / "out/train_*.bin").string(), "data.train").size() == 1);

  // The same output directory as an input: refused before anything is deleted.
  auto onto_itself = options;
  onto_itself.inputs = {(dir.path() / "out").string() + "/*"};
  const std::string onto_itself_error = error_message([&] { srgpt::prepare_dataset(onto_itself); });
  CHECK(onto_itself_error.find("is in --out") != std::string::npos);
  CHECK(fs::exists(dir.path() / "out/summary.json"));
  CHECK(fs::exists(dir.path() / "out/train_000000.bin"));

  // Another prepare writing the same directory: refused before anything is
  // deleted (two left a summary matching neither's shards). A lock held
  // here conflicts as another process's would: flock sets apart open files.
  {
    const srgpt::ExclusiveFileLock other(dir.path() / "out/.srgpt-prepare.lock", "another prepare's --out", "");
    const std::string busy = error_message([&] { srgpt::prepare_dataset(options); });
    CHECK(busy.find("--out '" + (dir.path() / "out").string() + "' is in use by another process: pid " +
                    std::to_string(::getpid())) != std::string::npos);
    CHECK(fs::exists(dir.path() / "out/summary.json"));
    CHECK_FALSE(fs::exists(dir.path() / "out" / srgpt::kIncompleteDatasetMarker));
  }

  const auto train = srgpt::prepared_split({(dir.path() / "out/train_000000.bin").string()});
  REQUIRE(train.has_value());
  CHECK_FALSE(train->val);
  const auto train_ratio = train->bytes_per_token();
  REQUIRE(train_ratio.has_value());
  CHECK(*train_ratio == static_cast<double>(summary.train.bytes) / static_cast<double>(summary.train.tokens));
  CHECK(*train_ratio < 1.0);  // byte tokens plus one separator per document
  srgpt::PreparedSplit no_bytes = *train;
  no_bytes.summary.train.bytes = 0;
  CHECK_FALSE(no_bytes.bytes_per_token().has_value());  // not an infinite bits per byte
  const auto val = srgpt::prepared_split({(dir.path() / "out/val_000000.bin").string()});
  REQUIRE(val.has_value());
  CHECK(val->val);
  CHECK_FALSE(srgpt::prepared_split(
                  {(dir.path() / "out/train_000000.bin").string(), (dir.path() / "out/val_000000.bin").string()})
                  .has_value());
  CHECK_FALSE(srgpt::prepared_split({(dir.path() / "in/a.txt").string()}).has_value());

  // Byte tokens: a model of the byte vocabulary agrees; a GPT-2 one is warned
  // about, with advice that depends on the use.
  using srgpt::ShardUse;
  for (const ShardUse use : {ShardUse::training, ShardUse::evaluation}) {
    CHECK_FALSE(srgpt::vocabulary_mismatch(*train, 256, "data.train", use).has_value());
    const auto mismatch = srgpt::vocabulary_mismatch(*train, 50257, "data.train", use);
    REQUIRE(mismatch.has_value());
    CHECK(mismatch->find("data.train: these shards hold tokens of the byte tokenizer (vocabulary 256, by their "
                         "summary.json), but the model's vocabulary (model.vocab_size) has 50257 tokens: ") == 0);
    CHECK(mismatch->find(use == ShardUse::training ? "set model.vocab_size = 256" : "its loss on them means nothing") !=
          std::string::npos);
    // 512 is 256 rounded up to a multiple of 512, but that is no padding.
    CHECK(srgpt::vocabulary_mismatch(*train, 512, "data.train", use).has_value());
  }
  // A padded GPT-2 vocabulary is no mismatch: the model reads the tokens as they are meant.
  srgpt::PreparedSplit gpt2 = *train;
  gpt2.summary.tokenizer = "gpt2";
  gpt2.summary.vocab_size = 50257;
  for (const int padded : {50264, 50304, 50432, 51200}) {
    INFO(padded);
    for (const ShardUse use : {ShardUse::training, ShardUse::evaluation})
      CHECK_FALSE(srgpt::vocabulary_mismatch(gpt2, padded, "data.train", use).has_value());
  }
  for (const int other : {50258, 50300, 52224}) {
    INFO(other);
    const auto mismatch = srgpt::vocabulary_mismatch(gpt2, other, "--data", ShardUse::evaluation);
    REQUIRE(mismatch.has_value());
    CHECK(mismatch->find("--data: these shards hold tokens of the gpt2 tokenizer") == 0);
  }
  // A model smaller than the shards' vocabulary cannot read them: an error,
  // not advice that "the ids fit".
  for (const ShardUse use : {ShardUse::training, ShardUse::evaluation}) {
    const std::string smaller = error_message([&] { srgpt::vocabulary_mismatch(gpt2, 50256, "data.train", use); });
    CHECK(smaller.find("data.train: these shards hold tokens of the gpt2 tokenizer (vocabulary 50257, by their "
                       "summary.json), but the model's vocabulary (model.vocab_size) has only 50256 tokens: their "
                       "ids from 50256 up are out of its range") == 0);
    CHECK(smaller.find(use == ShardUse::training ? "set model.vocab_size = 50257" : "shards of its own tokenizer") !=
          std::string::npos);
  }

  // A summary whose counts cannot be, or that describes other shards under
  // the same names (eval printed a negative or another dataset's bits per
  // byte, found by a probe).
  const fs::path summary_path = dir.path() / "out/summary.json";
  const nlohmann::json good = nlohmann::json::parse(std::ifstream(summary_path));
  const std::vector<std::string> val_shards = {(dir.path() / "out/val_000000.bin").string()};
  auto summary_error = [&](const std::function<void(nlohmann::json&)>& damage) {
    nlohmann::json damaged = good;
    damage(damaged);
    write_file(summary_path, damaged.dump());
    return error_message([&] { srgpt::prepared_split(val_shards); });
  };
  CHECK(contains(summary_error([](nlohmann::json& j) { j["val"]["bytes"] = -5; }),
                 "summary.json.val: \"bytes\" = -5 is negative"));
  CHECK(contains(summary_error([](nlohmann::json& j) { j["val"]["bytes"] = 10000000000000000000u; }),
                 "summary.json.val: \"bytes\" = 10000000000000000000 is out of range"));
  CHECK(contains(summary_error([](nlohmann::json& j) { j["val"]["tokens"] = j["val"]["tokens"].get<int64_t>() + 1; }),
                 "but its shards hold " + std::to_string(good["val"]["tokens"].get<int64_t>()) + " tokens in all"));
  // Each count in range, their sum not (signed overflow, found by the fuzz test under UBSan).
  CHECK(contains(summary_error([](nlohmann::json& j) {
                   j["val"]["shards"].push_back(j["val"]["shards"][0]);
                   for (nlohmann::json& shard : j["val"]["shards"]) shard["tokens"] = INT64_MAX - 1;
                 }),
                 "summary.json.val: the shards' \"tokens\" add up to more than 9223372036854775807"));
  CHECK(contains(summary_error([](nlohmann::json& j) { j["vocab_size"] = -1; }),
                 "\"vocab_size\" = -1; allowed: 1 or more"));
  CHECK(contains(summary_error([](nlohmann::json& j) {
                   j["train"]["shards"].push_back(j["val"]["shards"][0]);
                   j["train"]["tokens"] = j["train"]["tokens"].get<int64_t>() + j["val"]["tokens"].get<int64_t>();
                 }),
                 "shard \"val_000000.bin\" is listed twice"));
  const int64_t val_tokens = good["val"]["shards"][0]["tokens"].get<int64_t>();
  CHECK(contains(summary_error([](nlohmann::json& j) {
                   j["val"]["shards"][0]["tokens"] = j["val"]["shards"][0]["tokens"].get<int64_t>() + 3;
                   j["val"]["tokens"] = j["val"]["tokens"].get<int64_t>() + 3;
                 }),
                 "it lists val_000000.bin with " + std::to_string(val_tokens + 3) + " tokens, but that file holds " +
                     std::to_string(val_tokens) + ": the summary describes other shards"));
  write_file(summary_path, good.dump());
  CHECK(srgpt::prepared_split(val_shards).has_value());

  // A summary.json that cannot even be looked at: a symlink loop.
  fs::remove(summary_path);
  fs::create_symlink("summary.json", summary_path);
  CHECK(contains(error_message([&] { srgpt::prepared_split(val_shards); }),
                 "prepare summary " + summary_path.string() + " cannot be read: Too many levels of symbolic links"));
  fs::remove(summary_path);

  // Another format's summary.json, without a "version" (found by
  // test_input_fuzz.cpp: the message's object.at("version") threw
  // nlohmann's out_of_range instead).
  write_file(dir.path() / "out/summary.json", R"({"format": "something-else"})");
  CHECK(error_message([&] { srgpt::prepared_split({(dir.path() / "out/train_000000.bin").string()}); })
            .find("summary.json: not a version 1 srgpt-prepare-summary file (format \"something-else\", version "
                  "absent)") != std::string::npos);
}

TEST_CASE("prepare reads files whose names are not UTF-8, and summary.json stays JSON", "[prepare]") {
  // Found by the command-line fuzz: summary.json's "inputs" made dump()
  // throw nlohmann's type_error 316 after the shards were written.
  TempDir dir("prepare-latin1");
  const fs::path latin1 = dir.path() / "in" / "caf\xe9.txt";
  fs::create_directories(latin1.parent_path());
  write_file(latin1, "un caf\xe9, s'il vous pla\xeet\n");
  srgpt::PrepareOptions options;
  options.inputs = {(dir.path() / "in" / "*.txt").string()};
  options.tokenizer = "byte";
  options.out_dir = (dir.path() / "out").string();
  options.show_progress = false;
  const srgpt::PrepareSummary summary = srgpt::prepare_dataset(options);
  CHECK(summary.train.tokens + summary.val.tokens == 26);  // 25 bytes and the end-of-text token
  const auto json = nlohmann::json::parse(read_file(dir.path() / "out" / "summary.json"));
  CHECK(json.at("inputs") == nlohmann::json::array({(dir.path() / "in").string() + "/caf\xef\xbf\xbd.txt"}));
  CHECK(srgpt::read_prepare_summary((dir.path() / "out" / "summary.json").string()).train.tokens ==
        summary.train.tokens);
}

TEST_CASE("prepare reports bad inputs as clear errors", "[prepare]") {
  TempDir dir("prepare-bad");
  fs::create_directories(dir.path() / "in");
  write_file(dir.path() / "in/a.txt", "some text\n");
  auto options = options_for(dir, "byte");
  auto expect_error = [&](const srgpt::PrepareOptions& bad, const std::vector<std::string>& fragments) {
    const std::string message = error_message([&] { srgpt::prepare_dataset(bad); });
    INFO("error: " << message);
    REQUIRE(!message.empty());
    for (const auto& fragment : fragments) CHECK(message.find(fragment) != std::string::npos);
  };

  SECTION("no input matches") {
    auto bad = options;
    bad.inputs = {(dir.path() / "in").string() + "/*.md"};
    expect_error(bad, {"--input", "*.md"});
  }
  SECTION("an input is unreadable") {
    fs::create_directories(dir.path() / "in/folder.txt");
    expect_error(options, {"folder.txt", "directory"});
  }
  SECTION("empty input") {
    write_file(dir.path() / "in/a.txt", "");
    expect_error(options, {"empty input", "no bytes"});
  }
  SECTION("only blank lines") {
    write_file(dir.path() / "in/a.txt", "\n \n\t\n");
    auto bad = options;
    bad.split = srgpt::DocumentSplit::Lines;
    expect_error(bad, {"no documents", "lines"});
  }
  SECTION("missing tokenizer files") {
    auto bad = options;
    bad.tokenizer = "gpt2";
    bad.tokenizer_dir = (dir.path() / "no-tokenizer").string();
    expect_error(bad, {"encoder.json", "scripts/get_tokenizer.sh"});
  }
  SECTION("corrupt encoder.json") {
    const fs::path tokenizer_dir = dir.path() / "corrupt";
    fs::create_directories(tokenizer_dir);
    fs::copy_file(fs::path(gpt2_dir()) / "vocab.bpe", tokenizer_dir / "vocab.bpe");
    write_file(tokenizer_dir / "encoder.json", read_file(fs::path(gpt2_dir()) / "encoder.json").substr(0, 5000));
    auto bad = options;
    bad.tokenizer = "gpt2";
    bad.tokenizer_dir = tokenizer_dir.string();
    expect_error(bad, {"encoder.json", "not valid JSON"});
  }
  SECTION("output directory cannot be created") {
    auto bad = options;
    bad.out_dir = (dir.path() / "in/a.txt/out").string();
    expect_error(bad, {"--out", "a.txt/out"});
    write_file(dir.path() / "a-file", "x");
    bad.out_dir = (dir.path() / "a-file").string();
    expect_error(bad, {"--out: '" + bad.out_dir + "' exists and is not a directory"});
  }
  SECTION("an old summary.json that cannot be removed") {
    const fs::path stuck = fs::path(options.out_dir) / "summary.json";
    fs::create_directories(stuck);
    write_file(stuck / "x", "x");
    expect_error(options, {"--out: cannot remove old '" + stuck.string() + "': Directory not empty"});
    fs::remove_all(stuck);
  }
  SECTION("out-of-range numbers") {
    auto bad = options;
    bad.val_fraction = 1.0;
    expect_error(bad, {"--val-fraction", "0 <= F < 1"});
    bad = options;
    bad.shard_tokens = 0;
    expect_error(bad, {"--shard-tokens"});
  }
  SECTION("unknown split or tokenizer") {
    CHECK(error_message([] { srgpt::parse_document_split("sentences"); }).find("files, paragraphs, lines") !=
          std::string::npos);
    auto bad = options;
    bad.tokenizer = "unigram";
    expect_error(bad, {"unigram", "'byte'"});
  }
  CHECK_FALSE(fs::exists(dir.path() / "out/summary.json"));
}

TEST_CASE("shards of an interrupted prepare are refused until it runs again", "[prepare]") {
  TempDir dir("prepare-interrupted");
  fs::create_directories(dir.path() / "in");
  write_file(dir.path() / "in/a.txt", "alpha beta\n\ngamma delta\n\nepsilon\n");
  auto options = options_for(dir, "byte");
  options.split = srgpt::DocumentSplit::Paragraphs;
  srgpt::prepare_dataset(options);
  // What an interrupted run leaves: shards, and the marker it writes first
  // and removes last.
  write_file(dir.path() / "out" / srgpt::kIncompleteDatasetMarker, "");
  const std::string pattern = (dir.path() / "out/train_*.bin").string();
  const std::string refused = error_message([&] { srgpt::expand_shard_pattern(pattern, "data.train"); });
  CHECK(refused.find("data.train") != std::string::npos);
  CHECK(refused.find("incomplete dataset") != std::string::npos);
  CHECK(refused.find("run prepare again") != std::string::npos);
  srgpt::prepare_dataset(options);
  CHECK(srgpt::expand_shard_pattern(pattern, "data.train").size() == 1);
}

TEST_CASE("srgpt prepare command line", "[prepare]") {
  TempDir dir("prepare-cli");
  fs::create_directories(dir.path() / "in");
  write_file(dir.path() / "in/a.txt", "first sentence.\nsecond sentence.\nthird one\n");
  write_file(dir.path() / "in/b.txt", "fourth\n\nfifth\n");
  const std::string input = "'" + (dir.path() / "in").string() + "/*.txt'";
  const std::string out = (dir.path() / "out").string();

  const auto ok = srgpt_test::run_command(srgpt_test::srgpt_bin() + " prepare --input " + input +
                                          " --tokenizer byte --split lines --val-fraction 0.2 --out " + out);
  INFO(ok.output);
  REQUIRE(ok.exit_code == 0);
  CHECK(ok.output.find("train") != std::string::npos);
  const auto summary = srgpt::read_prepare_summary(out + "/summary.json");
  CHECK(summary.tokenizer == "byte");
  CHECK(summary.document_split == "lines");
  CHECK(summary.train.documents + summary.val.documents == 5);
  CHECK(summary.val.documents >= 1);

  const auto bad = srgpt_test::run_command(srgpt_test::srgpt_bin() + " prepare --input " + input +
                                           " --tokenizer byte --val-fraction 1.5 --out " + out);
  INFO(bad.output);
  CHECK(bad.exit_code != 0);
  CHECK(bad.output.find("--val-fraction") != std::string::npos);
  const auto missing = srgpt_test::run_command(srgpt_test::srgpt_bin() + " prepare --input '" +
                                               (dir.path() / "none").string() + "/*.txt' --tokenizer byte --out " +
                                               out);
  INFO(missing.output);
  CHECK(missing.exit_code != 0);
  CHECK(missing.output.find("no files match") != std::string::npos);
}

TEST_CASE("an input that shrinks while prepare reads it is an error naming it, and no dataset is left usable",
          "[prepare]") {
  // Another program truncates an input (or rewrites it in place) while
  // prepare has it mapped: reading the lost pages raises SIGBUS, which must
  // become an error, not kill the process. The fault library cuts the file
  // to half right after prepare maps it: in its first pass (counting
  // documents) or its second (tokenizing: shards of the first half are
  // written by the time it reaches the lost pages).
  TempDir dir("prepare-shrink");
  fs::create_directories(dir.path() / "in");
  std::string text;
  for (int i = 0; text.size() < 100000; ++i) text += "document " + std::to_string(i) + " with a few words\n";
  write_file(dir.path() / "in/big.txt", text);
  const std::string out = (dir.path() / "out").string();
  for (int pass : {1, 2}) {
    INFO("truncated after mapping " << pass);
    write_file(dir.path() / "in/big.txt", text);
    const auto r = srgpt_test::run_command(srgpt_test::shrinking_when_mapped("big.txt", pass) +
                                           srgpt_test::srgpt_bin() + " prepare --no-progress --input " +
                                           srgpt_test::shell_quoted((dir.path() / "in/big.txt").string()) +
                                           " --tokenizer byte --split lines --shard-tokens 20000 --out " +
                                           srgpt_test::shell_quoted(out));
    INFO(r.output);
    CHECK(fs::file_size(dir.path() / "in/big.txt") == text.size() / 2);  // the fault happened
    CHECK(r.exit_code == 1);
    CHECK(contains(r.output, "srgpt: error: input file " + (dir.path() / "in/big.txt").string() +
                                 " shrank while being read"));
    CHECK_FALSE(fs::exists(dir.path() / "out/summary.json"));
    if (pass == 2) {
      // Shards were written before the fault; the marker keeps them out of training.
      CHECK(fs::exists(dir.path() / "out/train_000000.bin"));
      CHECK(contains(error_message([&] { srgpt::expand_shard_pattern(out + "/train_*.bin", "data.train"); }),
                     "incomplete dataset"));
    }
  }
}
