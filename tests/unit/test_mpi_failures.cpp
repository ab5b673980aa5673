// Failure cases of a data-parallel job, through the real binary under
// mpiexec with two ranks: a rank that reads a bad data file, a rank killed
// mid-run, ranks started with different configs or from different points
// (checkpoint, --stop-after, data), and a data pattern that matches
// nothing. Each job must end (within the `timeout` below, else the
// test fails as a hang) with a non-zero exit and a message naming the rank
// and the reason, and a checkpoint written before the failure must still
// verify.
//
// Hidden tests: ctest runs each under label "mpi" with SRGPT_MPIEXEC set
// (tests/mpi/CMakeLists.txt); they need srgpt built with MPI (Open MPI: the
// killed-rank case reads OMPI_COMM_WORLD_RANK).
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fcntl.h>
#include <fstream>
#include <iterator>
#include <optional>
#include <spawn.h>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include <nlohmann/json.hpp>

#include "catch.h"
#include "srgpt/config.h"
#include "srgpt/data.h"
#include "srgpt/error.h"
#include "test_util.h"

extern char** environ;

using namespace srgpt_test;

namespace {

// A job that runs longer than this is hung; `timeout` then exits 124.
constexpr int kJobTimeoutS = 120;
constexpr int kTimedOut = 124;

// "timeout 120 mpiexec --oversubscribe", to be followed by the ranks' specs.
std::string launcher() {
  return "timeout " + std::to_string(kJobTimeoutS) + " " + shell_quoted(mpiexec_from_env()) + " --oversubscribe";
}

struct Run {
  TempDir tmp{"mpi-fail"};
  fs::path run_dir = tmp.path() / "run";

  // Two ranks x micro batch 2 x seq 16 = 64 tokens per step, no accumulation;
  // a checkpoint after every step.
  srgpt::Config config(const fs::path& data_dir) const {
    srgpt::Config c = tiny_config(data_dir, run_dir);
    c.batch.micro_batch = 2;
    c.batch.total_tokens = 64;
    c.checkpoint.every = 1;
    c.checkpoint.keep = 3;
    c.data.val.clear();
    return c;
  }

  std::string write_config(const srgpt::Config& c, const std::string& name) const {
    const std::string path = tmp.str(name + ".json");
    std::ofstream(path) << srgpt::config_to_json(c).dump(2);
    return path;
  }

  std::string train(int ranks, const std::string& config) const {
    return launcher() + " -np " + std::to_string(ranks) + " " + srgpt_bin() + " train --config " +
           shell_quoted(config);
  }

