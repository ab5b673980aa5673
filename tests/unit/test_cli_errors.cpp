// Bad input through the real binary: every case must exit non-zero with a
// message that names the problem, and never crash or hang.
#include <sys/stat.h>

#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "catch.h"
#include "srgpt/checkpoint.h"
#include "srgpt/config.h"
#include "srgpt/tokenizer.h"
#include "test_util.h"

using namespace srgpt_test;

namespace {

struct Fixture {
  TempDir tmp{"cli"};
  std::string data = tmp.str("data");
  std::string good_config = tmp.str("good.json");
  std::string run_dir = tmp.str("run");

  Fixture() {
    write_markov_shards(tmp.path() / "data", 64, 20000, 3000);
    write_json(good_config, base());
    // A finished 4-step run with a checkpoint, for the checkpoint cases.
    auto r = run_command(srgpt_bin() + " train --config " + good_config);
    REQUIRE(r.exit_code == 0);
  }

  nlohmann::json base() const {
    srgpt::Config c = tiny_config(tmp.path() / "data", run_dir);
    c.train.steps = 4;
    c.checkpoint.every = 2;
    return srgpt::config_to_json(c);
  }

  std::string config_with(const std::function<void(nlohmann::json&)>& edit, const std::string& name) const {
    nlohmann::json j = base();
    edit(j);
    std::string path = tmp.str(name + ".json");
    write_json(path, j);
    return path;
  }

  static void write_json(const std::string& path, const nlohmann::json& j) { std::ofstream(path) << j.dump(2); }
  static void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

  std::string checkpoint() const { return run_dir + "/checkpoints/step_00000004"; }
};

void expect_error(const std::string& what, const std::string& cmd, const std::vector<std::string>& needles) {
  CommandResult r = run_command(cmd);
  INFO(what << "\ncommand: " << cmd << "\noutput:\n" << r.output);
  CHECK(r.exit_code != 0);
  CHECK(r.exit_code < 128);  // not killed by a signal
  for (const auto& n : needles) CHECK(r.output.find(n) != std::string::npos);
}

}  // namespace

