#include "srgpt/hf_export.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>

#include <spdlog/spdlog.h>

#include "srgpt/bf16.h"
#include "srgpt/checkpoint.h"
#include "srgpt/error.h"
#include "srgpt/json_parse.h"
#include "srgpt/model.h"
#include "srgpt/posix_file.h"
#include "srgpt/safetensors.h"
#include "srgpt/sample.h"
#include "srgpt/tokenizer.h"
#include "srgpt/trainer.h"

namespace srgpt {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "transformer.";
constexpr const char* kWeightsFile = "model.safetensors";
constexpr const char* kConfigFile = "config.json";
// The Hugging Face tokenizer file names for encoder.json and vocab.bpe.
constexpr const char* kHfVocabFile = "vocab.json";
constexpr const char* kHfMergesFile = "merges.txt";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string strip_prefix(const std::string& name) {
  return name.rfind(kPrefix, 0) == 0 ? name.substr(std::strlen(kPrefix)) : name;
}

// The shape a layout tensor has in the Hugging Face file.
std::vector<int64_t> hf_shape(const TensorSpec& t, const ModelConfig& model) {
  if (t.name == "wte") return {model.vocab_size, model.d_model};
  if (hf_transposed(t.name)) return {t.shape[1], t.shape[0]};
  return t.shape;
}

// [rows, cols] row-major -> [cols, rows] row-major.
std::vector<float> transposed(const float* values, int64_t rows, int64_t cols) {
  std::vector<float> out(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[size_t(c * rows + r)] = values[size_t(r * cols + c)];
  return out;
}

std::vector<char> encode(const std::vector<float>& values, DType dtype) {
  std::vector<char> bytes(values.size() * dtype_size(dtype));
  if (dtype == DType::f32) {
    std::memcpy(bytes.data(), values.data(), bytes.size());
  } else {
    bf16* out = reinterpret_cast<bf16*>(bytes.data());
    for (size_t i = 0; i < values.size(); ++i) out[i] = float_to_bf16_rn(values[i]);
  }
  return bytes;
}

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read {}: {}", path.string(), std::strerror(errno));
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_text_atomically(const fs::path& path, const std::string& text) {
  write_file_atomically(path, [&](const ByteSink& sink) { sink(text.data(), text.size()); });
}

std::string shape_text(const std::vector<int64_t>& shape) { return nlohmann::json(shape).dump(); }

// The keys of config.json srgpt needs, and the ones that must not describe a
// different architecture.
ModelConfig parse_hf_config(const nlohmann::json& c, const fs::path& file) {
  if (!c.is_object()) fail("{}: not a JSON object", file.string());
  auto positive_int = [&](const char* key) -> int {
    const auto it = c.find(key);
    if (it == c.end() || it->is_null()) fail("{}: key \"{}\" is missing", file.string(), key);
    const std::optional<int> n = json_integer<int>(*it);
    if (!n || *n < 1 || *n > (1 << 30))
      fail("{}: \"{}\" = {}; allowed: an integer in [1, 2^30]", file.string(), key, it->dump());
    return *n;
  };
  auto must_be = [&](const char* key, const nlohmann::json& allowed, const char* why) {
    const auto it = c.find(key);
    if (it == c.end() || it->is_null()) return;
    for (const auto& a : allowed)
      if (*it == a) return;
    fail("{}: \"{}\" = {}; srgpt supports only {} ({})", file.string(), key, it->dump(), allowed.dump(), why);
  };
  ModelConfig m;
  m.vocab_size = positive_int("vocab_size");
  m.d_model = positive_int("n_embd");
  m.n_layer = positive_int("n_layer");
  m.n_head = positive_int("n_head");
  m.max_seq_len = positive_int(c.contains("n_positions") ? "n_positions" : "n_ctx");
  if (m.d_model % m.n_head != 0)
    fail("{}: n_embd = {} is not divisible by n_head = {}", file.string(), m.d_model, m.n_head);
  if (const std::string size = model_size_problem(m); !size.empty())
    fail("{}: {} (srgpt's names for n_embd, n_positions: d_model, max_seq_len)", file.string(), size);
  must_be("model_type", {"gpt2"}, "the GPT-2 architecture");
  must_be("activation_function", {"gelu_new", "gelu_pytorch_tanh"}, "GPT-2's tanh approximation of GELU");
  must_be("n_inner", {4 * m.d_model}, "an MLP 4 * n_embd wide");
  must_be("tie_word_embeddings", {true}, "the LM head is the token embedding");
  must_be("scale_attn_weights", {true}, "attention scores scaled by 1/sqrt(head size)");
  must_be("scale_attn_by_inverse_layer_idx", {false}, "no per-layer attention scaling");
  const auto eps = c.find("layer_norm_epsilon");
  if (eps != c.end() && !eps->is_null() &&
      (!eps->is_number() || std::abs(eps->get<double>() - kLayerNormEps) > 1e-6 * kLayerNormEps))
    fail("{}: \"layer_norm_epsilon\" = {}; srgpt's LayerNorm uses {}", file.string(), eps->dump(), kLayerNormEps);
  return m;
}

// Buffers of GPT2Attention (the causal mask) that some checkpoints store.
bool is_mask_buffer(const std::string& name) {
  return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias");
}

// Copies encoder.json and vocab.bpe under their Hugging Face names.
std::vector<fs::path> copy_tokenizer_files(const std::string& tokenizer_dir, const fs::path& out_dir) {
  const fs::path dir = tokenizer_dir.empty() ? fs::path(kDefaultGpt2TokenizerDir) : fs::path(tokenizer_dir);
  const fs::path encoder = dir / "encoder.json", merges = dir / "vocab.bpe";
  if (!fs::is_regular_file(encoder) || !fs::is_regular_file(merges)) {
    spdlog::warn("GPT-2 tokenizer files not found in {} (encoder.json, vocab.bpe): {} and {} not written; run "
                 "scripts/get_tokenizer.sh or pass --tokenizer-dir",
                 dir.string(), kHfVocabFile, kHfMergesFile);
    return {};
  }
  // Loading them checks them (as prepare and sample would): a truncated or
  // corrupt file is an error naming it, not a copy.
  make_tokenizer("gpt2", dir.string());
  write_text_atomically(out_dir / kHfVocabFile, read_text_file(encoder));
  write_text_atomically(out_dir / kHfMergesFile, read_text_file(merges));
  return {out_dir / kHfVocabFile, out_dir / kHfMergesFile};
}

}  // namespace

std::string hf_tensor_name(const std::string& layout_name) {
  if (layout_name == "wte" || layout_name == "wpe") return kPrefix + layout_name + ".weight";
  return kPrefix + layout_name;
}

bool hf_transposed(const std::string& layout_name) {
  for (const char* matrix : {".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"})
    if (ends_with(layout_name, matrix)) return true;
  return false;
}

nlohmann::json hf_config_json(const ModelConfig& model, DType dtype) {
  nlohmann::json eot = nullptr;
  if (model_vocabulary_fits(model.vocab_size, kGpt2VocabSize)) eot = kGpt2EndOfText;
  if (model_vocabulary_fits(model.vocab_size, ByteTokenizer().vocab_size())) eot = ByteTokenizer().eot_token();
  return {
      {"architectures", {"GPT2LMHeadModel"}},
      {"model_type", "gpt2"},
      {"vocab_size", model.vocab_size},
      {"n_positions", model.max_seq_len},
      {"n_ctx", model.max_seq_len},
      {"n_embd", model.d_model},
      {"n_layer", model.n_layer},
      {"n_head", model.n_head},
      {"n_inner", nullptr},
      {"activation_function", "gelu_new"},
      {"layer_norm_epsilon", kLayerNormEps},
      {"resid_pdrop", 0.0},
      {"embd_pdrop", 0.0},
      {"attn_pdrop", 0.0},
      {"initializer_range", 0.02},
      {"scale_attn_weights", true},
      {"scale_attn_by_inverse_layer_idx", false},
      {"reorder_and_upcast_attn", false},
      {"use_cache", true},
      {"tie_word_embeddings", true},
      {"bos_token_id", eot},
      {"eos_token_id", eot},
      {"torch_dtype", dtype == DType::bf16 ? "bfloat16" : "float32"},
  };
}

std::vector<fs::path> export_hf(const ModelConfig& model, const std::vector<float>& weights, const fs::path& out_dir,
                                const HfExportOptions& options) {
  if (options.dtype != DType::f32 && options.dtype != DType::bf16)
    fail("export dtype {} is not supported; allowed: f32, bf16", dtype_name(options.dtype));
  const Layout layout = gpt2_param_layout(model, 1);
  if (weights.size() != layout.total())
    fail("internal: {} weights for a layout of {} elements", weights.size(), layout.total());
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) fail("cannot create output directory {}: {}", out_dir.string(), ec.message());

