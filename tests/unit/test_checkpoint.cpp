#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "srgpt/checkpoint.h"
#include "srgpt/error.h"
#include "srgpt/posix_file.h"
#include "test_util.h"

namespace fs = std::filesystem;
using srgpt::CheckpointFile;
using srgpt::CheckpointReader;
using srgpt::DType;
using srgpt_test::contains;
using srgpt_test::error_message;
using srgpt_test::TempDir;

namespace {

// Tensors with random contents, owned here, described as checkpoint files.
struct TensorSpec {
  std::string file, name;
  DType dtype;
  std::vector<int64_t> shape;
};

struct Payload {
  std::vector<TensorSpec> specs;
  std::vector<std::vector<unsigned char>> data;

  Payload(std::vector<TensorSpec> s, uint64_t seed) : specs(std::move(s)) {
    std::mt19937_64 rng(seed);
    for (const TensorSpec& t : specs) {
      size_t n = srgpt::dtype_size(t.dtype);
      for (int64_t d : t.shape) n *= size_t(d);
      std::vector<unsigned char> bytes(n);
      for (unsigned char& b : bytes) b = static_cast<unsigned char>(rng());
      data.push_back(std::move(bytes));
    }
  }

  std::vector<CheckpointFile> files() const {
    std::vector<CheckpointFile> out;
    for (size_t i = 0; i < specs.size(); ++i) {
      auto it = std::find_if(out.begin(), out.end(), [&](const CheckpointFile& f) { return f.filename == specs[i].file; });
      if (it == out.end()) {
        out.push_back({specs[i].file, {}});
        it = out.end() - 1;
      }
      it->tensors.push_back({specs[i].name, specs[i].dtype, specs[i].shape, data[i].data(), data[i].size()});
    }
    return out;
  }

  // Reads every tensor back and checks it bit for bit.
  void check_reads_back(CheckpointReader& reader) const {
    for (size_t i = 0; i < specs.size(); ++i) {
      const TensorSpec& t = specs[i];
      REQUIRE(reader.has_tensor(t.file, t.name));
      std::vector<unsigned char> got(data[i].size(), 0xAB);
      reader.read_tensor(t.file, t.name, t.dtype, t.shape, got.data(), got.size());
      CHECK(got == data[i]);
    }
  }
};

Payload sample_payload(uint64_t seed) {
  return Payload({{"model.bin", "wte", DType::bf16, {256, 64}},
                  {"model.bin", "ln_f.weight", DType::f32, {64}},
                  {"model.bin", "probe", DType::f64, {3, 5}},
                  {"optim_rank00000.bin", "m", DType::bf16, {1000}},
                  {"optim_rank00000.bin", "v", DType::bf16, {1000}},
                  {"optim_rank00001.bin", "m", DType::bf16, {7}}},
                 seed);
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::trunc);
  out << text;
}

std::vector<std::string> dir_names(const fs::path& root) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(root)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Runs `child` in a forked process and returns its exit status (or -signal).
int run_in_child(const std::function<int()>& child) {
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int code = 99;
    try {
      code = child();
    } catch (...) {
      code = 98;
    }
    _exit(code);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

}  // namespace

TEST_CASE("StartDirectories undoes only what it made, and only while empty", "[checkpoint]") {
  namespace fs = std::filesystem;
  TempDir tmp("start-dirs");
  const fs::path made = tmp.path() / "a" / "b" / "c";
  std::ofstream(tmp.path() / "lock") << "pid";  // in a directory that existed: stays
  {
    srgpt::StartDirectories dirs;
    std::error_code ec;
    dirs.create(made.string() + "/", ec);
    REQUIRE_FALSE(ec);
    REQUIRE(fs::is_directory(made));
    std::ofstream(made / "lock") << "pid";
    dirs.own_file(made / "lock");
    dirs.own_file(tmp.path() / "lock");
  }
  CHECK_FALSE(fs::exists(tmp.path() / "a"));
  CHECK(fs::exists(tmp.path() / "lock"));
  {
    srgpt::StartDirectories dirs;
    std::error_code ec;
    dirs.create(made, ec);
    REQUIRE_FALSE(ec);
    std::ofstream(tmp.path() / "a" / "someone-elses") << "x";  // put there meanwhile
  }
  CHECK_FALSE(fs::exists(tmp.path() / "a" / "b"));
  CHECK(fs::exists(tmp.path() / "a" / "someone-elses"));
  {
    srgpt::StartDirectories dirs;
    std::error_code ec;
    dirs.create(made, ec);
    REQUIRE_FALSE(ec);
    dirs.keep();
  }
  CHECK(fs::is_directory(made));
  {
    // A path through a file cannot be made, and nothing is undone for it.
    srgpt::StartDirectories dirs;
    std::error_code ec;
    dirs.create(tmp.path() / "a" / "someone-elses" / "d", ec);
    CHECK(ec);
  }
  CHECK(fs::exists(tmp.path() / "a" / "someone-elses"));
}

