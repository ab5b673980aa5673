#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "catch.h"
#include "srgpt/checkpoint.h"
#include "srgpt/data.h"
#include "srgpt/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using srgpt::LoaderPosition;
using srgpt::TokenLoader;
using srgpt::TokenShard;
using srgpt_test::contains;
using srgpt_test::error_message;
using srgpt_test::TempDir;

namespace {

std::vector<uint32_t> random_tokens(size_t n, uint32_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> t(n);
  for (uint32_t& x : t) x = uint32_t(rng() % vocab);
  return t;
}

void write_bytes(const fs::path& p, const void* data, size_t n) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), std::streamsize(n));
}

std::vector<unsigned char> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// An llm.c header with the given fields, followed by `payload`.
void write_llmc(const fs::path& p, int32_t magic, int32_t version, int32_t count, const void* payload, size_t bytes) {
  std::vector<unsigned char> file(1024 + bytes);
  int32_t header[256] = {magic, version, count};
  std::memcpy(file.data(), header, 1024);
  if (bytes) std::memcpy(file.data() + 1024, payload, bytes);
  write_bytes(p, file.data(), file.size());
}

std::vector<uint32_t> all_tokens(const TokenShard& s) {
  std::vector<uint32_t> t(s.size());
  for (size_t i = 0; i < s.size(); ++i) t[i] = s.at(i);
  return t;
}

// Shards of random tokens (ids < vocab) and their contents.
struct Corpus {
  std::vector<std::string> files;
  std::vector<std::vector<uint32_t>> tokens;

  Corpus(const TempDir& dir, const std::vector<size_t>& sizes, uint32_t vocab, uint64_t seed) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      files.push_back((dir.path() / ("shard_" + std::to_string(i) + ".bin")).string());
      tokens.push_back(random_tokens(sizes[i], vocab, seed + i));
      srgpt::write_token_shard(files.back(), tokens.back());
    }
  }

  // The (shard, start) whose T tokens are `row`; random tokens from a large
  // vocabulary make windows unique.
  std::pair<size_t, size_t> locate(const int32_t* row, int T) const {
    for (size_t s = 0; s < tokens.size(); ++s)
      for (size_t start = 0; start + size_t(T) < tokens[s].size(); start += size_t(T))
        if (std::equal(row, row + T, tokens[s].begin() + long(start),
                       [](int32_t a, uint32_t b) { return uint32_t(a) == b; }))
          return {s, start};
    FAIL("batch row is not a sample of any shard");
    return {0, 0};
  }
};

struct Batch {
  std::vector<int32_t> inputs, targets;
  bool operator==(const Batch& o) const { return inputs == o.inputs && targets == o.targets; }
};

Batch next(TokenLoader& loader, int B, int T) {
  Batch b{std::vector<int32_t>(size_t(B * T), -1), std::vector<int32_t>(size_t(B * T), -1)};
  loader.next_batch(b.inputs.data(), b.targets.data());
  return b;
}

std::vector<Batch> take(TokenLoader& loader, int n, int B, int T) {
  std::vector<Batch> out;
  for (int i = 0; i < n; ++i) out.push_back(next(loader, B, T));
  return out;
}

bool same_position(const LoaderPosition& a, const LoaderPosition& b) {
  return a.epoch == b.epoch && a.shard == b.shard && a.sample == b.sample;
}

constexpr uint32_t kVocab = 50257;

}  // namespace