  std::vector<std::vector<char>> data;
  data.reserve(layout.tensors().size());
  std::vector<SafetensorsTensor> tensors;
  for (const TensorSpec& t : layout.tensors()) {
    const std::vector<int64_t> shape = hf_shape(t, model);
    const float* ours = weights.data() + t.offset;
    std::vector<float> values = hf_transposed(t.name)
                                    ? transposed(ours, t.shape[0], t.shape[1])
                                    : std::vector<float>(ours, ours + shape[0] * (shape.size() > 1 ? shape[1] : 1));
    data.push_back(encode(values, options.dtype));
    tensors.push_back({hf_tensor_name(t.name), options.dtype, shape, data.back().data(), data.back().size()});
  }
  std::vector<fs::path> written{out_dir / kWeightsFile, out_dir / kConfigFile};
  write_safetensors(written[0], tensors, {{"format", "pt"}});
  write_text_atomically(written[1], hf_config_json(model, options.dtype).dump(2) + "\n");
  if (model_vocabulary_fits(model.vocab_size, kGpt2VocabSize)) {
    for (const fs::path& f : copy_tokenizer_files(options.tokenizer_dir, out_dir)) written.push_back(f);
  } else {
    // An earlier GPT-2 export's tokenizer files would describe another vocabulary.
    for (const char* stale : {kHfVocabFile, kHfMergesFile}) {
      fs::remove(out_dir / stale, ec);
      if (ec) fail("cannot remove {} (left by an earlier export): {}", (out_dir / stale).string(), ec.message());
    }
  }
  return written;
}