TEST_CASE("crc32 is the IEEE CRC-32 and can be computed in pieces", "[checkpoint]") {
  const char* check = "123456789";
  CHECK(srgpt::crc32(check, 9) == 0xCBF43926u);
  CHECK(srgpt::crc32(check, 0) == 0u);

  std::mt19937_64 rng(7);
  std::vector<unsigned char> bytes(10007);
  for (unsigned char& b : bytes) b = static_cast<unsigned char>(rng());
  uint32_t whole = srgpt::crc32(bytes.data(), bytes.size());
  for (size_t split : {size_t(1), size_t(100), size_t(5000), size_t(10006)})
    CHECK(srgpt::crc32(bytes.data() + split, bytes.size() - split, srgpt::crc32(bytes.data(), split)) == whole);
  bytes[1234] ^= 0x10;
  CHECK(srgpt::crc32(bytes.data(), bytes.size()) != whole);
}

TEST_CASE("checkpoints round-trip tensors in several files bit-exactly", "[checkpoint]") {
  TempDir tmp("ckpt-roundtrip");
  const fs::path root = tmp.path() / "ckpts";  // created by save_checkpoint
  Payload payload = sample_payload(1);
  nlohmann::json state = {{"tokens_seen", 123456}, {"loader", {{"epoch", 1}, {"shard", 2}, {"sample", 3}}}};

  fs::path dir = srgpt::save_checkpoint(root, 42, state, payload.files(), 0);
  CHECK(dir == root / "step_00000042");
  CHECK(dir_names(root) == std::vector<std::string>{"step_00000042"});
  CHECK(dir_names(dir) ==
        std::vector<std::string>{"manifest.json", "model.bin", "optim_rank00000.bin", "optim_rank00001.bin"});

  CheckpointReader reader(dir);
  CHECK(reader.step() == 42);
  CHECK(reader.state() == state);
  CHECK(reader.manifest().at("format") == "srgpt-checkpoint");
  CHECK(reader.manifest().at("format_version") == 1);
  CHECK(fs::file_size(dir / "model.bin") == 256 * 64 * 2 + 64 * 4 + 15 * 8);
  CHECK_FALSE(reader.has_tensor("model.bin", "nope"));
  CHECK_FALSE(reader.has_tensor("nope.bin", "wte"));
  payload.check_reads_back(reader);
  // Reading again (checksums already verified) gives the same bytes.
  payload.check_reads_back(reader);
}

