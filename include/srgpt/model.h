#pragma once
// GPT-2, written once over the Backend ops. Parameters and gradients are
// flat buffers in the backend's dtype sharing one Layout, held by a
// ParameterStore (which also shards them under ZeRO); activations live in
// one flat buffer (dtype) plus one statistics buffer (accum dtype), carved by
// their own layouts and sized for micro batch B x sequence T.
#include <cstdint>
#include <string>
#include <vector>

#include "srgpt/backend.h"
#include "srgpt/layout.h"
#include "srgpt/model_config.h"
#include "srgpt/param_store.h"

namespace srgpt {

// The parameter layout of a GPT-2 model: wte, wpe, then each block's tensors
// contiguously (h.<l>.<name>), then the final layernorm. Each of these
// sharding units (embeddings, blocks, ln_f) is padded to a multiple of
// world_size * Layout::kAlign elements so ZeRO splits it evenly (zero.h).
Layout gpt2_param_layout(const ModelConfig& cfg, int world_size = 1);
// A parameter's name in that layout: "h.<layer>.<name>" for a block's
// tensor, plain `name` for layer < 0 ("wte", "ln_f.weight").
std::string gpt2_tensor_name(const char* name, int layer);

// GPT-2 initial values in fp32 for every element of the layout (padding and
// padded vocab rows zero): N(0, std) for matrices and embeddings, std /
// sqrt(2 n_layer) for the residual projections, LayerNorm weight 1, biases 0.
// A pure function of (seed, tensor name, index in the tensor): independent
// of platform, threads and world size.
std::vector<float> gpt2_initial_weights(const ModelConfig& cfg, const Layout& layout, uint64_t seed, double std);

class GPT {
 public:
  // params must hold gpt2_param_layout(cfg, world size). The activation
  // options trade work for activation memory: recompute gives the same
  // gradient bits; LM-head chunks too, except the wte gradient, which adds
  // each chunk's part with its own rounding.
  GPT(const ModelConfig& cfg, ParameterStore& params, int B, int T, ActivationOptions options = {});

  const ModelConfig& config() const { return cfg_; }
  const Layout& layout() const { return params_.layout(); }
  ParameterStore& params() { return params_; }
  Backend& backend() { return backend_; }
  int batch() const { return B_; }
  int seq_len() const { return T_; }
  size_t activation_bytes() const { return acts_.bytes() + stats_.bytes(); }

  // Mean loss over the B*T tokens (evaluation). inputs and targets are
  // host arrays of B*T token ids.
  double forward(const int32_t* inputs, const int32_t* targets);
  // Forward only: the sum of the token losses of the first `rows` rows (0 to
  // B). All B rows are computed, so the rest of a partial batch may hold any
  // valid ids.
  double loss_sum(const int32_t* inputs, const int32_t* targets, int rows);
  // Mean loss, with gradients accumulated (+=) into the parameter store;
  // dloss scales the gradient of the summed token losses (e.g.
  // 1/(B*T*accum)). Not for a model built with options.for_backward false.
  double forward_backward(const int32_t* inputs, const int32_t* targets, float dloss);

 private:
  // Forward through the loss; with `train`, each LM-head chunk's backward
  // too (dlnf and the wte gradient), so backward() continues from ln_f.
  // Queues the work; the per-token losses stay on the device.
  void forward_pass(const int32_t* inputs, const int32_t* targets, float dloss, bool train);
  void backward();
  // The mean of the last forward_pass's token losses (waits for the device).
  double mean_loss();
  size_t unit_of(const TensorSpec& t) const;
  void acquire(size_t unit);
  const void* w(const char* name, int layer = -1);
  void* g(const char* name, int layer = -1);
  void* act(const char* name, int layer = -1);
  void* stat(const char* name, int layer = -1);
  // Where the residual stream lives: per layer when kept, else one buffer
  // updated in place. residual(l) is block l's input (l == n_layer: ln_f's),
  // mid_residual(l) block l's after its attention.
  void* residual(int l);
  void* mid_residual(int l);
  // Where block l's LayerNorm outputs and GELU output live: per layer when
  // kept, one shared buffer when backward recomputes them.
  void* ln1(int l);
  void* ln2(int l);
  void* fch_gelu(int l);
  // What a LayerNorm's backward reads, of its input and output.
  const void* layernorm_saved(const void* input, const void* output) const {
    return options_.layernorm_backward_from == LayerNormBackwardFrom::input ? input : output;
  }
  bool keep_residual_stream() const {
    return options_.for_backward && options_.layernorm_backward_from == LayerNormBackwardFrom::input;
  }
  // Forward only, nothing is kept for backward: GELU and LayerNorm outputs
  // in shared buffers as when recomputed, the residual stream in one.
  bool recompute_gelu() const {
    return !options_.for_backward || options_.recompute == Recompute::gelu || options_.recompute == Recompute::all;
  }
  bool recompute_layernorm() const {
    return !options_.for_backward || options_.recompute == Recompute::layernorm ||
           options_.recompute == Recompute::all;
  }
  // The layer whose copy of a per-layer tensor holds layer l's: l, or -1
  // (one copy for all layers) forward only.
  int kept_layer(int l) const { return options_.for_backward ? l : -1; }

  ModelConfig cfg_;
  ParameterStore& params_;
  Backend& backend_;
  int B_, T_;
  ActivationOptions options_;
  int head_rows_;  // rows per LM-head chunk
  Layout act_layout_, stat_layout_;
  DeviceBuffer acts_, stats_, tokens_;
  std::vector<const void*> unit_weights_;  // acquired base pointer per unit
};

}  // namespace srgpt
