#include "srgpt/sample.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "cpu/cpu_ops.h"
#include "srgpt/error.h"
#include "srgpt/gelu_math.h"
#include "srgpt/model.h"
#include "srgpt/safetensors.h"
#include "srgpt/sr_hash.h"

namespace srgpt {

namespace {

// Keeps the sampler's random stream apart from the SR streams on equal seeds.
constexpr uint64_t kSampleStreamKey = 0x5a3c1e0f7b9d2468ull;

// Dot product with eight independent partial sums, which the compiler can
// keep in one vector register without reassociating a single sum.
float dot(const float* a, const float* b, int n) {
  float partial[8] = {};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) partial[j] += a[i + j] * b[i + j];
  float sum = 0;
  for (; i < n; ++i) sum += a[i] * b[i];
  for (float p : partial) sum += p;
  return sum;
}

// out[o] = w[o, :] . in + bias[o] for w [out_features, in_features] (the
// PyTorch Linear orientation the layout uses); bias may be null.
void matvec(float* out, const float* w, const float* bias, const float* in, int in_features, int out_features) {
  // Threads only pay off for matrices larger than a small model's.
  const bool parallel = size_t(in_features) * size_t(out_features) >= (size_t(1) << 16);
#pragma omp parallel for schedule(static) if (parallel)
  for (int o = 0; o < out_features; ++o)
    out[o] = dot(w + size_t(o) * size_t(in_features), in, in_features) + (bias ? bias[o] : 0.0f);
}

// Uniform in [0, 1) from 53 hashed bits.
double hashed_uniform(uint64_t seed, uint64_t draw) {
  const uint64_t key = mix64(seed ^ kSampleStreamKey);
  return double(mix64(key ^ mix64(draw + 1)) >> 11) * 0x1.0p-53;
}

}  // namespace

std::vector<float> weights_as_float(ParameterStore& params) {
  const std::vector<char> host = params.full_weights_on_host();
  std::vector<float> values(params.layout().total());
  convert_to_float(host.data(), params.backend().dtype(), values.size(), values.data());
  return values;
}

Gpt2Decoder::Gpt2Decoder(const ModelConfig& model, std::vector<float> weights)
    : cfg_(model), layout_(gpt2_param_layout(model, 1)), weights_(std::move(weights)) {
  if (weights_.size() != layout_.total())
    fail("internal: decoder weights have {} values, the model's layout {}", weights_.size(), layout_.total());
  if (cfg_.n_head <= 0 || cfg_.d_model % cfg_.n_head != 0)
    fail("model.d_model {} is not divisible by model.n_head {}", cfg_.d_model, cfg_.n_head);
  const size_t C = size_t(cfg_.d_model), cache = size_t(cfg_.max_seq_len) * C;
  keys_.assign(size_t(cfg_.n_layer), std::vector<float>(cache));
  values_.assign(size_t(cfg_.n_layer), std::vector<float>(cache));
  x_.resize(C);
  normed_.resize(C);
  qkv_.resize(3 * C);
  attended_.resize(C);
  delta_.resize(C);
  hidden_.resize(4 * C);
  scores_.resize(size_t(cfg_.max_seq_len));
  logits_.resize(size_t(cfg_.vocab_size));
}

const float* Gpt2Decoder::tensor(const char* name, int layer) const {
  return weights_.data() + layout_.at(gpt2_tensor_name(name, layer)).offset;
}

const std::vector<float>& Gpt2Decoder::step(uint32_t token) {
  const int C = cfg_.d_model, H = cfg_.n_head, hd = C / H, V = cfg_.vocab_size;
  if (token >= uint32_t(V)) fail("token id {} is outside the model's vocabulary of {} tokens", token, V);
  if (pos_ >= cfg_.max_seq_len)
    fail("the context is full: the model has {} positions (model.max_seq_len)", cfg_.max_seq_len);
  const float* wte = tensor("wte");
  const float* wpe = tensor("wpe");
  for (int c = 0; c < C; ++c) x_[size_t(c)] = wte[size_t(token) * C + c] + wpe[size_t(pos_) * C + c];
  const float scale = 1.0f / std::sqrt(float(hd));
  // normed_ = LayerNorm(x_ += the pending sublayer output), as the model's
  // fused residual add and LayerNorm.
  const float* pending = nullptr;
  auto add_and_normalise = [&](const char* weight, const char* bias, int layer) {
    float mean = 0, rstd = 0;
    cpu::residual_layernorm_forward<float>(x_.data(), normed_.data(), &mean, &rstd, x_.data(), pending,
                                           tensor(weight, layer), tensor(bias, layer), 1, C);
    pending = nullptr;
  };

  for (int l = 0; l < cfg_.n_layer; ++l) {
    add_and_normalise("ln_1.weight", "ln_1.bias", l);
    matvec(qkv_.data(), tensor("attn.c_attn.weight", l), tensor("attn.c_attn.bias", l), normed_.data(), C, 3 * C);
    float* keys = keys_[size_t(l)].data();
    float* values = values_[size_t(l)].data();
    std::copy_n(qkv_.data() + C, C, keys + size_t(pos_) * C);
    std::copy_n(qkv_.data() + 2 * C, C, values + size_t(pos_) * C);
    // Causal attention of this position's query over the cached positions.
    for (int h = 0; h < H; ++h) {
      const float* q = qkv_.data() + size_t(h) * hd;
      float max_score = -INFINITY;
      for (int j = 0; j <= pos_; ++j) {
        scores_[size_t(j)] = dot(q, keys + size_t(j) * C + size_t(h) * hd, hd) * scale;
        max_score = std::max(max_score, scores_[size_t(j)]);
      }
      float total = 0;
      for (int j = 0; j <= pos_; ++j) total += scores_[size_t(j)] = std::exp(scores_[size_t(j)] - max_score);
      float* out = attended_.data() + size_t(h) * hd;
      std::fill_n(out, hd, 0.0f);
      for (int j = 0; j <= pos_; ++j) {
        const float p = scores_[size_t(j)] / total;
        const float* v = values + size_t(j) * C + size_t(h) * hd;
        for (int d = 0; d < hd; ++d) out[d] += p * v[d];
      }
    }
    matvec(delta_.data(), tensor("attn.c_proj.weight", l), tensor("attn.c_proj.bias", l), attended_.data(), C, C);
    pending = delta_.data();
    add_and_normalise("ln_2.weight", "ln_2.bias", l);
    matvec(hidden_.data(), tensor("mlp.c_fc.weight", l), tensor("mlp.c_fc.bias", l), normed_.data(), C, 4 * C);
    for (float& v : hidden_) v = gelu_tanh(v);
    matvec(delta_.data(), tensor("mlp.c_proj.weight", l), tensor("mlp.c_proj.bias", l), hidden_.data(), 4 * C, C);
    pending = delta_.data();
  }
  add_and_normalise("ln_f.weight", "ln_f.bias", -1);
  // Tied LM head: only the real vocabulary rows of wte.
  matvec(logits_.data(), wte, nullptr, normed_.data(), C, V);
  ++pos_;
  return logits_;
}