TEST_CASE("latest_checkpoint picks the newest complete checkpoint", "[checkpoint]") {
  TempDir tmp("ckpt-latest");
  const fs::path root = tmp.path() / "ckpts";
  CHECK_FALSE(srgpt::latest_checkpoint(root).has_value());
  fs::create_directories(root);
  CHECK_FALSE(srgpt::latest_checkpoint(root).has_value());

  Payload payload = sample_payload(2);
  for (int64_t step : {10, 300, 20}) srgpt::save_checkpoint(root, step, {{"s", step}}, payload.files(), 0);
  CHECK(srgpt::latest_checkpoint(root) == root / "step_00000300");

  // Newer directories that are not complete checkpoints are ignored.
  fs::create_directories(root / "step_00000400");
  fs::create_directories(root / "step_00000500.tmp-12345");
  fs::copy_file(root / "step_00000300" / "manifest.json", root / "step_00000500.tmp-12345" / "manifest.json");
  CHECK(srgpt::latest_checkpoint(root) == root / "step_00000300");
  CHECK(contains(error_message([&] { CheckpointReader r(root / "step_00000400"); }), "not a complete checkpoint"));

  // A manifest that is there but cannot be read is no interrupted save:
  // passing over it would resume from step 300 and overwrite step 600.
  fs::create_directories(root / "step_00000600" / "manifest.json");
  CHECK(contains(error_message([&] { srgpt::latest_checkpoint(root); }),
                 "step_00000600/manifest.json is not a regular file; srgpt will not pass over this checkpoint"));
  fs::remove(root / "step_00000600" / "manifest.json");
  fs::create_symlink("manifest.json", root / "step_00000600" / "manifest.json");  // a loop: ELOOP
  CHECK(contains(error_message([&] { srgpt::latest_checkpoint(root); }),
                 "step_00000600/manifest.json cannot be read: Too many levels of symbolic links"));
  CHECK(contains(error_message([&] { CheckpointReader r(root / "step_00000600"); }), "cannot be read"));
  fs::remove_all(root / "step_00000600");

  // A step directory holds the step it is named after; another name may
  // hold any.
  fs::copy(root / "step_00000300", root / "step_00000700");
  CHECK(srgpt::latest_checkpoint(root) == root / "step_00000700");
  CHECK(contains(error_message([&] { CheckpointReader r(root / "step_00000700"); }),
                 "the directory's name says step 700 but its manifest.json says step 300"));
  fs::rename(root / "step_00000700", tmp.path() / "best");
  CHECK(CheckpointReader(tmp.path() / "best").step() == 300);

  // A step number too long to parse is not passed over either.
  fs::copy(root / "step_00000300", root / "step_9999999999999999999");
  CHECK(contains(error_message([&] { srgpt::latest_checkpoint(root); }),
                 "step_9999999999999999999: a step number of 19 digits, more than srgpt writes (18); srgpt will not "
                 "pass over it"));
}

TEST_CASE("save_checkpoint keeps the newest `keep` checkpoints and replaces a re-saved step", "[checkpoint]") {
  TempDir tmp("ckpt-keep");
  const fs::path root = tmp.path();
  Payload payload = sample_payload(3);
  for (int64_t step = 1; step <= 5; ++step) srgpt::save_checkpoint(root, step * 100, {{"s", step}}, payload.files(), 2);
  CHECK(dir_names(root) == std::vector<std::string>{"step_00000400", "step_00000500"});

  Payload replacement = sample_payload(4);
  srgpt::save_checkpoint(root, 500, {{"s", "again"}}, replacement.files(), 2);
  CHECK(dir_names(root) == std::vector<std::string>{"step_00000400", "step_00000500"});
  CheckpointReader reader(root / "step_00000500");
  CHECK(reader.state() == nlohmann::json{{"s", "again"}});
  replacement.check_reads_back(reader);

  // keep <= 0 keeps everything.
  srgpt::save_checkpoint(root, 600, {}, payload.files(), 0);
  CHECK(dir_names(root).size() == 3);

  // A dangling symlink or a file at a step's name is replaced too (on the
  // symlink, rename(2) failed after the step's training was done).
  fs::create_symlink(root / "nowhere", root / "step_00000700");
  std::ofstream(root / "step_00000800") << "stray";
  for (const int64_t step : {700, 800}) {
    srgpt::save_checkpoint(root, step, {{"s", step}}, payload.files(), 0);
    CHECK(CheckpointReader(root / ("step_00000" + std::to_string(step))).state() == nlohmann::json{{"s", step}});
  }
  CHECK(dir_names(root).size() == 5);
}