TEST_CASE("bad inputs give a clear error and a non-zero exit", "[cli][errors]") {
  Fixture f;
  const std::string bin = srgpt_bin();
  const std::string train = bin + " train --config ";

  expect_error("missing config file", train + f.tmp.str("nope.json"), {"nope.json"});
  // libgomp crashed with SIGSEGV starting 100000 threads.
  expect_error("an absurd OMP_NUM_THREADS", "OMP_NUM_THREADS=100000 " + train + f.good_config,
               {"OMP_NUM_THREADS asks for 100000 threads; allowed here: at most"});
  // Read without mpirun too, not first on the multi-rank launch.
  expect_error("a malformed SRGPT_COMM_TIMEOUT_S", "SRGPT_COMM_TIMEOUT_S=abc " + train + f.good_config,
               {"SRGPT_COMM_TIMEOUT_S='abc' is not a number of seconds"});
  {
    // A FIFO would block the open or the read forever.
    const std::string fifo = f.tmp.str("fifo");
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    expect_error("a FIFO as config", "timeout 60 " + train + fifo, {"fifo", "not a regular file"});
    expect_error("a FIFO as prepare input",
                 "timeout 60 " + bin + " prepare --tokenizer byte --input " + fifo + " --out " + f.tmp.str("pf"),
                 {"fifo", "not a regular file"});
    expect_error("a FIFO as eval data", "timeout 60 " + bin + " eval --checkpoint " + f.checkpoint() + " --data " + fifo,
                 {"fifo", "not a regular file"});
    // The shards' summary.json and the run's metrics.jsonl (both hung).
    const std::string fifo_data = f.tmp.str("fifo_data");
    std::filesystem::copy(f.data, fifo_data);
    REQUIRE(::mkfifo((fifo_data + "/summary.json").c_str(), 0600) == 0);
    expect_error("a FIFO as summary.json for eval",
                 "timeout 60 " + bin + " eval --checkpoint " + f.checkpoint() + " --data '" + fifo_data + "/val_*.bin'",
                 {"prepare summary " + fifo_data + "/summary.json is not a regular file"});
    CommandResult trained = run_command(
        "timeout 60 " + train +
        f.config_with([&](auto& j) { j["data"]["val"] = fifo_data + "/val_*.bin"; j["out_dir"] = f.tmp.str("fr"); },
                      "fifo_summary"));
    INFO(trained.output);
    CHECK(trained.exit_code == 0);  // summary.json is only advice in training
    CHECK(trained.output.find("shares") == std::string::npos);  // other val shards than train's
    CHECK(trained.output.find("warning: data.val: prepare summary " + fifo_data + "/summary.json is not a regular "
                              "file") != std::string::npos);
    // data.train taking the val split too is said, not refused.
    CommandResult overlap = run_command(
        train + f.config_with([&](auto& j) { j["data"]["train"] = f.data + "/*.bin"; j["out_dir"] = f.tmp.str("ov"); },
                              "overlap"));
    INFO(overlap.output);
    CHECK(overlap.exit_code == 0);
    CHECK(overlap.output.find("warning: data.val shares 1 of its 1 shards with data.train (" + f.data +
                              "/val_000000.bin is in both): the val loss is measured on tokens the model trains on") !=
          std::string::npos);
    std::filesystem::create_directories(f.tmp.path() / "fifo_run");
    REQUIRE(::mkfifo(f.tmp.str("fifo_run/metrics.jsonl").c_str(), 0600) == 0);
    expect_error("a FIFO as metrics.jsonl",
                 "timeout 60 " + train + f.config_with([&](auto& j) { j["out_dir"] = f.tmp.str("fifo_run"); }, "fm"),
                 {"the run's metrics file " + f.tmp.str("fifo_run/metrics.jsonl") + " is not a regular file"});
  }

  Fixture::write_text(f.tmp.str("malformed.json"), "{\"model\": {\"n_layer\": 2,,}");
  expect_error("malformed JSON", train + f.tmp.str("malformed.json"), {"malformed.json", "line"});

  expect_error("unknown key", train + f.config_with([](auto& j) { j["optimizer"]["betas"] = 0.9; }, "unknown"),
               {"optimizer.betas"});
  expect_error("wrong type", train + f.config_with([](auto& j) { j["model"]["n_layer"] = "two"; }, "type"),
               {"model.n_layer"});
  expect_error("non-integral integer", train + f.config_with([](auto& j) { j["model"]["n_layer"] = 2.5; }, "int"),
               {"model.n_layer"});
  expect_error("d_model not divisible by n_head",
               train + f.config_with([](auto& j) { j["model"]["n_head"] = 3; }, "heads"), {"n_head", "d_model"});
  expect_error("total batch not a multiple of micro batch x seq",
               train + f.config_with([](auto& j) { j["batch"]["total_tokens"] = 100; }, "batch"),
               {"batch.total_tokens"});
  expect_error("seq_len beyond max_seq_len",
               train + f.config_with([](auto& j) { j["batch"]["seq_len"] = 32; }, "seq"), {"batch.seq_len"});
  expect_error("unknown precision", train + f.config_with([](auto& j) { j["precision"] = "fp8"; }, "prec"),
               {"precision", "bf16-sr"});
  expect_error("negative learning rate", train + f.config_with([](auto& j) { j["optimizer"]["lr"] = -1; }, "lr"),
               {"optimizer.lr"});
  expect_error("malformed --set", train + f.good_config + " --set optimizer.lr", {"--set", "="});
  expect_error("--set of an unknown key", train + f.good_config + " --set optimizer.momentum=0.9",
               {"optimizer.momentum"});
  expect_error("NCCL asked for on the cpu backend", train + f.good_config + " --set dist.communicator=nccl",
               {"dist.communicator", "cuda"});

  expect_error("no shard matches", train + f.config_with([&](auto& j) { j["data"]["train"] = f.tmp.str("none_*.bin"); }, "nodata"),
               {"data.train", "none_*.bin"});
  {
    // Truncated shard: header says more tokens than the file holds.
    std::string shard = f.tmp.str("trunc/train_000000.bin");
    std::filesystem::create_directories(f.tmp.path() / "trunc");
    std::filesystem::copy_file(f.data + "/train_000000.bin", shard);
    std::filesystem::resize_file(shard, std::filesystem::file_size(shard) - 100);
    expect_error("truncated shard",
                 train + f.config_with([&](auto& j) { j["data"]["train"] = f.tmp.str("trunc/*.bin"); }, "trunc"),
                 {"train_000000.bin"});
  }
  {
    // A file with an llm.c-like header but the wrong version.
    std::string shard = f.tmp.str("badver/train_000000.bin");
    std::filesystem::create_directories(f.tmp.path() / "badver");
    std::vector<int32_t> header(256, 0);
    header[0] = 20240520;
    header[1] = 7;
    header[2] = 10;
    std::ofstream(shard, std::ios::binary).write(reinterpret_cast<char*>(header.data()), 1024);
    expect_error("bad shard version",
                 train + f.config_with([&](auto& j) { j["data"]["train"] = f.tmp.str("badver/*.bin"); }, "badver"),
                 {"train_000000.bin", "version"});
  }
  {
    // Token ids beyond the model's vocabulary.
    std::vector<uint32_t> toks(5000, 200);
    std::filesystem::create_directories(f.tmp.path() / "oov");
    srgpt::write_token_shard(f.tmp.str("oov/train_000000.bin"), toks);
    expect_error("token id >= vocab",
                 train + f.config_with(
                             [&](auto& j) {
                               j["data"]["train"] = f.tmp.str("oov/*.bin");
                               j["out_dir"] = f.tmp.str("oov_run");  // the fixture's run has checkpoints
                             },
                             "oov"),
                 {"train_000000.bin", "200"});
  }
  {
    std::vector<uint32_t> toks(20, 1);
    std::filesystem::create_directories(f.tmp.path() / "small");
    srgpt::write_token_shard(f.tmp.str("small/train_000000.bin"), toks);
    expect_error("shard smaller than one batch",
                 train + f.config_with([&](auto& j) { j["data"]["train"] = f.tmp.str("small/*.bin"); }, "small"),
                 {"train_000000.bin"});
  }
  {
    Fixture::write_text(f.tmp.str("afile"), "x");
    expect_error("unwritable output directory",
                 train + f.config_with([&](auto& j) { j["out_dir"] = f.tmp.str("afile/run"); }, "outdir"),
                 {"out_dir"});
  }

  expect_error("negative prepare seed",
               bin + " prepare --input '" + f.good_config + "' --out " + f.tmp.str("p") + " --tokenizer byte --seed -1",
               {"--seed", "-1 is below 0"});
  expect_error("negative sample seed", bin + " sample --checkpoint " + f.checkpoint() + " --seed -5",
               {"--seed", "-5 is below 0"});
  expect_error("seed beyond uint64", bin + " sample --checkpoint " + f.checkpoint() + " --seed 18446744073709551616",
               {"--seed", "too large"});
  expect_error("fractional stop step", train + f.good_config + " --stop-after 1.5", {"--stop-after", "'1.5'"});
  for (const std::string t : {"inf", "nan", "-0.5"})
    expect_error("--temperature " + t, bin + " sample --checkpoint " + f.checkpoint() + " --temperature " + t,
                 {"--temperature " + t, "finite positive"});
  expect_error("a leading zero (CLI11 reads octal)", bin + " sample --checkpoint " + f.checkpoint() + " --tokens 010",
               {"--tokens", "leading zero"});
  expect_error("an int option beyond int", bin + " eval --checkpoint " + f.checkpoint() + " --data x --batch 2147483648",
               {"--batch", "too large", "[1, 2147483647]"});

  // Training into an out_dir that holds checkpoints past the starting step
  // would mix two runs' checkpoints (and --resume would pick the other's).
  expect_error("a fresh run over another run's checkpoints", train + f.good_config,
               {"already holds checkpoints up to step 4", "starts at step 0", "--resume"});
  expect_error("resuming from an earlier checkpoint of the same out_dir",
               train + f.good_config + " --resume-from " + f.run_dir + "/checkpoints/step_00000002",
               {"already holds checkpoints up to step 4", "starts at step 2"});
  CHECK(run_command(bin + " info --verify " + f.checkpoint()).exit_code == 0);

  expect_error("checkpoint does not exist",
               bin + " eval --checkpoint " + f.tmp.str("no_ckpt") + " --data '" + f.data + "/val_*.bin'",
               {"no_ckpt", "does not exist"});
  expect_error("resume with a different model shape",
               train + f.config_with([](auto& j) { j["model"]["d_model"] = 64; }, "shape") + " --resume-from " +
                   f.checkpoint(),
               {"model.d_model"});
  expect_error("resume with a different precision",
               train + f.config_with([](auto& j) { j["precision"] = "fp32"; }, "precision") + " --resume-from " +
                   f.checkpoint(),
               {"precision"});
  {
    // Corrupt: one flipped byte in the weights.
    std::string ckpt = f.tmp.str("corrupt");
    std::filesystem::copy(f.checkpoint(), ckpt);
    std::fstream file(ckpt + "/model.bin", std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(100);
    char c;
    file.read(&c, 1);
    c = char(c ^ 0x10);
    file.seekp(100);
    file.write(&c, 1);
    file.close();
    expect_error("corrupt checkpoint", bin + " eval --checkpoint " + ckpt + " --data '" + f.data + "/val_*.bin'",
                 {"model.bin"});
  }
  {
    std::string ckpt = f.tmp.str("truncated_ckpt");
    std::filesystem::copy(f.checkpoint(), ckpt);
    std::filesystem::resize_file(ckpt + "/optim_rank00000.bin",
                                 std::filesystem::file_size(ckpt + "/optim_rank00000.bin") / 2);
    expect_error("truncated checkpoint", train + f.good_config + " --resume-from " + ckpt, {"optim_rank00000.bin"});
  }
  {
    // A sharded checkpoint whose manifest claims more ranks than it has
    // shard files (before: a world_size this large ran out of host memory).
    const std::string sharded_dir = f.tmp.str("sharded");
    const std::string sharded = f.config_with(
        [&](auto& j) {
          j["dist"]["zero_stage"] = 1;
          j["out_dir"] = sharded_dir;
        },
        "sharded");
    REQUIRE(run_command(train + sharded).exit_code == 0);
    const std::string manifest = sharded_dir + "/checkpoints/step_00000004/manifest.json";
    nlohmann::json m = nlohmann::json::parse(std::ifstream(manifest));
    m["state"]["world_size"] = 2147483647;
    Fixture::write_json(manifest, m);
    expect_error("manifest world_size beyond its shard files", train + sharded + " --resume",
                 {"world_size 2147483647", "lists 1 optimizer shard files"});
    // Beyond int: it used to be narrowed (2^32 + 1 read as 1).
    m["state"]["world_size"] = 4294967297;
    Fixture::write_json(manifest, m);
    expect_error("manifest world_size beyond int", train + sharded + " --resume",
                 {"world_size 4294967297", "allowed: 1..2147483647"});
  }
  {
    // A state that contradicts the manifest (before: trained "step -2/4" with lr 0 and NaN losses).
    const std::string ckpt = f.tmp.str("negative_step");
    std::filesystem::copy(f.checkpoint(), ckpt);
    nlohmann::json m = nlohmann::json::parse(std::ifstream(ckpt + "/manifest.json"));
    m["state"]["step"] = -3;
    Fixture::write_json(ckpt + "/manifest.json", m);
    expect_error("a checkpoint state with a negative step",
                 train + f.config_with([&](auto& j) { j["out_dir"] = f.tmp.str("negative_step_run"); }, "negstep") +
                     " --resume-from " + ckpt,
                 {"its state says step -3 (the manifest: 4)"});
  }
  {
    // A state whose weights_crc32 is not a number, or that is not an object
    // (found by test_input_fuzz.cpp: both escaped as nlohmann's type_error,
    // printed as "unexpected JSON content: ... type must be number").
    const std::string ckpt = f.tmp.str("bad_state");
    std::filesystem::copy(f.checkpoint(), ckpt);
    nlohmann::json m = nlohmann::json::parse(std::ifstream(ckpt + "/manifest.json"));
    const std::string resume = train + f.config_with([&](auto& j) { j["out_dir"] = f.tmp.str("bad_state_run"); },
                                                     "badstate") + " --resume-from " + ckpt;
    const nlohmann::json good_state = m["state"];
    // info --verify says whether a checkpoint can be resumed: it refuses
    // every state a resume refuses, with the same message.
    auto expect_state_error = [&](const std::string& what, const std::vector<std::string>& needles) {
      expect_error(what, resume, needles);
      expect_error(what + " (info --verify)", bin + " info --verify " + ckpt, needles);
    };
    m["state"]["weights_crc32"] = "abc";
    Fixture::write_json(ckpt + "/manifest.json", m);
    expect_state_error("a checkpoint state with a weights_crc32 string",
                       {"state \"weights_crc32\" = \"abc\"", "allowed: a CRC-32"});
    // Counters that nlohmann's get<int64_t>() took as numbers: 4.0 as the
    // manifest's step 4, true as 1, 1e300 by an undefined conversion.
    m["state"] = good_state;
    m["state"]["step"] = 4.0;
    Fixture::write_json(ckpt + "/manifest.json", m);
    expect_state_error("a checkpoint state with a fractional step",
                       {"state \"step\" = 4.0 is not of the expected type (an integer)"});
    m["state"] = good_state;
    m["state"]["tokens_seen"] = true;
    Fixture::write_json(ckpt + "/manifest.json", m);
    expect_state_error("a checkpoint state with a boolean counter",
                       {"state \"tokens_seen\" = true is not of the expected type (an integer)"});
    m["state"] = good_state;
    m["state"]["skipped_steps"] = 1e300;
    Fixture::write_json(ckpt + "/manifest.json", m);
    expect_state_error("a checkpoint state with a huge counter",
                       {"state \"skipped_steps\" = 1e+300 is not of the expected type (an integer)"});
    // Fields no load used to read: the seed must be the config's, the
    // sharding plan its model's.
    m["state"] = good_state;
    m["state"].erase("seed");
    Fixture::write_json(ckpt + "/manifest.json", m);
    expect_state_error("a checkpoint state without a seed", {"its manifest's state has no \"seed\""});
    m["state"] = good_state;
    m["state"]["seed"] = good_state["seed"].get<uint64_t>() + 1;
    Fixture::write_json(ckpt + "/manifest.json", m);
    expect_state_error("a checkpoint state whose seed is not its config's", {"its manifest's state says seed"});
    m["state"] = good_state;
    m["state"]["zero_plan"] = "garbage";
    Fixture::write_json(ckpt + "/manifest.json", m);
    expect_state_error("a checkpoint state with another sharding plan",
                       {"\"zero_plan\" is not the sharding plan of its model at world_size 1"});
    m["state"] = good_state;
    m["state"]["train_shard_tokens"] = {1000, -2.5};
    Fixture::write_json(ckpt + "/manifest.json", m);
    expect_state_error("a checkpoint state with a shard token count that is no count",
                       {"\"train_shard_tokens\" = [1000,-2.5] is not of the expected type (an array of token "
                        "counts)"});
    m["state"] = good_state;
    m["state"]["train_shard_head_crc32"] = {4294967296};
    Fixture::write_json(ckpt + "/manifest.json", m);
    expect_state_error("a checkpoint state with a shard CRC-32 past 32 bits",
                       {"\"train_shard_head_crc32\" = [4294967296] is not of the expected type (an array of CRC-32 "
                        "values)"});
    m["state"] = good_state;
    m["state"]["weights_crc32"] = -1;
    Fixture::write_json(ckpt + "/manifest.json", m);
    expect_state_error("a checkpoint state with a negative weights_crc32",
                       {"state \"weights_crc32\" = -1", "allowed: a CRC-32"});
    // One CRC per shard, as train_shard_tokens has (the resume used to blame
    // the data: "shard 1 of 0 began with other tokens").
    const std::string shards = std::to_string(good_state["train_shard_tokens"].size());
    m["state"] = good_state;
    m["state"]["train_shard_head_crc32"] = nlohmann::json::array();
    Fixture::write_json(ckpt + "/manifest.json", m);
    expect_state_error("a checkpoint state with fewer shard CRCs than shards",
                       {"\"train_shard_head_crc32\" has 0 values but \"train_shard_tokens\" has " + shards +
                        "; a checkpoint records both"});
    m["state"] = good_state;
    m["state"].erase("train_shard_tokens");
    Fixture::write_json(ckpt + "/manifest.json", m);
    expect_state_error("a checkpoint state with shard CRCs but no shard sizes",
                       {"\"train_shard_head_crc32\" has " + shards + " values but \"train_shard_tokens\" is absent"});
    m["state"] = good_state;
    m["state"]["train_loader"]["epoch"] = -1;
    Fixture::write_json(ckpt + "/manifest.json", m);
    expect_state_error("a checkpoint state with a negative loader epoch",
                       {"bad_state: its manifest's state \"train_loader\" is malformed: loader position \"epoch\" "
                        "must be a non-negative integer, got -1"});
    m["state"] = nlohmann::json::array();
    Fixture::write_json(ckpt + "/manifest.json", m);
    expect_state_error("a checkpoint state that is an array", {"its manifest's state has no \"config\""});
  }
  {
    // A state whose config describes a far bigger model than model.bin
    // holds (found by test_input_fuzz.cpp: d_model 32 -> 4096 made eval and
    // info --verify allocate the whole model before finding that model.bin
    // does not match it; under this address-space limit that was "out of
    // host memory", without one gigabytes and tens of seconds).
    const std::string ckpt = f.tmp.str("inflated_config");
    std::filesystem::copy(f.checkpoint(), ckpt);
    nlohmann::json m = nlohmann::json::parse(std::ifstream(ckpt + "/manifest.json"));
    m["state"]["config"]["model"]["d_model"] = 8192;
    Fixture::write_json(ckpt + "/manifest.json", m);
    const std::string expected = "tensor wte has shape [128,32] in the checkpoint but the model expects [128,8192]";
    expect_error("a checkpoint config bigger than its model.bin", memory_cap_prefix(2000) + bin + " info --verify " + ckpt,
                 {expected});
    expect_error("a checkpoint config bigger than its model.bin",
                 memory_cap_prefix(2000) + bin + " eval --checkpoint " + ckpt + " --data '" + f.data + "/val_*.bin'",
                 {expected});
  }
  {
    std::string ckpt = f.tmp.str("no_manifest");
    std::filesystem::copy(f.checkpoint(), ckpt);
    std::filesystem::remove(ckpt + "/manifest.json");
    expect_error("checkpoint without manifest", bin + " info " + ckpt, {"manifest"});
  }
  {
    std::string ckpt = f.tmp.str("bad_manifest");
    std::filesystem::copy(f.checkpoint(), ckpt);
    Fixture::write_text(ckpt + "/manifest.json", "{\"format\": \"srgpt-checkpoint\", \"format_version\": ");
    expect_error("malformed manifest", bin + " info " + ckpt, {"manifest.json"});
  }
  {
    // Paths std::filesystem cannot look up were its bare "filesystem error:
    // status: ..." text; an empty one was "checkpoint path  does not exist".
    const std::string loop = f.tmp.str("loop");
    std::filesystem::create_symlink("loop", loop);
    const std::string loop_manifest = f.tmp.str("loop_manifest");
    std::filesystem::copy(f.checkpoint(), loop_manifest);
    std::filesystem::remove(loop_manifest + "/manifest.json");
    std::filesystem::create_symlink("manifest.json", loop_manifest + "/manifest.json");
    for (const char* command : {" info ", " sample ", " export --out x ", " eval --data x "}) {
      const std::string cmd = bin + command;
      expect_error("a checkpoint path that is a symlink loop", cmd + loop,
                   {"checkpoint path " + loop + " cannot be read: Too many levels of symbolic links"});
      expect_error("a checkpoint whose manifest is a symlink loop", cmd + loop_manifest,
                   {loop_manifest + "/manifest.json cannot be read: Too many levels of symbolic links"});
      expect_error("an empty checkpoint path", cmd + "''", {"an empty path; pass a checkpoint or run directory"});
    }
    // Other path options: an empty one (an unset shell variable) was taken
    // as a path ("cannot create output directory : Invalid argument").
    for (const auto& [command, expected] : std::vector<std::pair<std::string, std::string>>{
             {" export " + f.checkpoint() + " --out ''", "--out: an empty path; pass the directory to write"},
             {" import --hf '' --out x", "--hf: an empty path; pass a Hugging Face GPT-2 directory"},
             {" import --hf x --out ''", "--out: an empty path; pass the run directory to create"},
             {" prepare --tokenizer byte --input " + f.good_config + " --out ''",
              "--out: an empty path; pass the directory to write the shards to"}})
      expect_error("an empty path option", bin + command, {expected});
    expect_error("a file as --hf", bin + " import --hf " + f.good_config + " --out x",
                 {f.good_config + ": not a directory; a Hugging Face GPT-2 directory holds config.json"});
  }
}

// Mistakes that were once taken silently (or found only after training):
// each must now stop the command at once, naming what is wrong.
TEST_CASE("command-line mistakes are refused before any training", "[cli][errors]") {
  Fixture f;
  const std::string bin = srgpt_bin();
  const std::string train = bin + " train --config " + f.good_config;
  const std::string no_step = "step      1/";  // the first step's log line

  expect_error("a misspelled subcommand", bin + " trian --config " + f.good_config,
               {"unknown subcommand 'trian' (did you mean 'train'?)", "train, eval, info"});
  CommandResult version = run_command(bin + " --version");
  CHECK(version.exit_code == 0);
  CHECK(version.output.find("srgpt 0.") != std::string::npos);

  // An option left without its value took the next option's name instead
  // (sample continued the text "--tokens"; prepare read "--out" as input).
  expect_error("an option without its value", bin + " sample " + f.run_dir + " --prompt --tokens 3",
               {"--prompt: no value given (the next word, --tokens, is an option); for a value that starts with "
                "'-', write --prompt=VALUE"});
  expect_error("a list option without its value", bin + " prepare --tokenizer byte --input --out " + f.tmp.str("p"),
               {"--input: no value given (the next word, --out, is an option)"});
  // --prompt=--tokens passes that text (to a model of no built-in
  // tokenizer's vocabulary here, which sample refuses next).
  CommandResult dashed = run_command(bin + " sample " + f.run_dir + " --prompt=--tokens --tokens 3");
  CHECK(dashed.output.find("no value given") == std::string::npos);
  CHECK(dashed.output.find("fits neither built-in tokenizer") != std::string::npos);

  // An unset shell variable in --resume-from "$CKPT" used to start afresh.
  expect_error("an empty --resume-from", train + " --resume-from ''", {"--resume-from", "an empty path"});
  expect_error("--resume with --resume-from", train + " --resume --resume-from " + f.checkpoint(),
               {"--resume excludes --resume-from"});
  expect_error("--resume-from a file", train + " --resume-from " + f.good_config,
               {"good.json is not a directory"});
  // The step is done: it used to train one more and say "stopped as requested".
  expect_error("--stop-after a step already done", train + " --resume --stop-after 4",
               {"--stop-after 4: this run resumes after step 4", "give a later step"});
  expect_error("a checkpoint past train.steps", train + " --set train.steps=3 --resume-from " + f.checkpoint(),
               {"is at step 4, past train.steps = 3"});
  {
    // Found at the first checkpoint, after the whole run, before.
    const std::string out = f.tmp.str("checkpoints_a_file");
    std::filesystem::create_directories(out);
    Fixture::write_text(out + "/checkpoints", "x");
    CommandResult r = run_command(train + " --set out_dir=" + out);
    INFO(r.output);
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("cannot create checkpoint directory") != std::string::npos);
    CHECK(r.output.find(no_step) == std::string::npos);
  }
  {
    // A failed start used to leave the out_dir it made behind (checkpoints/
    // and the lock file); one that existed keeps what it held.
    namespace fs = std::filesystem;
    const fs::path made = f.tmp.path() / "made" / "by" / "train";
    expect_error("a data pattern that matches nothing, into a new out_dir",
                 train + " --set data.train=" + f.tmp.str("nowhere/*.bin") + " --set out_dir=" + made.string(),
                 {"data.train", "no files match"});
    CHECK_FALSE(fs::exists(f.tmp.path() / "made"));
    const fs::path kept = f.tmp.path() / "kept";
    fs::create_directories(kept / "checkpoints");
    Fixture::write_text((kept / "notes.txt").string(), "mine");
    expect_error("a data pattern that matches nothing, into an existing out_dir",
                 train + " --set data.train=" + f.tmp.str("nowhere/*.bin") + " --set out_dir=" + kept.string(),
                 {"no files match"});
    CHECK(fs::exists(kept / "checkpoints"));
    CHECK(fs::exists(kept / "notes.txt"));
    // The fixture's finished run is a start that succeeded: its lock stays.
    CHECK(fs::exists(fs::path(f.run_dir) / ".srgpt-train.lock"));
  }
  {
    // A run directory resumes from its newest checkpoint, as eval and sample read it.
    CommandResult r = run_command(train + " --set train.steps=5 --resume-from " + f.run_dir);
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK(r.output.find("checkpoints/step_00000004 at step 4") != std::string::npos);
  }

  {
    // A damaged summary.json beside the shards (it gives bits per byte)
    // used to fail only after the whole evaluation, its result printed.
    const std::string data = f.tmp.str("summary_damaged");
    std::filesystem::copy(f.data, data);
    Fixture::write_text(data + "/summary.json", "{bad");
    expect_error("a damaged summary.json", bin + " eval --checkpoint " + f.checkpoint() + " --data '" + data + "/val_*.bin'",
                 {"summary.json: not valid JSON"});
    CHECK(run_command(bin + " eval --checkpoint " + f.checkpoint() + " --data '" + data + "/val_*.bin'")
              .output.find("perplexity") == std::string::npos);
  }

  // Every command that reads a checkpoint takes it with or without
  // --checkpoint (info took only the bare path, the others only the option).
  // sample gets as far as the fixture's 64-token vocabulary, which no
  // tokenizer has.
  const std::vector<std::pair<std::string, int>> reading_commands{
      {" info", 0}, {" eval --data '" + f.data + "/val_*.bin'", 0}, {" export --out " + f.tmp.str("hf"), 0},
      {" sample --tokens 3", 1}};
  for (const auto& [command, exit_code] : reading_commands) {
    const CommandResult named = run_command(bin + command + " --checkpoint " + f.run_dir);
    const CommandResult bare = run_command(bin + command + " " + f.run_dir);
    INFO(command << "\n" << named.output << "\n" << bare.output);
    CHECK(named.exit_code == exit_code);
    CHECK(bare.exit_code == exit_code);
    CHECK(named.output == bare.output);
  }
  CHECK(run_command(bin + " sample --tokens 3 " + f.run_dir).output.find("the model's vocabulary has 64 tokens") !=
        std::string::npos);
  expect_error("a checkpoint given twice", bin + " info " + f.run_dir + " --checkpoint " + f.run_dir,
               {"--checkpoint"});
  expect_error("no checkpoint", bin + " eval --data '" + f.data + "/val_*.bin'", {"--checkpoint is required"});

  // Options CLI11 read as 0 when empty.
  expect_error("an empty --temperature", bin + " sample --checkpoint " + f.checkpoint() + " --temperature ''",
               {"--temperature: '' is not a number"});
  expect_error("an empty --val-fraction",
               bin + " prepare --tokenizer byte --input '" + f.good_config + "' --out " + f.tmp.str("pv") +
                   " --val-fraction ''",
               {"--val-fraction: '' is not a number"});
  expect_error("an empty --shard-tokens",
               bin + " prepare --tokenizer byte --input '" + f.good_config + "' --out " + f.tmp.str("ps") +
                   " --shard-tokens ''",
               {"--shard-tokens: '' is not a whole number"});

  // A config of null, or a null section, became an empty object under --set.
  Fixture::write_text(f.tmp.str("null.json"), "null");
  expect_error("a null config with --set", bin + " train --config " + f.tmp.str("null.json") + " --set device=cpu",
               {"null.json: the config must be a JSON object", "found null"});
  const std::string null_section = f.config_with([](auto& j) { j["optimizer"] = nullptr; }, "null_section");
  expect_error("a null section with --set", bin + " train --config " + null_section + " --set optimizer.lr=1e-3",
               {"'optimizer' is null in the config, not an object"});
  // The path used to end at the NUL: the rest was dropped.
  const std::string nul_path = f.config_with(
      [&](auto& j) { j["out_dir"] = f.tmp.str("nul") + std::string(1, '\0') + "x"; }, "nul_path");
  expect_error("a NUL in out_dir", bin + " train --config " + nul_path,
               {"out_dir = ", "contains a NUL character"});
  CHECK_FALSE(std::filesystem::exists(f.tmp.path() / "nul"));
}

