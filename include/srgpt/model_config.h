#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "srgpt/layernorm_math.h"

namespace srgpt {

// GPT-2's LayerNorm epsilon: used by both backends, the sampler, and
// written to exported Hugging Face configs.
constexpr double kLayerNormEps = 1e-5;

// GPT-2 shape. The embedding/LM-head table has padded_vocab rows (vocab
// rounded up to a multiple of 128); rows >= vocab_size are zero and never
// predicted.
struct ModelConfig {
  int vocab_size = 256;
  int max_seq_len = 128;  // learned positions (n_ctx)
  int n_layer = 2;
  int n_head = 2;
  int d_model = 64;

  int padded_vocab() const { return (vocab_size + 127) / 128 * 128; }
};

// Bounds far beyond any model this trainer can hold, so that a mistyped or
// damaged config (a checkpoint's, an imported one) fails at once instead
// of building an enormous layout.
constexpr int kMaxVocabSize = 1 << 30;  // padded_vocab() stays within int
constexpr int kMaxLayers = 4096;
constexpr double kMaxParameters = 1099511627776.0;  // 2^40, 2 TiB of bf16 weights

// Why the model is beyond the bounds above (the keys named as in the run
// config), or "" when it is within them.
std::string model_size_problem(const ModelConfig& m);

// Training FLOPs per token, the numerator of MFU in the usual convention
// (PaLM's, which nanoGPT and llm.c follow), so that srgpt's MFU reads as
// theirs: 6 per parameter (the forward and backward matmuls) plus the
// attention's 12 x n_layer x seq_len x d_model, which counts the whole
// T x T score matrix although causal attention needs half of it.
inline double training_flops_per_token(const ModelConfig& m, size_t params, int seq_len) {
  return 6.0 * double(params) + 12.0 * m.n_layer * double(seq_len) * m.d_model;
}

// Activations the backward pass recomputes instead of keeping them from
// forward: each block's GELU output (4 d_model per token), its two
// LayerNorm outputs (2 d_model per token), or both.
enum class Recompute { none, gelu, layernorm, all };

// How the model trades work for activation memory (train.recompute,
// train.lm_head_chunks, train.layernorm_backward_from).
struct ActivationOptions {
  Recompute recompute = Recompute::none;
  // The LM head and cross-entropy run over this many row chunks of the
  // micro-batch, each chunk's logits (vocab-wide, the largest activation)
  // going through the loss and the head's backward before the next chunk
  // reuses the buffer.
  int lm_head_chunks = 1;
  // From the output, the residual stream (2 d_model per token and layer)
  // is not kept: one buffer carries it through forward. Needs the
  // LayerNorm outputs kept (no LayerNorm recompute).
  LayerNormBackwardFrom layernorm_backward_from = LayerNormBackwardFrom::input;
  // False for a model that only runs forward (evaluation, sampling): no
  // layer's activations outlive it, so all layers share one set of buffers
  // and recompute and layernorm_backward_from do not apply (the LM-head
  // chunks do).
  bool for_backward = true;
};

// Why these options cannot go together (the keys named as in the run
// config), or "" when they can.
std::string activation_options_problem(const ActivationOptions& options);

}  // namespace srgpt