TEST_CASE("llm.c uint16, llm.c uint32 and raw nanoGPT shards read the same tokens", "[data]") {
  TempDir tmp("data-formats");
  const std::vector<uint32_t> tokens = random_tokens(1001, 65536, 11);
  std::vector<uint16_t> narrow(tokens.begin(), tokens.end());

  srgpt::write_token_shard((tmp.path() / "v1.bin").string(), tokens);
  write_llmc(tmp.path() / "v2.bin", 20240520, 2, 1001, tokens.data(), tokens.size() * 4);
  write_bytes(tmp.path() / "raw.bin", narrow.data(), narrow.size() * 2);

  const std::vector<unsigned char> v1 = read_bytes(tmp.path() / "v1.bin");
  REQUIRE(v1.size() == 1024 + 2 * 1001);
  int32_t header[3];
  std::memcpy(header, v1.data(), sizeof header);
  CHECK(header[0] == 20240520);
  CHECK(header[1] == 1);
  CHECK(header[2] == 1001);

  TokenShard s1((tmp.path() / "v1.bin").string()), s2((tmp.path() / "v2.bin").string()), raw((tmp.path() / "raw.bin").string());
  CHECK((s1.llmc_format() && s1.token_bytes() == 2));
  CHECK((s2.llmc_format() && s2.token_bytes() == 4));
  CHECK((!raw.llmc_format() && raw.token_bytes() == 2));
  CHECK(all_tokens(s1) == tokens);
  CHECK(all_tokens(s2) == tokens);
  CHECK(all_tokens(raw) == tokens);

  std::vector<int32_t> copied(100);
  s2.copy(900, 100, copied.data(), 65536);
  CHECK(std::equal(copied.begin(), copied.end(), tokens.begin() + 900,
                   [](int32_t a, uint32_t b) { return uint32_t(a) == b; }));

  // The head CRC is of the ids, not the file's bytes: one value for all three;
  // it covers the first `count` ids (all of them past the end), no more.
  std::vector<unsigned char> le;
  for (size_t i = 0; i < 1000; ++i)
    for (int b = 0; b < 4; ++b) le.push_back(static_cast<unsigned char>(tokens[i] >> (8 * b)));
  const uint32_t first_1000 = srgpt::crc32(le.data(), le.size());
  for (const TokenShard* s : {&s1, &s2, &raw}) {
    CHECK(s->head_crc32(1000) == first_1000);
    CHECK(s->head_crc32(1001) == s->head_crc32(1 << 20));
    CHECK(s->head_crc32(1001) != first_1000);
  }
  std::vector<uint32_t> changed = tokens;
  changed[999] ^= 1;
  srgpt::write_token_shard((tmp.path() / "changed.bin").string(), changed);
  const TokenShard c((tmp.path() / "changed.bin").string());
  CHECK(c.head_crc32(1000) != first_1000);
  CHECK(c.head_crc32(999) == s1.head_crc32(999));

  // Moving transfers the mapping.
  TokenShard moved = std::move(s1);
  CHECK(all_tokens(moved) == tokens);
  moved = std::move(s2);
  CHECK(moved.token_bytes() == 4);
}

TEST_CASE("write_token_shard uses uint32 tokens for ids over 65535", "[data]") {
  TempDir tmp("data-wide");
  std::vector<uint32_t> tokens = random_tokens(500, 200000, 12);
  tokens[321] = 65536;  // at least one id needs 32 bits
  const std::string path = (tmp.path() / "wide.bin").string();
  srgpt::write_token_shard(path, tokens);
  CHECK(fs::file_size(path) == 1024 + 4 * 500);
  TokenShard s(path);
  CHECK(s.token_bytes() == 4);
  CHECK(all_tokens(s) == tokens);
  // No temporary file is left beside it.
  CHECK(std::distance(fs::directory_iterator(tmp.path()), fs::directory_iterator()) == 1);
}

TEST_CASE("a shard that shrinks while open is an error naming the file, not a crash", "[data]") {
  TempDir tmp("data-shrink");
  const std::vector<uint32_t> tokens = random_tokens(100000, 50000, 14);
  const std::string path = (tmp.path() / "shrinks.bin").string();
  srgpt::write_token_shard(path, tokens);
  TokenShard s(path);
  fs::resize_file(path, 8192);  // the header and 3584 tokens remain; the pages past them are gone
  std::vector<int32_t> out(100);
  // Twice each: the first SIGBUS must not leave the signal blocked (a
  // blocked SIGBUS raised by a fault kills the process).
  for (int attempt = 0; attempt < 2; ++attempt) {
    const std::string copy_error = error_message([&] { s.copy(90000, out.size(), out.data(), 50000); });
    CHECK(contains(copy_error, path));
    CHECK(contains(copy_error, "shrank while being read"));
    CHECK(contains(error_message([&] { s.at(95000); }), "shrank while being read"));
  }
  // What is still in the file reads as before.
  s.copy(1000, out.size(), out.data(), 50000);
  for (size_t i = 0; i < out.size(); ++i) CHECK(uint32_t(out[i]) == tokens[1000 + i]);
}

