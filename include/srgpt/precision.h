#pragma once
// Precision modes (DESIGN.md section 4): what each buffer is stored in and
// how the optimizer rounds its results.
#include <string>

#include "srgpt/dtype.h"

namespace srgpt {

enum class Precision { bf16_sr, bf16_rn, mixed, fp32, bf16_kahan };

const char* precision_name(Precision p);

// Storage of weights used by forward/backward, gradients and activations.
inline DType compute_dtype(Precision p) { return p == Precision::fp32 ? DType::f32 : DType::bf16; }
// Storage of Adam m and v.
inline DType adam_state_dtype(Precision p) {
  return (p == Precision::mixed || p == Precision::fp32) ? DType::f32 : DType::bf16;
}
inline bool has_master_weights(Precision p) { return p == Precision::mixed; }
inline bool has_kahan_compensation(Precision p) { return p == Precision::bf16_kahan; }

}  // namespace srgpt
