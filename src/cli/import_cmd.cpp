// `srgpt import`: a Hugging Face GPT-2 directory as an srgpt checkpoint.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "srgpt/cli.h"
#include "srgpt/config.h"
#include "srgpt/error.h"
#include "srgpt/hf_export.h"
#include "srgpt/precision.h"
#include "srgpt/tokenizer.h"

namespace srgpt {

void add_import_command(CLI::App& app) {
  struct Args {
    std::string hf_dir, out, config, precision;
    std::vector<std::string> overrides;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd =
      app.add_subcommand("import", "Turn a Hugging Face GPT-2 directory into an srgpt checkpoint at step 0");
  cmd->add_option("--hf", args->hf_dir, "Directory with config.json and model.safetensors (F32, BF16 or F64)")
      ->required()
      ->check(non_empty_path("a Hugging Face GPT-2 directory"));
  cmd->add_option("--out", args->out, "Run directory to create; must not hold checkpoints yet")
      ->required()
      ->check(non_empty_path("the run directory to create"));
  cmd->add_option("--config", args->config,
                  "JSON run config to take every setting but the model shape from (default: srgpt's defaults, "
                  "with the batch shortened to fit a short context)");
  cmd->add_option("--set", args->overrides, "Override a setting, e.g. --set optimizer.lr=1e-4 (repeatable)");
  std::vector<std::string> precisions;
  for (Precision p : kPrecisions) precisions.push_back(precision_name(p));
  cmd->add_option("--precision", args->precision, "Precision of the checkpoint (default: the config's)")
      ->check(CLI::IsMember(precisions));
  cmd->footer(
      "Writes OUT/checkpoints/step_00000000 (model.bin in the precision's dtype, zero Adam state), so that\n"
      "  srgpt eval --checkpoint OUT --data ...      evaluates the model, and\n"
      "  srgpt train --config X --resume-from OUT/checkpoints/step_00000000\n"
      "continues training it (X must have the same model shape and precision). Weights from another dtype are\n"
      "rounded to nearest. Tensor names may carry GPT2LMHeadModel's \"transformer.\" prefix or not (OpenAI's\n"
      "original files); the attention-mask buffers are ignored and an lm_head.weight must equal wte.");
  cmd->callback([args]() {
    const HfModel hf = read_hf_model(args->hf_dir);
    nlohmann::json settings = config_to_json(args->config.empty() ? default_import_settings(hf.model)
                                                                  : load_config(args->config, {}));
    // The model's shape is config.json's; a --set of model.* would be
    // dropped below, so it is refused rather than ignored.
    for (const std::string& assignment : args->overrides) {
      if (assignment.rfind("model.", 0) == 0)
        fail("--set {}: the model's shape comes from {}/config.json; import cannot change it", assignment,
             args->hf_dir);
      apply_override(settings, assignment);
    }
    if (!args->precision.empty()) settings["precision"] = args->precision;
    settings["model"] = config_to_json(default_import_settings(hf.model))["model"];
    // The run directory is recorded in the checkpoint's config, which is JSON.
    if (!is_valid_utf8(args->out))
      fail("--out '{}': the name is not valid UTF-8; allowed: a UTF-8 path, since the checkpoint's config records it",
           args->out);
    const std::string origin = args->config.empty() ? "the import defaults" : args->config;
    const std::filesystem::path dir = write_imported_checkpoint(hf, config_from_json(settings, origin), args->out,
                                                                args->hf_dir);
    std::printf("imported %s (%d layers, %d heads, d_model %d, vocab %d, context %d) into %s\n", args->hf_dir.c_str(),
                hf.model.n_layer, hf.model.n_head, hf.model.d_model, hf.model.vocab_size, hf.model.max_seq_len,
                dir.string().c_str());
  });
}

}  // namespace srgpt