  // The newest complete checkpoint of the run passes `srgpt info --verify`
  // (and is the one at `step`, when given).
  void expect_verified_checkpoint(std::optional<int64_t> step) const {
    CommandResult info = run_command(srgpt_bin() + " info --verify " + shell_quoted(run_dir.string()));
    INFO("srgpt info --verify:\n" << info.output);
    CHECK(info.exit_code == 0);
    CHECK(info.output.find("verified") != std::string::npos);
    if (step) CHECK(info.output.find(fmt::format("step_{:08d}", *step)) != std::string::npos);
  }
};

void expect_job_failed(const CommandResult& r, const std::vector<std::string>& needles) {
  INFO("output:\n" << r.output);
  REQUIRE(r.exit_code != kTimedOut);  // a hang
  CHECK(r.exit_code != 0);
  for (const std::string& n : needles) {
    INFO("expected in the output: " << n);
    CHECK(r.output.find(n) != std::string::npos);
  }
}

// A started process (argv[0] looked up in PATH) with stdout and stderr to a
// file; killed and reaped on destruction if it is still running.
class ChildProcess {
 public:
  ChildProcess(const std::vector<std::string>& argv, const fs::path& log) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const int rc = posix_spawnp(&pid_, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) srgpt::fail("cannot start {}: error {}", argv[0], rc);
  }
  ~ChildProcess() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);  // `timeout` passes it on to mpiexec, which ends the ranks
    int status;
    ::waitpid(pid_, &status, 0);
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // The exit code once the process has ended (128 + signal if killed).
  std::optional<int> poll() {
    int status;
    if (pid_ <= 0 || ::waitpid(pid_, &status, WNOHANG) != pid_) return std::nullopt;
    pid_ = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  // Blocks until the process ends.
  int wait() {
    int status;
    ::waitpid(pid_, &status, 0);
    pid_ = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = 0;
};

// Alive and not a zombie (a killed rank's parent may be gone before init
// reaps it).
bool process_running(pid_t pid) {
  const char state = process_state(pid);
  return state != '\0' && state != 'Z';
}

// mpiexec sends the surviving ranks SIGKILL and may exit a moment before
// they are gone; a rank still running after 10 s was left behind.
bool ends_soon(pid_t pid) {
  for (int i = 0; i < 100 && process_running(pid); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  return !process_running(pid);
}

size_t lines_in(const fs::path& p) {
  std::ifstream in(p);
  return size_t(std::count(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>(), '\n'));
}

}  // namespace

TEST_CASE("mpi failure: a rank that reads a bad token stops the job naming the rank, file and offset",
          "[.mpi-failure-bad-data]") {
  Run run;
  constexpr int kRanks = 2, kBatch = 2, kSeq = 16, kFailingStep = 3, kFailingRank = 1;
  const fs::path data = run.tmp.path() / "data";
  fs::create_directories(data);
  const std::string shard = (data / "train_000000.bin").string();
  const srgpt::Config c = run.config(data);
  std::vector<uint32_t> tokens = markov_tokens(4000, c.model.vocab_size, 11);

  // Which sample does rank 1 read first at step 3? Tag token 5 of every
  // sample with its sample index (ids >= vocab, read here with a larger
  // vocabulary), and follow the trainer's loader.
  const size_t samples = (tokens.size() - 1) / kSeq;
  constexpr size_t kTagged = 5;  // inside one sample only, not a window's shared last token
  std::vector<uint32_t> tagged = tokens;
  for (size_t s = 0; s < samples; ++s) tagged[s * kSeq + kTagged] = uint32_t(c.model.vocab_size + s);
  srgpt::write_token_shard(shard, tagged);
  srgpt::TokenLoader probe({shard}, kBatch, kSeq, kFailingRank, kRanks, c.model.vocab_size + int(samples), true,
                           c.train.seed);
  std::vector<int32_t> in(kBatch * kSeq), tgt(in.size());
  for (int step = 1; step <= kFailingStep; ++step) probe.next_batch(in.data(), tgt.data());
  REQUIRE(in[kTagged] >= c.model.vocab_size);
  const size_t bad_index = size_t(in[kTagged] - c.model.vocab_size) * kSeq + kTagged;

  // The real shard: one id outside the vocabulary, in that sample only.
  tokens[bad_index] = uint32_t(c.model.vocab_size + 7);
  srgpt::write_token_shard(shard, tokens);
  srgpt::Config longer = c;
  longer.train.steps = 10;
  longer.dist.zero_stage = 2;  // so the checkpoints hold one optimizer shard per rank
  const CommandResult r = run_command(run.train(kRanks, run.write_config(longer, "bad_data")));
  expect_job_failed(r, {"srgpt: rank " + std::to_string(kFailingRank) + ": error: step " +
                            std::to_string(kFailingStep) + ": reading data.train: token shard",
                        "train_000000.bin",
                        "index " + std::to_string(bad_index), "outside the vocabulary"});
  run.expect_verified_checkpoint(kFailingStep - 1);
}

TEST_CASE("mpi failure: a rank killed mid-run ends the job, and the newest checkpoint verifies",
          "[.mpi-failure-killed-rank]") {
  Run run;
  write_markov_shards(run.tmp.path() / "data", 64, 20000, 3000);
  srgpt::Config c = run.config(run.tmp.path() / "data");
  c.train.steps = 100000;  // far more than run before the kill
  c.dist.zero_stage = 3;   // rank 0 waits for rank 1 inside forward's weight gathers too
  const std::string config = run.write_config(c, "long");
  // Each rank records its pid, then becomes srgpt.
  const std::string rank_cmd = "echo $$ > " + shell_quoted(run.tmp.str("pid.")) + "$OMPI_COMM_WORLD_RANK; exec " +
                               srgpt_bin() + " train --config " + shell_quoted(config);
  const fs::path log = run.tmp.path() / "mpiexec.log";
  ChildProcess job({"timeout", std::to_string(kJobTimeoutS), mpiexec_from_env(), "--oversubscribe", "-np", "2", "sh", "-c",
                    rank_cmd},
                   log);

  // Once rank 0 has logged three steps (so the checkpoints of steps 1 and 2
  // are complete), kill rank 1.
  const fs::path metrics = run.run_dir / "metrics.jsonl";
  std::optional<int> early_exit;
  while (lines_in(metrics) < 3 && !(early_exit = job.poll()))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  INFO("mpiexec output:\n" << read_file(log));
  REQUIRE(!early_exit);
  const pid_t rank0 = std::stoi(read_file(run.tmp.path() / "pid.0"));
  const pid_t rank1 = std::stoi(read_file(run.tmp.path() / "pid.1"));
  REQUIRE(::kill(rank1, SIGKILL) == 0);
  const int exit_code = job.wait();

  const std::string output = read_file(log);
  expect_job_failed({exit_code, output}, {"rank 1", "signal 9"});
  CHECK(ends_soon(rank0));
  // Rank 1 died at some later step, possibly while rank 0 was saving; the
  // newest complete checkpoint is whole.
  run.expect_verified_checkpoint(std::nullopt);
}

TEST_CASE("mpi failure: ranks started with different configs stop with a clear message",
          "[.mpi-failure-config-mismatch]") {
  Run run;
  write_markov_shards(run.tmp.path() / "data", 64, 20000, 3000);
  srgpt::Config a = run.config(run.tmp.path() / "data");
  a.train.steps = 2;
  const std::string config_a = run.write_config(a, "a");
  REQUIRE(run_command(run.train(2, config_a)).exit_code == 0);

  // Resume that run with rank 1 on another learning rate (MPMD launch).
  srgpt::Config b = a;
  b.train.steps = 4;
  b.optimizer.lr *= 2;
  a.train.steps = 4;
  const std::string bin = srgpt_bin();
  const CommandResult r = run_command(launcher() + " -np 1 " + bin + " train --resume --config " +
                                      shell_quoted(run.write_config(a, "a4")) + " : -np 1 " + bin +
                                      " train --resume --config " + shell_quoted(run.write_config(b, "b4")));
  expect_job_failed(r, {"srgpt: rank ", "config differs between ranks", "optimizer.lr = 0.0"});
  run.expect_verified_checkpoint(2);
}

TEST_CASE("mpi failure: ranks that would start from different points stop before the first step, naming what differs",
          "[.mpi-failure-start-mismatch]") {
  Run run;
  const fs::path data = run.tmp.path() / "data";
  write_markov_shards(data, 64, 20000, 3000);
  srgpt::Config c = run.config(data);
  c.train.steps = 2;
  const std::string config = run.write_config(c, "two_steps");
  REQUIRE(run_command(run.train(2, config)).exit_code == 0);
  c.train.steps = 4;
  const std::string four = run.write_config(c, "four_steps");
  const std::string train = srgpt_bin() + " train --config " + shell_quoted(four);
  // Each rank of an MPMD launch gets its own arguments.
  auto job = [&](const std::string& rank0_args, const std::string& rank1_args) {
    return run_command(launcher() + " -np 1 " + train + rank0_args + " : -np 1 " + train + rank1_args);
  };

  SECTION("only rank 0 resumes") {
    expect_job_failed(job(" --resume", ""), {"disagree on the step to resume from", "--resume"});
  }
  SECTION("the ranks resume from different checkpoints of the same step") {
    // A copy of step 2 with other weights: the same run with another seed.
    srgpt::Config other = c;
    other.train.steps = 2;
    other.train.seed += 1;
    other.out_dir = run.tmp.str("other");
    REQUIRE(run_command(run.train(2, run.write_config(other, "other"))).exit_code == 0);
    const std::string from = " --resume-from " + shell_quoted(run.tmp.str("other/checkpoints/step_00000002"));
    expect_job_failed(job(" --resume", from), {"disagree on the checkpoint's weights"});
  }
  SECTION("only rank 0 stops early") {
    expect_job_failed(job(" --resume --stop-after 3", " --resume"), {"disagree on --stop-after"});
  }
  // data.train or data.val (`split`) relative to each rank's working
  // directory (node-local copies): rank 1's copy has `train_tokens` train
  // tokens, and both splits are drawn with `seed`.
  auto node_local_job = [&](const std::string& split, size_t train_tokens, uint32_t seed) {
    srgpt::Config local = c;
    (split == "train" ? local.data.train : local.data.val) = "data/" + split + "_*.bin";
    const std::string local_config = run.write_config(local, "local_" + split);
    write_markov_shards(run.tmp.path() / "node0" / "data", 64, 20000, 3000);
    write_markov_shards(run.tmp.path() / "node1" / "data", 64, train_tokens, 3000, seed);
    const std::string train_local = srgpt_bin() + " train --resume --config " + shell_quoted(local_config);
    return run_command(launcher() + " -np 1 -wdir " + shell_quoted(run.tmp.str("node0")) + " " + train_local +
                       " : -np 1 -wdir " + shell_quoted(run.tmp.str("node1")) + " " + train_local);
  };
  SECTION("the ranks read different data under the same pattern (node-local copies)") {
    expect_job_failed(node_local_job("train", 10000, 7), {"disagree on the tokens in data.train"});
  }
  SECTION("the ranks read shards of the same sizes but other tokens under the same pattern") {
    expect_job_failed(node_local_job("train", 20000, 11),
                      {"disagree on the first tokens of data.train's shards (CRC-32)"});
  }
  SECTION("the ranks validate on shards of the same sizes but other tokens (node-local copies)") {
    // Each rank's val loss was its own data's, averaged into one number.
    expect_job_failed(node_local_job("val", 20000, 11), {"disagree on the first tokens of data.val's shards (CRC-32)"});
  }
  // Nothing was trained or written past the saved step.
  run.expect_verified_checkpoint(2);
}

TEST_CASE("mpi failure: a rank that exits without starting MPI ends the job after the timeout",
          "[.mpi-failure-rank-without-mpi]") {
  Run run;
  write_markov_shards(run.tmp.path() / "data", 64, 20000, 3000);
  const std::string config = run.write_config(run.config(run.tmp.path() / "data"), "plain");
  // Rank 1 prints the help and exits 0 without MPI_Init, so rank 0's
  // MPI_Init would wait for it forever.
  const auto start = std::chrono::steady_clock::now();
  const CommandResult r = run_command(launcher() + " -x SRGPT_COMM_TIMEOUT_S=3 -np 1 " + srgpt_bin() +
                                      " train --config " + shell_quoted(config) + " : -np 1 " + srgpt_bin() +
                                      " train --help");
  // Either rank 0's watchdog ends the job, or Open MPI itself when rank 1
  // exits after rank 0 has entered MPI_Init ('did not call "init" before
  // exiting, but others in the job did'): which one depends on timing.
  INFO("output:\n" << r.output);
  REQUIRE(r.exit_code != kTimedOut);
  CHECK(r.exit_code != 0);
  CHECK((r.output.find("srgpt: rank 0: error: MPI_Init did not complete within 3 s") != std::string::npos ||
         r.output.find("did not call \"init\"") != std::string::npos));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(60));
}

