// `srgpt export`: a checkpoint in the Hugging Face GPT-2 layout.
#include <cstdio>
#include <memory>
#include <string>

#include "srgpt/checkpoint.h"
#include "srgpt/cli.h"
#include "srgpt/error.h"
#include "srgpt/hf_export.h"
#include "srgpt/sample.h"
#include "srgpt/tokenizer.h"
#include "srgpt/trainer.h"

namespace srgpt {

void add_export_command(CLI::App& app) {
  struct Args {
    std::string checkpoint, out, format = "hf", dtype = "f32";
    HfExportOptions options;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("export", "Write a checkpoint as a Hugging Face GPT-2 model directory");
  add_checkpoint_option(*cmd, args->checkpoint);
  cmd->add_option("--out", args->out, "Output directory (created if needed; files in it are replaced)")
      ->required()
      ->check(non_empty_path("the directory to write"));
  cmd->add_option("--format", args->format, "Output format: hf (the only one)")
      ->check(CLI::IsMember({"hf"}))
      ->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "Data type of the weights: f32, or bf16 (rounded to nearest)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  const CLI::Option* tokenizer_dir =
      cmd->add_option("--tokenizer-dir", args->options.tokenizer_dir,
                      "Directory with GPT-2's encoder.json and vocab.bpe, copied as vocab.json and merges.txt for a "
                      "50257-token model or a padded one such as 50304 (default data/tokenizer/gpt2)");
  cmd->footer(
      "Writes model.safetensors (transformer.* names, Conv1D [in, out] matrices, the real vocabulary rows of\n"
      "wte, no lm_head since it is tied), config.json (GPT2Config) and, for the GPT-2 vocabulary, the tokenizer\n"
      "files, so that transformers.GPT2LMHeadModel.from_pretrained(OUT) loads the model. Each file is written\n"
      "to a temporary name and renamed. Exporting bf16 weights as f32 is exact; a mixed-precision checkpoint\n"
      "exports its fp32 master weights. See docs/formats.md.");
  cmd->callback([args, tokenizer_dir]() {
    if (!parse_dtype(args->dtype, &args->options.dtype)) fail("internal: --dtype {} passed its check", args->dtype);
    const std::filesystem::path checkpoint = resolve_checkpoint_dir(args->checkpoint);
    ModelConfig model;
    std::vector<float> weights;
    int64_t step = 0;
    {
      CheckpointReader reader(checkpoint);
      LoadedModel lm = load_model_for_inference(reader, 1, 1);
      model = lm.config.model;
      weights = trained_weights_as_float(reader, lm);
      step = lm.step;
    }
    if (!model_vocabulary_fits(model.vocab_size, kGpt2VocabSize))
      warn_unused_option(*tokenizer_dir, fmt::format("a {}-token model gets no GPT-2 tokenizer files",
                                                     model.vocab_size));
    for (const auto& file : export_hf(model, weights, args->out, args->options))
      std::printf("wrote %s\n", file.string().c_str());
    std::printf("exported %s (step %lld) as %s\n", checkpoint.string().c_str(), static_cast<long long>(step),
                args->dtype.c_str());
  });
}

}  // namespace srgpt
