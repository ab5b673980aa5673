#pragma once
// GPT-2's tanh approximation of GELU and its derivative, one definition for
// the cpu backend (in its math type M: float, or double for the fp64
// gradient checks) and the CUDA kernels (float).
#include <cmath>

#include "srgpt/hd.h"

namespace srgpt {

template <typename M>
SRGPT_HD M gelu_tanh(M x) {
  const M sqrt_2_over_pi = M(0.79788456080286535588);
  const M u = sqrt_2_over_pi * (x + M(0.044715) * x * x * x);
  return M(0.5) * x * (M(1) + std::tanh(u));
}

template <typename M>
SRGPT_HD M gelu_tanh_derivative(M x) {
  const M sqrt_2_over_pi = M(0.79788456080286535588);
  const M u = sqrt_2_over_pi * (x + M(0.044715) * x * x * x);
  const M t = std::tanh(u);
  const M du_dx = sqrt_2_over_pi * (M(1) + M(3) * M(0.044715) * x * x);
  return M(0.5) * (M(1) + t) + M(0.5) * x * (M(1) - t * t) * du_dx;
}

}  // namespace srgpt
