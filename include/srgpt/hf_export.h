#pragma once
// The Hugging Face GPT-2 layout (docs/formats.md): `srgpt export --format hf`
// writes it, `srgpt import` reads it.
//
//   model.safetensors  transformer.wte.weight [vocab_size, C] (the real rows
//                      only), transformer.wpe.weight, transformer.h.<i>.*,
//                      transformer.ln_f.*; the four block matrices in
//                      Conv1D orientation [in, out], i.e. transposed from
//                      srgpt's [out, in]; no lm_head (tied to wte)
//   config.json        GPT2Config keys
//   vocab.json, merges.txt   GPT-2 tokenizer files (a vocabulary that fits
//                            GPT-2's: 50257 tokens, or padded as 50304)
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "srgpt/config.h"
#include "srgpt/dtype.h"
#include "srgpt/model_config.h"

namespace srgpt {

// The Hugging Face name of a tensor of gpt2_param_layout ("wte" ->
// "transformer.wte.weight", "h.0.ln_1.bias" -> "transformer.h.0.ln_1.bias").
std::string hf_tensor_name(const std::string& layout_name);
// Whether the tensor is stored transposed there (the block matrices).
bool hf_transposed(const std::string& layout_name);
// The config.json written for a model.
nlohmann::json hf_config_json(const ModelConfig& model, DType dtype);

struct HfExportOptions {
  DType dtype = DType::f32;  // of the safetensors data: f32 or bf16 (rounded to nearest)
  // Where encoder.json and vocab.bpe are (empty: kDefaultGpt2TokenizerDir);
  // copied as vocab.json and merges.txt for a 50257-token model or a padded
  // one (model_vocabulary_fits), skipped with a warning when absent.
  std::string tokenizer_dir;
};

// Writes model.safetensors, config.json and the tokenizer files into
// out_dir (created if needed), each file atomically. `weights` are fp32
// values in gpt2_param_layout(model, 1). Returns the files written.
std::vector<std::filesystem::path> export_hf(const ModelConfig& model, const std::vector<float>& weights,
                                             const std::filesystem::path& out_dir, const HfExportOptions& options);

// A GPT-2 read from a Hugging Face directory.
struct HfModel {
  ModelConfig model;
  std::vector<float> weights;  // in gpt2_param_layout(model, 1); padding zero
};

// Reads DIR/config.json and DIR/model.safetensors (F32, BF16 or F64 data;
// names with or without the "transformer." prefix of GPT2LMHeadModel, so the
// original OpenAI checkpoints load too; the causal-mask buffers
// h.<i>.attn.bias / masked_bias are ignored, and an lm_head.weight must equal
// wte). The config must describe GPT-2 as srgpt computes it (tanh GELU,
// LayerNorm epsilon 1e-5, n_inner 4 * n_embd, tied embeddings). Errors name
// the file and the key or tensor.
HfModel read_hf_model(const std::filesystem::path& dir);

// Default settings for an imported model: Config's defaults with the batch
// shortened to fit the model's context when it is shorter.
Config default_import_settings(const ModelConfig& model);

// Writes run_dir/checkpoints/step_00000000 holding the model's weights and
// zero optimizer state, through Trainer::save, so `srgpt train
// --resume-from` and `srgpt eval` accept it. `settings` supplies every key
// but the model shape (hf.model) and out_dir (run_dir); `origin` names the
// model's source in errors. run_dir must not hold checkpoints yet. Returns
// the checkpoint directory.
std::filesystem::path write_imported_checkpoint(const HfModel& hf, Config settings,
                                                const std::filesystem::path& run_dir, const std::string& origin);

}  // namespace srgpt
