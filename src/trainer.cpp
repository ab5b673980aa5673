#include "srgpt/trainer.h"

#include <fcntl.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

#include <spdlog/spdlog.h>

#include "srgpt/checkpoint.h"
#include "srgpt/error.h"
#include "srgpt/json_parse.h"
#include "srgpt/posix_file.h"
#include "srgpt/prepare.h"
#include "srgpt/safetensors.h"
#include "srgpt/sample.h"

namespace srgpt {

namespace fs = std::filesystem;

namespace {

std::atomic<int> g_stop_signal{0};
std::atomic<int64_t> g_stop_signal_ns{0};  // CLOCK_MONOTONIC time of the first
constexpr int64_t kRepeatedSignalNs = 1'000'000'000;

// The first SIGINT/SIGTERM asks the run to stop after the current step; one
// that comes a second or more later ends it at once. Repeats within that
// second are the same request: GNU timeout signals its child and then the
// whole process group, so srgpt gets two SIGTERMs microseconds apart.
// clock_gettime, signal and raise are async-signal-safe.
extern "C" void on_stop_signal(int sig) {
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  const int64_t ns = int64_t(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
  if (g_stop_signal.load() == 0) {
    g_stop_signal_ns.store(ns);
    g_stop_signal.store(sig);
    return;
  }
  if (ns - g_stop_signal_ns.load() < kRepeatedSignalNs) return;
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

// Installs SIGINT/SIGTERM handlers for the duration of a run.
class StopSignalGuard {
 public:
  StopSignalGuard() {
    g_stop_signal.store(0);
    old_int_ = std::signal(SIGINT, on_stop_signal);
    old_term_ = std::signal(SIGTERM, on_stop_signal);
  }
  ~StopSignalGuard() {
    std::signal(SIGINT, old_int_);
    std::signal(SIGTERM, old_term_);
  }
  StopSignalGuard(const StopSignalGuard&) = delete;
  StopSignalGuard& operator=(const StopSignalGuard&) = delete;

 private:
  void (*old_int_)(int);
  void (*old_term_)(int);
};

double mib(size_t bytes) { return double(bytes) / (1024.0 * 1024.0); }

fs::path checkpoint_root(const Config& c) { return fs::path(c.out_dir) / "checkpoints"; }

// One checkpoint tensor per layout tensor, pointing into a host copy of a
// full flat buffer.
std::vector<CheckpointTensor> layout_tensors(const Layout& layout, const std::string& prefix, DType dtype,
                                             const std::vector<char>& host) {
  std::vector<CheckpointTensor> out;
  const size_t es = dtype_size(dtype);
  for (const TensorSpec& t : layout.tensors())
    out.push_back({prefix + t.name, dtype, t.shape, host.data() + t.offset * es, t.numel * es});
  return out;
}

// A full flat buffer in `layout` from per-tensor checkpoint entries.
std::vector<char> read_layout_tensors(CheckpointReader& reader, const std::string& file, const Layout& layout,
                                      const std::string& prefix, DType dtype) {
  const size_t es = dtype_size(dtype);
  std::vector<char> host(layout.total() * es, 0);
  for (const TensorSpec& t : layout.tensors())
    reader.read_tensor(file, prefix + t.name, dtype, t.shape, host.data() + t.offset * es, t.numel * es);
  return host;
}

std::string optim_file_name(int rank) { return fmt::format("optim_rank{:05d}.bin", rank); }

// Sends a string from `root` to every rank.
std::string broadcast_string(Communicator& comm, std::string s, int root) {
  uint64_t n = s.size();
  comm.broadcast(&n, sizeof n, root);
  s.resize(n);
  if (n) comm.broadcast(s.data(), n, root);
  return s;
}

// Every rank must reach the same out_dir: all resume from its checkpoints,
// and at ZeRO stages 1-3 each writes its shard into it. A relative out_dir
// from ranks started in different directories, or a node-local one, used to
// fail only at the first save, after training. Collective.
void require_shared_out_dir(Communicator& comm, Communicator& host_comm, const std::string& out_dir) {
  const int rank = comm.rank();
  const std::string mine = fs::absolute(out_dir).lexically_normal().string();
  const std::string lead = broadcast_string(host_comm, mine, 0);
  if (comm.all_reduce_max(mine == lead ? 0.0 : 1.0) > 0)
    fail("out_dir '{}' is {} on rank 0 but another directory on some rank (a relative path from another working "
         "directory); give an absolute out_dir, or start every rank in the same directory",
         out_dir, lead);
  // The same path may still be node-local: rank 0 leaves a file of a fresh
  // name there for the others to find (for a while: a network file system
  // may show it late).
  std::string name;
  if (rank == 0) name = fmt::format(".srgpt-shared-{:08x}{:08x}", std::random_device{}(), std::random_device{}());
  const fs::path probe = fs::path(out_dir) / broadcast_string(host_comm, name, 0);
  if (rank == 0) {
    // A failed write is reported here: the other ranks would only find the
    // file missing and blame the file system.
    PosixFile out(probe, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    out.write_all("\n", 1);
    out.close();
  }
  comm.all_reduce_max(0.0);  // the file exists before any rank looks
  bool seen = rank == 0;
  for (int attempt = 0; !seen && attempt < 20; ++attempt) {
    std::error_code ec;
    seen = fs::exists(probe, ec);
    if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const double missing = comm.all_reduce_max(seen ? 0.0 : 1.0);
  if (rank == 0) {
    std::error_code ec;
    fs::remove(probe, ec);
  }
  if (missing > 0)
    fail("out_dir '{}' is not on a file system all ranks share: a file rank 0 wrote there does not appear on some "
         "rank; every rank writes checkpoints into it and resumes from them",
         lead);
}

// The smallest and the largest of `value` over the ranks (every rank gets
// both): equal when all ranks hold the same value.
std::pair<double, double> range_over_ranks(Communicator& comm, double value) {
  const double high = comm.all_reduce_max(value);
  return {-comm.all_reduce_max(-value), high};
}

// A value every rank must hold alike, what it is, and what to do when the
// ranks differ on it.
struct SharedValue {
  std::string what;
  double value;  // exact: counts below 2^53 and CRC-32s
  std::string remedy;
};

// Ranks that start from different points call different collectives later
// (a crash or a hang) or silently train a mix of models, so the run stops
// here, on every rank, naming the first value that differs.
void require_same_on_every_rank(Communicator& comm, const std::vector<SharedValue>& values) {
  for (const SharedValue& v : values) {
    const auto [low, high] = range_over_ranks(comm, v.value);
    if (high != low)
      fail("the {} ranks disagree on {}: from {} to {} across ranks, {} on rank {}; {}", comm.size(), v.what, low, high,
           v.value, comm.rank(), v.remedy);
  }
}

// "optimizer.lr = 0.1 on rank 0 but 0.2 on rank 3" for the first key where
// this rank's config differs from rank 0's, or "" where they are the same.
std::string config_difference(const nlohmann::json& lead, const nlohmann::json& mine, int rank) {
  const nlohmann::json patch = nlohmann::json::diff(lead, mine);
  if (patch.empty()) return "";
  const nlohmann::json::json_pointer where(patch.front().at("path").get<std::string>());
  std::string key = where.to_string().substr(1);
  std::replace(key.begin(), key.end(), '/', '.');
  auto value_in = [&](const nlohmann::json& config) {
    return config.contains(where) ? config.at(where).dump() : "(absent)";
  };
  return fmt::format("{} = {} on rank 0 but {} on rank {}", key, value_in(lead), value_in(mine), rank);
}

// A checkpoint's training state (its manifest's "state"), every field
// present, of its type and consistent with the manifest.
struct SavedState {
  Config config;
  int64_t step = 0, tokens_seen = 0, skipped_steps = 0;
  int world_size = 1, zero_stage = 0;
  nlohmann::json zero_plan;  // checked where the optimizer state is read
  LoaderPosition train_loader;
  // Tokens per shard of data.train, which the loader position refers to;
  // absent in checkpoints written before srgpt recorded them. The same for
  // the CRC-32 of each shard's first tokens (TokenLoader::shard_head_crc32).
  std::optional<std::vector<size_t>> train_shard_tokens;
  std::optional<std::vector<uint32_t>> train_shard_head_crc32;
};

// The CRC-32 of the weights a checkpoint's state records, which every rank
// must agree on before loading; 0 when there is none (checkpoints written
// before srgpt recorded it, or a state that read_saved_state will reject).
uint32_t saved_weights_crc32(const CheckpointReader& reader) {
  const nlohmann::json& st = reader.state();
  if (!st.is_object() || !st.contains("weights_crc32")) return 0;
  const std::optional<uint32_t> crc = json_integer<uint32_t>(st.at("weights_crc32"));
  if (!crc)
    fail("checkpoint {}: its manifest's state \"weights_crc32\" = {}; allowed: a CRC-32, an integer in [0, 2^32)",
         reader.dir().string(), st.at("weights_crc32").dump());
  return *crc;
}

SavedState read_saved_state(const CheckpointReader& reader) {
  const std::string dir = reader.dir().string();
  const nlohmann::json& st = reader.state();
  // A field, or an error naming the one that is missing or of another type
  // (for a counter: anything but an integer in its type's range).
  auto field = [&](const char* key, auto value) {
    using T = decltype(value);
    if (!st.is_object() || !st.contains(key)) fail("checkpoint {}: its manifest's state has no \"{}\"", dir, key);
    const nlohmann::json& v = st.at(key);
    if (std::optional<T> read = json_value<T>(v)) return std::move(*read);
    fail("checkpoint {}: its manifest's state \"{}\" = {} is not of the expected type{}", dir, key, v.dump(),
         std::is_integral_v<T> ? " (an integer)" : "");
  };
  SavedState s;
  try {
    s.config = config_from_json(field("config", nlohmann::json()), dir + "/manifest.json");
  } catch (const nlohmann::json::exception& e) {
    fail("checkpoint {}: its manifest's state has no valid config: {}", dir, e.what());
  }
  const std::string precision = field("precision", std::string());
  if (precision != precision_name(s.config.precision))
    fail("checkpoint {}: its manifest's state says precision \"{}\" but its config \"{}\"", dir, precision,
         precision_name(s.config.precision));
  s.step = field("step", int64_t());
  s.tokens_seen = field("tokens_seen", int64_t());
  s.skipped_steps = field("skipped_steps", int64_t());
  const int64_t world_size = field("world_size", int64_t()), zero_stage = field("zero_stage", int64_t());
  if (s.step != reader.step() || s.tokens_seen < 0 || s.skipped_steps < 0 || s.skipped_steps > s.step)
    fail("checkpoint {}: its state says step {} (the manifest: {}), tokens_seen {}, skipped_steps {}; allowed: "
         "the manifest's step, counts >= 0, skipped_steps <= step",
         dir, s.step, reader.step(), s.tokens_seen, s.skipped_steps);
  if (world_size < 1 || world_size > std::numeric_limits<int>::max() || zero_stage < 0 || zero_stage > 3)
    fail("checkpoint {}: its state says world_size {}, zero_stage {}; allowed: 1..{} and 0..3", dir, world_size,
         zero_stage, std::numeric_limits<int>::max());
  s.world_size = int(world_size);
  s.zero_stage = int(zero_stage);
  const uint64_t seed = field("seed", uint64_t());
  if (seed != s.config.train.seed)
    fail("checkpoint {}: its manifest's state says seed {} but its config {}", dir, seed, s.config.train.seed);
  s.zero_plan = field("zero_plan", nlohmann::json());
  // Element by element: nlohmann's own conversion of -2.5 to size_t is undefined.
  auto optional_integers = [&](const char* key, auto element, const char* what) {
    using T = decltype(element);
    std::optional<std::vector<T>> result;
    if (!st.contains(key)) return result;
    const nlohmann::json& v = st.at(key);
    std::vector<T> values;
    for (const nlohmann::json& value : v.is_array() ? v : nlohmann::json::array()) {
      const std::optional<T> n = json_integer<T>(value);
      if (!n) break;
      values.push_back(*n);
    }
    if (!v.is_array() || values.size() != v.size())
      fail("checkpoint {}: its manifest's state \"{}\" = {} is not of the expected type (an array of {})", dir, key,
           v.dump(), what);
    result = std::move(values);
    return result;
  };
  s.train_shard_tokens = optional_integers("train_shard_tokens", size_t(), "token counts");
  s.train_shard_head_crc32 = optional_integers("train_shard_head_crc32", uint32_t(), "CRC-32 values");
  // Both are written together, one value per shard.
  if (s.train_shard_head_crc32 &&
      (!s.train_shard_tokens || s.train_shard_tokens->size() != s.train_shard_head_crc32->size()))
    fail("checkpoint {}: its manifest's state \"train_shard_head_crc32\" has {} values but \"train_shard_tokens\" "
         "{}; a checkpoint records both, one value per shard of data.train",
         dir, s.train_shard_head_crc32->size(),
         s.train_shard_tokens ? fmt::format("has {}", s.train_shard_tokens->size()) : std::string("is absent"));
  // Checked here too (the ranks compare it earlier), so that info --verify
  // refuses what a resume refuses.
  saved_weights_crc32(reader);
  const nlohmann::json train_loader = field("train_loader", nlohmann::json());
  s.train_loader =
      with_error_context(fmt::format("checkpoint {}: its manifest's state \"train_loader\" is malformed", dir),
                         [&] { return loader_position_from_json(train_loader); });
  return s;
}

// Training never writes NaN or Inf (Trainer::save refuses them), nor a
// negative second moment; a checkpoint holding one was changed outside, and
// a resume from it would end a step or two later in a non-finite loss
// blamed on the learning rate. `bytes`: a full flat buffer in `layout`.
void check_checkpoint_values(const CheckpointReader& reader, const std::string& what, const Layout& layout,
                             const std::vector<char>& bytes, DType dtype, bool non_negative) {
  std::vector<float> values(std::min<size_t>(layout.total(), size_t(1) << 20));
  for (size_t begin = 0; begin < layout.total(); begin += values.size()) {
    const size_t n = std::min(values.size(), layout.total() - begin);
    convert_to_float(bytes.data() + begin * dtype_size(dtype), dtype, n, values.data());
    for (size_t i = 0; i < n; ++i) {
      if (std::isfinite(values[i]) && !(non_negative && values[i] < 0)) continue;
      const size_t at = begin + i;
      std::string where = "alignment padding";
      for (const TensorSpec& t : layout.tensors())
        if (at >= t.offset && at < t.offset + t.numel) where = fmt::format("{}[{}]", t.name, at - t.offset);
      fail("checkpoint {}: its {} {} at element {} ({}){}", reader.dir().string(), what, values[i], at, where,
           std::isfinite(values[i]) ? ", but Adam's second moment is never negative" : "");
    }
  }
}

// model.bin's tensors as a full flat buffer in `layout`. Training never
// saves NaN or Inf weights (Trainer::save refuses), so they come from
// outside: an error naming the tensor and element, before any use.
std::vector<char> read_finite_weights(CheckpointReader& reader, const Layout& layout, DType dtype) {
  std::vector<char> weights = read_layout_tensors(reader, "model.bin", layout, "", dtype);
  check_checkpoint_values(reader, "weights hold", layout, weights, dtype, false);
  return weights;
}

}  // namespace

// A full flat optimizer-state buffer, in `layout`, from a checkpoint written
// with any world size and ZeRO stage: stage 0 stores it per tensor, stages
// 1-3 as each rank's flat shard, re-assembled here through the saved plan.
std::vector<char> read_optimizer_state(CheckpointReader& reader, const std::string& name, DType dtype,
                                       const ModelConfig& model, const Layout& layout) {
  const SavedState saved = read_saved_state(reader);
  const int saved_world = saved.world_size, saved_stage = saved.zero_stage;
  // The plan is a pure function of the model's shape and the world size,
  // by which the shards are re-assembled below; a plan that differs means
  // the checkpoint was written by another rule, or changed.
  auto check_saved_plan = [&](const Layout& saved_layout) {
    if (saved.zero_plan != ZeroShardPlan(saved_layout, saved_world).to_json())
      fail("checkpoint {}: its manifest's state \"zero_plan\" is not the sharding plan of its model at world_size {}",
           reader.dir().string(), saved_world);
  };
  if (saved_stage == 0) {
    check_saved_plan(gpt2_param_layout(model, saved_world));
    return read_layout_tensors(reader, optim_file_name(0), layout, name + "/", dtype);
  }
  // One shard file per saving rank; checked before world_size sizes anything.
  const auto& files = reader.manifest().at("files");
  const auto shard_files = std::count_if(files.begin(), files.end(), [](const nlohmann::json& f) {
    return f.at("name").get_ref<const std::string&>().rfind("optim_rank", 0) == 0;
  });
  if (shard_files != saved_world)
    fail("checkpoint {}: its manifest says world_size {} at ZeRO stage {}, but lists {} optimizer shard files "
         "(optim_rank*.bin); a sharded checkpoint has one per rank",
         reader.dir().string(), saved_world, saved_stage, shard_files);
  const size_t es = dtype_size(dtype);
  const Layout saved_layout = gpt2_param_layout(model, saved_world);
  check_saved_plan(saved_layout);
  const ZeroShardPlan saved_plan(saved_layout, saved_world);
  std::vector<char> saved_full(saved_layout.total() * es, 0), shard(saved_plan.shard_size() * es);
  for (int q = 0; q < saved_world; ++q) {
    reader.read_tensor(optim_file_name(q), name, dtype, {int64_t(saved_plan.shard_size())}, shard.data(),
                       shard.size());
    for (size_t u = 0; u < saved_plan.units().size(); ++u) {
      const ZeroUnit& unit = saved_plan.unit(u);
      std::copy_n(shard.data() + unit.shard_offset * es, unit.chunk * es,
                  saved_full.data() + saved_plan.owned_begin(u, q) * es);
    }
  }
  std::vector<char> full(layout.total() * es, 0);
  for (const TensorSpec& t : layout.tensors())
    std::copy_n(saved_full.data() + saved_layout.at(t.name).offset * es, t.numel * es, full.data() + t.offset * es);
  return full;
}

namespace {

void check_same_model(const Config& ours, const Config& theirs, const fs::path& dir) {
  const ModelConfig &a = ours.model, &b = theirs.model;
  auto mismatch = [&](const char* key, long long want, long long got) {
    if (want != got)
      fail("checkpoint {} was trained with model.{} = {}, but the config has model.{} = {}; a checkpoint can only "
           "resume the same model shape",
           dir.string(), key, got, key, want);
  };
  mismatch("vocab_size", a.vocab_size, b.vocab_size);
  mismatch("max_seq_len", a.max_seq_len, b.max_seq_len);
  mismatch("n_layer", a.n_layer, b.n_layer);
  mismatch("n_head", a.n_head, b.n_head);
  mismatch("d_model", a.d_model, b.d_model);
}

// Shards that `srgpt prepare` wrote for another vocabulary than the model's
// train without error when their ids fit (byte tokens in a GPT-2 model):
// said at the start. Training does not need summary.json, so one that cannot
// be read is only a warning here.
void warn_of_other_vocabulary(const std::vector<std::string>& files, int vocab_size, const char* what) {
  std::optional<PreparedSplit> shards;
  try {
    shards = prepared_split(files);
  } catch (const Error& e) {
    spdlog::warn("{}: {}", what, e.what());
    return;
  }
  if (shards)
    if (const auto warning = vocabulary_mismatch(*shards, vocab_size, what, ShardUse::training))
      spdlog::warn("{}", *warning);
}

// Val shards that are also train shards (data.train = "data/*.bin" takes
// the val split too): the val loss would be measured on tokens trained on.
// A warning, since an overfitting check may want just that.
void warn_of_shared_shards(const TokenLoader& train, const TokenLoader& val) {
  std::set<FileIdentity> train_files;
  for (size_t i = 0; i < train.shard_count(); ++i)
    train_files.insert(file_identity(train.shard_path(i), "data.train"));
  std::vector<std::string> shared;
  for (size_t i = 0; i < val.shard_count(); ++i)
    if (train_files.count(file_identity(val.shard_path(i), "data.val"))) shared.push_back(val.shard_path(i));
  if (!shared.empty())
    spdlog::warn("data.val shares {} of its {} shards with data.train ({} is in both): the val loss is measured on "
                 "tokens the model trains on",
                 shared.size(), val.shard_count(), shared.front());
}

// One number for TokenLoader::shard_head_crc32, to compare across ranks.
double shards_head_crc32(const TokenLoader& loader) {
  const std::vector<uint32_t>& crcs = loader.shard_head_crc32();
  return double(crc32(crcs.data(), crcs.size() * sizeof(uint32_t)));
}

// The loader position a checkpoint saved counts sequences of its seq_len
// in shards of its data, shuffled by its seed: with any of them changed it
// would point at other tokens (some trained twice, others never) or past
// the data. The batch may be split differently (micro batch, ranks).
void check_same_data_order(const Config& ours, const SavedState& saved, const TokenLoader* loader,
                           const fs::path& dir) {
  const Config& theirs = saved.config;
  const char* why = "the data loader's saved position would point at other tokens";
  if (ours.train.seed != theirs.train.seed)
    fail("checkpoint {} was trained with train.seed = {}, but the config has {}; {} (the seed orders the data); "
         "resume with the same seed",
         dir.string(), theirs.train.seed, ours.train.seed, why);
  if (ours.batch.seq_len != theirs.batch.seq_len)
    fail("checkpoint {} was trained with batch.seq_len = {}, but the config has {}; {} (it counts sequences); "
         "resume with the same seq_len",
         dir.string(), theirs.batch.seq_len, ours.batch.seq_len, why);
  if (!loader) return;
  if (saved.train_shard_tokens && *saved.train_shard_tokens != loader->shard_tokens()) {
    auto describe = [](const std::vector<size_t>& tokens) {
      size_t total = 0;
      for (size_t n : tokens) total += n;
      return fmt::format("{} shards, {} tokens", tokens.size(), total);
    };
    const std::string trained_on = describe(*saved.train_shard_tokens), given = describe(loader->shard_tokens());
    fail("checkpoint {} was trained on data.train of {}, but '{}' holds {}{}; {}; resume with the same data (it "
         "may have moved)",
         dir.string(), trained_on, ours.data.train, given, trained_on == given ? " in shards of other sizes" : "",
         why);
  }
  // Shards of one size (all but the last of a prepared dataset) in another
  // selection or order pass the check above.
  if (!saved.train_shard_head_crc32) return;
  const std::vector<uint32_t>& theirs_crc = *saved.train_shard_head_crc32;
  const std::vector<uint32_t>& ours_crc = loader->shard_head_crc32();
  // As many as shard_tokens (read_saved_state), which matched ours above.
  for (size_t i = 0; i < ours_crc.size(); ++i)
    if (theirs_crc[i] != ours_crc[i])
      fail("checkpoint {} was trained on a data.train whose shard {} of {} began with other tokens than {} (which "
           "'{}' matches there): the shards have the same sizes but are not the same; {}; resume with the same "
           "shards in the same order (the pattern sorts them by name)",
           dir.string(), i + 1, theirs_crc.size(), loader->shard_path(i), ours.data.train, why);
}

// Keeps the metrics lines of steps <= last_step (a resumed run rewrites the
// steps after its checkpoint), but for a run resumed after its last step
// not the final evaluation at it, which the run writes again.
void truncate_metrics(const fs::path& path, int64_t last_step, bool run_complete) {
  if (!regular_file_exists(path, "the run's metrics file")) return;
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  int64_t malformed = 0, later = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) {
      ++malformed;
      continue;
    }
    const int64_t step = j["step"].get<int64_t>();
    if (step < last_step || (step == last_step && !(run_complete && j.contains("val_loss")))) kept += line + "\n";
    else ++later;
  }
  in.close();
  if (malformed > 0)
    spdlog::warn("{}: dropped {} line(s) that are not JSON objects with an integer \"step\" (srgpt writes none)",
                 path.string(), malformed);
  // A resume drops the steps after its checkpoint as a matter of course; a
  // fresh start drops the whole log of an earlier run that left no checkpoint.
  if (last_step == 0 && later > 0)
    spdlog::warn("{}: this run starts at step 0, so it replaces the {} line(s) an earlier run in this out_dir "
                 "logged (that run left no checkpoint)",
                 path.string(), later);
  // Through a symlink, the file it names is rewritten; the link stays.
  std::error_code ec;
  const fs::path target = fs::is_symlink(path, ec) ? fs::canonical(path, ec) : path;
  write_file_atomically(ec ? path : target, [&](const ByteSink& sink) { sink(kept.data(), kept.size()); });
}

// Written unbuffered, so that when the disk has room for only part of the
// line (an error naming the file) that part can be cut off again and stay
// off (a stream would write its buffer once more when closed): the file
// keeps whole JSON lines, which scripts/compare_runs.py requires.
void append_metrics(const fs::path& path, const nlohmann::json& j) {
  const std::string line = j.dump() + "\n";
  std::error_code ec;
  uintmax_t before = fs::file_size(path, ec);
  if (ec) before = 0;  // the first line creates the file
  PosixFile out(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  try {
    out.write_all(line.data(), line.size());
  } catch (const Error&) {
    fs::resize_file(path, before, ec);  // if this fails too, the write's error is still the one to report
    throw;
  }
  out.close();
}

}  // namespace

std::unique_ptr<Backend> make_backend(const Config& config, int local_rank) {
  const DType dtype = compute_dtype(config.precision);
  std::string no_gpu;
  const int gpus = cuda_device_count(&no_gpu);
  if (config.device == DeviceChoice::cuda) {
    if (gpus == 0)
      fail("device = \"cuda\" but no CUDA GPU is usable ({}); use device \"cpu\" or \"auto\"",
#ifdef SRGPT_HAVE_CUDA
           no_gpu.empty() ? "none visible" : no_gpu
#else
           "srgpt was built without the CUDA backend"
#endif
      );
    return make_cuda_backend(dtype, local_rank % gpus);
  }
  // auto falls back quietly (the run's first log line names the backend):
  // without a driver, the usual case on a machine with only the toolkit,
  // the runtime reports the same error as for a driver too old for it.
  if (config.device == DeviceChoice::auto_select && gpus > 0) return make_cuda_backend(dtype, local_rank % gpus);
  return make_cpu_backend(dtype);
}

std::unique_ptr<Communicator> make_communicator(Backend& backend, CommunicatorChoice choice) {
  if (choice == CommunicatorChoice::nccl && backend.memory_on_host())
    fail("dist.communicator = \"nccl\" needs the cuda backend, but this run uses {}; use \"auto\" or \"mpi\"",
         backend.name());
  if (!launched_under_mpi()) return make_single_process_communicator(backend);
  const bool nccl = choice == CommunicatorChoice::nccl ||
                    (choice == CommunicatorChoice::auto_select && !backend.memory_on_host());
  return nccl ? make_nccl_communicator(backend) : make_mpi_communicator(backend);
}

double EvalResult::perplexity() const { return std::exp(loss); }

int64_t evaluation_samples(const TokenLoader& data, int64_t max_tokens) {
  int64_t samples = 0;
  for (size_t i = 0; i < data.shard_count(); ++i) samples += data.shard_samples(i);
  return max_tokens > 0 ? std::min(samples, std::max<int64_t>(1, max_tokens / data.seq_len())) : samples;
}

EvalResult evaluate(GPT& model, const TokenLoader& data, int64_t max_tokens) {
  const int B = model.batch(), T = model.seq_len();
  if (data.seq_len() != T) fail("internal: evaluating a model of seq_len {} on samples of {}", T, data.seq_len());
  Communicator& comm = model.params().comm();
  // first_sample[i]: the number of samples in the shards before shard i.
  std::vector<int64_t> first_sample{0};
  for (size_t i = 0; i < data.shard_count(); ++i)
    first_sample.push_back(first_sample.back() + data.shard_samples(i));
  const int64_t samples = evaluation_samples(data, max_tokens);
  auto read = [&](int64_t sample, int32_t* inputs, int32_t* targets) {
    const size_t shard = size_t(std::upper_bound(first_sample.begin(), first_sample.end(), sample) -
                                first_sample.begin() - 1);
    data.read_sample(shard, sample - first_sample[shard], inputs, targets);
  };
  const int64_t per_global_batch = int64_t(B) * comm.size();
  const int64_t batches = (samples + per_global_batch - 1) / per_global_batch;
  std::vector<int32_t> in(size_t(B) * size_t(T)), tg(in.size());
  double sum = 0;
  // Every rank runs every batch (ZeRO stage 3 gathers weights in forward),
  // with rows past the last sample filled by sample 0 and not counted.
  for (int64_t i = 0; i < batches; ++i) {
    const int64_t first = i * per_global_batch + int64_t(comm.rank()) * B;
    const int rows = int(std::clamp<int64_t>(samples - first, 0, B));
    for (int b = 0; b < B; ++b)
      read(b < rows ? first + b : 0, in.data() + size_t(b) * size_t(T), tg.data() + size_t(b) * size_t(T));
    sum += model.loss_sum(in.data(), tg.data(), rows);
  }
  EvalResult r;
  r.tokens = samples * T;
  r.loss = comm.all_reduce_sum(sum) / double(r.tokens);
  return r;
}

Trainer::Trainer(Config config, TrainOptions options) : config_(std::move(config)), options_(std::move(options)) {
  const LaunchInfo launch = options_.single_process ? LaunchInfo{} : launch_info_from_environment();
  // Read in a one-process run too: a malformed value would otherwise show
  // only on the multi-rank launch.
  if (!options_.single_process) CommunicatorOptions::from_environment();
  config_.validate_for_world(launch.size);
  if (config_.data.train.empty() && !options_.without_data)
    fail("data.train is empty: set it to a glob pattern of token shards");
  // Found now rather than at the first checkpoint, after hours of training.
  if (launch.rank == 0)
    for (const auto& [dir, what] : {std::pair{fs::path(config_.out_dir), "output directory"},
                                    std::pair{checkpoint_root(config_), "checkpoint directory"}}) {
      std::error_code ec;
      start_dirs_.create(dir, ec);
      if (ec) fail("cannot create {} '{}' (out_dir): {}", what, dir.string(), ec.message());
      fs::path probe = dir / ".srgpt-write-test";
      std::ofstream f(probe);
      if (!f) fail("{} '{}' (out_dir) is not writable: {}", what, dir.string(), std::strerror(errno));
      f.close();
      fs::remove(probe, ec);
    }
  // Two runs in one out_dir would overwrite each other's checkpoints and
  // interleave their metrics. Rank 0 speaks for the job.
  if (launch.rank == 0) {
    const fs::path lock_file = fs::path(config_.out_dir) / ".srgpt-train.lock";
    out_dir_lock_ = std::make_unique<ExclusiveFileLock>(lock_file, fmt::format("out_dir '{}'", config_.out_dir),
                                                        "wait for that run to end, or use another out_dir");
    start_dirs_.own_file(lock_file);
  }

  backend_ = make_backend(config_, launch.local_rank);
  comm_ = options_.single_process ? make_single_process_communicator(*backend_) : make_communicator(*backend_, config_.dist.communicator);
  host_comm_ = comm_.get();
  // A device-memory communicator (NCCL, or MPI staged through the host)
  // cannot move host data, even with one rank.
  if (!backend_->memory_on_host() && !options_.single_process && launched_under_mpi()) {
    host_comm_owned_ = make_mpi_host_communicator();
    host_comm_ = host_comm_owned_.get();
  }
  const int rank = comm_->rank(), world = comm_->size();
  // Every rank must run the same config; a mismatch (say, different --set
  // values per rank) would silently train different models.
  const nlohmann::json config_json = config_to_json(config_);
  const std::string config_text = config_json.dump();
  const double config_hash = double(crc32(config_text.data(), config_text.size()));
  if (const auto [low, high] = range_over_ranks(*comm_, config_hash); low != high) {
    const std::string lead = broadcast_string(*host_comm_, config_text, 0);
    const std::string mine = config_difference(nlohmann::json::parse(lead), config_json, rank);
    // Every rank reports the lowest differing rank's difference, so the
    // message that reaches the user names the key whichever rank prints it.
    const int first = int(-comm_->all_reduce_max(mine.empty() ? -double(world) : -double(rank)));
    const std::string difference = first < world ? broadcast_string(*host_comm_, mine, first) : "";
    fail("the run config differs between ranks ({}); every rank must get the same --config file and --set values",
         difference.empty() ? "no key differs from rank 0's, yet the configs do" : difference);
  }
  if (world > 1) require_shared_out_dir(*comm_, *host_comm_, config_.out_dir);
  const auto& b = config_.batch;
  // The val loader only holds its shards' samples for evaluate, which
  // reads them one sequence at a time.
  auto loader_for = [&](const std::string& pattern, const char* what, bool train) {
    const std::vector<std::string> files = expand_shard_pattern(pattern, what);
    if (rank == 0 && !options_.quiet) warn_of_other_vocabulary(files, config_.model.vocab_size, what);
    auto loader = with_error_context(what, [&] {
      return std::make_unique<TokenLoader>(files, train ? b.micro_batch : 1, b.seq_len, train ? rank : 0,
                                           train ? world : 1, config_.model.vocab_size, train, config_.train.seed);
    });
    if (rank == 0 && !options_.quiet)
      if (const auto warning = loader->skipped_shards_warning(what)) spdlog::warn("{}", *warning);
    return loader;
  };
  if (!options_.without_data) {
    train_loader_ = loader_for(config_.data.train, "data.train", true);
    if (!config_.data.val.empty()) val_loader_ = loader_for(config_.data.val, "data.val", false);
    if (val_loader_ && rank == 0 && !options_.quiet) warn_of_shared_shards(*train_loader_, *val_loader_);
  }
  params_ = std::make_unique<ParameterStore>(*backend_, *comm_, gpt2_param_layout(config_.model, world),
                                             config_.dist.zero_stage, config_.dist.grad_dtype(config_.precision),
                                             config_.dist.overlap_comm);
  model_ = std::make_unique<GPT>(config_.model, *params_, b.micro_batch, b.seq_len,
                                 config_.train.activation_options());
  optimizer_ = std::make_unique<Optimizer>(*params_, config_.precision, config_.optimizer, config_.train.seed);
  inputs_.resize(size_t(b.micro_batch) * b.seq_len);
  targets_.resize(inputs_.size());

  fs::path resume_dir = options_.resume_from;
  if (resume_dir.empty() && options_.resume) {
    auto latest = latest_checkpoint(checkpoint_root(config_));
    if (latest) resume_dir = *latest;
    else if (!options_.quiet && rank == 0)
      spdlog::info("--resume: no checkpoint in {}, starting from scratch", checkpoint_root(config_).string());
  }
  std::optional<CheckpointReader> checkpoint;
  if (!resume_dir.empty()) checkpoint.emplace(resume_dir);
  const int64_t start_step = checkpoint ? checkpoint->step() : 0;
  const std::string shared = ", on a file system all ranks share";
  require_same_on_every_rank(
      *comm_,
      {{"the step to resume from (0: a fresh start)", double(start_step),
        "give every rank the same --resume or --resume-from, and keep the checkpoints" + shared},
       {"the checkpoint's weights (CRC-32 in its manifest; 0: a fresh start)",
        checkpoint ? double(saved_weights_crc32(*checkpoint)) : 0.0,
        "every rank must resume from the same checkpoint" + shared},
       {"--stop-after", double(options_.stop_after_step), "give every rank the same --stop-after"},
       {"the tokens in data.train", train_loader_ ? double(train_loader_->total_tokens()) : -1.0,
        "every rank must read the same token shards" + shared},
       {"the tokens in data.val", val_loader_ ? double(val_loader_->total_tokens()) : -1.0,
        "every rank must read the same token shards" + shared},
       {"the first tokens of data.train's shards (CRC-32)", train_loader_ ? shards_head_crc32(*train_loader_) : -1.0,
        "every rank must read the same token shards, in the same order" + shared},
       {"the first tokens of data.val's shards (CRC-32)", val_loader_ ? shards_head_crc32(*val_loader_) : -1.0,
        "every rank must read the same token shards, in the same order" + shared}});
  // Checkpoints in out_dir past the starting step are another run's (or
  // this run's future, if resuming from an earlier one): training on would
  // mix the two histories, and --resume would later pick the other one.
  const auto newest = rank == 0 ? latest_checkpoint_with_step(checkpoint_root(config_)) : std::nullopt;
  const double newest_step = comm_->all_reduce_max(newest ? double(newest->first) : -1.0);
  const std::string newest_dir = newest ? " (" + newest->second.string() + ")" : "";
  if (newest_step > double(start_step))
    fail("out_dir '{}' already holds checkpoints up to step {}{}, but this run starts at step {}: it would mix two "
         "runs' checkpoints. Continue the newest with --resume, or use another out_dir, or delete {}",
         config_.out_dir, int64_t(newest_step), newest_dir, start_step, checkpoint_root(config_).string());
  // A fresh start beside a step-0 checkpoint (srgpt import writes one)
  // would overwrite it with random weights, or rotate it away.
  if (!checkpoint && newest_step >= 0)
    fail("out_dir '{}' already holds a checkpoint at step {}{}, but this run starts from fresh weights: it would "
         "replace that checkpoint or rotate it away. Continue it with --resume, or use another out_dir, or delete {}",
         config_.out_dir, int64_t(newest_step), newest_dir, checkpoint_root(config_).string());
  if (start_step > config_.train.steps)
    fail("the checkpoint {} is at step {}, past train.steps = {}: nothing is left to train; raise train.steps to "
         "train on",
         resume_dir.string(), start_step, config_.train.steps);
  if (options_.stop_after_step > 0 && options_.stop_after_step <= start_step)
    fail("--stop-after {}: this run resumes after step {} ({}), so that step is done; give a later step",
         options_.stop_after_step, start_step, resume_dir.string());
  if (checkpoint) {
    load(*checkpoint);
  } else {
    optimizer_->set_weights(gpt2_initial_weights(config_.model, model_->layout(), config_.train.seed,
                                                 config_.train.init_std));
  }
  start_dirs_.keep();
}

Trainer::~Trainer() = default;

fs::path Trainer::save(int64_t step) {
  Communicator& comm = *host_comm_;
  const int rank = comm.rank();
  const Layout& layout = params_->layout();
  const size_t weight_elements = params_->weight_bytes() / dtype_size(backend_->dtype());
  // The optimizer's gathers of updated weights may still be on their way.
  params_->complete_collectives();
  const double nonfinite = backend_->all_finite(params_->weights(), weight_elements) ? 0.0 : 1.0;
  // Scalar collectives work on host values with any communicator.
  if (comm.all_reduce_max(nonfinite) > 0)
    fail("refusing to write a checkpoint at step {}: the weights contain NaN or Inf", step);
  const fs::path root = checkpoint_root(config_);

  // Rank 0 writes the model and, without sharding, the optimizer state per
  // tensor; with ZeRO every rank writes its flat optimizer shard.
  std::vector<char> weights = params_->full_weights_on_host();
  // Replicas must hold bit-identical weights (docs/distributed.md); check it
  // on every save, before anything is written, so a divergence is caught
  // with the last good checkpoint intact.
  const double weights_crc = crc32(weights.data(), weights.size());
  if (const auto [low, high] = range_over_ranks(comm, weights_crc); low != high)
    fail("refusing to write a checkpoint at step {}: the ranks' weights are not bit-identical (this rank's crc32 "
         "{:08x}); replicas have diverged, which is a bug in srgpt or a faulty device",
         step, uint32_t(weights_crc));
  std::vector<std::vector<char>> state_host;  // outlives `files`, which point into it
  std::vector<CheckpointFile> files;
  if (rank == 0) files.push_back({"model.bin", layout_tensors(layout, "", backend_->dtype(), weights)});
  const auto states = optimizer_->state_buffers();
  const bool sharded = config_.dist.zero_stage > 0;
  if (sharded || rank == 0) {
    CheckpointFile optim{optim_file_name(rank), {}};
    state_host = optimizer_->state_on_host();
    for (size_t i = 0; i < states.size(); ++i) {
      const StateBuffer& s = states[i];
      if (sharded)
        optim.tensors.push_back(
            {s.name, s.dtype, {int64_t(params_->state_elements())}, state_host[i].data(), state_host[i].size()});
      else
        for (auto& t : layout_tensors(layout, s.name + "/", s.dtype, state_host[i])) optim.tensors.push_back(t);
    }
    files.push_back(std::move(optim));
  }

  const fs::path staging = broadcast_string(comm, rank == 0 ? begin_checkpoint(root, step).string() : "", 0);
  // Rank 0 removes the staging directory if this save fails on it (another
  // rank's failure aborts the job; the next save removes what is left).
  RemovePathOnExit remove_staging(rank == 0 ? staging : fs::path());
  comm.barrier();
  nlohmann::json mine = nlohmann::json::array();
  for (const CheckpointFile& f : files) mine.push_back(write_checkpoint_file(staging, f));
  nlohmann::json file_table = nlohmann::json::array();
  for (int r = 0; r < comm.size(); ++r) {
    std::string records = broadcast_string(comm, r == rank ? mine.dump() : "", r);
    if (rank == 0)
      for (auto& rec : nlohmann::json::parse(records)) file_table.push_back(rec);
  }

  nlohmann::json state;
  state["config"] = config_to_json(config_);
  state["step"] = step;
  state["tokens_seen"] = tokens_seen_;
  state["skipped_steps"] = skipped_steps_;
  state["train_loader"] = to_json(train_loader_ ? train_loader_->position() : LoaderPosition{});
  // None for an imported model's checkpoint: its loader has not started.
  if (train_loader_) {
    state["train_shard_tokens"] = train_loader_->shard_tokens();
    state["train_shard_head_crc32"] = train_loader_->shard_head_crc32();
  }
  state["seed"] = config_.train.seed;
  state["precision"] = precision_name(config_.precision);
  state["world_size"] = comm.size();
  state["zero_stage"] = config_.dist.zero_stage;
  state["zero_plan"] = params_->plan().to_json();
  state["weights_crc32"] = uint32_t(weights_crc);  // the same on every rank, checked above
  // The checkpoint exists once rank 0's rename lands; the others learn its
  // path (or rank 0's failure aborts the job).
  const std::string final_dir =
      rank == 0 ? commit_checkpoint(root, step, staging, state, file_table, config_.checkpoint.keep).string() : "";
  remove_staging.release();
  return broadcast_string(comm, final_dir, 0);
}

void Trainer::load(CheckpointReader& reader) {
  const fs::path& dir = reader.dir();
  const SavedState saved = read_saved_state(reader);
  if (saved.config.precision != config_.precision)
    fail("checkpoint {} was trained with precision \"{}\", but the config has \"{}\"; resume with the same precision",
         dir.string(), precision_name(saved.config.precision), precision_name(config_.precision));
  check_same_model(config_, saved.config, dir);
  // At step 0 (an imported model's checkpoint) no token has been read: its
  // position is the start of any data in any order and batch.
  if (saved.step > 0) {
    check_same_data_order(config_, saved, train_loader_.get(), dir);
    if (saved.world_size != comm_->size() && config_.batch.total_tokens != saved.config.batch.total_tokens)
      fail("checkpoint {} used batch.total_tokens = {}; resuming on {} ranks needs the same global batch",
           dir.string(), saved.config.batch.total_tokens, comm_->size());
  }
  step_ = saved.step;
  tokens_seen_ = saved.tokens_seen;
  skipped_steps_ = saved.skipped_steps;
  // The loader position counts global batches, so it carries over to any
  // world size with the same global batch.
  if (train_loader_) train_loader_->seek(saved.train_loader);
  const Layout& layout = params_->layout();
  params_->load_full_weights(read_finite_weights(reader, layout, backend_->dtype()));
  for (const StateBuffer& s : optimizer_->state_buffers()) {
    std::vector<char> full = read_optimizer_state(reader, s.name, s.dtype, config_.model, layout);
    check_checkpoint_values(reader, "optimizer state \"" + s.name + "\" holds", layout, full, s.dtype, s.name == "v");
    const size_t es = dtype_size(s.dtype);
    std::vector<char> local(params_->state_elements() * es, 0);
    for (size_t u = 0; u < params_->plan().units().size(); ++u) {
      UnitUpdateView view = params_->update_view(u);
      std::copy_n(full.data() + view.begin * es, (view.end - view.begin) * es,
                  local.data() + (view.begin - view.offset) * es);
    }
    backend_->upload(s.data, local.data(), local.size());
  }
  if (!options_.quiet && comm_->rank() == 0) spdlog::info("resumed from {} at step {}", dir.string(), step_);
}

double Trainer::train_step(int64_t step, double* grad_norm) {
  const auto& b = config_.batch;
  const int world = comm_->size();
  const int accum = b.grad_accum(world);
  // The per-token gradient scale makes the sum over ranks the global mean.
  const float dloss = float(1.0 / (double(b.micro_batch) * b.seq_len * accum * world));
  params_->zero_grads();
  double loss = 0;
  for (int micro = 0; micro < accum; ++micro) {
    try {
      train_loader_->next_batch(inputs_.data(), targets_.data());
    } catch (const Error& e) {
      fail("step {}: reading data.train: {}", step, e.what());
    }
    params_->begin_micro_step(micro + 1 == accum);
    loss += model_->forward_backward(inputs_.data(), targets_.data(), dloss);
  }
  loss = comm_->all_reduce_sum(loss) / double(accum * world);
  params_->reduce_gradients();
  tokens_seen_ += b.total_tokens;
  const double norm = std::sqrt(params_->grad_norm_squared());
  *grad_norm = norm;
  if (!std::isfinite(loss) || !std::isfinite(norm)) {
    if (config_.train.on_nonfinite == NonFinitePolicy::stop) {
      // Before any update the learning rate cannot be the cause.
      const bool starting_weights = step - 1 == skipped_steps_;
      const std::string remedy =
          starting_weights
              ? fmt::format("No update has been applied to the starting weights yet, so the learning rate is not the "
                            "cause: they themselves overflow (train.init_std = {} for a fresh run, or the "
                            "checkpoint's weights)",
                            config_.train.init_std)
              : std::string("Lower optimizer.lr, or set train.on_nonfinite = \"skip\" to skip such steps");
      fail("step {}: non-finite {} (loss {}, grad norm {}); no update was applied and no checkpoint is written with "
           "these values. {}",
           step, std::isfinite(loss) ? "gradient norm" : "loss", loss, norm, remedy);
    }
    ++skipped_steps_;
    if (comm_->rank() == 0)
      spdlog::warn("step {}: non-finite loss or gradient norm (loss {}, grad norm {}); update skipped", step, loss,
                   norm);
    return loss;
  }
  optimizer_->step(step, learning_rate(config_.optimizer, step, config_.train.steps),
                   clip_scale(norm, config_.optimizer.grad_clip));
  return loss;
}

std::optional<double> Trainer::validate() {
  if (!val_loader_) return std::nullopt;
  return evaluate(*model_, *val_loader_, config_.train.eval_tokens).loss;
}

TrainResult Trainer::run() {
  if (!train_loader_) fail("internal: this trainer was built without data (TrainOptions::without_data)");
  StopSignalGuard signals;
  const bool lead = comm_->rank() == 0;
  const bool log = lead && !options_.quiet;
  const fs::path metrics = fs::path(config_.out_dir) / "metrics.jsonl";
  const int64_t steps = config_.train.steps;
  if (lead) truncate_metrics(metrics, step_, step_ == steps);
  const Layout& layout = model_->layout();
  const int accum = config_.batch.grad_accum(comm_->size());
  // The MFU denominator per rank; none on the cpu backend unless given.
  const double peak_flops =
      config_.train.mfu_peak_tflops > 0 ? config_.train.mfu_peak_tflops * 1e12 : backend_->tensor_peak_flops();
  if (log) {
    spdlog::info("model: {} parameters ({} layers, {} heads, d_model {}, vocab {} padded to {}), precision {}, backend {}",
                 layout.num_params(), config_.model.n_layer, config_.model.n_head, config_.model.d_model,
                 config_.model.vocab_size, config_.model.padded_vocab(), precision_name(config_.precision),
                 backend_->name());
    spdlog::info("ranks: {} ({}), ZeRO stage {}, gradients reduced in {}, communication {} computation",
                 comm_->size(), comm_->name(), config_.dist.zero_stage, dtype_name(params_->grad_dtype()),
                 config_.dist.overlap_comm ? "overlapping" : "between phases of");
    const size_t persistent = params_->weight_bytes() + params_->grad_bytes() + optimizer_->state_bytes();
    spdlog::info("memory per rank: weights {:.1f} MiB, gradients {:.1f} MiB, optimizer state {:.1f} MiB ({:.2f} bytes "
                 "per parameter), working buffers {:.1f} MiB, activations {:.1f} MiB (recompute {}, LayerNorm backward from "
                 "its {})",
                 mib(params_->weight_bytes()), mib(params_->grad_bytes()), mib(optimizer_->state_bytes()),
                 double(persistent) / double(layout.num_params()), mib(params_->working_bytes()),
                 mib(model_->activation_bytes()), recompute_name(config_.train.recompute),
                 layernorm_backward_from_name(config_.train.layernorm_backward_from));
    spdlog::info("batch: {} tokens/step = micro batch {} x seq {} x grad accum {} x ranks {}; communication {:.1f} MiB "
                 "per step per rank",
                 config_.batch.total_tokens, config_.batch.micro_batch, config_.batch.seq_len, accum, comm_->size(),
                 mib(params_->comm_bytes_per_step(accum)));
    if (peak_flops > 0)
      spdlog::info("MFU: of {:.4g} TFLOP/s per rank ({})", peak_flops / 1e12,
                   config_.train.mfu_peak_tflops > 0 ? "train.mfu_peak_tflops"
                                                     : "this GPU's dense bf16 tensor-core rate at its highest clock");
    else if (!backend_->memory_on_host())
      spdlog::info("MFU: not logged, srgpt does not know this GPU's tensor-core rate; set train.mfu_peak_tflops");
  }
  if (log && step_ == steps)
    spdlog::info("the run is complete: step {} is train.steps; nothing to train, evaluating only", steps);
  TrainResult result;
  result.first_step = step_ + 1;
  const auto start = std::chrono::steady_clock::now();
  while (step_ < steps) {
    const int64_t step = step_ + 1;
    const auto t0 = std::chrono::steady_clock::now();
    double norm = 0;
    const double loss = train_step(step, &norm);
    backend_->synchronize();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    step_ = step;
    result.losses.push_back(loss);
    if (options_.on_step) options_.on_step(step);
    const double lr = learning_rate(config_.optimizer, step, steps);
    const double tps = double(config_.batch.total_tokens) / dt;
    const size_t peak = backend_->peak_allocated_bytes();
    nlohmann::json line{{"step", step},          {"loss", loss},        {"lr", lr},
                        {"grad_norm", norm},     {"tokens_per_s", tps}, {"step_s", dt},
                        {"elapsed_s", elapsed},  {"tokens", tokens_seen_}, {"peak_memory_bytes", peak},
                        {"skipped_steps", skipped_steps_}};
    std::string mfu_text;
    if (peak_flops > 0) {
      const double mfu = tps * training_flops_per_token(config_.model, layout.num_params(), config_.batch.seq_len) /
                         (peak_flops * comm_->size());
      line["mfu"] = mfu;
      mfu_text = fmt::format(" | MFU {:.1f}%", 100 * mfu);
    }
    if (lead) append_metrics(metrics, line);
    if (log && (step % config_.train.log_every == 0 || step == steps))
      spdlog::info("step {:>6}/{} | loss {:.4f} | lr {:.3e} | grad norm {:.4f} | {:.0f} tok/s{} | peak mem {:.0f} MiB | "
                   "{:.1f} s",
                   step, steps, loss, lr, norm, tps, mfu_text, mib(peak), elapsed);
    if (config_.train.eval_every > 0 && step % config_.train.eval_every == 0 && step < steps) {
      if (auto v = validate()) {
        if (lead) append_metrics(metrics, {{"step", step}, {"val_loss", *v}, {"val_perplexity", std::exp(*v)}});
        if (log) spdlog::info("step {:>6} | val loss {:.4f} | val perplexity {:.3f}", step, *v, std::exp(*v));
      }
    }
    // Every rank must agree on stopping: a signal may reach only some.
    const int sig = int(comm_->all_reduce_max(double(g_stop_signal.load())));
    const bool stop_here = options_.stop_after_step > 0 && step >= options_.stop_after_step;
    if ((config_.checkpoint.every > 0 && step % config_.checkpoint.every == 0) || step == steps || sig || stop_here) {
      fs::path dir = save(step);
      if (log)
        spdlog::info("checkpoint: {}{}", dir.string(),
                     comm_->size() > 1 ? fmt::format(" (weights bit-identical on all {} ranks)", comm_->size()) : "");
    }
    if (sig) {
      if (lead)
        spdlog::warn("received {}: stopped after step {}, checkpoint written; continue with --resume",
                     sig == SIGTERM ? "SIGTERM" : "SIGINT", step);
      result.interrupted = true;
      break;
    }
    if (stop_here) {
      if (log) spdlog::info("stopped after step {} as requested; continue with --resume", step);
      result.interrupted = true;
      break;
    }
  }
  result.last_step = step_;
  result.skipped_steps = skipped_steps_;
  if (!result.interrupted) {
    result.val_loss = validate();
    if (result.val_loss && lead) {
      append_metrics(metrics, {{"step", step_}, {"val_loss", *result.val_loss},
                               {"val_perplexity", std::exp(*result.val_loss)}});
      if (log) spdlog::info("final | val loss {:.4f} | val perplexity {:.3f}", *result.val_loss,
                            std::exp(*result.val_loss));
    }
  }
  return result;
}

LoadedModel load_model_for_inference(const fs::path& checkpoint_dir, int batch, int seq_len) {
  CheckpointReader reader(checkpoint_dir);
  return load_model_for_inference(reader, batch, seq_len);
}

Config checkpoint_config(const CheckpointReader& reader) { return read_saved_state(reader).config; }

int inference_seq_len(const Config& config, int seq_len) {
  if (seq_len <= 0) return config.batch.seq_len;
  if (seq_len > config.model.max_seq_len)
    fail("sequence length {} exceeds the checkpoint's model.max_seq_len {}", seq_len, config.model.max_seq_len);
  return seq_len;
}

LoadedModel load_model_for_inference(CheckpointReader& reader, int batch, int seq_len) {
  LoadedModel lm;
  const SavedState saved = read_saved_state(reader);
  lm.config = saved.config;
  lm.step = saved.step;
  seq_len = inference_seq_len(lm.config, seq_len);
  if (batch <= 0) batch = lm.config.batch.micro_batch;
  // model.bin must hold the model the state's config describes before that
  // model is allocated: its tensors lie inside the file, so a damaged
  // config (d_model 32 -> 4096) fails here instead of sizing gigabytes.
  const Layout layout = gpt2_param_layout(lm.config.model, 1);
  for (const TensorSpec& t : layout.tensors())
    reader.check_tensor("model.bin", t.name, compute_dtype(lm.config.precision), t.shape);
  // Inference runs wherever it can: a checkpoint trained on a GPU can be
  // evaluated, sampled or exported on a machine without one.
  Config run = lm.config;
  run.device = DeviceChoice::auto_select;
  lm.backend = make_backend(run);
  lm.comm = make_single_process_communicator(*lm.backend);
  lm.params = std::make_unique<ParameterStore>(*lm.backend, *lm.comm, layout, 0);
  // Forward only: one layer's activations. The training run's LM-head
  // chunking bounds the logits memory here too.
  ActivationOptions activations;
  activations.lm_head_chunks = int(std::min<int64_t>(lm.config.train.lm_head_chunks, int64_t(batch) * seq_len));
  activations.for_backward = false;
  lm.model = std::make_unique<GPT>(lm.config.model, *lm.params, batch, seq_len, activations);
  lm.params->load_full_weights(read_finite_weights(reader, layout, lm.backend->dtype()));
  return lm;
}

std::vector<float> trained_weights_as_float(CheckpointReader& reader, LoadedModel& lm) {
  if (!has_master_weights(lm.config.precision)) return weights_as_float(*lm.params);
  const Layout& layout = lm.params->layout();
  const std::vector<char> master = read_optimizer_state(reader, "master", DType::f32, lm.config.model, layout);
  check_checkpoint_values(reader, "optimizer state \"master\" holds", layout, master, DType::f32, false);
  std::vector<float> weights(layout.total());
  std::memcpy(weights.data(), master.data(), weights.size() * sizeof(float));
  return weights;
}

void check_checkpoint_loads(CheckpointReader& reader) {
  const LoadedModel lm = load_model_for_inference(reader, 1, 1);
  const Layout& layout = lm.params->layout();
  for (const StateBuffer& s : optimizer_state_kinds(lm.config.precision))
    check_checkpoint_values(reader, "optimizer state \"" + s.name + "\" holds", layout,
                            read_optimizer_state(reader, s.name, s.dtype, lm.config.model, layout), s.dtype,
                            s.name == "v");
}

}  // namespace srgpt