// The loader's saved position counts sequences of the checkpoint's seq_len
// in its shards, in its seed's order: a resume that changes one of them
// used to read other tokens silently, or fail blaming the position.
TEST_CASE("a resume that would change the data order is refused, a moved dataset is not", "[cli][errors][resume]") {
  Fixture f;
  const std::string bin = srgpt_bin();
  const std::string resume = bin + " train --config " + f.good_config + " --set train.steps=6 --resume";
  expect_error("another seed", resume + " --set train.seed=7", {"was trained with train.seed = ", "but the config has 7"});
  expect_error("another seq_len", resume + " --set batch.seq_len=8",
               {"was trained with batch.seq_len = 16, but the config has 8", "point at other tokens"});
  write_markov_shards(f.tmp.path() / "other_data", 64, 15000, 3000);
  expect_error("other data", resume + " --set 'data.train=" + f.tmp.str("other_data") + "/train_*.bin'",
               {"was trained on data.train of ", "resume with the same data"});
  // Shards of the same sizes with other tokens (another selection or order of
  // equal shards) used to pass the size check.
  write_markov_shards(f.tmp.path() / "same_size_data", 64, 20000, 3000, 11);
  expect_error("same sizes, other tokens",
               resume + " --set 'data.train=" + f.tmp.str("same_size_data") + "/train_*.bin'",
               {"whose shard 1 of 2 began with other tokens than " + f.tmp.str("same_size_data/train_000000.bin"),
                "same sizes but are not the same", "same shards in the same order"});
  // The same shards elsewhere, and another split of the batch: allowed.
  std::filesystem::copy(f.data, f.tmp.path() / "moved_data");
  CommandResult r = run_command(resume + " --set 'data.train=" + f.tmp.str("moved_data") +
                                "/train_*.bin' --set batch.micro_batch=2");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(r.output.find("at step 4") != std::string::npos);
}

