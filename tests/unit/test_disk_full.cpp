// A disk that fills up while srgpt writes, through the real binary. Without
// root the test limits the size of every file the command writes
// (RLIMIT_FSIZE, `ulimit -f`, as batch schedulers set it). srgpt ignores the
// SIGXFSZ that would kill it, so a write past the limit fails with EFBIG
// ("File too large") as one on a full disk fails with ENOSPC. The limit is per file, so each case picks it from the sizes of the
// files the command writes, measured in an unlimited run first. Every case
// must end in an error naming the file, a non-zero exit, no crash, and no
// partial file or checkpoint where a reader would take it for a whole one.
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "catch.h"
#include "srgpt/checkpoint.h"
#include "srgpt/config.h"
#include "srgpt/data.h"
#include "test_util.h"

using namespace srgpt_test;

namespace {

// The unit of `ulimit -f` in POSIX sh, which popen runs (bash counts 1024
// bytes, except as sh or with --posix).
constexpr uint64_t kBlock = 512;

// The srgpt binary as a command, on one OpenMP thread: the models here are
// tiny, and on a busy machine starting threads costs more than the run.
std::string srgpt_command() { return "env OMP_NUM_THREADS=1 " + srgpt_bin(); }

uint64_t round_up_to_block(uint64_t bytes) { return (bytes + kBlock - 1) / kBlock * kBlock; }

// `command` run with every file it writes limited to `max_bytes` (a multiple
// of 512). The subshell sets the limit for srgpt only, and leaves SIGXFSZ
// as it finds it: killing (before srgpt ignored it, every case here ended
// in that signal, exit 153, with no message and temporary files left).
CommandResult run_with_file_size_limit(const std::string& command, uint64_t max_bytes) {
  REQUIRE(max_bytes % kBlock == 0);
  return run_command("(trap - XFSZ; ulimit -f " + std::to_string(max_bytes / kBlock) + "; exec " + command + ")");
}

constexpr const char* kFileTooLarge = "File too large";   // strerror(EFBIG), past `ulimit -f`
constexpr const char* kNoSpace = "No space left on device";  // strerror(ENOSPC), full_disk_for

// A failed write: srgpt's error exit (not a signal's 128 + n), with the
// OS's reason and the file named.
void expect_write_error(const CommandResult& r, const std::string& file, const char* reason = kFileTooLarge) {
  INFO("output:\n" << r.output);
  CHECK(r.exit_code == 1);
  CHECK(contains(r.output, "srgpt: error: "));
  CHECK(contains(r.output, reason));
  CHECK(contains(r.output, file));
}

std::set<std::string> names_in(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

// A tiny run (token shards and a config file) under one temporary directory.
struct Run {
  TempDir tmp{"diskfull"};
  uint32_t seed = fresh_seed();
  fs::path run_dir = tmp.path() / "run";
  std::string config = tmp.str("run.json");

  explicit Run(const std::function<void(srgpt::Config&)>& edit = [](srgpt::Config&) {}) {
    write_markov_shards(tmp.path() / "data", 64, 20000, 3000, seed);
    srgpt::Config c = tiny_config(tmp.path() / "data", run_dir);
    c.train.seed = seed;
    edit(c);
    std::ofstream(config) << srgpt::config_to_json(c).dump(2);
  }

  std::string train(const std::string& flags = "") const {
    return srgpt_command() + " train --config " + shell_quoted(config) + flags;
  }
  fs::path checkpoints() const { return run_dir / "checkpoints"; }
};

}  // namespace

TEST_CASE("a checkpoint save on a full disk fails clearly and keeps the previous checkpoint", "[disk-full]") {
  Run run([](srgpt::Config& c) {
    c.train.steps = 4;
    c.checkpoint.every = 2;
  });
  INFO("seed " << run.seed);
  // The limit is per file and step 4's files are as large as step 2's, so
  // the disk fills up between two runs: this one writes step 2's checkpoint,
  // the resumed one below runs out of space in step 4's.
  CommandResult first = run_command(run.train(" --stop-after 2"));
  INFO(first.output);
  REQUIRE(first.exit_code == 0);
  const fs::path good = run.checkpoints() / "step_00000002";
  const std::string good_manifest = read_file(good / "manifest.json");
  const uint64_t model_bytes = fs::file_size(good / "model.bin");
  const uint64_t optim_bytes = fs::file_size(good / "optim_rank00000.bin");
  const uint64_t manifest_bytes = good_manifest.size();
  INFO("model.bin " << model_bytes << " bytes, optim_rank00000.bin " << optim_bytes << ", manifest.json "
                    << manifest_bytes);

  // Step 4's save then runs out of space: in its first file, or in its
  // second with the first one complete, through a file size limit (which
  // metrics.jsonl stays far below); or in the manifest, written last and
  // smaller than either, after both binary files, through a disk that is
  // full for it alone (at its first byte, or part-way).
  struct Case {
    std::string how, failing_file;
    const char* reason;
    std::function<CommandResult()> save;
  };
  REQUIRE(manifest_bytes < model_bytes);
  REQUIRE(round_up_to_block(model_bytes) < optim_bytes);
  const std::string resume = run.train(" --resume");
  const uint64_t below_model = (model_bytes - 1) / kBlock * kBlock, above_model = round_up_to_block(model_bytes);
  const Case cases[] = {
      {"file size limit " + std::to_string(below_model), "model.bin", kFileTooLarge,
       [&] { return run_with_file_size_limit(resume, below_model); }},
      {"file size limit " + std::to_string(above_model), "optim_rank00000.bin", kFileTooLarge,
       [&] { return run_with_file_size_limit(resume, above_model); }},
      {"disk full for manifest.json", "manifest.json", kNoSpace,
       [&] { return run_command(full_disk_for("manifest.json") + resume); }},
      {"disk full after 100 bytes of manifest.json", "manifest.json", kNoSpace,
       [&] { return run_command(full_disk_for("manifest.json", 100) + resume); }},
  };
  for (const Case& c : cases) {
    INFO(c.how << ", so " << c.failing_file << " cannot be written");
    CommandResult full = c.save();
    expect_write_error(full, "/" + c.failing_file, c.reason);
    CHECK(contains(full.output, (run.checkpoints() / "step_00000004.tmp-").string()));
    CHECK(contains(full.output, "resumed from"));  // the limit let the run start

    // No half-written directory (the staging one included) is left beside
    // the good checkpoint, which is untouched and what --resume would take.
    CHECK(names_in(run.checkpoints()) == std::set<std::string>{"step_00000002"});
    CHECK(srgpt::latest_checkpoint(run.checkpoints()) == good);
    CHECK(read_file(good / "manifest.json") == good_manifest);
    CommandResult verify = run_command(srgpt_command() + " info --verify " + shell_quoted(run.run_dir.string()));
    INFO(verify.output);
    CHECK(verify.exit_code == 0);
    CHECK(contains(verify.output, "step_00000002"));
  }

  // With space again, --resume goes on from step 2 and the run reads as the
  // uninterrupted one (the steps logged before the failed save are dropped).
  CommandResult resumed = run_command(run.train(" --resume"));
  INFO(resumed.output);
  REQUIRE(resumed.exit_code == 0);
  CHECK(contains(resumed.output, "resumed from " + good.string() + " at step 2"));
  CHECK(srgpt::latest_checkpoint(run.checkpoints()) == run.checkpoints() / "step_00000004");
  CommandResult verify = run_command(srgpt_command() + " info --verify " + shell_quoted(run.run_dir.string()));
  INFO(verify.output);
  CHECK(verify.exit_code == 0);
  CHECK(contains(verify.output, "step_00000004"));
  const fs::path reference = run.tmp.path() / "reference";
  CommandResult uninterrupted = run_command(run.train(" --set out_dir=" + shell_quoted(reference.string())));
  INFO(uninterrupted.output);
  REQUIRE(uninterrupted.exit_code == 0);
  const std::vector<double> losses = losses_in(run.run_dir / "metrics.jsonl");
  CHECK(losses.size() == 4);
  CHECK(losses == losses_in(reference / "metrics.jsonl"));
}

TEST_CASE("a metrics.jsonl append on a full disk fails clearly and leaves whole lines", "[disk-full]") {
  Run run([](srgpt::Config& c) { c.train.steps = 50; });
  INFO("seed " << run.seed);
  // One block holds two lines of step metrics (about 210 bytes each) and
  // part of a third; the run's only checkpoint would come at step 50.
  CommandResult r = run_with_file_size_limit(run.train(), kBlock);
  expect_write_error(r, (run.run_dir / "metrics.jsonl").string());
  CHECK(fs::is_empty(run.checkpoints()));  // made at the start, to find problems with it then
  // The part of the line that did not fit is gone: the file still reads as
  // a run's metrics.
  const std::string metrics = read_file(run.run_dir / "metrics.jsonl");
  CHECK(!metrics.empty());
  CHECK(metrics.back() == '\n');
  CHECK_NOTHROW(losses_in(run.run_dir / "metrics.jsonl"));
}

TEST_CASE("an export on a full disk fails clearly and leaves no partial model file", "[disk-full]") {
  Run run([](srgpt::Config& c) { c.train.steps = 2; });
  INFO("seed " << run.seed);
  CommandResult trained = run_command(run.train());
  INFO(trained.output);
  REQUIRE(trained.exit_code == 0);
  auto export_to = [&](const fs::path& out) {
    return srgpt_command() + " export --checkpoint " + shell_quoted(run.run_dir.string()) + " --out " +
           shell_quoted(out.string());
  };
  const fs::path earlier = run.tmp.path() / "earlier";
  CommandResult exported = run_command(export_to(earlier));
  INFO(exported.output);
  REQUIRE(exported.exit_code == 0);
  const std::string earlier_weights = read_file(earlier / "model.safetensors");
  const std::string earlier_config = read_file(earlier / "config.json");
  // Room for config.json, not for the weights.
  const uint64_t limit = (earlier_weights.size() - 1) / kBlock * kBlock;
  REQUIRE(earlier_config.size() <= limit);

  SECTION("into a new directory") {
    const fs::path out = run.tmp.path() / "new";
    expect_write_error(run_with_file_size_limit(export_to(out), limit), (out / "model.safetensors").string());
    CHECK(names_in(out).empty());  // no model.safetensors, no temporary
  }
#ifdef SRGPT_FILE_FAULTS_LIB
  SECTION("into a directory whose fsync fails: the renames in it are not durable, so the export fails") {
    const fs::path out = run.tmp.path() / "unsynced";
    const CommandResult r = run_command(failing_sync_of("/unsynced") + export_to(out));
    INFO(r.output);
    CHECK(r.exit_code == 1);
    CHECK(contains(r.output, "srgpt: error: cannot fsync " + out.string() + ": Input/output error"));
  }
#endif
  SECTION("over an earlier export") {
    expect_write_error(run_with_file_size_limit(export_to(earlier), limit), (earlier / "model.safetensors").string());
    CHECK(names_in(earlier) == std::set<std::string>{"model.safetensors", "config.json"});
    CHECK(read_file(earlier / "model.safetensors") == earlier_weights);
    CHECK(read_file(earlier / "config.json") == earlier_config);
  }
}

TEST_CASE("a prepare on a full disk fails clearly and its shards stay refused", "[disk-full]") {
  TempDir tmp("diskfull-prepare");
  const uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  // Lines of random lowercase words: byte tokens, one document per line.
  std::mt19937 rng(seed);
  std::string text;
  while (text.size() < 6000) {
    for (int w = 0, words = 1 + int(rng() % 8); w < words; ++w) {
      for (int k = 0, letters = 1 + int(rng() % 7); k < letters; ++k) text += char('a' + rng() % 26);
      text += ' ';
    }
    text += '\n';
  }
  const std::string input = tmp.write("corpus.txt", text);
  const fs::path out = tmp.path() / "out";
  auto prepare = [&](int shard_tokens) {
    return srgpt_command() + " prepare --input " + shell_quoted(input) + " --tokenizer byte --split lines --out " +
           shell_quoted(out.string()) + " --no-progress --val-fraction 0.1 --shard-tokens " +
           std::to_string(shard_tokens);
  };
  // What a reader of the output sees: shards only under their final names
  // and only whole, no temporaries, no summary.json, and the marker that
  // makes the loader refuse the shards until prepare has run to the end.
  auto expect_incomplete_dataset = [&] {
    for (const std::string& name : names_in(out)) {
      INFO(name);
      CHECK(!contains(name, ".tmp-"));
      CHECK(name != "summary.json");
      if (name.size() > 4 && name.compare(name.size() - 4, 4, ".bin") == 0)
        CHECK_NOTHROW(srgpt::TokenShard((out / name).string()));
    }
    CHECK(fs::exists(out / srgpt::kIncompleteDatasetMarker));
  };

  SECTION("a shard does not fit") {
    // One train shard: some 5000 two-byte tokens after its 1 KiB header.
    expect_write_error(run_with_file_size_limit(prepare(100000000), 4 * kBlock), (out / "train_000000.bin").string());
    expect_incomplete_dataset();
    CHECK_FALSE(fs::exists(out / "train_000000.bin"));
  }
  SECTION("the shards fit, summary.json does not") {
    // Shards of 1 KiB + 32 bytes each, and a summary listing ~400 of them.
    expect_write_error(run_with_file_size_limit(prepare(16), 3 * kBlock), (out / "summary.json").string());
    expect_incomplete_dataset();
    const std::string refused =
        error_message([&] { srgpt::expand_shard_pattern((out / "train_*.bin").string(), "data.train"); });
    CHECK(contains(refused, "incomplete dataset"));
  }
  // With space again, prepare completes and the shards load.
  CommandResult again = run_command(prepare(100000000));
  INFO(again.output);
  REQUIRE(again.exit_code == 0);
  CHECK(srgpt::expand_shard_pattern((out / "train_*.bin").string(), "data.train").size() == 1);
}