namespace {
int g_bus_pipe = -1;
// One byte per call; SA_RESETHAND makes the next SIGBUS take the default
// action, as long as the kernel, not a chaining handler, delivers it.
void one_shot_bus_handler(int) {
  const char byte = 1;
  (void)!::write(g_bus_pipe, &byte, 1);
}
}  // namespace

TEST_CASE("a SIGBUS outside a shard read goes to the previous handler with its flags", "[data]") {
  TempDir tmp("data-foreign-bus");
  const std::string shard = (tmp.path() / "shard.bin").string();
  srgpt::write_token_shard(shard, random_tokens(1000, 50000, 15));
  const std::string other = (tmp.path() / "other.bin").string();
  std::ofstream(other) << std::string(8192, 'x');
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::alarm(10);  // a handler loop would end here, by SIGALRM
    g_bus_pipe = pipe_fds[1];
    struct sigaction one_shot {};
    one_shot.sa_handler = one_shot_bus_handler;
    one_shot.sa_flags = SA_RESETHAND;
    sigemptyset(&one_shot.sa_mask);
    ::sigaction(SIGBUS, &one_shot, nullptr);
    const TokenShard opened(shard);  // installs the shard reader's handler over it
    const int fd = ::open(other.c_str(), O_RDWR);
    const char* map = static_cast<const char*>(::mmap(nullptr, 8192, PROT_READ, MAP_PRIVATE, fd, 0));
    if (map == MAP_FAILED || ::ftruncate(fd, 0) != 0) ::_exit(3);
    const volatile char lost = map[4096];  // SIGBUS: the page is past the end of the file now
    (void)lost;
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  char calls[16];
  const ssize_t handler_calls = ::read(pipe_fds[0], calls, sizeof calls);
  ::close(pipe_fds[0]);
  INFO("child status " << status);
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGBUS);  // not SIGALRM: no loop
  CHECK(handler_calls == 1);          // the previous handler ran once, then the default action
}

TEST_CASE("malformed shards are clear errors naming the file", "[data]") {
  TempDir tmp("data-bad");
  const std::vector<uint32_t> tokens = random_tokens(300, 1000, 13);
  std::vector<uint16_t> narrow(tokens.begin(), tokens.end());
  const std::string path = (tmp.path() / "bad.bin").string();
  auto open_error = [&] { return error_message([&] { TokenShard s(path); }); };

  SECTION("truncated") {
    write_llmc(path, 20240520, 1, 300, narrow.data(), 2 * 299);
    std::string e = open_error();
    CHECK(contains(e, path));
    CHECK(contains(e, "truncated"));
    CHECK(contains(e, "300 tokens"));
  }
  SECTION("header shorter than 1024 bytes") {
    write_llmc(path, 20240520, 1, 300, narrow.data(), 2 * 300);
    fs::resize_file(path, 1000);
    CHECK(contains(open_error(), "truncated"));
  }
  SECTION("extra bytes") {
    write_llmc(path, 20240520, 1, 299, narrow.data(), 2 * 300);
    std::string e = open_error();
    CHECK(contains(e, path));
    CHECK(contains(e, "has 2 extra bytes"));
  }
  SECTION("unknown version") {
    write_llmc(path, 20240520, 3, 300, narrow.data(), 2 * 300);
    std::string e = open_error();
    CHECK(contains(e, path));
    CHECK(contains(e, "unsupported version 3"));
  }
  SECTION("another llm.c file type") {
    write_llmc(path, 20240522, 1, 300, narrow.data(), 2 * 300);
    std::string e = open_error();
    CHECK(contains(e, path));
    CHECK(contains(e, "magic 20240522"));
    CHECK(contains(e, "not a token shard"));
  }
  SECTION("llm.c header with a damaged magic") {
    write_llmc(path, 20240520 ^ (1 << 9), 1, 300, narrow.data(), 2 * 300);
    std::string e = open_error();
    CHECK(contains(e, path));
    CHECK(contains(e, "magic 20241032 instead of 20240520"));
    CHECK(contains(e, "damaged"));
  }
  SECTION("odd-sized raw file") {
    write_bytes(path, narrow.data(), 2 * 300 - 1);
    std::string e = open_error();
    CHECK(contains(e, path));
    CHECK(contains(e, "odd size 599"));
  }
  SECTION("empty file") {
    write_bytes(path, nullptr, 0);
    CHECK(contains(open_error(), "empty"));
  }
  SECTION("missing file") {
    std::string e = error_message([&] { TokenShard s((tmp.path() / "nope.bin").string()); });
    CHECK(contains(e, "nope.bin"));
    CHECK(contains(e, std::strerror(ENOENT)));
  }
  SECTION("token outside the vocabulary") {
    std::vector<uint32_t> bad = tokens;
    bad[123] = 1000;
    srgpt::write_token_shard(path, bad);
    TokenShard s(path);
    std::vector<int32_t> out(300);
    CHECK(error_message([&] { s.copy(0, 123, out.data(), 1000); }).empty());
    std::string e = error_message([&] { s.copy(100, 50, out.data(), 1000); });
    CHECK(contains(e, path));
    CHECK(contains(e, "token 1000 at index 123"));
    CHECK(contains(e, "vocab_size 1000"));
    CHECK(contains(error_message([&] { s.copy(290, 11, out.data(), 2000); }), "out of range"));
  }
}

