#pragma once
// AdamW state for one precision mode (DESIGN.md section 4) and the step that
// drives the backend's adamw_update over the part of the parameter layout
// this rank owns (all of it without ZeRO; its shard with ZeRO 1-3).
#include <cstdint>
#include <string>
#include <vector>

#include "srgpt/backend.h"
#include "srgpt/config.h"
#include "srgpt/param_store.h"

namespace srgpt {

// A named state buffer, for checkpoints and memory reports.
struct StateBuffer {
  std::string name;  // "m", "v", "master", "compensation"
  DType dtype;
  void* data;        // ParameterStore::state_elements() elements
};

// Global-norm clipping: the factor the gradients are scaled by, clip / norm
// when clipping is on (clip > 0) and the norm exceeds it, else 1.
inline float clip_scale(double grad_norm, double clip) {
  return (clip > 0 && grad_norm > clip) ? float(clip / grad_norm) : 1.0f;
}

// The state buffers a precision mode keeps, in checkpoint order (data null).
std::vector<StateBuffer> optimizer_state_kinds(Precision precision);

class Optimizer {
 public:
  Optimizer(ParameterStore& params, Precision precision, const OptimizerConfig& config, uint64_t seed);

  // Sets the weights (and fp32 master weights in mixed mode) from fp32
  // values for the whole parameter layout; bf16 copies round to nearest.
  void set_weights(const std::vector<float>& values);
  // Optimizer step t (1-based) with learning rate lr; gradients are scaled
  // by grad_scale (global-norm clipping) inside the update. Updated shards
  // are all-gathered afterwards where the ZeRO stage needs it.
  void step(int64_t t, double lr, float grad_scale);
  std::vector<StateBuffer> state_buffers();
  // Each state buffer's bytes in host memory, in state_buffers() order.
  std::vector<std::vector<char>> state_on_host();
  size_t state_bytes() const;

 private:
  ParameterStore& params_;
  Precision precision_;
  OptimizerConfig config_;
  uint64_t seed_;
  DeviceBuffer m_, v_, master_, compensation_;
};

}  // namespace srgpt
