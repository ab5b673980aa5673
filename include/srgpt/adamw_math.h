#pragma once
// One AdamW element update for every precision mode, shared by the cpu
// backend and the CUDA kernel so both produce the same bits. The CUDA file
// that includes this is compiled with -fmad=false: no contraction into FMA,
// matching the host compiler.
#include <cmath>
#include <cstdint>

#include "srgpt/bf16.h"
#include "srgpt/hd.h"
#include "srgpt/sr_hash.h"

namespace srgpt {

struct AdamWStep {
  float lr;
  float beta1, beta2, eps;
  float weight_decay;       // of the tensors that decay; the element functions take the step through
                            // step_for_range, where it is zero for the others
  float grad_scale;         // global-norm clipping factor (1 when not clipping)
  float bias_correction1;   // 1 - beta1^t, computed in double on the host
  float bias_correction2;   // 1 - beta2^t
  uint64_t seed;
  uint64_t step;            // t, 1-based; also the SR counter
  // The SR counter of element i of an update range is i + index_offset
  // (modulo 2^64): the element's index in the one-rank parameter layout,
  // whether i indexes a full buffer or a ZeRO shard. This keeps an
  // element's random bits independent of which rank owns it and of the
  // world size.
  uint64_t index_offset;
};

// The step as the element functions see it in a range that decays or not.
SRGPT_HD AdamWStep step_for_range(const AdamWStep& s, bool decay) {
  AdamWStep r = s;
  if (!decay) r.weight_decay = 0.0f;
  return r;
}

// m, v and the update direction in fp32, from fp32 state values.
SRGPT_HD float adamw_moments(float g, float* m, float* v, const AdamWStep& s) {
  *m = s.beta1 * *m + (1.0f - s.beta1) * g;
  *v = s.beta2 * *v + (1.0f - s.beta2) * (g * g);
  float mhat = *m / s.bias_correction1;
  float vhat = *v / s.bias_correction2;
  return mhat / (sqrtf(vhat) + s.eps);
}

SRGPT_HD float adamw_new_weight(float w, float direction, const AdamWStep& s) {
  return w - s.lr * (direction + s.weight_decay * w);
}

// bf16 weights and state; stochastic rounding with the step's key
// (sr_key = sr_step_key(s.seed, s.step)), or to nearest when sr_key is null.
SRGPT_HD void adamw_bf16(bf16* w, bf16* m, bf16* v, float g, uint64_t index, const uint64_t* sr_key,
                         const AdamWStep& s) {
  float mf = bf16_to_float(*m), vf = bf16_to_float(*v);
  float wf = bf16_to_float(*w);
  float dir = adamw_moments(g, &mf, &vf, s);
  float wn = adamw_new_weight(wf, dir, s);
  if (sr_key) {
    const uint64_t bits = sr_element_bits(*sr_key, index + s.index_offset);
    *m = float_to_bf16_sr(mf, sr_field(bits, kSrAdamM));
    *v = float_to_bf16_sr(vf, sr_field(bits, kSrAdamV));
    *w = float_to_bf16_sr(wn, sr_field(bits, kSrWeights));
  } else {
    *m = float_to_bf16_rn(mf);
    *v = float_to_bf16_rn(vf);
    *w = float_to_bf16_rn(wn);
  }
}

// fp32 master weights and fp32 state; the bf16 compute copy is the master
// rounded to nearest.
SRGPT_HD void adamw_mixed(float* master, bf16* w, float* m, float* v, float g, const AdamWStep& s) {
  float dir = adamw_moments(g, m, v, s);
  *master = adamw_new_weight(*master, dir, s);
  *w = float_to_bf16_rn(*master);
}

SRGPT_HD void adamw_fp32(float* w, float* m, float* v, float g, const AdamWStep& s) {
  float dir = adamw_moments(g, m, v, s);
  *w = adamw_new_weight(*w, dir, s);
}

// bf16 weights with a bf16 Kahan compensation term c that carries the part
// of each update the bf16 weight could not absorb (Zamirai et al. 2020).
// Every intermediate is rounded to bf16, as bf16 arithmetic would.
SRGPT_HD void adamw_kahan(bf16* w, bf16* c, bf16* m, bf16* v, float g, const AdamWStep& s) {
  float mf = bf16_to_float(*m), vf = bf16_to_float(*v);
  float wf = bf16_to_float(*w);
  float dir = adamw_moments(g, &mf, &vf, s);
  float update = bf16_to_float(float_to_bf16_rn(adamw_new_weight(wf, dir, s) - wf));
  float y = bf16_to_float(float_to_bf16_rn(update - bf16_to_float(*c)));
  float t = bf16_to_float(float_to_bf16_rn(wf + y));
  float absorbed = bf16_to_float(float_to_bf16_rn(t - wf));
  *c = float_to_bf16_rn(absorbed - y);
  *w = float_to_bf16_rn(t);
  *m = float_to_bf16_rn(mf);
  *v = float_to_bf16_rn(vf);
}

}  // namespace srgpt
