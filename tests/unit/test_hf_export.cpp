// Hugging Face export and import: safetensors written and read back, HF
// names, shapes and orientation, config.json, bit-exact round trips through
// `srgpt import` for fp32 and bf16, and malformed inputs.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "catch.h"
#include "srgpt/checkpoint.h"
#include "srgpt/error.h"
#include "srgpt/hf_export.h"
#include "srgpt/model.h"
#include "srgpt/safetensors.h"
#include "srgpt/sample.h"
#include "srgpt/trainer.h"
#include "test_util.h"

using namespace srgpt_test;

namespace {

void expect_error(const std::function<void()>& action, const std::vector<std::string>& needles) {
  const std::string message = error_message(action);
  INFO("error: " << message);
  REQUIRE(!message.empty());
  for (const auto& n : needles) CHECK(message.find(n) != std::string::npos);
}

// A run of `steps` training steps of the tiny model; its checkpoint and data.
struct TrainedRun {
  TempDir tmp{"hf"};
  srgpt::Config config;
  fs::path checkpoint;

  explicit TrainedRun(srgpt::Precision precision) {
    write_markov_shards(tmp.path() / "data", 64, 6000, 1200);
    config = tiny_config(tmp.path() / "data", tmp.path() / "run");
    config.precision = precision;
    config.train.steps = 2;
    srgpt::TrainOptions options;
    options.quiet = true;
    options.single_process = true;
    srgpt::Trainer(config, options).run();
    checkpoint = tmp.path() / "run" / "checkpoints" / "step_00000002";
  }

  std::vector<float> weights() const {
    srgpt::LoadedModel lm = srgpt::load_model_for_inference(checkpoint, 1, 1);
    return srgpt::weights_as_float(*lm.params);
  }
};

// Every layout tensor of a checkpoint's model.bin, as raw bytes.
std::vector<std::vector<char>> model_bin_tensors(const fs::path& checkpoint, const srgpt::ModelConfig& m,
                                                 srgpt::DType dtype) {
  srgpt::CheckpointReader reader(checkpoint);
  std::vector<std::vector<char>> out;
  const srgpt::Layout layout = srgpt::gpt2_param_layout(m, 1);
  for (const srgpt::TensorSpec& t : layout.tensors()) {
    out.emplace_back(t.numel * srgpt::dtype_size(dtype));
    reader.read_tensor("model.bin", t.name, dtype, t.shape, out.back().data(), out.back().size());
  }
  return out;
}

double val_loss(const fs::path& checkpoint, const srgpt::Config& c) {
  srgpt::LoadedModel lm = srgpt::load_model_for_inference(checkpoint, 0, 0);
  srgpt::TokenLoader loader(srgpt::expand_shard_pattern(c.data.val, "data.val"), lm.model->batch(),
                            lm.model->seq_len(), 0, 1, c.model.vocab_size, false, 0);
  return srgpt::evaluate(*lm.model, loader, 0).loss;
}

// A safetensors file from a raw header and data section.
void write_raw(const fs::path& path, const std::string& header, const std::string& data, int64_t length = -1) {
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = length < 0 ? header.size() : uint64_t(length);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << data;
}

}  // namespace