TEST_CASE("mpi failure: ranks that would not share out_dir stop before the first step", "[.mpi-failure-out-dir]") {
  Run run;
  write_markov_shards(run.tmp.path() / "data", 64, 20000, 3000);
  srgpt::Config c = run.config(run.tmp.path() / "data");
  c.train.steps = 2;
  c.checkpoint.every = 0;  // the only save would come after training
  SECTION("a relative out_dir from different working directories") {
    c.out_dir = "run";
    const std::string config = run.write_config(c, "relative");
    const std::string train = srgpt_bin() + " train --config " + shell_quoted(config);
    fs::create_directories(run.tmp.path() / "node0");
    fs::create_directories(run.tmp.path() / "node1");
    const CommandResult r = run_command(launcher() + " -np 1 -wdir " + shell_quoted(run.tmp.str("node0")) + " " +
                                        train + " : -np 1 -wdir " + shell_quoted(run.tmp.str("node1")) + " " + train);
    expect_job_failed(r, {"out_dir 'run' is " + run.tmp.str("node0/run") + " on rank 0 but another directory",
                          "give an absolute out_dir"});
    CHECK_FALSE(fs::exists(run.tmp.path() / "node0" / "run" / "metrics.jsonl"));
  }
  SECTION("a node-local out_dir") {
    // Rank 1 in a mount namespace of its own, with a fresh tmpfs where
    // out_dir is: the same path, another directory, as on another node.
    if (run_command("unshare -m true").exit_code != 0) {
      WARN("skipped: this machine cannot make a mount namespace (unshare -m), which the node-local case needs");
      return;
    }
    const fs::path shared = run.tmp.path() / "shared";
    fs::create_directories(shared);
    c.out_dir = (shared / "run").string();
    const std::string config = run.write_config(c, "node_local");
    const std::string train = srgpt_bin() + " train --config " + shell_quoted(config);
    const std::string local = "unshare -m sh -c " +
                              shell_quoted("mount -t tmpfs none " + shell_quoted(shared.string()) + " && exec " + train);
    const CommandResult r = run_command(launcher() + " -np 1 " + train + " : -np 1 " + local);
    expect_job_failed(r, {"out_dir '" + c.out_dir + "' is not on a file system all ranks share"});
    CHECK_FALSE(fs::exists(shared / "run" / "metrics.jsonl"));
  }
#ifdef SRGPT_FILE_FAULTS_LIB
  SECTION("an out_dir where rank 0 cannot write its probe file: that, not an unshared out_dir") {
    c.out_dir = run.tmp.str("full");
    const std::string config = run.write_config(c, "full");
    const CommandResult r = run_command(launcher() + " -np 2 " + full_disk_for(".srgpt-shared-") + srgpt_bin() +
                                        " train --config " + shell_quoted(config));
    expect_job_failed(r, {"srgpt: rank 0: error: cannot write " + c.out_dir + "/.srgpt-shared-",
                          "No space left on device"});
    CHECK_FALSE(contains(r.output, "not on a file system all ranks share"));
  }
#endif
}

