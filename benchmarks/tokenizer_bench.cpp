// Tokenizer throughput on real text, one thread: GPT-2 encoding with a cold
// cache, a warm cache and no cache, GPT-2 decoding, and the byte tokenizer.
//   tokenizer_bench [--tokenizer-dir DIR] [FILE ...]
// Files default to the demo corpus, data/demo/raw/*.txt
// (scripts/get_demo_corpus.sh); run from the repository root.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "srgpt/cli.h"
#include "srgpt/data.h"
#include "srgpt/error.h"
#include "srgpt/tokenizer.h"

namespace {

constexpr size_t kMaxTextBytes = size_t{64} << 20;

std::string read_text(const std::vector<std::string>& files) {
  std::string text;
  for (const auto& file : files) {
    std::ifstream in(file, std::ios::binary);
    if (!in) srgpt::fail("cannot read '{}'", file);
    std::ostringstream contents;
    contents << in.rdbuf();
    text += contents.str();
    if (text.size() >= kMaxTextBytes) break;
  }
  text.resize(std::min(text.size(), kMaxTextBytes));
  return text;
}

// Best of `repeats` timings of `run`, in seconds.
double best_seconds(int repeats, const std::function<void()>& run) {
  double best = 1e300;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    run();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

void print_row(const char* what, size_t bytes, size_t tokens, double seconds) {
  std::printf("| %-34s | %8.2f | %8.3f | %8.1f | %10zu | %6.2f |\n", what, static_cast<double>(bytes) / 1e6, seconds,
              static_cast<double>(bytes) / 1e6 / seconds, tokens,
              static_cast<double>(bytes) / static_cast<double>(tokens));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Tokenizer throughput (one thread)"};
  std::string tokenizer_dir = srgpt::kDefaultGpt2TokenizerDir;
  std::vector<std::string> files;
  int repeats = 3;
  app.add_option("--tokenizer-dir", tokenizer_dir, "Directory with encoder.json and vocab.bpe")->capture_default_str();
  app.add_option("--repeats", repeats, "Timed runs per row; the best is shown")
      ->check(srgpt::integer_in_range(1, 1000))
      ->capture_default_str();
  app.add_option("files", files, "Text files (default: data/demo/raw/*.txt)");
  CLI11_PARSE(app, argc, argv);
  try {
    if (files.empty()) {
      files = srgpt::expand_shard_pattern("data/demo/raw/*.txt",
                                          "demo corpus (run scripts/get_demo_corpus.sh, or pass text files)");
    }
    const std::string text = read_text(files);
    if (text.empty()) srgpt::fail("the input files hold no text; there is nothing to time");
    // Loaded before the table starts, so a missing tokenizer fails at once.
    auto warm = srgpt::Gpt2Tokenizer::from_directory(tokenizer_dir);
    std::printf("%zu file(s), %.2f MB of text, best of %d runs, one thread\n\n", files.size(),
                static_cast<double>(text.size()) / 1e6, repeats);
    std::printf("| %-34s | %8s | %8s | %8s | %10s | %6s |\n", "operation", "MB", "seconds", "MB/s", "tokens",
                "B/tok");
    std::printf("|%s|%s|%s|%s|%s|%s|\n", std::string(36, '-').c_str(), std::string(10, '-').c_str(),
                std::string(10, '-').c_str(), std::string(10, '-').c_str(), std::string(12, '-').c_str(),
                std::string(8, '-').c_str());

    // Cold: a freshly loaded tokenizer each run; loading is not timed.
    std::vector<uint32_t> tokens;
    double cold_encode = 1e300;
    for (int r = 0; r < repeats; ++r) {
      auto tokenizer = srgpt::Gpt2Tokenizer::from_directory(tokenizer_dir);
      cold_encode = std::min(cold_encode, best_seconds(1, [&] { tokens = tokenizer->encode(text); }));
    }
    print_row("gpt2 encode, cold cache", text.size(), tokens.size(), cold_encode);

    warm->encode(text);
    print_row("gpt2 encode, warm cache", text.size(), tokens.size(),
              best_seconds(repeats, [&] { tokens = warm->encode(text); }));

    auto uncached = srgpt::Gpt2Tokenizer::from_directory(tokenizer_dir, 0);
    print_row("gpt2 encode, no cache", text.size(), tokens.size(),
              best_seconds(repeats, [&] { tokens = uncached->encode(text); }));

    std::string decoded;
    print_row("gpt2 decode", text.size(), tokens.size(), best_seconds(repeats, [&] { decoded = warm->decode(tokens); }));
    if (decoded != text) srgpt::fail("gpt2 decode(encode(text)) differs from the text");

    srgpt::ByteTokenizer bytes;
    std::vector<uint32_t> byte_tokens;
    print_row("byte encode", text.size(), text.size(),
              best_seconds(repeats, [&] { byte_tokens = bytes.encode(text); }));
  } catch (const srgpt::Error& e) {
    std::fprintf(stderr, "tokenizer_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
