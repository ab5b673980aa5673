#pragma once
// What a LayerNorm's backward reads, and the one piece of its arithmetic
// that depends on it, shared by the cpu backend (in its math type M) and the
// CUDA kernels (float).
#include "srgpt/hd.h"

namespace srgpt {

// The backward needs the normalised input xhat. It rebuilds it from the
// forward's input x, as (x - mean) * rstd, or from the forward's output
// y = xhat * w + b, as (y - b) / w: then the input (the residual stream,
// which nothing else in backward reads) need not be kept. Apex's and
// Megatron's "memory-efficient" LayerNorm does the same.
enum class LayerNormBackwardFrom { input, output };

// xhat from the output. Where |w| is tiny, the rounding of the stored y
// swamps w * xhat and xhat cannot be read back; the result is then held to
// the range an element of a normalised row can have (its squares sum to at
// most C, so |xhat| <= sqrt(C) = xhat_bound), and w = 0 gives 0, so that
// the gradient stays finite. A NaN y stays NaN.
template <typename M>
SRGPT_HD M layernorm_xhat_from_output(M y, M b, M w, M xhat_bound) {
  if (w == M(0)) return M(0);
  const M xhat = (y - b) / w;
  return xhat < -xhat_bound ? -xhat_bound : (xhat > xhat_bound ? xhat_bound : xhat);
}

}  // namespace srgpt