TEST_CASE("export writes HF GPT-2 safetensors and config.json and import round-trips fp32 bit-exactly", "[export]") {
  TrainedRun run(srgpt::Precision::fp32);
  const srgpt::ModelConfig& m = run.config.model;
  const std::vector<float> weights = run.weights();
  const fs::path out = run.tmp.path() / "hf";
  const auto files = srgpt::export_hf(m, weights, out, {srgpt::DType::f32, ""});
  // vocab 64 is not GPT-2's: no tokenizer files.
  CHECK(files == std::vector<fs::path>{out / "model.safetensors", out / "config.json"});

  SECTION("HF names, shapes, Conv1D orientation and the real vocabulary rows") {
    const srgpt::SafetensorsReader reader(out / "model.safetensors");
    CHECK(reader.tensors().size() == size_t(4 + 12 * m.n_layer));
    CHECK(reader.metadata() == nlohmann::json{{"format", "pt"}});
    CHECK(reader.find("lm_head.weight") == nullptr);
    const int64_t C = m.d_model;
    const std::vector<std::pair<std::string, std::vector<int64_t>>> expected{
        {"transformer.wte.weight", {m.vocab_size, C}},
        {"transformer.wpe.weight", {m.max_seq_len, C}},
        {"transformer.h.1.ln_1.weight", {C}},
        {"transformer.h.1.attn.c_attn.weight", {C, 3 * C}},
        {"transformer.h.1.attn.c_attn.bias", {3 * C}},
        {"transformer.h.1.attn.c_proj.weight", {C, C}},
        {"transformer.h.1.mlp.c_fc.weight", {C, 4 * C}},
        {"transformer.h.1.mlp.c_fc.bias", {4 * C}},
        {"transformer.h.1.mlp.c_proj.weight", {4 * C, C}},
        {"transformer.ln_f.bias", {C}},
    };
    for (const auto& [name, shape] : expected) {
      INFO(name);
      const srgpt::SafetensorsEntry* e = reader.find(name);
      REQUIRE(e != nullptr);
      CHECK(e->dtype == srgpt::DType::f32);
      CHECK(e->shape == shape);
    }
    // HF Conv1D holds [in, out]: element (i, o) is ours (o, i).
    const srgpt::Layout layout = srgpt::gpt2_param_layout(m, 1);
    const std::vector<float> fc = reader.read_floats(*reader.find("transformer.h.1.mlp.c_fc.weight"));
    const float* ours = weights.data() + layout.at("h.1.mlp.c_fc.weight").offset;
    bool transposed = true;
    for (int64_t i = 0; i < C; ++i)
      for (int64_t o = 0; o < 4 * C; ++o) transposed &= fc[size_t(i * 4 * C + o)] == ours[size_t(o * C + i)];
    CHECK(transposed);
    const std::vector<float> wte = reader.read_floats(*reader.find("transformer.wte.weight"));
    CHECK(std::memcmp(wte.data(), weights.data() + layout.at("wte").offset, wte.size() * sizeof(float)) == 0);
    // The header is padded so the data section starts 8-byte aligned.
    std::ifstream in(out / "model.safetensors", std::ios::binary);
    uint64_t header_length = 0;
    in.read(reinterpret_cast<char*>(&header_length), 8);
    CHECK(header_length % 8 == 0);
  }

  SECTION("config.json describes GPT2LMHeadModel") {
    std::ifstream in(out / "config.json");
    const auto c = nlohmann::json::parse(in);
    CHECK(c["architectures"] == nlohmann::json{"GPT2LMHeadModel"});
    CHECK(c["model_type"] == "gpt2");
    CHECK(c["vocab_size"] == m.vocab_size);
    CHECK(c["n_positions"] == m.max_seq_len);
    CHECK(c["n_ctx"] == m.max_seq_len);
    CHECK(c["n_embd"] == m.d_model);
    CHECK(c["n_layer"] == m.n_layer);
    CHECK(c["n_head"] == m.n_head);
    CHECK(c["n_inner"].is_null());
    CHECK(c["activation_function"] == "gelu_new");
    CHECK(c["layer_norm_epsilon"] == 1e-5);
    CHECK(c["tie_word_embeddings"] == true);
    CHECK(c["resid_pdrop"] == 0.0);
    CHECK(c["torch_dtype"] == "float32");
  }

  SECTION("import gives a checkpoint with bit-identical weights, zero Adam state, the same loss, and it trains") {
    const srgpt::HfModel hf = srgpt::read_hf_model(out);
    CHECK(hf.model.n_layer == m.n_layer);
    CHECK(hf.model.max_seq_len == m.max_seq_len);
    CHECK(std::memcmp(hf.weights.data(), weights.data(), weights.size() * sizeof(float)) == 0);
    const fs::path imported =
        srgpt::write_imported_checkpoint(hf, run.config, run.tmp.path() / "imported", out.string());
    CHECK(imported == run.tmp.path() / "imported" / "checkpoints" / "step_00000000");
    CHECK(model_bin_tensors(imported, m, srgpt::DType::f32) == model_bin_tensors(run.checkpoint, m, srgpt::DType::f32));
    srgpt::CheckpointReader reader(imported);
    CHECK(reader.step() == 0);
    const srgpt::Layout layout = srgpt::gpt2_param_layout(m, 1);
    const std::vector<char> adam_m = srgpt::read_optimizer_state(reader, "m", srgpt::DType::f32, m, layout);
    CHECK(std::all_of(adam_m.begin(), adam_m.end(), [](char b) { return b == 0; }));
    CHECK(val_loss(imported, run.config) == val_loss(run.checkpoint, run.config));

    srgpt::Config resumed = run.config;
    resumed.out_dir = (run.tmp.path() / "resumed").string();
    srgpt::TrainOptions options;
    options.quiet = true;
    options.single_process = true;
    options.resume_from = imported;
    const srgpt::TrainResult r = srgpt::Trainer(resumed, options).run();
    CHECK(r.first_step == 1);
    CHECK(r.last_step == 2);
    // No token has been read at step 0: fine-tuning may take another seed
    // and sequence length than the import's config (it was refused for
    // "the data loader's saved position").
    resumed.out_dir = (run.tmp.path() / "resumed-other-data-order").string();
    resumed.train.seed = run.config.train.seed + 1;
    resumed.batch.seq_len = run.config.batch.seq_len / 2;
    CHECK(srgpt::Trainer(resumed, options).run().last_step == 2);

    expect_error([&] { srgpt::write_imported_checkpoint(hf, run.config, run.tmp.path() / "imported", out.string()); },
                 {"already holds checkpoint"});

    // A finite f32 value past bf16's range: refused by name before anything
    // is written (it was "the weights contain NaN or Inf" at the save,
    // leaving a lock file and an empty checkpoints/).
    srgpt::HfModel huge = hf;
    huge.weights[layout.at("h.1.mlp.c_fc.bias").offset + 5] = 3.4028235e38f;
    srgpt::Config bf16 = run.config;
    bf16.precision = srgpt::Precision::bf16_sr;
    expect_error([&] { srgpt::write_imported_checkpoint(huge, bf16, run.tmp.path() / "huge", out.string()); },
                 {"tensor 'transformer.h.1.mlp.c_fc.bias' holds 3.4028235e+38 at element 5", "overflows bf16",
                  "--precision fp32"});
    CHECK_FALSE(fs::exists(run.tmp.path() / "huge"));
    srgpt::Config fp32 = run.config;
    fp32.precision = srgpt::Precision::fp32;
    CHECK(fs::exists(srgpt::write_imported_checkpoint(huge, fp32, run.tmp.path() / "huge_fp32", out.string())));
  }

  SECTION("the original OpenAI layout (no transformer. prefix, mask buffers, tied lm_head) imports the same") {
    const srgpt::SafetensorsReader reader(out / "model.safetensors");
    std::vector<std::vector<char>> data;
    std::vector<srgpt::SafetensorsTensor> tensors;
    data.reserve(reader.tensors().size() + 2);
    for (const auto& e : reader.tensors()) {
      data.push_back(reader.read_bytes(e));
      tensors.push_back({e.name.substr(std::strlen("transformer.")), e.dtype, e.shape, data.back().data(),
                         data.back().size()});
      if (e.name == "transformer.wte.weight")
        tensors.push_back({"lm_head.weight", e.dtype, e.shape, data.back().data(), data.back().size()});
    }
    const std::vector<float> mask(size_t(m.max_seq_len) * m.max_seq_len, 1.0f);
    tensors.push_back({"h.0.attn.bias", srgpt::DType::f32, {1, 1, m.max_seq_len, m.max_seq_len}, mask.data(),
                       mask.size() * sizeof(float)});
    const fs::path openai = run.tmp.path() / "openai";
    fs::create_directories(openai);
    fs::copy_file(out / "config.json", openai / "config.json");
    srgpt::write_safetensors(openai / "model.safetensors", tensors, {});
    CHECK(srgpt::read_hf_model(openai).weights == weights);
  }
}

