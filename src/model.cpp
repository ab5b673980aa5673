#include "srgpt/model.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "srgpt/checkpoint.h"
#include "srgpt/error.h"
#include "srgpt/sr_hash.h"

namespace srgpt {

namespace {

// Standard normal from (seed, index) by Box-Muller on two hashed uniforms.
double hashed_normal(uint64_t seed, uint64_t index) {
  uint64_t a = mix64(seed ^ mix64(2 * index + 1));
  uint64_t b = mix64(seed ^ mix64(2 * index + 2));
  double u1 = (double(a >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
  double u2 = double(b >> 11) * 0x1.0p-53;          // [0, 1)
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

}  // namespace

std::string gpt2_tensor_name(const char* name, int layer) {
  return layer < 0 ? std::string(name) : "h." + std::to_string(layer) + "." + name;
}

Layout gpt2_param_layout(const ModelConfig& cfg, int world_size) {
  const int64_t C = cfg.d_model, Vp = cfg.padded_vocab();
  const size_t unit_multiple = size_t(world_size) * Layout::kAlign;
  Layout l;
  l.add("wte", {Vp, C}, true);
  l.add("wpe", {cfg.max_seq_len, C}, true);
  l.pad_to(unit_multiple);
  for (int i = 0; i < cfg.n_layer; ++i) {
    l.add(gpt2_tensor_name("ln_1.weight", i), {C}, false, i);
    l.add(gpt2_tensor_name("ln_1.bias", i), {C}, false, i);
    l.add(gpt2_tensor_name("attn.c_attn.weight", i), {3 * C, C}, true, i);
    l.add(gpt2_tensor_name("attn.c_attn.bias", i), {3 * C}, false, i);
    l.add(gpt2_tensor_name("attn.c_proj.weight", i), {C, C}, true, i);
    l.add(gpt2_tensor_name("attn.c_proj.bias", i), {C}, false, i);
    l.add(gpt2_tensor_name("ln_2.weight", i), {C}, false, i);
    l.add(gpt2_tensor_name("ln_2.bias", i), {C}, false, i);
    l.add(gpt2_tensor_name("mlp.c_fc.weight", i), {4 * C, C}, true, i);
    l.add(gpt2_tensor_name("mlp.c_fc.bias", i), {4 * C}, false, i);
    l.add(gpt2_tensor_name("mlp.c_proj.weight", i), {C, 4 * C}, true, i);
    l.add(gpt2_tensor_name("mlp.c_proj.bias", i), {C}, false, i);
    l.pad_to(unit_multiple);
  }
  l.add("ln_f.weight", {C});
  l.add("ln_f.bias", {C});
  l.pad_to(unit_multiple);
  return l;
}

std::vector<float> gpt2_initial_weights(const ModelConfig& cfg, const Layout& layout, uint64_t seed, double std) {
  std::vector<float> w(layout.total(), 0.0f);
  const double proj_std = std / std::sqrt(2.0 * cfg.n_layer);
  for (const TensorSpec& t : layout.tensors()) {
    const bool is_bias = t.name.size() >= 4 && t.name.compare(t.name.size() - 4, 4, "bias") == 0;
    const bool is_ln_weight = t.name.find("ln_") != std::string::npos && !is_bias;
    if (is_bias) continue;
    if (is_ln_weight) {
      for (size_t i = 0; i < t.numel; ++i) w[t.offset + i] = 1.0f;
      continue;
    }
    const bool is_proj = t.name.find("c_proj.weight") != std::string::npos;
    const double s = is_proj ? proj_std : std;
    // Padded vocabulary rows of wte stay zero.
    size_t n = t.name == "wte" ? size_t(cfg.vocab_size) * size_t(cfg.d_model) : t.numel;
    // Keyed by tensor name and index within the tensor, so the values do
    // not depend on layout padding (which varies with the world size).
    const uint64_t key = mix64(seed ^ crc32(t.name.data(), t.name.size()));
    for (size_t i = 0; i < n; ++i) w[t.offset + i] = float(s * hashed_normal(key, i));
  }
  return w;
}

GPT::GPT(const ModelConfig& cfg, ParameterStore& params, int B, int T, ActivationOptions options)
    : cfg_(cfg), params_(params), backend_(params.backend()), B_(B), T_(T), options_(options) {
  if (options.lm_head_chunks < 1 || int64_t(options.lm_head_chunks) > int64_t(B) * T)
    fail("train.lm_head_chunks = {} is not allowed with {} rows per micro-batch; allowed: 1..{}",
         options.lm_head_chunks, int64_t(B) * T, int64_t(B) * T);
  head_rows_ = int((int64_t(B) * T + options.lm_head_chunks - 1) / options.lm_head_chunks);
  if (params.layout().total() != gpt2_param_layout(cfg, params.comm().size()).total())
    fail("internal: the parameter store does not hold this model's layout");
  if (const std::string problem = activation_options_problem(options); options.for_backward && !problem.empty())
    fail("{}", problem);
  Backend& backend = backend_;
  if (T > cfg.max_seq_len) fail("sequence length {} exceeds model.max_seq_len {}", T, cfg.max_seq_len);
  const int64_t N = int64_t(B) * T, C = cfg.d_model, Vp = cfg.padded_vocab(), H = cfg.n_head;
  act_layout_.add("encoded", {N, C});
  if (recompute_layernorm()) act_layout_.add("ln", {N, C});
  if (recompute_gelu()) act_layout_.add("fch_gelu", {N, 4 * C});
  for (int i = 0; i < (options.for_backward ? cfg.n_layer : 1); ++i) {
    const int l = kept_layer(i);
    if (!recompute_layernorm()) act_layout_.add(gpt2_tensor_name("ln1", l), {N, C});
    act_layout_.add(gpt2_tensor_name("qkv", l), {N, 3 * C});
    act_layout_.add(gpt2_tensor_name("atty", l), {N, C});
    if (keep_residual_stream()) act_layout_.add(gpt2_tensor_name("res2", l), {N, C});
    if (!recompute_layernorm()) act_layout_.add(gpt2_tensor_name("ln2", l), {N, C});
    act_layout_.add(gpt2_tensor_name("fch", l), {N, 4 * C});
    if (!recompute_gelu()) act_layout_.add(gpt2_tensor_name("fch_gelu", l), {N, 4 * C});
    if (keep_residual_stream()) act_layout_.add(gpt2_tensor_name("res3", l), {N, C});
    stat_layout_.add(gpt2_tensor_name("ln1_mean", l), {N});
    stat_layout_.add(gpt2_tensor_name("ln1_rstd", l), {N});
    stat_layout_.add(gpt2_tensor_name("ln2_mean", l), {N});
    stat_layout_.add(gpt2_tensor_name("ln2_rstd", l), {N});
    stat_layout_.add(gpt2_tensor_name("lse", l), {B, H, T});
  }
  act_layout_.add("lnf", {N, C});
  act_layout_.add("logits", {head_rows_, Vp});
  // Scratch: the branch output added to the residual stream in forward, and
  // gradients in backward (dqkv reuses dbig).
  act_layout_.add("delta", {N, C});
  if (options.for_backward) {
    act_layout_.add("dres", {N, C});
    act_layout_.add("dln", {N, C});
    act_layout_.add("datty", {N, C});
    act_layout_.add("dbig", {N, 4 * C});
  }
  stat_layout_.add("lnf_mean", {N});
  stat_layout_.add("lnf_rstd", {N});
  stat_layout_.add("losses", {N});

  const size_t es = dtype_size(backend.dtype()), as = dtype_size(accum_dtype(backend.dtype()));
  acts_ = DeviceBuffer(backend, act_layout_.total() * es, "activations");
  stats_ = DeviceBuffer(backend, stat_layout_.total() * as, "activation statistics");
  tokens_ = DeviceBuffer(backend, 2 * size_t(N) * sizeof(int32_t), "token ids");
  backend.fill_zero(acts_.get(), acts_.bytes());
  backend.fill_zero(stats_.get(), stats_.bytes());
  unit_weights_.assign(params.plan().units().size(), nullptr);
}

size_t GPT::unit_of(const TensorSpec& t) const {
  const ZeroShardPlan& plan = params_.plan();
  if (t.layer >= 0) return plan.unit_of_layer(t.layer);
  return t.offset < plan.unit(plan.final_unit()).begin ? plan.embeddings_unit() : plan.final_unit();
}

void GPT::acquire(size_t unit) { unit_weights_[unit] = params_.acquire_weights(unit); }

// A tensor's address inside its unit's weights (acquired) or gradients.
const void* GPT::w(const char* name, int layer) {
  const TensorSpec& t = layout().at(gpt2_tensor_name(name, layer));
  const size_t u = unit_of(t);
  if (!unit_weights_[u]) fail("internal: weights of unit {} used before they were acquired", params_.plan().unit(u).name);
  return static_cast<const char*>(unit_weights_[u]) +
         (t.offset - params_.plan().unit(u).begin) * dtype_size(backend_.dtype());
}
void* GPT::g(const char* name, int layer) {
  const TensorSpec& t = layout().at(gpt2_tensor_name(name, layer));
  const size_t u = unit_of(t);
  return static_cast<char*>(params_.unit_grads(u)) +
         (t.offset - params_.plan().unit(u).begin) * dtype_size(backend_.dtype());
}
void* GPT::act(const char* name, int layer) {
  return acts_.as<char>() +
         act_layout_.at(gpt2_tensor_name(name, kept_layer(layer))).offset * dtype_size(backend_.dtype());
}
void* GPT::stat(const char* name, int layer) {
  return stats_.as<char>() + stat_layout_.at(gpt2_tensor_name(name, kept_layer(layer))).offset *
                                 dtype_size(accum_dtype(backend_.dtype()));
}
void* GPT::residual(int l) { return l == 0 || !keep_residual_stream() ? act("encoded") : act("res3", l - 1); }
void* GPT::mid_residual(int l) { return keep_residual_stream() ? act("res2", l) : act("encoded"); }
void* GPT::ln1(int l) { return recompute_layernorm() ? act("ln") : act("ln1", l); }
void* GPT::ln2(int l) { return recompute_layernorm() ? act("ln") : act("ln2", l); }
void* GPT::fch_gelu(int l) { return recompute_gelu() ? act("fch_gelu") : act("fch_gelu", l); }

void GPT::forward_pass(const int32_t* inputs, const int32_t* targets, float dloss, bool train) {
  Backend& be = backend_;
  const int N = B_ * T_, C = cfg_.d_model, H = cfg_.n_head, L = cfg_.n_layer;
  int32_t* tok = tokens_.as<int32_t>();
  be.upload(tok, inputs, size_t(N) * sizeof(int32_t));
  be.upload(tok + N, targets, size_t(N) * sizeof(int32_t));

  const ZeroShardPlan& plan = params_.plan();
  acquire(plan.embeddings_unit());
  acquire(plan.unit_of_layer(0));
  // ZeRO-3 gathers the next units while this one computes (ln_f has a slot
  // of its own; blocks alternate between two).
  params_.prefetch_weights(plan.final_unit());
  if (L > 1) params_.prefetch_weights(plan.unit_of_layer(1));
  be.embedding_forward(act("encoded"), tok, w("wte"), w("wpe"), B_, T_, C);
  be.residual_layernorm_forward(act("encoded"), ln1(0), stat("ln1_mean", 0), stat("ln1_rstd", 0),
                                act("encoded"), nullptr, w("ln_1.weight", 0), w("ln_1.bias", 0), N, C);
  for (int l = 0; l < L; ++l) {
    be.matmul_forward(act("qkv", l), nullptr, ln1(l), w("attn.c_attn.weight", l), w("attn.c_attn.bias", l), N,
                      C, 3 * C);
    be.attention_forward(act("atty", l), stat("lse", l), act("qkv", l), B_, T_, C, H);
    be.matmul_forward(act("delta"), nullptr, act("atty", l), w("attn.c_proj.weight", l), w("attn.c_proj.bias", l), N,
                      C, C);
    be.residual_layernorm_forward(mid_residual(l), ln2(l), stat("ln2_mean", l), stat("ln2_rstd", l),
                                  residual(l), act("delta"), w("ln_2.weight", l), w("ln_2.bias", l), N, C);
    // GELU fused into the matmul also under GELU recompute: forward costs
    // the same, and backward's gelu_forward of the stored pre-activation
    // gives the same bits on the cpu backend, within one rounding on cuda.
    be.matmul_forward(fch_gelu(l), act("fch", l), ln2(l), w("mlp.c_fc.weight", l), w("mlp.c_fc.bias", l), N, C,
                      4 * C);
    be.matmul_forward(act("delta"), nullptr, fch_gelu(l), w("mlp.c_proj.weight", l), w("mlp.c_proj.bias", l),
                      N, 4 * C, C);
    const bool last = l + 1 == L;
    acquire(last ? plan.final_unit() : plan.unit_of_layer(l + 1));
    // Block l's work is queued, so its slot can take block l + 2.
    if (l + 2 < L) params_.prefetch_weights(plan.unit_of_layer(l + 2));
    be.residual_layernorm_forward(residual(l + 1), last ? act("lnf") : ln1(l + 1),
                                  last ? stat("lnf_mean") : stat("ln1_mean", l + 1),
                                  last ? stat("lnf_rstd") : stat("ln1_rstd", l + 1), mid_residual(l), act("delta"),
                                  last ? w("ln_f.weight") : w("ln_1.weight", l + 1),
                                  last ? w("ln_f.bias") : w("ln_1.bias", l + 1), N, C);
  }
  // The LM head chunk by chunk: logits, the loss (leaving dlogits in place)
  // and, when training, the head's backward, before the next chunk reuses
  // the logits buffer.
  const int Vp = cfg_.padded_vocab();
  const size_t es = dtype_size(be.dtype()), as = dtype_size(accum_dtype(be.dtype()));
  for (int r0 = 0; r0 < N; r0 += head_rows_) {
    const int rows = std::min(head_rows_, N - r0);
    const char* lnf = static_cast<const char*>(act("lnf")) + size_t(r0) * C * es;
    be.matmul_forward(act("logits"), nullptr, lnf, w("wte"), nullptr, rows, C, Vp);
    be.cross_entropy_forward_backward(static_cast<char*>(stat("losses")) + size_t(r0) * as, act("logits"),
                                      tok + N + r0, rows, cfg_.vocab_size, Vp, dloss);
    if (train)
      be.matmul_backward(static_cast<char*>(act("dln")) + size_t(r0) * C * es, g("wte"), nullptr, act("logits"), lnf,
                         w("wte"), nullptr, rows, C, Vp);
  }
}

double GPT::mean_loss() {
  params_.prepare_backend_read();
  return backend_.sum_accum(stat("losses"), size_t(B_) * T_) / (double(B_) * T_);
}

double GPT::forward(const int32_t* inputs, const int32_t* targets) {
  forward_pass(inputs, targets, 0.0f, false);
  return mean_loss();
}

double GPT::loss_sum(const int32_t* inputs, const int32_t* targets, int rows) {
  if (rows < 0 || rows > B_) fail("internal: the loss of {} rows of a batch of {}", rows, B_);
  forward_pass(inputs, targets, 0.0f, false);
  params_.prepare_backend_read();
  return rows == 0 ? 0.0 : backend_.sum_accum(stat("losses"), size_t(rows) * T_);
}

double GPT::forward_backward(const int32_t* inputs, const int32_t* targets, float dloss) {
  if (!options_.for_backward) fail("internal: forward_backward on a model built for forward only");
  forward_pass(inputs, targets, dloss, true);
  // The loss is read (a host wait) only once backward is queued too, so
  // the device never idles while the host launches backward's kernels.
  backward();
  return mean_loss();
}

void GPT::backward() {
  Backend& be = backend_;
  const int N = B_ * T_, C = cfg_.d_model, H = cfg_.n_head, L = cfg_.n_layer;
  const int32_t* tok = tokens_.as<int32_t>();
  void* dres = act("dres");
  void* dln = act("dln");
  void* dbig = act("dbig");
  const ZeroShardPlan& plan = params_.plan();
  // The embeddings and ln_f stay acquired from forward (their slots are
  // their own); blocks are acquired again, one at a time.

  // The residual stream's gradient flows unchanged through each residual
  // add, so one dres buffer carries it from the top to the embeddings.
  // forward_pass left the LM head's input gradient in dln.
  be.fill_zero(dres, size_t(N) * C * dtype_size(be.dtype()));
  const LayerNormBackwardFrom from = options_.layernorm_backward_from;
  be.layernorm_backward(dres, g("ln_f.weight"), g("ln_f.bias"), dln, from, layernorm_saved(residual(L), act("lnf")),
                        w("ln_f.weight"), w("ln_f.bias"), stat("lnf_mean"), stat("lnf_rstd"), N, C);
  params_.grads_done(plan.final_unit());
  for (int l = L - 1; l >= 0; --l) {
    acquire(plan.unit_of_layer(l));
    // Block l + 1's work is queued, so its slot can take block l - 1.
    if (l > 0) params_.prefetch_weights(plan.unit_of_layer(l - 1));
    if (recompute_gelu()) be.gelu_forward(fch_gelu(l), act("fch", l), size_t(N) * 4 * C);
    be.matmul_backward(dbig, g("mlp.c_proj.weight", l), g("mlp.c_proj.bias", l), dres, fch_gelu(l),
                       w("mlp.c_proj.weight", l), act("fch", l), N, 4 * C, C);
    // Normalising the stored residual again gives forward's bits (and
    // rewrites the same mean and rstd).
    if (recompute_layernorm())
      be.residual_layernorm_forward(mid_residual(l), ln2(l), stat("ln2_mean", l), stat("ln2_rstd", l),
                                    mid_residual(l), nullptr, w("ln_2.weight", l), w("ln_2.bias", l), N, C);
    be.matmul_backward(dln, g("mlp.c_fc.weight", l), g("mlp.c_fc.bias", l), dbig, ln2(l),
                       w("mlp.c_fc.weight", l), nullptr, N, C, 4 * C);
    be.layernorm_backward(dres, g("ln_2.weight", l), g("ln_2.bias", l), dln, from, layernorm_saved(mid_residual(l), ln2(l)),
                          w("ln_2.weight", l), w("ln_2.bias", l), stat("ln2_mean", l), stat("ln2_rstd", l), N, C);
    be.matmul_backward(act("datty"), g("attn.c_proj.weight", l), g("attn.c_proj.bias", l), dres, act("atty", l),
                       w("attn.c_proj.weight", l), nullptr, N, C, C);
    be.attention_backward(dbig, act("datty"), act("qkv", l), act("atty", l), stat("lse", l), B_, T_, C, H);
    if (recompute_layernorm())
      be.residual_layernorm_forward(residual(l), ln1(l), stat("ln1_mean", l), stat("ln1_rstd", l), residual(l),
                                    nullptr, w("ln_1.weight", l), w("ln_1.bias", l), N, C);
    be.matmul_backward(dln, g("attn.c_attn.weight", l), g("attn.c_attn.bias", l), dbig, ln1(l),
                       w("attn.c_attn.weight", l), nullptr, N, C, 3 * C);
    be.layernorm_backward(dres, g("ln_1.weight", l), g("ln_1.bias", l), dln, from, layernorm_saved(residual(l), ln1(l)),
                          w("ln_1.weight", l), w("ln_1.bias", l), stat("ln1_mean", l), stat("ln1_rstd", l), N, C);
    params_.grads_done(plan.unit_of_layer(l));
  }
  be.embedding_backward(g("wte"), g("wpe"), dres, tok, B_, T_, C);
  params_.grads_done(plan.embeddings_unit());
}

}  // namespace srgpt
