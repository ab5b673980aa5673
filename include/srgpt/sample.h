#pragma once
// Text generation (`srgpt sample`): an incremental GPT-2 decoder on the host
// in fp32 with a key/value cache, so each new token costs O(T) attention
// work instead of re-running the whole sequence, and a deterministic sampler.
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "srgpt/layout.h"
#include "srgpt/model_config.h"
#include "srgpt/param_store.h"

namespace srgpt {

// A model's weights as fp32 values for the whole parameter layout, from a
// single-process store of any dtype.
std::vector<float> weights_as_float(ParameterStore& params);

// Feeds one token at a time and returns the logits for the next one. Per
// layer it keeps the keys and values of every position fed so far
// ([max_seq_len, d_model] each), so step() computes one row of each
// projection and attends over the cache.
class Gpt2Decoder {
 public:
  // weights: fp32 values in gpt2_param_layout(model, 1).
  Gpt2Decoder(const ModelConfig& model, std::vector<float> weights);

  const ModelConfig& config() const { return cfg_; }
  // Tokens fed so far; the next token goes to this position.
  int position() const { return pos_; }
  // Feeds `token` at position() and returns the logits over the
  // config().vocab_size real tokens (the padded rows are never scored).
  // Errors: a token outside the vocabulary, or a full context
  // (position() == max_seq_len).
  const std::vector<float>& step(uint32_t token);
  // Forgets every fed token.
  void reset() { pos_ = 0; }

 private:
  const float* tensor(const char* name, int layer = -1) const;

  ModelConfig cfg_;
  Layout layout_;
  std::vector<float> weights_;
  int pos_ = 0;
  std::vector<std::vector<float>> keys_, values_;  // per layer, [max_seq_len, C]
  // Scratch for one position.
  std::vector<float> x_, normed_, qkv_, attended_, delta_, hidden_, scores_, logits_;
};

// The next token from logits: the argmax (lowest id on ties) when
// temperature == 0; otherwise a draw from softmax(logits / temperature),
// restricted to the top_k highest logits when top_k > 0. The uniform
// variate is a pure function of (seed, draw), so generation is reproducible.
uint32_t choose_token(const std::vector<float>& logits, double temperature, int top_k, uint64_t seed, uint64_t draw);

// Fails unless temperature is 0 (greedy) or finite and positive: infinity
// would be a uniform draw over the vocabulary, NaN no distribution at all.
void require_valid_temperature(double temperature);

struct SampleOptions {
  int max_new_tokens = 200;
  double temperature = 1.0;  // 0: greedy; else finite and positive
  int top_k = 0;             // 0: no restriction
  uint64_t seed = 1337;
  std::optional<uint32_t> stop_token;  // ends generation when drawn (not emitted)
  // The ids generation may choose are 0 .. vocabulary_size-1 (0: every id
  // the model scores): a model with a padded vocabulary scores ids that its
  // tokenizer lacks.
  int vocabulary_size = 0;
};

enum class StopReason { token_budget, stop_token, context_full };

struct SampleResult {
  std::vector<uint32_t> tokens;  // the continuation, without the prompt
  StopReason reason = StopReason::token_budget;
};

// Feeds the prompt (non-empty, at most max_seq_len tokens) to a reset
// decoder, then generates until max_new_tokens, the stop token, or a full
// context (prompt + continuation never exceed max_seq_len). on_token, when
// set, receives each emitted token as soon as it is chosen.
SampleResult generate(Gpt2Decoder& decoder, const std::vector<uint32_t>& prompt, const SampleOptions& options,
                      const std::function<void(uint32_t)>& on_token = {});

}  // namespace srgpt