TEST_CASE("bf16 weights export as bf16 and import into bf16-sr bit-exactly", "[export]") {
  TrainedRun run(srgpt::Precision::bf16_sr);
  const srgpt::ModelConfig& m = run.config.model;
  const fs::path out = run.tmp.path() / "hf";
  srgpt::export_hf(m, run.weights(), out, {srgpt::DType::bf16, ""});
  const srgpt::SafetensorsReader reader(out / "model.safetensors");
  CHECK(reader.find("transformer.h.0.attn.c_attn.weight")->dtype == srgpt::DType::bf16);
  std::ifstream config_in(out / "config.json");
  CHECK(nlohmann::json::parse(config_in)["torch_dtype"] == "bfloat16");
  const fs::path imported = srgpt::write_imported_checkpoint(srgpt::read_hf_model(out), run.config,
                                                             run.tmp.path() / "imported", out.string());
  CHECK(model_bin_tensors(imported, m, srgpt::DType::bf16) == model_bin_tensors(run.checkpoint, m, srgpt::DType::bf16));
}

TEST_CASE("malformed safetensors and HF directories are clear errors", "[export]") {
  TempDir tmp("hf-bad");
  const fs::path file = tmp.path() / "model.safetensors";
  auto read = [&] { srgpt::SafetensorsReader reader(file); };
  const std::string tensor = R"("w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]})";
  const std::string data(16, '\1');

  SECTION("well-formed reference file") {
    write_raw(file, "{" + tensor + "}", data);
    srgpt::SafetensorsReader reader(file);
    REQUIRE(reader.tensors().size() == 1);
    CHECK(reader.read_bytes(reader.tensors()[0]) == std::vector<char>(data.begin(), data.end()));
  }
  SECTION("shorter than the length field") {
    std::ofstream(file, std::ios::binary) << "abc";
    expect_error(read, {"model.safetensors", "too short"});
  }
  SECTION("header length beyond the file") {
    write_raw(file, "{" + tensor + "}", data, 1 << 20);
    expect_error(read, {"model.safetensors", "header length", "past the end"});
  }
  SECTION("header not JSON") {
    write_raw(file, "{\"w\": {", data);
    expect_error(read, {"model.safetensors", "not valid JSON"});
  }
  SECTION("offsets outside the data section (truncated file)") {
    write_raw(file, "{" + tensor + "}", data.substr(0, 12));
    expect_error(read, {"model.safetensors", "'w'", "truncated"});
  }
  SECTION("unsupported dtype") {
    write_raw(file, R"({"w": {"dtype": "F16", "shape": [2, 4], "data_offsets": [0, 16]}})", data);
    expect_error(read, {"model.safetensors", "'w'", "F16", "F32, BF16"});
  }
  SECTION("data size not matching the shape") {
    write_raw(file, R"({"w": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, 16]}})", data);
    expect_error(read, {"'w'", "[3,2]", "24 bytes"});
    // 2^62 + 4 elements of 4 bytes: the byte count wrapped to 16, and the
    // message said 16 bytes did not match 16 bytes.
    write_raw(file, R"({"w": {"dtype": "F32", "shape": [4611686018427387908], "data_offsets": [0, 16]}})", data);
    expect_error(read, {"'w'", "needs more than 2^64 bytes"});
  }
  SECTION("overlapping tensors") {
    write_raw(file,
              "{" + tensor + R"(, "v": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})", data);
    expect_error(read, {"overlap", "'v'", "'w'"});
  }
  SECTION("missing files, missing or misshapen tensors, and unsupported architectures") {
    TrainedRun run(srgpt::Precision::fp32);
    const fs::path out = run.tmp.path() / "hf";
    srgpt::export_hf(run.config.model, run.weights(), out, {srgpt::DType::f32, ""});
    std::ifstream config_in(out / "config.json");
    const nlohmann::json config = nlohmann::json::parse(config_in);
    auto write_config = [&](const std::function<void(nlohmann::json&)>& edit) {
      nlohmann::json c = config;
      edit(c);
      std::ofstream(out / "config.json") << c.dump();
    };
    auto import = [&] { srgpt::read_hf_model(out); };

    write_config([](nlohmann::json& c) { c["n_positions"] = 32; });
    expect_error(import, {"model.safetensors", "transformer.wpe.weight", "[16,32]", "[32,32]"});
    write_config([](nlohmann::json& c) { c["n_layer"] = 3; });
    expect_error(import, {"transformer.h.2.ln_1.weight", "missing"});
    // A vocabulary far bigger than the file holds (found by
    // test_input_fuzz.cpp: the weights were allocated from config.json
    // before any tensor was checked, here 137 GB: std::bad_alloc).
    write_config([](nlohmann::json& c) { c["vocab_size"] = 1 << 30; });
    expect_error(import, {"model.safetensors", "transformer.wte.weight", "[64,32]", "[1073741824,32]"});
    write_config([](nlohmann::json& c) { c["activation_function"] = "relu"; });
    expect_error(import, {"config.json", "activation_function", "relu"});
    write_config([](nlohmann::json& c) { c.erase("n_embd"); });
    expect_error(import, {"config.json", "n_embd", "missing"});
    write_config([](nlohmann::json& c) { c["vocab_size"] = (1 << 30) + 1; });
    expect_error(import, {"config.json", "\"vocab_size\" = 1073741825", "an integer in [1, 2^30]"});
    write_config([](nlohmann::json&) {});
    CHECK(error_message(import).empty());

    // The exported tensors, each changed by `edit`, plus any `extra`, as
    // model.safetensors's replacement.
    struct ExtraTensor {
      std::string name;
      std::vector<int64_t> shape;
      std::vector<char> bytes;
    };
    auto rewrite = [&](const std::function<void(const std::string&, std::vector<char>&)>& edit,
                       const std::vector<ExtraTensor>& extra) {
      const srgpt::SafetensorsReader reader(out / "model.safetensors");
      std::vector<std::vector<char>> data;
      std::vector<srgpt::SafetensorsTensor> tensors;
      data.reserve(reader.tensors().size() + extra.size());
      for (const auto& e : reader.tensors()) {
        data.push_back(reader.read_bytes(e));
        edit(e.name, data.back());
        tensors.push_back({e.name, e.dtype, e.shape, data.back().data(), data.back().size()});
      }
      for (const ExtraTensor& t : extra) {
        data.push_back(t.bytes);
        tensors.push_back({t.name, srgpt::DType::f32, t.shape, data.back().data(), data.back().size()});
      }
      srgpt::write_safetensors(tmp.path() / "rewritten.safetensors", tensors, {});
    };
    // A NaN in a weight (before: "refusing to write a checkpoint at step 0").
    rewrite(
        [](const std::string& name, std::vector<char>& bytes) {
          const float nan = std::nanf("");
          if (name == "transformer.h.1.mlp.c_proj.bias") std::memcpy(bytes.data() + 4 * 3, &nan, 4);
        },
        {});
    fs::copy_file(out / "model.safetensors", tmp.path() / "finite.safetensors");
    fs::rename(tmp.path() / "rewritten.safetensors", out / "model.safetensors");
    expect_error(import, {"model.safetensors", "tensor 'transformer.h.1.mlp.c_proj.bias' holds nan at element 3"});
    fs::rename(tmp.path() / "finite.safetensors", out / "model.safetensors");

    // An extra, untied LM head; one transposed is named by its shape.
    const srgpt::SafetensorsEntry wte =
        *srgpt::SafetensorsReader(out / "model.safetensors").find("transformer.wte.weight");
    const std::vector<char> head_bytes(wte.end - wte.begin, '\x3f');
    rewrite([](const std::string&, std::vector<char>&) {}, {{"lm_head.weight", wte.shape, head_bytes}});
    fs::copy_file(out / "model.safetensors", tmp.path() / "without-head.safetensors");
    fs::rename(tmp.path() / "rewritten.safetensors", out / "model.safetensors");
    expect_error(import, {"lm_head.weight", "differs"});
    fs::copy_file(tmp.path() / "without-head.safetensors", out / "model.safetensors",
                  fs::copy_options::overwrite_existing);
    rewrite([](const std::string&, std::vector<char>&) {},
            {{"lm_head.weight", {wte.shape[1], wte.shape[0]}, head_bytes}});
    fs::rename(tmp.path() / "rewritten.safetensors", out / "model.safetensors");
    const std::string vocab = std::to_string(wte.shape[0]), width = std::to_string(wte.shape[1]);
    expect_error(import, {"lm_head.weight has shape [" + width + "," + vocab + "], but the token embedding's is [" +
                          vocab + "," + width + "]"});
    fs::remove(out / "model.safetensors");
    expect_error(import, {"model.safetensors", "missing"});
    fs::create_directory(out / "model.safetensors");
    expect_error(import, {"model.safetensors: not a regular file"});
    fs::remove(out / "config.json");
    expect_error(import, {"config.json", "missing"});
  }
}