TEST_CASE("mpi failure: a data pattern that matches nothing stops every rank at once",
          "[.mpi-failure-no-data]") {
  Run run;
  srgpt::Config c = run.config(run.tmp.path() / "nowhere");
  const CommandResult r = run_command(run.train(2, run.write_config(c, "no_data")));
  expect_job_failed(r, {"srgpt: rank ", "data.train", "nowhere/train_*.bin", "no files match"});
}

TEST_CASE("mpi failure: a disk full for one rank's optimizer shard ends the save and the job, and the "
          "previous checkpoint resumes",
          "[.mpi-failure-full-disk]") {
  Run run;
  write_markov_shards(run.tmp.path() / "data", 64, 20000, 3000);
  srgpt::Config c = run.config(run.tmp.path() / "data");
  c.train.steps = 2;
  c.dist.zero_stage = 2;  // one optimizer shard file per rank
  REQUIRE(run_command(run.train(2, run.write_config(c, "two_steps"))).exit_code == 0);
  run.expect_verified_checkpoint(2);

  // Step 3's save: rank 1 finds the disk full for its shard, part-way, while
  // rank 0 writes model.bin and its own shard and waits for rank 1's
  // file records.
  c.train.steps = 4;
  const std::string four = run.write_config(c, "four_steps");
  const std::string resume = " train --resume --config " + shell_quoted(four);
  const CommandResult r =
      run_command(launcher() + " -np 2 " + full_disk_for("optim_rank00001.bin", 100) + srgpt_bin() + resume);
  expect_job_failed(r, {"srgpt: rank 1: error:", "optim_rank00001.bin", "No space left on device"});
  // No checkpoint past step 2 is complete; step 2 is untouched.
  const auto latest = srgpt::latest_checkpoint(run.run_dir / "checkpoints");
  REQUIRE(latest);
  CHECK(latest->filename() == "step_00000002");
  run.expect_verified_checkpoint(2);

  // With space again the run resumes from step 2 and reads as the
  // uninterrupted one.
  const CommandResult resumed = run_command(run.train(2, four) + " --resume");
  INFO(resumed.output);
  REQUIRE(resumed.exit_code == 0);
  CHECK(contains(resumed.output, "at step 2"));
  run.expect_verified_checkpoint(4);
  // The aborted save's staging directory went with the next save.
  for (const auto& entry : fs::directory_iterator(run.run_dir / "checkpoints")) {
    const std::string name = entry.path().filename().string();
    INFO("in checkpoints/: " << name);
    CHECK_FALSE(contains(name, ".tmp-"));
  }
  srgpt::Config reference = c;
  reference.out_dir = run.tmp.str("reference");
  REQUIRE(run_command(run.train(2, run.write_config(reference, "reference"))).exit_code == 0);
  const std::vector<double> resumed_losses = losses_in(run.run_dir / "metrics.jsonl");
  CHECK(resumed_losses.size() == 4);
  CHECK(resumed_losses == losses_in(run.tmp.path() / "reference" / "metrics.jsonl"));
}