void require_valid_temperature(double temperature) {
  if (!(temperature >= 0 && std::isfinite(temperature)))
    fail("--temperature {} is not allowed: use 0 (greedy) or a finite positive number", temperature);
}

uint32_t choose_token(const std::vector<float>& logits, double temperature, int top_k, uint64_t seed, uint64_t draw) {
  if (logits.empty()) fail("internal: no logits to sample from");
  require_valid_temperature(temperature);
  for (size_t i = 0; i < logits.size(); ++i)
    if (!std::isfinite(logits[i]))
      fail("the model produced a logit of {} (token {}); its weights are broken", logits[i], i);
  if (temperature == 0) return uint32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());

  // Candidates by decreasing logit, ties by increasing id: a total order, so
  // the top-k set and the cumulative sums below are deterministic.
  std::vector<uint32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0u);
  const size_t keep = top_k > 0 ? std::min(ids.size(), size_t(top_k)) : ids.size();
  std::partial_sort(ids.begin(), ids.begin() + long(keep), ids.end(), [&](uint32_t a, uint32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  });
  ids.resize(keep);
  const double top = logits[ids.front()];
  std::vector<double> weights(keep);
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += weights[i] = std::exp((double(logits[ids[i]]) - top) / temperature);
  double remaining = hashed_uniform(seed, draw) * total;
  for (size_t i = 0; i < keep; ++i) {
    remaining -= weights[i];
    if (remaining < 0) return ids[i];
  }
  return ids[keep - 1];  // rounding left a sliver past the last weight
}

SampleResult generate(Gpt2Decoder& decoder, const std::vector<uint32_t>& prompt, const SampleOptions& options,
                      const std::function<void(uint32_t)>& on_token) {
  const size_t context = size_t(decoder.config().max_seq_len);
  if (prompt.empty()) fail("internal: the prompt has no tokens (start from the end-of-text token instead)");
  if (prompt.size() > context)
    fail("the prompt is {} tokens long, more than the model's context of {} positions (model.max_seq_len); "
         "shorten it",
         prompt.size(), context);
  require_valid_temperature(options.temperature);
  if (options.max_new_tokens < 0) fail("--tokens {} is negative", options.max_new_tokens);
  if (options.top_k < 0) fail("--top-k {} is negative; use 0 for no restriction", options.top_k);
  const int model_vocab = decoder.config().vocab_size;
  if (options.vocabulary_size < 0 || options.vocabulary_size > model_vocab)
    fail("internal: generation over {} ids of a model that scores {}", options.vocabulary_size, model_vocab);
  const size_t scored = size_t(options.vocabulary_size > 0 ? options.vocabulary_size : model_vocab);
  std::vector<float> candidates(scored);

  decoder.reset();
  const std::vector<float>* logits = nullptr;
  for (uint32_t token : prompt) logits = &decoder.step(token);
  SampleResult result;
  size_t length = prompt.size();
  for (;;) {
    if (result.tokens.size() == size_t(options.max_new_tokens)) {
      result.reason = StopReason::token_budget;
      break;
    }
    if (length == context) {
      result.reason = StopReason::context_full;
      break;
    }
    std::copy_n(logits->begin(), scored, candidates.begin());
    const uint32_t next =
        choose_token(candidates, options.temperature, options.top_k, options.seed, result.tokens.size());
    if (options.stop_token && next == *options.stop_token) {
      result.reason = StopReason::stop_token;
      break;
    }
    result.tokens.push_back(next);
    ++length;
    if (on_token) on_token(next);
    // The last token is never fed: nothing would read its logits.
    if (result.tokens.size() < size_t(options.max_new_tokens) && length < context) logits = &decoder.step(next);
  }
  return result;
}

}  // namespace srgpt
