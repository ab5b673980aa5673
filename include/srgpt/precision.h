#pragma once
// Precision modes (DESIGN.md section 4): what each buffer is stored in and
// how the optimizer rounds its results.
#include <string>
#include <vector>

#include "srgpt/dtype.h"

namespace srgpt {

enum class Precision { bf16_sr, bf16_rn, mixed, fp32, bf16_kahan };
// Every mode, in the order listed to users.
inline const std::vector<Precision> kPrecisions = {Precision::bf16_sr, Precision::bf16_rn, Precision::mixed,
                                                   Precision::fp32, Precision::bf16_kahan};

inline const char* precision_name(Precision p) {
  switch (p) {
    case Precision::bf16_sr: return "bf16-sr";
    case Precision::bf16_rn: return "bf16-rn";
    case Precision::mixed: return "mixed";
    case Precision::fp32: return "fp32";
    case Precision::bf16_kahan: return "bf16-kahan";
  }
  return "?";
}

// Storage of weights used by forward/backward, gradients and activations.
inline DType compute_dtype(Precision p) { return p == Precision::fp32 ? DType::f32 : DType::bf16; }
// Storage of Adam m and v.
inline DType adam_state_dtype(Precision p) {
  return (p == Precision::mixed || p == Precision::fp32) ? DType::f32 : DType::bf16;
}
inline bool has_master_weights(Precision p) { return p == Precision::mixed; }
inline bool has_kahan_compensation(Precision p) { return p == Precision::bf16_kahan; }

}  // namespace srgpt