TEST_CASE("a mixed-precision checkpoint exports its fp32 master weights, and imports back to the same state",
          "[export]") {
  TrainedRun run(srgpt::Precision::mixed);
  const srgpt::ModelConfig& m = run.config.model;
  const srgpt::Layout layout = srgpt::gpt2_param_layout(m, 1);
  srgpt::CheckpointReader reader(run.checkpoint);
  const std::vector<char> master_bytes = srgpt::read_optimizer_state(reader, "master", srgpt::DType::f32, m, layout);
  std::vector<float> master(layout.total());
  std::memcpy(master.data(), master_bytes.data(), master_bytes.size());
  // The bf16 working copy is what model.bin holds; the master is finer (it
  // used to be dropped by export).
  REQUIRE(master != run.weights());

  const std::string out = run.tmp.str("hf");
  auto exported = run_command(srgpt_bin() + " export " + run.tmp.str("run") + " --out " + out);
  INFO(exported.output);
  REQUIRE(exported.exit_code == 0);
  const srgpt::HfModel hf = srgpt::read_hf_model(out);
  for (const srgpt::TensorSpec& t : layout.tensors()) {
    INFO(t.name);
    const size_t n = t.name == "wte" ? size_t(m.vocab_size) * size_t(m.d_model) : t.numel;
    CHECK(std::memcmp(hf.weights.data() + t.offset, master.data() + t.offset, n * sizeof(float)) == 0);
  }
  const fs::path imported =
      srgpt::write_imported_checkpoint(hf, run.config, run.tmp.path() / "imported", out);
  CHECK(model_bin_tensors(imported, m, srgpt::DType::bf16) == model_bin_tensors(run.checkpoint, m, srgpt::DType::bf16));
  srgpt::CheckpointReader imported_reader(imported);
  CHECK(srgpt::read_optimizer_state(imported_reader, "master", srgpt::DType::f32, m, layout) == master_bytes);
}