TEST_CASE("expand_shard_pattern sorts matches and names the key when none match", "[data]") {
  TempDir tmp("data-glob");
  for (const char* name : {"train_002.bin", "train_000.bin", "val_000.bin", "train_001.bin"})
    srgpt::write_token_shard((tmp.path() / name).string(), {1, 2, 3});
  std::vector<std::string> files = srgpt::expand_shard_pattern((tmp.path() / "train_*.bin").string(), "train_data");
  CHECK(files == std::vector<std::string>{(tmp.path() / "train_000.bin").string(), (tmp.path() / "train_001.bin").string(),
                                          (tmp.path() / "train_002.bin").string()});
  const std::string pattern = (tmp.path() / "test_*.bin").string();
  std::string e = error_message([&] { srgpt::expand_shard_pattern(pattern, "val_data"); });
  CHECK(contains(e, "val_data"));
  CHECK(contains(e, pattern));
}

TEST_CASE("ranks read disjoint slices whose union is the global batch", "[data]") {
  TempDir tmp("data-ranks");
  const int B = 2, T = 8, world = 3;
  // 13, 7 and 18 samples: whole global batches plus leftovers.
  Corpus corpus(tmp, {13 * T + 1, 7 * T + 5, 18 * T + 1}, kVocab, 14);
  for (bool shuffle : {false, true}) {
    TokenLoader global(corpus.files, world * B, T, 0, 1, int(kVocab), shuffle, 99);
    std::vector<TokenLoader> ranks;
    for (int r = 0; r < world; ++r) ranks.emplace_back(corpus.files, B, T, r, world, int(kVocab), shuffle, 99);
    CHECK(global.batches_per_epoch() == 2 + 1 + 3);
    CHECK(ranks[0].batches_per_epoch() == 6);
    CHECK(ranks[0].total_tokens() == size_t(38 * T + 1 + 5 + 1));

    // Two epochs and a bit: crosses shard boundaries and the epoch wrap.
    std::set<std::pair<size_t, size_t>> epoch_samples;
    for (int step = 0; step < 14; ++step) {
      Batch g = next(global, world * B, T);
      std::set<std::pair<size_t, size_t>> seen;
      for (int r = 0; r < world; ++r) {
        Batch b = next(ranks[size_t(r)], B, T);
        CHECK(std::equal(b.inputs.begin(), b.inputs.end(), g.inputs.begin() + r * B * T));
        CHECK(std::equal(b.targets.begin(), b.targets.end(), g.targets.begin() + r * B * T));
        for (int row = 0; row < B; ++row) seen.insert(corpus.locate(b.inputs.data() + row * T, T));
        CHECK(same_position(ranks[size_t(r)].position(), global.position()));
      }
      CHECK(seen.size() == size_t(world * B));  // disjoint
      std::set<size_t> shards_in_batch;
      for (const auto& s : seen) shards_in_batch.insert(s.first);
      CHECK(shards_in_batch.size() == 1);  // a global batch never straddles shards
      if (step < 6) epoch_samples.insert(seen.begin(), seen.end());
      if (step == 5) CHECK(same_position(global.position(), LoaderPosition{1, 0, 0}));
    }
    CHECK(epoch_samples.size() == 6 * size_t(world * B));  // no sample twice in an epoch
  }
}

