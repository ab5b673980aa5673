// `srgpt sample`: generate text from a checkpoint.
#include <cstdio>
#include <memory>
#include <string>

#include "srgpt/cli.h"
#include "srgpt/error.h"
#include "srgpt/sample.h"
#include "srgpt/tokenizer.h"
#include "srgpt/trainer.h"

namespace srgpt {

namespace {

// The tokenizer named by --tokenizer, or the built-in one that the model's
// vocabulary fits (equal or padded); the vocabulary must fit it either way.
std::unique_ptr<Tokenizer> tokenizer_for(const std::string& name, const std::string& dir, int model_vocab) {
  std::string chosen = name;
  if (chosen.empty()) {
    if (model_vocabulary_fits(model_vocab, ByteTokenizer().vocab_size())) chosen = "byte";
    else if (model_vocabulary_fits(model_vocab, kGpt2VocabSize)) chosen = "gpt2";
    else
      fail("the model's vocabulary has {} tokens, which fits neither built-in tokenizer (gpt2: {}, byte: {}), so "
           "srgpt cannot turn a prompt into its tokens or its tokens into text; sample needs a model trained with "
           "model.vocab_size {} or {} (or {} rounded up to a multiple of a power of two from 8 to 1024 below it, "
           "such as 50304)",
           model_vocab, kGpt2VocabSize, ByteTokenizer().vocab_size(), kGpt2VocabSize, ByteTokenizer().vocab_size(),
           kGpt2VocabSize);
  }
  std::unique_ptr<Tokenizer> tokenizer = make_tokenizer(chosen, dir);
  if (!model_vocabulary_fits(model_vocab, tokenizer->vocab_size()))
    fail("--tokenizer {} has {} tokens, but the model's vocabulary (model.vocab_size) has {}; the model's must be "
         "the tokenizer's, or that rounded up to a multiple of a power of two from 8 to 1024 below it (50304 for "
         "gpt2; none for byte)",
         chosen, tokenizer->vocab_size(), model_vocab);
  return tokenizer;
}

// The checkpoint's model as a host decoder; the backend copy of the
// weights is released on return.
Gpt2Decoder load_decoder(const std::filesystem::path& checkpoint) {
  LoadedModel lm = load_model_for_inference(checkpoint, 1, 1);
  return Gpt2Decoder(lm.config.model, weights_as_float(*lm.params));
}

// Each piece as it is generated; generation stops at once when the output
// cannot be written (a full disk).
void write_bytes(std::string_view bytes) {
  std::fwrite(bytes.data(), 1, bytes.size(), stdout);
  flush_stdout();
}

}  // namespace

void add_sample_command(CLI::App& app) {
  struct Args {
    std::string checkpoint, prompt, tokenizer, tokenizer_dir;
    SampleOptions options;
  };
  auto args = std::make_shared<Args>();
  SampleOptions& o = args->options;
  CLI::App* cmd = app.add_subcommand("sample", "Generate text from a checkpoint");
  add_checkpoint_option(*cmd, args->checkpoint);
  cmd->add_option("--prompt", args->prompt,
                  "Text to continue; \"<|endoftext|>\" in it is GPT-2's special token. Empty (the default): start "
                  "from the end-of-text token, i.e. a new document");
  cmd->add_option("--tokens", o.max_new_tokens, "Tokens to generate at most")
      ->check(integer_at_least<int>(0))
      ->capture_default_str();
  cmd->add_option("--temperature", o.temperature,
                  "Softmax temperature, finite; 0 picks the most likely token every time (greedy)")
      ->check(real_number())
      ->capture_default_str();
  cmd->add_option("--top-k", o.top_k, "Sample only among the K most likely tokens (0: all)")
      ->check(integer_at_least<int>(0))
      ->capture_default_str();
  cmd->add_option("--seed", o.seed, "Seed of the random draws; the same seed gives the same text")
      ->check(integer_at_least<uint64_t>(0))
      ->capture_default_str();
  cmd->add_option("--tokenizer", args->tokenizer,
                  "gpt2 or byte (default: byte for a 256-token model, gpt2 for a 50257-token one or a padded one "
                  "such as 50304)")
      ->check(CLI::IsMember({"gpt2", "byte"}));
  const CLI::Option* tokenizer_dir = cmd->add_option(
      "--tokenizer-dir", args->tokenizer_dir,
      "Directory with GPT-2's encoder.json and vocab.bpe (default data/tokenizer/gpt2)");
  cmd->footer(
      "Prints the prompt and its continuation on stdout as they are generated, then a newline; why generation\n"
      "stopped goes to stderr. Generation ends after --tokens tokens, at the end-of-text token (not printed),\n"
      "or when prompt + continuation fill the model's context (model.max_seq_len): srgpt does not slide the\n"
      "window. The model runs on the host in fp32 with a key/value cache, so each new token costs time linear\n"
      "in its position.");
  cmd->callback([args, tokenizer_dir]() {
    require_valid_temperature(args->options.temperature);
    Gpt2Decoder decoder = load_decoder(resolve_checkpoint_dir(args->checkpoint));
    const ModelConfig& model = decoder.config();
    std::unique_ptr<Tokenizer> tokenizer = tokenizer_for(args->tokenizer, args->tokenizer_dir, model.vocab_size);
    if (tokenizer->name() == "byte") warn_unused_option(*tokenizer_dir, "the byte tokenizer reads no files");

    std::vector<uint32_t> prompt = tokenizer->encode(args->prompt, true);
    if (prompt.empty()) prompt.push_back(tokenizer->eot_token());
    SampleOptions options = args->options;
    options.stop_token = tokenizer->eot_token();
    options.vocabulary_size = tokenizer->vocab_size();
    if (int64_t(prompt.size()) > model.max_seq_len)
      fail("--prompt is {} tokens long, more than the model's context of {} positions (model.max_seq_len); shorten "
           "it",
           prompt.size(), model.max_seq_len);
    write_bytes(args->prompt);
    const SampleResult result =
        generate(decoder, prompt, options, [&](uint32_t token) { write_bytes(tokenizer->token_bytes(token)); });
    write_bytes("\n");
    switch (result.reason) {
      case StopReason::token_budget:
        std::fprintf(stderr, "stopped after %zu tokens (--tokens %d)\n", result.tokens.size(), options.max_new_tokens);
        break;
      case StopReason::stop_token:
        std::fprintf(stderr, "stopped after %zu tokens at the end-of-text token\n", result.tokens.size());
        break;
      case StopReason::context_full:
        std::fprintf(stderr,
                     "stopped after %zu tokens: prompt and continuation fill the model's context of %d positions "
                     "(model.max_seq_len)\n",
                     result.tokens.size(), model.max_seq_len);
        break;
    }
  });
}

}  // namespace srgpt
