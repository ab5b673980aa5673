#pragma once
// Helpers shared by the unit tests: temporary directories, synthetic token
// streams, tiny configs, and running the srgpt binary.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "srgpt/config.h"
#include "srgpt/trainer.h"
#include "srgpt/data.h"
#include "srgpt/error.h"

namespace srgpt_test {

namespace fs = std::filesystem;

// A GPT small enough for f64 runs, with 3 layers so that a tensor shared
// between layers is told apart from one per layer, and ZeRO-3's two block
// slots are each used more than once.
inline srgpt::ModelConfig three_layer_model() {
  srgpt::ModelConfig cfg;
  cfg.vocab_size = 70;
  cfg.max_seq_len = 16;
  cfg.n_layer = 3;
  cfg.n_head = 2;
  cfg.d_model = 32;
  return cfg;
}

// A seed drawn anew each run, for inputs that must not be the same every
// time; tests print it (INFO) so that a failure can be replayed.
inline uint32_t fresh_seed() { return std::random_device{}(); }

class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("srgpt-" + tag + "-" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  std::string str(const std::string& child = "") const { return (child.empty() ? path_ : path_ / child).string(); }
  // Writes a file under the directory; returns its path.
  std::string write(const std::string& name, const std::string& text) const {
    std::string file = str(name);
    std::ofstream(file, std::ios::binary) << text;
    return file;
  }

 private:
  fs::path path_;
};

// A low-entropy Markov chain over `vocab` symbols: each symbol has a few
// likely successors, so a model can learn it and the loss must fall.
inline std::vector<uint32_t> markov_tokens(size_t n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<uint32_t>> next(static_cast<size_t>(vocab));
  for (auto& succ : next)
    for (int k = 0; k < 3; ++k) succ.push_back(rng() % uint32_t(vocab));
  std::vector<uint32_t> out(n);
  uint32_t s = 0;
  for (size_t i = 0; i < n; ++i) {
    out[i] = s;
    uint32_t r = rng() % 8;
    s = r < 6 ? next[s][r % 3] : rng() % uint32_t(vocab);
  }
  return out;
}

// train_000000.bin, train_000001.bin and val_000000.bin under dir.
inline void write_markov_shards(const fs::path& dir, int vocab, size_t train_tokens, size_t val_tokens,
                                uint32_t seed = 7) {
  fs::create_directories(dir);
  auto all = markov_tokens(train_tokens + val_tokens, vocab, seed);
  size_t half = train_tokens / 2;
  srgpt::write_token_shard((dir / "train_000000.bin").string(), {all.begin(), all.begin() + half});
  srgpt::write_token_shard((dir / "train_000001.bin").string(), {all.begin() + half, all.begin() + train_tokens});
  srgpt::write_token_shard((dir / "val_000000.bin").string(), {all.begin() + train_tokens, all.end()});
}

// A tiny GPT for fast cpu tests.
inline srgpt::Config tiny_config(const fs::path& data_dir, const fs::path& out_dir) {
  srgpt::Config c;
  c.model.vocab_size = 64;
  c.model.max_seq_len = 16;
  c.model.n_layer = 2;
  c.model.n_head = 2;
  c.model.d_model = 32;
  c.device = srgpt::DeviceChoice::cpu;
  c.batch.micro_batch = 4;
  c.batch.seq_len = 16;
  c.batch.total_tokens = 128;  // 2 micro-steps of accumulation
  c.optimizer.lr = 3e-3;
  c.optimizer.warmup_steps = 2;
  c.optimizer.weight_decay = 0.1;
  c.train.steps = 20;
  c.train.eval_every = 0;
  c.train.eval_tokens = 0;
  c.checkpoint.every = 0;
  c.checkpoint.keep = 2;
  c.data.train = (data_dir / "train_*.bin").string();
  c.data.val = (data_dir / "val_*.bin").string();
  c.out_dir = out_dir.string();
  return c;
}

// Options for an in-process training run without log lines.
inline srgpt::TrainOptions quiet_options() {
  srgpt::TrainOptions o;
  o.quiet = true;
  return o;
}

struct CommandResult {
  int exit_code;
  std::string output;  // stdout and stderr
};

// Runs a shell command, capturing its combined output and exit status.
inline CommandResult run_command(const std::string& cmd) {
  CommandResult r{-1, ""};
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// `s` as one shell word (single-quoted; a ' inside becomes '\'').
inline std::string shell_quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// The srgpt binary as the start of a shell command (quoted: the checkout's
// path may contain spaces).
inline std::string srgpt_bin() { return shell_quoted(SRGPT_BIN); }

// A process's state letter from /proc/<pid>/stat ('R', 'S', 'Z' for a
// zombie, ...), or '\0' when there is no such process.
inline char process_state(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return '\0';
  // "pid (comm) state ...", where comm may itself contain ')'.
  const size_t paren = line.rfind(')');
  return paren == std::string::npos || paren + 2 >= line.size() ? '\0' : line[paren + 2];
}

// Whether these tests (and the srgpt they start, built alike) run under
// AddressSanitizer (CMake option SRGPT_SANITIZE).
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kUnderAddressSanitizer = true;
#else
constexpr bool kUnderAddressSanitizer = false;
#endif

// "ASAN_OPTIONS='<this process's options>:<option>' ", a shell prefix
// that runs the command after it with one more ASan option.
inline std::string asan_options_with(const std::string& option) {
  const char* options = std::getenv("ASAN_OPTIONS");
  return "ASAN_OPTIONS=" + shell_quoted(std::string(options ? options : "") + ":" + option) + " ";
}

// A shell prefix that caps the memory of the command after it at `mib`:
// its address space (`ulimit -v`), so an allocation beyond it fails. Under
// AddressSanitizer, whose shadow memory is terabytes of reserved address
// space, a process cannot even start with such a cap: its resident memory
// is capped instead (ASan's hard_rss_limit_mb), which ends the process
// with a report rather than a failed allocation.
inline std::string memory_cap_prefix(int mib) {
  if (kUnderAddressSanitizer) return asan_options_with("hard_rss_limit_mb=" + std::to_string(mib));
  return "ulimit -v " + std::to_string(int64_t(mib) * 1024) + "; ";
}

#ifdef SRGPT_FILE_FAULTS_LIB
// "env LD_PRELOAD=<tests/fault_injection's library> <settings> ", the start
// of a shell command that runs under its file faults.
inline std::string with_file_faults(const std::string& settings) {
  // LD_PRELOAD splits its value at spaces and colons, with no quoting, so a
  // library under such a path (a checkout in "/tmp/ci clone") is preloaded
  // through a symbolic link in /tmp, removed when the tests exit.
  struct PreloadPath {
    fs::path link;
    std::string path = SRGPT_FILE_FAULTS_LIB;
    PreloadPath() {
      if (path.find_first_of(" :") == std::string::npos) return;
      link = fs::path("/tmp") / ("srgpt-file-faults-" + std::to_string(::getpid()) + ".so");
      std::error_code ec;
      fs::remove(link, ec);
      fs::create_symlink(path, link);
      path = link.string();
    }
    ~PreloadPath() {
      std::error_code ec;
      if (!link.empty()) fs::remove(link, ec);
    }
  };
  static const PreloadPath library;
  std::string prefix = "env LD_PRELOAD=" + shell_quoted(library.path) + " " + settings + " ";
  // ASan must not insist on being loaded first.
  if (kUnderAddressSanitizer) prefix += asan_options_with("verify_asan_link_order=0");
  return prefix;
}

// A shell prefix under which the command after it finds the disk full for
// files whose path contains `file`: their writes fail with ENOSPC once
// `after_bytes` have gone to such files. Other files are written as usual.
inline std::string full_disk_for(const std::string& file, uint64_t after_bytes = 0) {
  return with_file_faults("SRGPT_FAIL_WRITES_TO=" + shell_quoted(file) +
                          " SRGPT_FAIL_WRITES_AFTER=" + std::to_string(after_bytes));
}

// A shell prefix under which fsync(2) of the file or directory opened by a
// path ending in `path_end` fails with EIO.
inline std::string failing_sync_of(const std::string& path_end) {
  return with_file_faults("SRGPT_FAIL_SYNC_OF=" + shell_quoted(path_end));
}

// A shell prefix under which the file whose path contains `file` is cut to
// half its size right after its `nth` memory mapping, as if another program
// truncated it while srgpt reads it.
inline std::string shrinking_when_mapped(const std::string& file, int nth) {
  return with_file_faults("SRGPT_SHRINK_ON_MAP=" + shell_quoted(file) +
                          " SRGPT_SHRINK_ON_MAP_NTH=" + std::to_string(nth));
}
#endif

// The MPI launcher that ctest names in SRGPT_MPIEXEC for the hidden tests
// that start multi-rank jobs themselves (tests/mpi/CMakeLists.txt); throws
// when it is not set.
inline std::string mpiexec_from_env() {
  const char* m = std::getenv("SRGPT_MPIEXEC");
  if (!m) throw std::runtime_error("SRGPT_MPIEXEC must name the MPI launcher (ctest sets it)");
  return m;
}

// The step lines of a metrics.jsonl (those with a "loss"), in order; throws
// when they do not count 1, 2, 3, ...
inline std::vector<nlohmann::json> step_lines_in(const fs::path& metrics) {
  std::vector<nlohmann::json> steps;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (!j.contains("loss")) continue;
    if (j.at("step").get<size_t>() != steps.size() + 1)
      throw std::runtime_error(metrics.string() + ": step " + j.at("step").dump() + " after " +
                               std::to_string(steps.size()) + " step lines");
    steps.push_back(std::move(j));
  }
  return steps;
}

// The "loss" of every step line of a metrics.jsonl, in order.
inline std::vector<double> losses_in(const fs::path& metrics) {
  std::vector<double> losses;
  for (const nlohmann::json& j : step_lines_in(metrics)) losses.push_back(j.at("loss").get<double>());
  return losses;
}

// The validation lines of a run's metrics.jsonl, in file order: step and
// val_loss (whose val_perplexity must be its exponential).
inline std::vector<std::pair<int64_t, double>> val_losses_in(const fs::path& metrics) {
  std::vector<std::pair<int64_t, double>> found;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (!j.contains("val_loss")) continue;
    const double loss = j.at("val_loss").get<double>();
    if (j.at("val_perplexity").get<double>() != std::exp(loss))
      throw std::runtime_error(metrics.string() + ": val_perplexity is not exp(val_loss) in " + line);
    found.emplace_back(j.at("step").get<int64_t>(), loss);
  }
  return found;
}