TEST_CASE("targets are the inputs shifted by one token", "[data]") {
  TempDir tmp("data-targets");
  const int B = 3, T = 16;
  Corpus corpus(tmp, {10 * T + 1}, kVocab, 15);
  TokenLoader loader(corpus.files, B, T, 0, 1, int(kVocab), false, 0);
  for (int step = 0; step < 3; ++step) {
    Batch b = next(loader, B, T);
    for (int row = 0; row < B; ++row) {
      // Without shuffling, samples come in file order.
      const size_t start = size_t((step * B + row) * T);
      for (int t = 0; t < T; ++t) {
        CHECK(uint32_t(b.inputs[size_t(row * T + t)]) == corpus.tokens[0][start + size_t(t)]);
        CHECK(uint32_t(b.targets[size_t(row * T + t)]) == corpus.tokens[0][start + size_t(t) + 1]);
      }
    }
  }
}

TEST_CASE("shuffling is deterministic by seed and permutes within each epoch", "[data]") {
  TempDir tmp("data-shuffle");
  const int B = 2, T = 4;
  Corpus corpus(tmp, {16 * T + 1, 8 * T + 1, 12 * T + 1, 20 * T + 1}, kVocab, 16);
  TokenLoader plain(corpus.files, B, T, 0, 1, int(kVocab), false, 5);
  TokenLoader a(corpus.files, B, T, 0, 1, int(kVocab), true, 5);
  TokenLoader a2(corpus.files, B, T, 0, 1, int(kVocab), true, 5);
  TokenLoader b(corpus.files, B, T, 0, 1, int(kVocab), true, 6);
  const int per_epoch = int(a.batches_per_epoch());
  REQUIRE(per_epoch == 28);

  std::vector<Batch> plain_batches = take(plain, per_epoch, B, T);
  std::vector<Batch> a_batches = take(a, 2 * per_epoch, B, T);
  CHECK(take(a2, 2 * per_epoch, B, T) == a_batches);
  std::vector<Batch> b_batches = take(b, per_epoch, B, T);
  CHECK_FALSE(std::equal(b_batches.begin(), b_batches.end(), a_batches.begin()));
  CHECK_FALSE(std::equal(plain_batches.begin(), plain_batches.end(), a_batches.begin()));
  // Epochs are shuffled differently: the shard order, and within one shard
  // the sample order.
  CHECK_FALSE(std::equal(a_batches.begin(), a_batches.begin() + per_epoch, a_batches.begin() + per_epoch));
  TokenLoader single({corpus.files[3]}, B, T, 0, 1, int(kVocab), true, 5);
  std::vector<Batch> single_epochs = take(single, 20, B, T);
  CHECK_FALSE(std::equal(single_epochs.begin(), single_epochs.begin() + 10, single_epochs.begin() + 10));

  // Every epoch is a permutation of the unshuffled epoch's samples.
  auto samples_of = [&](std::vector<Batch>::const_iterator begin, std::vector<Batch>::const_iterator end) {
    std::multiset<std::pair<size_t, size_t>> s;
    for (auto it = begin; it != end; ++it)
      for (int row = 0; row < B; ++row) s.insert(corpus.locate(it->inputs.data() + row * T, T));
    return s;
  };
  auto reference = samples_of(plain_batches.begin(), plain_batches.end());
  CHECK(reference.size() == size_t(per_epoch * B));
  CHECK(std::set<std::pair<size_t, size_t>>(reference.begin(), reference.end()).size() == reference.size());
  CHECK(samples_of(a_batches.begin(), a_batches.begin() + per_epoch) == reference);
  CHECK(samples_of(a_batches.begin() + per_epoch, a_batches.end()) == reference);
  CHECK(samples_of(b_batches.begin(), b_batches.end()) == reference);

  // The shard order itself changes with the epoch (not only the sample
  // order within each shard): each epoch visits every shard once, and four
  // epochs do not all share one order (by chance: 1 in 24^3).
  TokenLoader epochs(corpus.files, B, T, 0, 1, int(kVocab), true, 5);
  std::set<std::vector<size_t>> shard_orders;
  for (int epoch = 0; epoch < 4; ++epoch) {
    std::vector<size_t> order;
    for (const Batch& batch : take(epochs, per_epoch, B, T)) {
      const size_t shard = corpus.locate(batch.inputs.data(), T).first;
      if (order.empty() || order.back() != shard) order.push_back(shard);
    }
    INFO("epoch " << epoch);
    CHECK(std::set<size_t>(order.begin(), order.end()).size() == order.size());
    CHECK(order.size() == corpus.files.size());
    shard_orders.insert(order);
  }
  CHECK(shard_orders.size() > 1);
}

