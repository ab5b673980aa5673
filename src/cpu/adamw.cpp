// AdamW over ranges of flat elements, through the per-element functions of
// srgpt/adamw_math.h that the CUDA kernel shares.
#include "cpu_ops.h"
#include "srgpt/backend.h"
#include "srgpt/error.h"

namespace srgpt::cpu {

namespace {

// Elements are independent, so any split over threads gives the same bits;
// the flat index i is the SR counter.
template <typename Update>
void for_each_element(size_t begin, size_t end, Update update) {
#pragma omp parallel for schedule(static)
  for (int64_t i = int64_t(begin); i < int64_t(end); ++i) update(size_t(i));
}

// Element i of the gradients as float, from bf16 or f32 storage.
struct GradientReader {
  const void* data;
  bool f32;
  float operator()(size_t i) const {
    return f32 ? static_cast<const float*>(data)[i] : bf16_to_float(static_cast<const bf16*>(data)[i]);
  }
};

void adamw_update_range(DType storage, Precision mode, const OptimizerBuffers& buffers, const AdamWRange& range,
                        const AdamWStep& range_step) {
  const AdamWStep step = step_for_range(range_step, range.decay);
  const size_t begin = range.begin, end = range.end;
  const float grad_scale = step.grad_scale;
  const GradientReader g{buffers.grads, buffers.f32_grads || storage == DType::f32};
  switch (mode) {
    case Precision::bf16_sr:
    case Precision::bf16_rn: {
      const uint64_t sr_key = sr_step_key(step.seed, step.step);
      const uint64_t* key = mode == Precision::bf16_sr ? &sr_key : nullptr;
      auto* w = static_cast<bf16*>(buffers.weights);
      auto* m = static_cast<bf16*>(buffers.m);
      auto* v = static_cast<bf16*>(buffers.v);
      for_each_element(begin, end, [&](size_t i) { adamw_bf16(&w[i], &m[i], &v[i], g(i) * grad_scale, i, key, step); });
      return;
    }
    case Precision::mixed: {
      auto* w = static_cast<bf16*>(buffers.weights);
      auto* m = static_cast<float*>(buffers.m);
      auto* v = static_cast<float*>(buffers.v);
      float* master = buffers.master;
      for_each_element(begin, end,
                       [&](size_t i) { adamw_mixed(&master[i], &w[i], &m[i], &v[i], g(i) * grad_scale, step); });
      return;
    }
    case Precision::fp32: {
      auto* w = static_cast<float*>(buffers.weights);
      auto* m = static_cast<float*>(buffers.m);
      auto* v = static_cast<float*>(buffers.v);
      for_each_element(begin, end, [&](size_t i) { adamw_fp32(&w[i], &m[i], &v[i], g(i) * grad_scale, step); });
      return;
    }
    case Precision::bf16_kahan: {
      auto* w = static_cast<bf16*>(buffers.weights);
      auto* m = static_cast<bf16*>(buffers.m);
      auto* v = static_cast<bf16*>(buffers.v);
      auto* c = static_cast<bf16*>(buffers.compensation);
      for_each_element(begin, end,
                       [&](size_t i) { adamw_kahan(&w[i], &c[i], &m[i], &v[i], g(i) * grad_scale, step); });
      return;
    }
  }
  fail("adamw_update: unknown precision mode {}", int(mode));
}

}  // namespace

void adamw_update(DType storage, Precision mode, const OptimizerBuffers& buffers, const std::vector<AdamWRange>& ranges,
                  const AdamWStep& step) {
  check_adamw_update("cpu", storage, mode, buffers, ranges);
  for (const AdamWRange& range : ranges) adamw_update_range(storage, mode, buffers, range, step);
}

}  // namespace srgpt::cpu