// Checks the `mfu` of every step line of a single-rank run's metrics.jsonl:
// none where peak_flops is 0, otherwise tokens/s times the FLOPs per token
// docs/formats.md states, 6 x parameters + 12 x n_layer x seq_len x d_model,
// over peak_flops. Returns the number of step lines.
inline size_t check_logged_mfu(const fs::path& metrics, const srgpt::Config& c, size_t params, double peak_flops) {
  const double flops_per_token =
      6.0 * double(params) + 12.0 * c.model.n_layer * double(c.batch.seq_len) * c.model.d_model;
  const std::vector<nlohmann::json> steps = step_lines_in(metrics);
  for (const nlohmann::json& j : steps) {
    if (peak_flops == 0) {
      if (j.contains("mfu")) throw std::runtime_error(metrics.string() + ": an MFU without a peak rate in " + j.dump());
      continue;
    }
    if (!j.contains("mfu")) throw std::runtime_error(metrics.string() + ": no mfu in " + j.dump());
    const double expected = j.at("tokens_per_s").get<double>() * flops_per_token / peak_flops;
    if (std::abs(j.at("mfu").get<double>() - expected) > 1e-12 * expected)
      throw std::runtime_error(metrics.string() + ": mfu is not " + std::to_string(expected) + " in " + j.dump());
  }
  return steps.size();
}

// The message of the srgpt::Error `action` throws, or "" when it throws none.
inline std::string error_message(const std::function<void()>& action) {
  try {
    action();
  } catch (const srgpt::Error& e) {
    return e.what();
  }
  return "";
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A file's bytes ("" when it cannot be read).
inline std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace srgpt_test