TEST_CASE("CheckpointReader names the file and problem of a damaged checkpoint", "[checkpoint]") {
  TempDir tmp("ckpt-damage");
  const fs::path root = tmp.path();
  Payload payload = sample_payload(5);
  const fs::path dir = srgpt::save_checkpoint(root, 7, {{"k", 1}}, payload.files(), 0);
  const fs::path manifest = dir / "manifest.json";
  const nlohmann::json good = read_json(manifest);
  auto open_error = [&] { return error_message([&] { CheckpointReader r(dir); }); };
  auto read_error = [&](const std::string& file, const std::string& name, DType dtype,
                        const std::vector<int64_t>& shape, size_t bytes) {
    return error_message([&] {
      CheckpointReader r(dir);
      std::vector<unsigned char> buf(bytes);
      r.read_tensor(file, name, dtype, shape, buf.data(), bytes);
    });
  };
  const size_t wte_bytes = 256 * 64 * 2;

  SECTION("directory missing") {
    std::string e = error_message([&] { CheckpointReader r(root / "step_00000099"); });
    CHECK(contains(e, "step_00000099"));
    CHECK(contains(e, "does not exist"));
  }
  SECTION("manifest missing") {
    fs::remove(manifest);
    std::string e = open_error();
    CHECK(contains(e, dir.string()));
    CHECK(contains(e, "not a complete checkpoint"));
  }
  SECTION("manifest is not JSON") {
    std::string text = good.dump();
    write_text(manifest, text.substr(0, text.size() / 2));
    std::string e = open_error();
    CHECK(contains(e, manifest.string()));
    CHECK(contains(e, "not valid JSON"));
  }
  SECTION("a key twice in the manifest, or a CRC that is no CRC-32") {
    const std::string text = good.dump();
    write_text(manifest, "{\"format_version\": 99, " + text.substr(1));
    CHECK(contains(open_error(), manifest.string() + ": duplicate key 'format_version'"));
    for (const int64_t crc : {int64_t(-1), int64_t(1) << 32}) {
      nlohmann::json m = good;
      m["files"][0]["crc32"] = crc;
      write_text(manifest, m.dump());
      CHECK(contains(open_error(), "\"crc32\" must be a CRC-32, an integer in [0, 2^32), got " + std::to_string(crc)));
    }
  }
  SECTION("wrong format") {
    nlohmann::json m = good;
    m["format"] = "llm.c-checkpoint";
    write_text(manifest, m.dump());
    std::string e = open_error();
    CHECK(contains(e, "\"llm.c-checkpoint\""));
    CHECK(contains(e, "expected \"srgpt-checkpoint\""));
  }
  SECTION("unsupported format version") {
    nlohmann::json m = good;
    m["format_version"] = 2;
    write_text(manifest, m.dump());
    std::string e = open_error();
    CHECK(contains(e, "unsupported format_version 2"));
    CHECK(contains(e, "reads version 1"));
  }
  SECTION("manifest field missing") {
    nlohmann::json m = good;
    m["files"][0]["tensors"][1].erase("offset");
    write_text(manifest, m.dump());
    std::string e = open_error();
    CHECK(contains(e, manifest.string()));
    CHECK(contains(e, "tensor ln_f.weight has no \"offset\""));
  }
  SECTION("a file listed twice") {
    nlohmann::json m = good;
    m["files"].push_back(m["files"][0]);
    write_text(manifest, m.dump());
    CHECK(contains(open_error(), "file \"model.bin\" is listed twice"));
  }
  SECTION("a tensor listed twice") {
    nlohmann::json m = good;
    m["files"][0]["tensors"].push_back(m["files"][0]["tensors"][1]);
    write_text(manifest, m.dump());
    CHECK(contains(open_error(), "lists tensor \"ln_f.weight\" twice"));
  }
  SECTION("tensors that overlap") {
    // ln_f.weight moved onto wte's bytes: it would load wte's values.
    nlohmann::json m = good;
    m["files"][0]["tensors"][1]["offset"] = 64;
    write_text(manifest, m.dump());
    CHECK(contains(open_error(), "file model.bin has tensors that overlap"));
  }
  SECTION("a step beyond int64") {
    nlohmann::json m = good;
    m["step"] = uint64_t(1) << 63;
    write_text(manifest, m.dump());
    CHECK(contains(open_error(), "\"step\" must be an integer in [0, 2^63)"));
  }
  SECTION("a shape whose size overflows") {
    // 2^32 x 2^32 x 8192 elements wrap to 0 bytes in 64-bit arithmetic.
    nlohmann::json m = good;
    m["files"][0]["tensors"][1]["shape"] = {int64_t(1) << 32, int64_t(1) << 32, 8192};
    m["files"][0]["tensors"][1]["bytes"] = 0;
    write_text(manifest, m.dump());
    CHECK(contains(open_error(), "does not match its shape and dtype"));
  }
  SECTION("listed file missing") {
    fs::remove(dir / "optim_rank00001.bin");
    std::string e = open_error();
    CHECK(contains(e, (dir / "optim_rank00001.bin").string()));
    CHECK(contains(e, "missing"));
  }
  SECTION("truncated file") {
    fs::resize_file(dir / "optim_rank00000.bin", 1999);
    std::string e = open_error();
    CHECK(contains(e, (dir / "optim_rank00000.bin").string()));
    CHECK(contains(e, "has 1999 bytes but manifest.json says 4000 (truncated)"));
  }
  SECTION("file with extra bytes") {
    std::ofstream(dir / "optim_rank00000.bin", std::ios::app | std::ios::binary) << "xx";
    CHECK(contains(open_error(), "2 extra bytes"));
  }
  SECTION("flipped byte") {
    {
      std::fstream f(dir / "model.bin", std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(wte_bytes + 17);
      char c;
      f.get(c);
      f.seekp(wte_bytes + 17);
      f.put(char(c ^ 0x04));
    }
    // The checksum covers the whole file, so reading any of its tensors fails.
    std::string e = read_error("model.bin", "wte", DType::bf16, {256, 64}, wte_bytes);
    CHECK(contains(e, (dir / "model.bin").string()));
    CHECK(contains(e, "corrupt"));
    // Other files are intact.
    CHECK(read_error("optim_rank00001.bin", "m", DType::bf16, {7}, 14).empty());
  }
  SECTION("tensor not found") {
    std::string e = read_error("model.bin", "wpe", DType::bf16, {256, 64}, wte_bytes);
    CHECK(contains(e, "no tensor wpe in model.bin"));
    CHECK(contains(read_error("extra.bin", "wte", DType::bf16, {256, 64}, wte_bytes), "no file extra.bin"));
  }
  SECTION("shape mismatch") {
    CHECK(read_error("model.bin", "wte", DType::bf16, {256, 128}, wte_bytes * 2) ==
          "model.bin: tensor wte has shape [256,64] in the checkpoint but the model expects [256,128]");
  }
  SECTION("dtype mismatch") {
    CHECK(read_error("model.bin", "wte", DType::f32, {256, 64}, wte_bytes * 2) ==
          "model.bin: tensor wte has dtype bf16 in the checkpoint but the model expects f32");
  }
}

TEST_CASE("a save killed midway leaves the previous checkpoint loadable", "[checkpoint]") {
  TempDir tmp("ckpt-fault");
  const fs::path root = tmp.path();
  Payload old_payload = sample_payload(6);
  const fs::path previous = srgpt::save_checkpoint(root, 100, {{"s", 100}}, old_payload.files(), 1);

  Payload new_payload = sample_payload(7);
  int status = run_in_child([&] {
    setenv("SRGPT_FAULT_ABORT_IN_SAVE", "1", 1);
    srgpt::save_checkpoint(root, 200, {{"s", 200}}, new_payload.files(), 1);
    return 0;  // not reached when the hook works
  });
  CHECK(status == 86);

  // The dead writer left its scratch directory behind, with one data file.
  std::vector<std::string> names = dir_names(root);
  REQUIRE(names.size() == 2);
  CHECK(names[0] == "step_00000100");
  CHECK(names[1].rfind("step_00000200.tmp-", 0) == 0);
  CHECK(dir_names(root / names[1]) == std::vector<std::string>{"model.bin"});

  CHECK(srgpt::latest_checkpoint(root) == previous);
  CheckpointReader reader(previous);
  CHECK(reader.step() == 100);
  old_payload.check_reads_back(reader);

  // The next save clears the abandoned directory and one bearing its own pid
  // (a leftover from an earlier process with the same pid), but not one of
  // a live process.
  const std::string live = "step_00000300.tmp-" + std::to_string(getppid());
  fs::create_directories(root / ("step_00000300.tmp-" + std::to_string(getpid())));
  fs::create_directories(root / live);
  srgpt::save_checkpoint(root, 200, {{"s", 200}}, new_payload.files(), 1);
  CHECK(dir_names(root) == std::vector<std::string>{"step_00000200", live});

  // A writer killed mid-save stays a zombie until its parent reaps it (in a
  // container without an init, maybe never): its directory goes too.
  const pid_t zombie = fork();
  REQUIRE(zombie >= 0);
  if (zombie == 0) _exit(0);
  for (int i = 0; i < 500 && srgpt_test::process_state(zombie) != 'Z'; ++i) usleep(10000);
  REQUIRE(srgpt_test::process_state(zombie) == 'Z');
  fs::create_directories(root / ("step_00000400.tmp-" + std::to_string(zombie)));
  srgpt::save_checkpoint(root, 200, {{"s", 200}}, new_payload.files(), 1);
  CHECK(dir_names(root) == std::vector<std::string>{"step_00000200", live});
  int status_of_zombie = 0;
  waitpid(zombie, &status_of_zombie, 0);
}

TEST_CASE("an atomic file write removes the temporaries of killed writers, not of live ones", "[checkpoint]") {
  TempDir tmp("atomic-leftovers");
  const fs::path target = tmp.path() / "model.safetensors";
  // A writer that died (a Ctrl-C mid-export left its temporary behind), a
  // live one (this process's parent), and names that are not temporaries.
  const pid_t dead = fork();
  REQUIRE(dead >= 0);
  if (dead == 0) _exit(0);
  int status = 0;
  REQUIRE(waitpid(dead, &status, 0) == dead);
  const std::vector<std::string> kept = {"model.safetensors.tmp-" + std::to_string(getppid()),
                                         "model.safetensors.tmp-12x", "config.json.tmp-" + std::to_string(dead)};
  for (const std::string& name : kept) std::ofstream(tmp.path() / name) << "x";
  std::ofstream(tmp.path() / ("model.safetensors.tmp-" + std::to_string(dead))) << "an abandoned partial file";
  srgpt::write_file_atomically(target, [](const srgpt::ByteSink& sink) { sink("new", 3); });
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(tmp.path())) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  std::vector<std::string> expected = kept;
  expected.push_back("model.safetensors");
  std::sort(expected.begin(), expected.end());
  CHECK(names == expected);
}