TEST_CASE("srgpt export and import through the binary", "[export]") {
  TrainedRun run(srgpt::Precision::bf16_sr);
  const std::string bin = srgpt_bin();
  const std::string out = run.tmp.str("hf");
  auto exported = run_command(bin + " export --checkpoint " + run.tmp.str("run") + " --out " + out + " --dtype bf16");
  INFO(exported.output);
  REQUIRE(exported.exit_code == 0);
  CHECK(exported.output.find("model.safetensors") != std::string::npos);
  auto imported = run_command(bin + " import --hf " + out + " --out " + run.tmp.str("imported") +
                              " --set train.seed=5 --precision bf16-sr");
  INFO(imported.output);
  REQUIRE(imported.exit_code == 0);
  const fs::path checkpoint = run.tmp.path() / "imported" / "checkpoints" / "step_00000000";
  CHECK(model_bin_tensors(checkpoint, run.config.model, srgpt::DType::bf16) ==
        model_bin_tensors(run.checkpoint, run.config.model, srgpt::DType::bf16));
  CHECK(srgpt::CheckpointReader(checkpoint).state()["config"]["train"]["seed"] == 5);
  auto eval = run_command(bin + " eval --checkpoint " + run.tmp.str("imported") + " --data '" + run.config.data.val +
                          "'");
  CHECK(eval.exit_code == 0);
  // Training there without --resume started from random weights and then
  // rotated the imported checkpoint away, with exit 0.
  srgpt::Config over_import = run.config;
  over_import.out_dir = run.tmp.str("imported");
  over_import.checkpoint.keep = 1;
  std::ofstream(run.tmp.str("over_import.json")) << srgpt::config_to_json(over_import).dump();
  auto fresh = run_command(bin + " train --config " + run.tmp.str("over_import.json"));
  INFO(fresh.output);
  CHECK(fresh.exit_code == 1);
  CHECK(fresh.output.find("already holds a checkpoint at step 0 (" + checkpoint.string() +
                          "), but this run starts from fresh weights") != std::string::npos);
  CHECK(model_bin_tensors(checkpoint, run.config.model, srgpt::DType::bf16) ==
        model_bin_tensors(run.checkpoint, run.config.model, srgpt::DType::bf16));
  auto bad = run_command(bin + " import --hf " + run.tmp.str("nothing") + " --out " + run.tmp.str("x"));
  CHECK(bad.exit_code == 1);
  CHECK(bad.output.find("nothing") != std::string::npos);
  auto bad_format = run_command(bin + " export --checkpoint " + run.tmp.str("run") + " --out " + out + " --format onnx");
  CHECK(bad_format.exit_code != 0);
  // The model's shape is config.json's: a --set of it is refused, not dropped.
  auto reshaped = run_command(bin + " import --hf " + out + " --out " + run.tmp.str("reshaped") + " --set model.n_layer=3");
  CHECK(reshaped.exit_code == 1);
  CHECK(reshaped.output.find("--set model.n_layer=3") != std::string::npos);
  // A run directory whose name is not UTF-8 cannot go into the checkpoint's
  // config (JSON): a clear error (found by the command-line fuzz: it escaped
  // as nlohmann's type_error 316).
  auto not_utf8 = run_command(bin + " import --hf " + out + " --out " + shell_quoted(run.tmp.str("run\xc3")));
  CHECK(not_utf8.exit_code == 1);
  CHECK(not_utf8.output.find("is not valid UTF-8") != std::string::npos);
  CHECK_FALSE(fs::exists(run.tmp.path() / "run\xc3"));
  auto file_as_checkpoint = run_command(bin + " info " + out + "/config.json");
  CHECK(file_as_checkpoint.exit_code == 1);
  CHECK(file_as_checkpoint.output.find("is not a directory") != std::string::npos);
}