HfModel read_hf_model(const fs::path& dir) {
  std::error_code ec;
  const fs::file_type type = fs::status(dir, ec).type();
  if (type == fs::file_type::not_found) fail("{}: no such directory", dir.string());
  if (type != fs::file_type::directory)
    fail("{}: {}; a Hugging Face GPT-2 directory holds {} and {}", dir.string(),
         ec ? "cannot be read: " + ec.message() : std::string("not a directory"), kConfigFile, kWeightsFile);
  const fs::path config_path = dir / kConfigFile, weights_path = dir / kWeightsFile;
  if (!fs::is_regular_file(config_path, ec))
    fail("{}: missing; a Hugging Face GPT-2 directory holds {} and {}", config_path.string(), kConfigFile,
         kWeightsFile);
  const nlohmann::json config = parse_json(read_text_file(config_path), config_path.string());
  HfModel hf;
  hf.model = parse_hf_config(config, config_path);
  if (fs::exists(weights_path, ec) && !fs::is_regular_file(weights_path, ec))
    fail("{}: not a regular file", weights_path.string());
  if (!fs::is_regular_file(weights_path, ec))
    fail("{}: missing; srgpt reads weights only from safetensors{}", weights_path.string(),
         fs::exists(dir / "pytorch_model.bin") ? " (pytorch_model.bin is a Python pickle; convert it with "
                                                 "transformers' save_pretrained(safe_serialization=True))"
                                               : "");
  const SafetensorsReader reader(weights_path);
  const ModelConfig& m = hf.model;
  const Layout layout = gpt2_param_layout(m, 1);
  // Every tensor is found and its shape checked before the weights are
  // allocated: the tensors lie inside the file, so a damaged config.json
  // (vocab_size 64 -> 8388608) fails here instead of sizing gigabytes.
  std::vector<const SafetensorsEntry*> entries;
  for (const TensorSpec& t : layout.tensors()) {
    const std::string name = hf_tensor_name(t.name);
    const SafetensorsEntry* entry = reader.find(name);
    if (!entry) entry = reader.find(strip_prefix(name));
    if (!entry)
      fail("{}: tensor '{}' (or '{}') is missing; config.json describes GPT-2 with n_layer = {}", weights_path.string(),
           name, strip_prefix(name), m.n_layer);
    const std::vector<int64_t> shape = hf_shape(t, m);
    if (entry->shape != shape)
      fail("{}: tensor '{}' has shape {}, but config.json (vocab_size {}, n_positions {}, n_embd {}) needs {}",
           weights_path.string(), entry->name, shape_text(entry->shape), m.vocab_size, m.max_seq_len, m.d_model,
           shape_text(shape));
    entries.push_back(entry);
  }
  hf.weights.assign(layout.total(), 0.0f);
  std::set<std::string> used;
  for (size_t i = 0; i < entries.size(); ++i) {
    const TensorSpec& t = layout.tensors()[i];
    const std::vector<float> values = reader.read_floats(*entries[i]);
    const auto bad = std::find_if(values.begin(), values.end(), [](float x) { return !std::isfinite(x); });
    if (bad != values.end())
      fail("{}: tensor '{}' holds {} at element {}; srgpt imports only finite weights", weights_path.string(),
           entries[i]->name, *bad, bad - values.begin());
    const std::vector<float> ours =
        hf_transposed(t.name) ? transposed(values.data(), entries[i]->shape[0], entries[i]->shape[1]) : values;
    std::copy(ours.begin(), ours.end(), hf.weights.begin() + long(t.offset));
    used.insert(entries[i]->name);
  }
  for (const SafetensorsEntry& e : reader.tensors()) {
    if (used.count(e.name) || is_mask_buffer(e.name)) continue;
    if (strip_prefix(e.name) == "lm_head.weight" || e.name == "lm_head.weight") {
      const std::vector<int64_t> wte_shape{m.vocab_size, m.d_model};
      if (e.shape != wte_shape)
        fail("{}: lm_head.weight has shape {}, but the token embedding's is {}; srgpt's GPT-2 ties them and cannot "
             "hold a separate LM head",
             weights_path.string(), shape_text(e.shape), shape_text(wte_shape));
      const std::vector<float> head = reader.read_floats(e);
      const float* wte = hf.weights.data() + layout.at("wte").offset;
      if (std::memcmp(head.data(), wte, head.size() * sizeof(float)) != 0)
        fail("{}: lm_head.weight differs from the token embedding; srgpt's GPT-2 ties them and cannot hold a separate "
             "LM head",
             weights_path.string());
      continue;
    }
    fail("{}: unexpected tensor '{}' (shape {}); it is not a parameter of GPT-2", weights_path.string(), e.name,
         shape_text(e.shape));
  }
  return hf;
}