TEST_CASE("a failed write removes the partial checkpoint and reports path and errno", "[checkpoint]") {
  TempDir tmp("ckpt-full");
  const fs::path root = tmp.path();
  Payload payload = sample_payload(8);
  const fs::path previous = srgpt::save_checkpoint(root, 1, {}, payload.files(), 0);

  // A file size limit makes write() fail with EFBIG, as a full disk fails with ENOSPC.
  int status = run_in_child([&] {
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit limit = {8192, 8192};
    if (setrlimit(RLIMIT_FSIZE, &limit) != 0) return 10;
    std::string e = error_message([&] { srgpt::save_checkpoint(root, 2, {}, payload.files(), 0); });
    if (!contains(e, "cannot write") || !contains(e, "model.bin") || !contains(e, std::strerror(EFBIG))) return 11;
    return 0;
  });
  CHECK(status == 0);
  CHECK(dir_names(root) == std::vector<std::string>{"step_00000001"});
  CheckpointReader reader(previous);
  payload.check_reads_back(reader);
}

TEST_CASE("save_checkpoint reports a root that cannot be created", "[checkpoint]") {
  TempDir tmp("ckpt-badroot");
  write_text(tmp.path() / "plain_file", "not a directory");
  const fs::path root = tmp.path() / "plain_file" / "ckpts";
  Payload payload = sample_payload(9);
  std::string e = error_message([&] { srgpt::save_checkpoint(root, 1, {}, payload.files(), 0); });
  CHECK(contains(e, root.string()));
  CHECK(contains(e, std::strerror(ENOTDIR)));
  CHECK_FALSE(srgpt::latest_checkpoint(root).has_value());
}

TEST_CASE("save_checkpoint rejects inconsistent tensor tables", "[checkpoint]") {
  TempDir tmp("ckpt-badinput");
  std::vector<unsigned char> bytes(12);
  auto save = [&](std::vector<CheckpointFile> files) {
    return error_message([&] { srgpt::save_checkpoint(tmp.path(), 1, {}, files, 0); });
  };
  CHECK(contains(save({{"a.bin", {{"t", DType::f32, {4}, bytes.data(), 12}}}}), "needs 16"));
  CHECK(contains(save({{"a.bin", {{"t", DType::f32, {3}, bytes.data(), 12}, {"t", DType::f32, {3}, bytes.data(), 12}}}}),
                 "used twice"));
  CHECK(contains(save({{"manifest.json", {}}}), "not allowed"));
  CHECK(contains(save({{"../a.bin", {}}}), "not allowed"));
  CHECK(dir_names(tmp.path()).empty());
}