TEST_CASE("a GPT-2-vocabulary export carries the tokenizer files under their HF names", "[export]") {
  TempDir tmp("hf-gpt2");
  srgpt::ModelConfig m;
  m.vocab_size = 50257;
  m.max_seq_len = 8;
  m.n_layer = 1;
  m.n_head = 2;
  m.d_model = 16;
  const srgpt::Layout layout = srgpt::gpt2_param_layout(m, 1);
  const std::vector<float> weights = srgpt::gpt2_initial_weights(m, layout, 3, 0.02);
  const std::string tokenizer_dir = std::string(SRGPT_SOURCE_DIR) + "/data/tokenizer/gpt2";
  if (!fs::exists(tokenizer_dir + "/encoder.json")) FAIL("run scripts/get_tokenizer.sh: no " << tokenizer_dir);
  auto read_all = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };

  const auto files = srgpt::export_hf(m, weights, tmp.path() / "hf", {srgpt::DType::f32, tokenizer_dir});
  CHECK(files.size() == 4);
  CHECK(read_all(tmp.path() / "hf" / "vocab.json") == read_all(tokenizer_dir + "/encoder.json"));
  CHECK(read_all(tmp.path() / "hf" / "merges.txt") == read_all(tokenizer_dir + "/vocab.bpe"));
  std::ifstream config_in(tmp.path() / "hf" / "config.json");
  const auto config = nlohmann::json::parse(config_in);
  CHECK(config["eos_token_id"] == 50256);
  CHECK(config["bos_token_id"] == 50256);
  // The 50257 real rows, not the 50304 padded ones, and they import back.
  CHECK(srgpt::SafetensorsReader(tmp.path() / "hf" / "model.safetensors").find("transformer.wte.weight")->shape ==
        std::vector<int64_t>{50257, 16});
  CHECK(srgpt::read_hf_model(tmp.path() / "hf").weights == weights);

  // A padded GPT-2 vocabulary (50304, as other trainers set it) keeps all
  // its rows and gets the tokenizer files too.
  srgpt::ModelConfig padded = m;
  padded.vocab_size = 50304;
  const std::vector<float> padded_weights =
      srgpt::gpt2_initial_weights(padded, srgpt::gpt2_param_layout(padded, 1), 4, 0.02);
  CHECK(srgpt::export_hf(padded, padded_weights, tmp.path() / "padded", {srgpt::DType::f32, tokenizer_dir}).size() ==
        4);
  CHECK(read_all(tmp.path() / "padded" / "vocab.json") == read_all(tokenizer_dir + "/encoder.json"));
  std::ifstream padded_config_in(tmp.path() / "padded" / "config.json");
  const auto padded_config = nlohmann::json::parse(padded_config_in);
  CHECK(padded_config["vocab_size"] == 50304);
  CHECK(padded_config["eos_token_id"] == 50256);
  CHECK(srgpt::read_hf_model(tmp.path() / "padded").weights == padded_weights);

  // Without the tokenizer files the model is still exported.
  const auto bare = srgpt::export_hf(m, weights, tmp.path() / "bare", {srgpt::DType::f32, tmp.str("none")});
  CHECK(bare.size() == 2);
  CHECK(!fs::exists(tmp.path() / "bare" / "vocab.json"));

  // Corrupt tokenizer files are an error, not a copy.
  fs::create_directories(tmp.path() / "truncated");
  std::ofstream(tmp.path() / "truncated" / "encoder.json") << read_all(tokenizer_dir + "/encoder.json").substr(0, 5000);
  fs::copy_file(tokenizer_dir + "/vocab.bpe", tmp.path() / "truncated" / "vocab.bpe");
  const std::string corrupt = error_message(
      [&] { srgpt::export_hf(m, weights, tmp.path() / "corrupt", {srgpt::DType::f32, tmp.str("truncated")}); });
  CHECK(corrupt.find("encoder.json") != std::string::npos);

  // A byte-level model exported over the GPT-2 export drops its tokenizer files.
  srgpt::ModelConfig bytes = m;
  bytes.vocab_size = 256;
  const srgpt::Layout byte_layout = srgpt::gpt2_param_layout(bytes, 1);
  srgpt::export_hf(bytes, srgpt::gpt2_initial_weights(bytes, byte_layout, 3, 0.02), tmp.path() / "hf",
                   {srgpt::DType::f32, tokenizer_dir});
  CHECK(!fs::exists(tmp.path() / "hf" / "vocab.json"));
  CHECK(!fs::exists(tmp.path() / "hf" / "merges.txt"));
}