Config default_import_settings(const ModelConfig& model) {
  Config settings;
  settings.model = model;
  if (settings.batch.seq_len > model.max_seq_len) {
    settings.batch.seq_len = model.max_seq_len;
    settings.batch.total_tokens = int64_t(settings.batch.micro_batch) * settings.batch.seq_len;
  }
  return settings;
}

fs::path write_imported_checkpoint(const HfModel& hf, Config settings, const fs::path& run_dir,
                                   const std::string& origin) {
  if (auto existing = latest_checkpoint(run_dir / "checkpoints"))
    fail("{} already holds checkpoint {}; import into a new run directory", run_dir.string(), existing->string());
  settings.model = hf.model;
  settings.out_dir = run_dir.string();
  // Re-parsed as a whole, so a setting that does not fit the imported shape
  // (batch.seq_len > n_positions) is reported by key.
  const Config config = config_from_json(config_to_json(settings), "the import settings with the model of " + origin);
  // Finite in the source's f32 is not enough: a value past bf16's largest
  // finite one rounds to infinity, which the save would refuse naming nothing.
  const Layout layout = gpt2_param_layout(config.model, 1);
  if (compute_dtype(config.precision) == DType::bf16)
    for (const TensorSpec& t : layout.tensors())
      for (size_t i = 0; i < t.numel; ++i) {
        const float v = hf.weights[t.offset + i];
        if (!std::isfinite(bf16_to_float(float_to_bf16_rn(v))))
          fail("{}: tensor '{}' holds {} at element {} (of srgpt's layout), which overflows bf16 when rounded for "
               "precision \"{}\"; import with --precision fp32",
               origin, hf_tensor_name(t.name), v, i, precision_name(config.precision));
      }
  TrainOptions options;
  options.quiet = true;
  options.single_process = true;
  options.without_data = true;
  Trainer trainer(config, options);
  trainer.optimizer().set_weights(hf.weights);
  return trainer.save(0);
}

}  // namespace srgpt