namespace {

// Copies `from` to `to` with element `index` of tensor `tensor` in `file`
// replaced by `bits` (a bf16 bit pattern as uint16_t, an f32 value as
// float), and the file's CRC-32 in the manifest updated to match: a
// checkpoint intact on disk whose values are not.
template <typename Bits>
void copy_with_element(const std::string& from, const std::string& to, const std::string& file,
                       const std::string& tensor, size_t index, Bits bits) {
  static_assert(sizeof(Bits) == 2 || sizeof(Bits) == 4);
  std::filesystem::copy(from, to);
  nlohmann::json m = nlohmann::json::parse(std::ifstream(to + "/manifest.json"));
  bool found = false;
  for (auto& f : m["files"]) {
    if (f["name"] != file) continue;
    for (const auto& t : f["tensors"]) {
      if (t["name"] != tensor) continue;
      REQUIRE(t["dtype"] == (sizeof(Bits) == 2 ? "bf16" : "f32"));
      found = true;
      std::fstream out(to + "/" + file, std::ios::in | std::ios::out | std::ios::binary);
      out.seekp(std::streamoff(t["offset"].get<uint64_t>() + sizeof(Bits) * index));
      out.write(reinterpret_cast<const char*>(&bits), sizeof(Bits));
    }
    std::ifstream in(to + "/" + file, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    f["crc32"] = srgpt::crc32(bytes.data(), bytes.size());
  }
  REQUIRE(found);
  Fixture::write_json(to + "/manifest.json", m);
}

}  // namespace

TEST_CASE("non-finite values in a checkpoint are refused where they are read", "[cli][errors][checkpoint]") {
  Fixture f;
  const std::string bin = srgpt_bin();
  const std::string eval_data = " --data '" + f.data + "/val_*.bin'";
  REQUIRE(f.base()["precision"] == "bf16-sr");
  constexpr uint16_t bf16_nan = 0x7fc0, bf16_inf = 0x7f80;

  const std::string nan_weights = f.tmp.str("nan_weights");
  copy_with_element(f.checkpoint(), nan_weights, "model.bin", "h.1.mlp.c_fc.weight", 7, bf16_nan);
  // The files are intact (before: eval printed "loss nan" and a null
  // perplexity with exit 0, export wrote a NaN model).
  CHECK(run_command(bin + " info " + nan_weights).exit_code == 0);
  // Each names the tensor and element, as a resume does (they used to say
  // only "its weights contain NaN or Inf").
  const std::string named = "its weights hold nan at element ";
  const std::string where = "(h.1.mlp.c_fc.weight[7])";
  expect_error("info --verify of NaN weights", bin + " info --verify " + nan_weights, {"nan_weights", named, where});
  expect_error("eval of NaN weights", bin + " eval --checkpoint " + nan_weights + eval_data, {named, where});
  expect_error("export of NaN weights", bin + " export --checkpoint " + nan_weights + " --out " + f.tmp.str("nan_hf"),
               {named, where});
  CHECK_FALSE(std::filesystem::exists(f.tmp.path() / "nan_hf" / "model.safetensors"));
  expect_error("sample from NaN weights", bin + " sample --checkpoint " + nan_weights + " --tokens 4",
               {named, where});

  // Finite weights that overflow the forward pass (a diverged run's): eval
  // used to print a NaN loss, null in its JSON, and exit 0.
  const std::string huge_weights = f.tmp.str("huge_weights");
  constexpr uint16_t bf16_max = 0x7f7f;
  copy_with_element(f.checkpoint(), huge_weights, "model.bin", "wte", 1, bf16_max);
  expect_error("eval of weights that overflow", bin + " eval --checkpoint " + huge_weights + eval_data,
               {"its weights are finite but overflow the forward pass"});

  // A resume refuses them too, naming the tensor (before: it trained on, to
  // "step 5: non-finite loss ... Lower optimizer.lr").
  const std::string resume_into = f.config_with([&](auto& j) { j["out_dir"] = f.tmp.str("resumed"); }, "resumed");
  expect_error("a resume from NaN weights", bin + " train --config " + resume_into + " --resume-from " + nan_weights,
               {"its weights hold nan at element", "(h.1.mlp.c_fc.weight[7])"});

  // Infinite Adam state, and a negative second moment: eval does not read
  // them, a resume would.
  const std::string inf_state = f.tmp.str("inf_state");
  copy_with_element(f.checkpoint(), inf_state, "optim_rank00000.bin", "v/h.0.attn.c_attn.weight", 3, bf16_inf);
  CHECK(run_command(bin + " eval --checkpoint " + inf_state + eval_data).exit_code == 0);
  expect_error("info --verify of an infinite optimizer state", bin + " info --verify " + inf_state,
               {"optimizer state \"v\" holds inf"});
  const std::string negative_v = f.tmp.str("negative_v");
  constexpr uint16_t bf16_minus_two = 0xc000;
  copy_with_element(f.checkpoint(), negative_v, "optim_rank00000.bin", "v/wpe", 5, bf16_minus_two);
  for (const std::string& command : {bin + " info --verify " + negative_v,
                                     bin + " train --config " + resume_into + " --resume-from " + negative_v})
    expect_error("a negative second moment", command,
                 {"optimizer state \"v\" holds -2 at element", "(wpe[5]), but Adam's second moment is never negative"});

  // A mixed-precision checkpoint's fp32 master, which export writes: named
  // as the other optimizer state is.
  const std::string mixed_config =
      f.config_with([&](auto& j) { j["precision"] = "mixed"; j["out_dir"] = f.tmp.str("mixed_run"); }, "mixed");
  REQUIRE(run_command(bin + " train --config " + mixed_config).exit_code == 0);
  const std::string nan_master = f.tmp.str("nan_master");
  copy_with_element(f.tmp.str("mixed_run/checkpoints/step_00000004"), nan_master, "optim_rank00000.bin",
                    "master/h.0.ln_1.weight", 2, std::numeric_limits<float>::quiet_NaN());
  CHECK(run_command(bin + " eval --checkpoint " + nan_master + eval_data).exit_code == 0);  // eval reads model.bin
  expect_error("export of a NaN master",
               bin + " export --checkpoint " + nan_master + " --out " + f.tmp.str("nan_master_hf"),
               {"optimizer state \"master\" holds nan at element", "(h.0.ln_1.weight[2])"});
  CHECK_FALSE(std::filesystem::exists(f.tmp.path() / "nan_master_hf" / "model.safetensors"));

  // A state that contradicts its own config.
  const std::string mixed_label = f.tmp.str("mixed_label");
  std::filesystem::copy(f.checkpoint(), mixed_label);
  nlohmann::json m = nlohmann::json::parse(std::ifstream(mixed_label + "/manifest.json"));
  m["state"]["precision"] = "mixed";
  Fixture::write_json(mixed_label + "/manifest.json", m);
  expect_error("info --verify of a state whose precision contradicts its config", bin + " info --verify " + mixed_label,
               {"precision \"mixed\" but its config \"bf16-sr\""});

  CommandResult good = run_command(bin + " info --verify " + f.checkpoint());
  INFO(good.output);
  CHECK(good.exit_code == 0);
  CHECK(good.output.find("optimizer state load and are finite") != std::string::npos);
}

TEST_CASE("a run killed while saving leaves the previous checkpoint loadable", "[cli][errors][checkpoint]") {
  Fixture f;  // has checkpoints at steps 2 and 4
  const std::string cfg = f.config_with([](auto& j) { j["train"]["steps"] = 6; }, "longer");
  CommandResult r = run_command("SRGPT_FAULT_ABORT_IN_SAVE=1 " + srgpt_bin() + " train --config " + cfg + " --resume");
  INFO(r.output);
  REQUIRE(r.exit_code == 86);  // the fault hook killed it mid-save
  CommandResult info = run_command(srgpt_bin() + " info --verify " + f.run_dir);
  INFO(info.output);
  CHECK(info.exit_code == 0);
  CHECK(info.output.find("step_00000004") != std::string::npos);
  // And training resumes from it to the end.
  CommandResult resumed = run_command(srgpt_bin() + " train --config " + cfg + " --resume");
  INFO(resumed.output);
  CHECK(resumed.exit_code == 0);
  CHECK(resumed.output.find("resumed from") != std::string::npos);
}

TEST_CASE("a diverging run stops with a clear message and never checkpoints NaN", "[cli][errors]") {
  Fixture f;
  const std::string cfg = f.config_with(
      [&](auto& j) {
        j["optimizer"]["lr"] = 1e30;
        j["optimizer"]["grad_clip"] = 0;
        j["optimizer"]["warmup_steps"] = 0;
        j["out_dir"] = f.tmp.str("diverge");
        j["checkpoint"]["every"] = 1;
      },
      "diverge");
  CommandResult r = run_command(srgpt_bin() + " train --config " + cfg);
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK(r.output.find("non-finite") != std::string::npos);
  CHECK(r.output.find("step 2: non-finite loss") != std::string::npos);
  // Step 1 moves the weights to ~1e30, still finite, and is saved; step 2's
  // loss is NaN, so it is neither applied nor saved. Exactly step 1's
  // checkpoint exists, and it verifies (finite weights included).
  std::set<std::string> checkpoints;
  for (const auto& entry : std::filesystem::directory_iterator(f.tmp.path() / "diverge" / "checkpoints"))
    checkpoints.insert(entry.path().filename().string());
  CHECK(checkpoints == std::set<std::string>{"step_00000001"});
  CommandResult info = run_command(srgpt_bin() + " info --verify " + f.tmp.str("diverge"));
  INFO(info.output);
  CHECK(info.exit_code == 0);
  CHECK(info.output.find("step_00000001") != std::string::npos);
}

TEST_CASE("SIGTERM finishes the step, writes a checkpoint and exits 0", "[cli][signal]") {
  Fixture f;
  const std::string cfg = f.config_with(
      [&](auto& j) {
        j["train"]["steps"] = 100000;
        j["out_dir"] = f.tmp.str("preempt");
      },
      "preempt");
  const std::string log = f.tmp.str("preempt.log");
  // Start training, wait until a few steps are logged, then SIGTERM it
  // twice at once, as GNU timeout does (the child, then its process group):
  // the repeat used to kill the run before its checkpoint.
  std::string cmd = "(" + srgpt_bin() + " train --config " + cfg + " > " + log +
                    " 2>&1 & pid=$!; for i in $(seq 1 300); do grep -q 'step      3' " + log +
                    " && break; sleep 0.1; done; kill -TERM $pid; kill -TERM $pid; wait $pid)";
  CommandResult r = run_command(cmd);
  std::ifstream in(log);
  std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  INFO(out);
  CHECK(r.exit_code == 0);
  CHECK(out.find("SIGTERM") != std::string::npos);
  CommandResult info = run_command(srgpt_bin() + " info --verify " + f.tmp.str("preempt"));
  INFO(info.output);
  CHECK(info.exit_code == 0);
}

TEST_CASE("output that cannot be written is an error, not a success with the output cut short", "[cli][errors]") {
  Fixture f;
  const std::string eval = srgpt_bin() + " eval " + f.run_dir + " --data '" + f.data + "/val_*.bin'";
  REQUIRE(run_command(eval).exit_code == 0);
  // The subshell's stdout is the full device; its stderr stays captured.
  for (const std::string& cmd : {eval, srgpt_bin() + " info " + f.run_dir})
    expect_error("a command writing to /dev/full", "(" + cmd + " > /dev/full)",
                 {"srgpt: error: cannot write the output to standard output: No space left on device"});
}

TEST_CASE("running out of host memory is an error naming the command, never a crash", "[cli][errors]") {
  if (kUnderAddressSanitizer) {
    SUCCEED("skipped: AddressSanitizer ends a process over memory_cap_prefix's limit instead of failing an allocation");
    return;
  }
  TempDir tmp("cli-oom");
  const std::string input = tmp.write("corpus.txt", std::string(200000, 'a') + " the quick brown fox\n");
  const std::string tokenizer_dir = std::string(SRGPT_SOURCE_DIR) + "/" + srgpt::kDefaultGpt2TokenizerDir;
  auto prepare_under = [&](int mib) {
    const std::string cmd = memory_cap_prefix(mib) + srgpt_bin() + " prepare --no-progress --input " +
                            shell_quoted(input) + " --tokenizer-dir " + shell_quoted(tokenizer_dir) + " --out " +
                            shell_quoted(tmp.str("out"));
    return std::make_pair(cmd, run_command(cmd));
  };
  // The smallest cap under which prepare succeeds (the binary's own size,
  // with CUDA libraries or without, sets most of it), to 1 MiB.
  int fails = 4, succeeds = 8192;
  REQUIRE(prepare_under(succeeds).second.exit_code == 0);
  while (succeeds - fails > 1) {
    const int mid = (fails + succeeds) / 2;
    (prepare_under(mid).second.exit_code == 0 ? succeeds : fails) = mid;
  }
  // Below it, loading GPT-2's tokenizer files (tens of MiB) runs out: with
  // an error naming the command; smaller still, while the command line is
  // set up (before there is a command), or the binary cannot load.
  int out_of_memory = 0;
  for (int mib = succeeds - 1; mib >= std::max(1, succeeds - 16); --mib) {
    const auto [cmd, r] = prepare_under(mib);
    INFO("command: " << cmd << "\noutput:\n" << r.output);
    if (r.exit_code == 127 && contains(r.output, "error while loading shared libraries")) continue;
    CHECK(r.exit_code < 128);  // not killed by a signal
    if (r.exit_code != 0 && contains(r.output, "out of host memory")) {
      CHECK(r.exit_code == 1);
      const bool in_prepare = contains(r.output, "srgpt: error: out of host memory in `srgpt prepare`");
      CHECK((in_prepare || contains(r.output, "srgpt: error: out of host memory while starting")));
      CHECK_FALSE(contains(r.output, "micro_batch"));  // prepare has no batch
      out_of_memory += in_prepare;
    }
  }
  CHECK(out_of_memory > 0);

  // A buffer the backend cannot get names itself and what to change (once
  // only "allocating N bytes"): here a model of 37 GiB of weights.
  Fixture f;
  const std::string huge = f.config_with(
      [&](auto& j) {
        j["model"]["d_model"] = 8192;
        j["model"]["n_head"] = 64;
        j["model"]["n_layer"] = 24;
        j["out_dir"] = f.tmp.str("huge");
      },
      "huge");
  expect_error("a model beyond the host's memory", memory_cap_prefix(2000) + srgpt_bin() + " train --config " + huge,
               {"cpu backend: out of host memory allocating", "for weights; srgpt already holds",
                "To need less memory: for srgpt eval, lower --batch or --seq-len; for training, set train.recompute"});
  // An eval --batch beyond the data is lowered to the data's sequences, so
  // it needs no more memory than that (it used to allocate for the whole
  // --batch and fail here).
  const CommandResult evaluated = run_command(memory_cap_prefix(2000) + srgpt_bin() + " eval " + f.run_dir +
                                              " --data '" + f.data + "/val_*.bin' --batch 1000000");
  INFO(evaluated.output);
  CHECK(evaluated.exit_code == 0);
  CHECK(contains(evaluated.output, "\"tokens\":2992"));
}
