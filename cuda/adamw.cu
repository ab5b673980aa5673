#include <cstdint>

#include "adamw.cuh"
#include "common.cuh"
#include "cuda_check.cuh"
#include "srgpt/error.h"

namespace srgpt::gpu {
namespace {

// Each thread updates one aligned group of 8 elements (16 bytes of bf16),
// with vector loads when the group lies wholly inside [begin, end).
constexpr int kGroup = 8;
constexpr int kThreads = 256;

template <typename T>
struct alignas(16) Group {
  T x[kGroup];
};

template <typename T>
__device__ __forceinline__ void load_group(Group<T>& dst, const T* src, size_t first, size_t lo, size_t hi,
                                           bool whole) {
  if (whole) {
    constexpr int kVectors = sizeof(Group<T>) / 16;
#pragma unroll
    for (int i = 0; i < kVectors; ++i)
      reinterpret_cast<uint4*>(&dst)[i] = reinterpret_cast<const uint4*>(src + first)[i];
  } else {
#pragma unroll
    for (int k = 0; k < kGroup; ++k)
      if (first + k >= lo && first + k < hi) dst.x[k] = src[first + k];
  }
}

template <typename T>
__device__ __forceinline__ void store_group(T* dst, const Group<T>& src, size_t first, size_t lo, size_t hi,
                                            bool whole) {
  if (whole) {
    constexpr int kVectors = sizeof(Group<T>) / 16;
#pragma unroll
    for (int i = 0; i < kVectors; ++i)
      reinterpret_cast<uint4*>(dst + first)[i] = reinterpret_cast<const uint4*>(&src)[i];
  } else {
#pragma unroll
    for (int k = 0; k < kGroup; ++k)
      if (first + k >= lo && first + k < hi) dst[first + k] = src.x[k];
  }
}

// The storage of each buffer per mode (precision.h): weights in the compute
// dtype, m and v in the Adam state dtype; gradients (G below) in the compute
// dtype or f32.
template <Precision Mode>
struct ModeTypes {
  using Weight = bf16;
  using State = bf16;
};
template <>
struct ModeTypes<Precision::mixed> {
  using Weight = bf16;
  using State = float;
};
template <>
struct ModeTypes<Precision::fp32> {
  using Weight = float;
  using State = float;
};

template <Precision Mode, typename G>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(OptimizerBuffers buffers, size_t begin, size_t end, size_t first_group, size_t groups,
                 AdamWStep step, bool aligned) {
  using W = typename ModeTypes<Mode>::Weight;
  using M = typename ModeTypes<Mode>::State;
  const size_t group = first_group + size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (group >= first_group + groups) return;
  const size_t first = group * kGroup;
  const size_t lo = first > begin ? first : begin;
  const size_t hi = first + kGroup < end ? first + kGroup : end;
  const bool whole = aligned && lo == first && hi == first + kGroup;

  auto* weights = static_cast<W*>(buffers.weights);
  auto* grads = static_cast<const G*>(buffers.grads);
  auto* m_state = static_cast<M*>(buffers.m);
  auto* v_state = static_cast<M*>(buffers.v);
  Group<W> w;
  Group<G> g;
  Group<M> m, v;
  load_group(w, weights, first, lo, hi, whole);
  load_group(g, grads, first, lo, hi, whole);
  load_group(m, m_state, first, lo, hi, whole);
  load_group(v, v_state, first, lo, hi, whole);

  if constexpr (Mode == Precision::mixed) {
    Group<float> master;
    load_group(master, buffers.master, first, lo, hi, whole);
#pragma unroll
    for (int k = 0; k < kGroup; ++k)
      if (first + k >= lo && first + k < hi)
        adamw_mixed(&master.x[k], &w.x[k], &m.x[k], &v.x[k], load_f(&g.x[k]) * step.grad_scale, step);
    store_group(buffers.master, master, first, lo, hi, whole);
  } else if constexpr (Mode == Precision::bf16_kahan) {
    auto* compensation = static_cast<bf16*>(buffers.compensation);
    Group<bf16> c;
    load_group(c, compensation, first, lo, hi, whole);
#pragma unroll
    for (int k = 0; k < kGroup; ++k)
      if (first + k >= lo && first + k < hi)
        adamw_kahan(&w.x[k], &c.x[k], &m.x[k], &v.x[k], load_f(&g.x[k]) * step.grad_scale, step);
    store_group(compensation, c, first, lo, hi, whole);
  } else if constexpr (Mode == Precision::fp32) {
#pragma unroll
    for (int k = 0; k < kGroup; ++k)
      if (first + k >= lo && first + k < hi)
        adamw_fp32(&w.x[k], &m.x[k], &v.x[k], load_f(&g.x[k]) * step.grad_scale, step);
  } else {
    const uint64_t sr_key = sr_step_key(step.seed, step.step);
    const uint64_t* key = Mode == Precision::bf16_sr ? &sr_key : nullptr;
#pragma unroll
    for (int k = 0; k < kGroup; ++k)
      if (first + k >= lo && first + k < hi)
        adamw_bf16(&w.x[k], &m.x[k], &v.x[k], load_f(&g.x[k]) * step.grad_scale, first + k, key, step);
  }
  store_group(weights, w, first, lo, hi, whole);
  store_group(m_state, m, first, lo, hi, whole);
  store_group(v_state, v, first, lo, hi, whole);
}

template <Precision Mode>
void launch(cudaStream_t stream, const OptimizerBuffers& buffers, size_t begin, size_t end, const AdamWStep& step) {
  const size_t first_group = begin / kGroup;
  const size_t groups = (end + kGroup - 1) / kGroup - first_group;
  const bool aligned = all_aligned16(buffers.weights, buffers.grads, buffers.m, buffers.v, buffers.master,
                                     buffers.compensation);
  if (buffers.f32_grads)
    adamw_kernel<Mode, float><<<ceil_div(groups, kThreads), kThreads, 0, stream>>>(buffers, begin, end, first_group,
                                                                                  groups, step, aligned);
  else
    adamw_kernel<Mode, typename ModeTypes<Mode>::Weight><<<ceil_div(groups, kThreads), kThreads, 0, stream>>>(
        buffers, begin, end, first_group, groups, step, aligned);
  CUDA_CHECK_LAUNCH("adamw_kernel");
}

void require(const void* p, const char* buffer) {
  if (!p) fail("adamw_update: this precision mode needs the {} buffer, which is missing", buffer);
}

}  // namespace

void adamw_update(DType storage, cudaStream_t stream, Precision mode, const OptimizerBuffers& buffers, size_t begin,
                  size_t end, const AdamWStep& step) {
  if (storage != compute_dtype(mode))
    fail("adamw_update: the precision mode computes in {}, but this cuda backend stores {}",
         dtype_name(compute_dtype(mode)), dtype_name(storage));
  if (begin > end) fail("adamw_update: element range [{}, {}) is reversed", begin, end);
  require(buffers.weights, "weights");
  require(buffers.grads, "grads");
  require(buffers.m, "m");
  require(buffers.v, "v");
  if (has_master_weights(mode)) require(buffers.master, "master");
  if (has_kahan_compensation(mode)) require(buffers.compensation, "compensation");
  if (begin == end) return;
  switch (mode) {
    case Precision::bf16_sr: return launch<Precision::bf16_sr>(stream, buffers, begin, end, step);
    case Precision::bf16_rn: return launch<Precision::bf16_rn>(stream, buffers, begin, end, step);
    case Precision::mixed: return launch<Precision::mixed>(stream, buffers, begin, end, step);
    case Precision::fp32: return launch<Precision::fp32>(stream, buffers, begin, end, step);
    case Precision::bf16_kahan: return launch<Precision::bf16_kahan>(stream, buffers, begin, end, step);
  }
  fail("adamw_update: unknown precision mode {}", int(mode));
}

}  // namespace srgpt::gpu