TEST_CASE("seeking to a saved position resumes the exact batch stream", "[data]") {
  TempDir tmp("data-seek");
  const int B = 2, T = 8, world = 2;
  Corpus corpus(tmp, {9 * T + 1, 14 * T + 3, 6 * T + 1}, kVocab, 17);
  for (bool shuffle : {false, true}) {
    for (int rank = 0; rank < world; ++rank) {
      TokenLoader first(corpus.files, B, T, rank, world, int(kVocab), shuffle, 21);
      take(first, 5, B, T);
      const nlohmann::json saved = srgpt::to_json(first.position());
      std::vector<Batch> expected = take(first, 9, B, T);

      TokenLoader resumed(corpus.files, B, T, rank, world, int(kVocab), shuffle, 21);
      take(resumed, 2, B, T);  // somewhere else first
      resumed.seek(srgpt::loader_position_from_json(saved));
      CHECK(take(resumed, 9, B, T) == expected);

      // reset() starts over.
      TokenLoader fresh(corpus.files, B, T, rank, world, int(kVocab), shuffle, 21);
      resumed.reset();
      CHECK(take(resumed, 3, B, T) == take(fresh, 3, B, T));
    }
  }
}

TEST_CASE("invalid loader positions and sizes are errors", "[data]") {
  TempDir tmp("data-range");
  const int B = 2, T = 8;
  Corpus corpus(tmp, {9 * T + 1, 4 * T + 1}, kVocab, 18);
  TokenLoader loader(corpus.files, B, T, 0, 1, int(kVocab), true, 3);

  CHECK(contains(error_message([&] { loader.seek({0, 2, 0}); }), "out of range (2 shards;"));
  CHECK(contains(error_message([&] { loader.seek({0, 0, -1}); }), "out of range"));
  CHECK(contains(error_message([&] { loader.seek({-1, 0, 0}); }), "out of range"));
  // The last epoch number: its end would overflow the counter.
  CHECK(contains(error_message([&] { loader.seek({std::numeric_limits<int64_t>::max(), 0, 0}); }), "out of range"));
  CHECK(contains(error_message([&] { loader.seek({3, 1, 10}); }), "past the end of shard"));
  // A failed seek leaves the loader where it was.
  loader.seek({4, 1, 2});
  CHECK(error_message([&] { loader.seek({4, 0, 100}); }) != "");
  CHECK(same_position(loader.position(), LoaderPosition{4, 1, 2}));
  // A position with less than a global batch left moves to the next shard,
  // or the next epoch after the last shard.
  TokenLoader plain(corpus.files, B, T, 0, 1, int(kVocab), false, 3);
  plain.seek({0, 0, 8});
  CHECK(same_position(plain.position(), LoaderPosition{0, 1, 0}));
  plain.seek({0, 0, 9});
  CHECK(same_position(plain.position(), LoaderPosition{0, 1, 0}));
  plain.seek({0, 1, 3});
  CHECK(same_position(plain.position(), LoaderPosition{1, 0, 0}));

  CHECK(contains(error_message([&] { srgpt::loader_position_from_json({{"epoch", 1}, {"shard", 0}}); }),
                 "no \"sample\""));
  CHECK(contains(error_message([&] { srgpt::loader_position_from_json({{"epoch", 1}, {"shard", -2}, {"sample", 0}}); }),
                 "\"shard\" must be a non-negative integer"));
  CHECK(same_position(srgpt::loader_position_from_json(srgpt::to_json({7, 1, 3})), LoaderPosition{7, 1, 3}));
}

