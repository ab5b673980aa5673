#pragma once
// Internal to the cpu backend: each op is a template over the storage type S
// (bf16, float or double), written once in its own file and instantiated
// there for all three. Arithmetic runs in Math<S> (float for bf16 and float
// storage, double for double storage); results are rounded to S to nearest.
// Statistics (layernorm mean/rstd, attention lse, losses) are Math<S>, which
// is accum_dtype() of the storage dtype.
//
// Every reduction has a fixed order that does not depend on the number of
// OpenMP threads: work is split over output elements, each summed by one
// thread in ascending order, or over fixed-size chunks whose partial sums
// are added in order.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "srgpt/adamw_math.h"
#include "srgpt/bf16.h"
#include "srgpt/dtype.h"
#include "srgpt/layernorm_math.h"
#include "srgpt/precision.h"

namespace srgpt {
struct OptimizerBuffers;
struct AdamWRange;
}

namespace srgpt::cpu {

template <typename S>
struct MathOf {
  using type = float;
};
template <>
struct MathOf<double> {
  using type = double;
};
template <typename S>
using Math = typename MathOf<S>::type;

inline float load(bf16 x) { return bf16_to_float(x); }
inline float load(float x) { return x; }
inline double load(double x) { return x; }

template <typename S>
S store(Math<S> x);
template <>
inline bf16 store<bf16>(float x) {
  return float_to_bf16_rn(x);
}
template <>
inline float store<float>(float x) {
  return x;
}
template <>
inline double store<double>(double x) {
  return x;
}

// "+=" into storage: load, add in Math<S>, round once.
template <typename S>
inline void accumulate(S* dst, Math<S> x) {
  *dst = store<S>(load(*dst) + x);
}

// Explicit instantiation of an op template for the three storage types.
#define SRGPT_CPU_INSTANTIATE(op)            \
  template decltype(op<bf16>) op<bf16>;      \
  template decltype(op<float>) op<float>;    \
  template decltype(op<double>) op<double>;

// ---- ops; semantics as documented in srgpt/backend.h.
template <typename S>
void embedding_forward(S* out, const int32_t* tokens, const S* wte, const S* wpe, int B, int T, int C);
template <typename S>
void embedding_backward(S* dwte, S* dwpe, const S* dout, const int32_t* tokens, int B, int T, int C);

template <typename S>
void residual_layernorm_forward(S* res_out, S* out, Math<S>* mean, Math<S>* rstd, const S* res_in, const S* delta,
                                const S* w, const S* b, int N, int C);
template <typename S>
void layernorm_backward(S* din, S* dw, S* db, const S* dout, LayerNormBackwardFrom from, const S* x, const S* w,
                        const S* b, const Math<S>* mean, const Math<S>* rstd, int N, int C);

template <typename S>
void matmul_forward(S* out, S* gelu_pre, const S* in, const S* w, const S* bias, int N, int C, int OC);
template <typename S>
void matmul_backward(S* din, S* dw, S* db, const S* dout, const S* in, const S* w, const S* gelu_pre, int N, int C,
                     int OC);

template <typename S>
void gelu_forward(S* out, const S* pre, size_t n);

template <typename S>
void attention_forward(S* out, Math<S>* lse, const S* qkv, int B, int T, int C, int H);
template <typename S>
void attention_backward(S* dqkv, const S* dout, const S* qkv, const S* out, const Math<S>* lse, int B, int T, int C,
                        int H);

template <typename S>
void cross_entropy_forward_backward(Math<S>* losses, S* logits, const int32_t* targets, int N, int V, int Vp,
                                    float dloss);

// dst += src elementwise, rounded once to D.
template <typename D, typename S>
void accumulate_into(D* dst, const S* src, size_t n);

// A is an accumulation type: float or double.
template <typename A>
double sum_accum(const A* x, size_t n);
template <typename S>
double sum_squares(const S* x, size_t n);
template <typename S>
bool all_finite(const S* x, size_t n);

// storage is the backend's dtype; it must be the mode's compute dtype.
void adamw_update(DType storage, Precision mode, const OptimizerBuffers& buffers, const std::vector<AdamWRange>& ranges,
                  const AdamWStep& step);

}  // namespace srgpt::cpu