TEST_CASE("shards too small for one global batch are passed over, and an error when every shard is", "[data]") {
  TempDir tmp("data-small");
  const int B = 4, T = 16, world = 2;
  // world*B*T+1 = 129 tokens hold one global batch. Shards 0, 2 and 4 are
  // too small; 4 and 0 are neighbours across the epoch wrap.
  Corpus corpus(tmp, {128, 129, 5, 24 * T + 1, 128}, kVocab, 19);
  for (bool shuffle : {false, true}) {
    std::vector<TokenLoader> ranks;
    for (int r = 0; r < world; ++r) ranks.emplace_back(corpus.files, B, T, r, world, int(kVocab), shuffle, 7);
    CHECK(ranks[0].batches_per_epoch() == 1 + 3);
    CHECK(ranks[0].global_batch_tokens() == 129);
    // Three epochs: each reads every sample of shards 1 and 3 once, and
    // nothing else.
    for (int epoch = 0; epoch < 3; ++epoch) {
      std::set<std::pair<size_t, size_t>> seen;
      for (int step = 0; step < 4; ++step)
        for (TokenLoader& rank : ranks) {
          Batch b = next(rank, B, T);
          for (int row = 0; row < B; ++row) {
            const auto where = corpus.locate(b.inputs.data() + row * T, T);
            CHECK((where.first == 1 || where.first == 3));
            seen.insert(where);
          }
        }
      CHECK(seen.size() == size_t(4 * world * B));
      CHECK(ranks[0].position().epoch == epoch + 1);
    }
  }
  // A position in a shard that is too small for this world size (a resume
  // from a smaller one) moves on to the next shard that holds a batch.
  TokenLoader plain(corpus.files, B, T, 0, world, int(kVocab), false, 0);
  CHECK(same_position(plain.position(), LoaderPosition{0, 1, 0}));
  plain.seek({0, 2, 0});
  CHECK(same_position(plain.position(), LoaderPosition{0, 3, 0}));
  plain.seek({0, 3, 20});
  CHECK(same_position(plain.position(), LoaderPosition{1, 1, 0}));

  const auto warning = plain.skipped_shards_warning("data.train");
  REQUIRE(warning);
  CHECK(contains(*warning, "data.train: 3 of its 5 shards hold less than one global batch, 129 tokens (world_size 2 "
                           "x batch 4 x seq_len 16 + 1) and are passed over, " +
                               corpus.files[0] + " with 128 tokens"));
  // A loader of single sequences (evaluation's) needs seq_len + 1 tokens.
  const auto one_sequence =
      TokenLoader(corpus.files, 1, 64, 0, 1, int(kVocab), false, 0).skipped_shards_warning("data.val");
  REQUIRE(one_sequence);
  CHECK(contains(*one_sequence, "data.val: 1 of its 5 shards holds less than one sequence, 65 tokens (seq_len 64 + 1) "
                                "and is passed over: " + corpus.files[2] + " with 5 tokens (srgpt prepare's"));
  CHECK_FALSE(TokenLoader({corpus.files[1], corpus.files[3]}, B, T, 0, world, int(kVocab), false, 0)
                  .skipped_shards_warning("data.train"));

  std::string e = error_message([&] {
    TokenLoader l({corpus.files[0], corpus.files[2], corpus.files[4]}, B, T, 1, world, int(kVocab), false, 0);
  });
  CHECK(contains(e, "no token shard holds one global batch, 129 tokens (world_size 2 x batch 4 x seq_len 16 + 1); "
                    "the largest of the 3 shards, " +
                        corpus.files[0] + ", has 128 tokens: use a smaller batch or sequence length, or more data"));
  CHECK(contains(error_message([&] { TokenLoader l({corpus.files[2]}, 1, 16, 0, 1, int(kVocab), false, 0); }),
                 "no token shard holds one sequence, 17 tokens (seq_len 16 + 1); the largest of the 1 shards, " +
                     corpus.files[2] + ", has 5 tokens: use a smaller sequence length, or more data"));
  TokenLoader ok({corpus.files[1]}, B, T, 1, world, int(kVocab), false, 0);
  CHECK(ok.batches_per_epoch() == 1);
  take(ok, 3, B, T);
  CHECK(ok.position().epoch == 3);

  CHECK(contains(error_message([&] { TokenLoader l(corpus.files, B, T, 2, world, int(kVocab), false, 0); }), "rank 2"));
  std::string vocab_error = error_message([&] {
    TokenLoader l({corpus.files[1]}, B, T, 0, 1, 1000, false, 0);
    take(l, 1, B, T);
  });
  CHECK(contains(vocab_error, corpus.files[1]));
  CHECK(contains(vocab_error, "vocab_size 1000"));
}
