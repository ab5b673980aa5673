#include <cstdint>
#include <vector>

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

// The ranges of one launch, by value. A block updates groups of one range
// only: range r owns blocks [first_block[r], first_block[r + 1]).
constexpr int kMaxRanges = 16;
struct LaunchRanges {
  int count = 0;
  size_t begin[kMaxRanges] = {}, end[kMaxRanges] = {};
  bool decay[kMaxRanges] = {};
  unsigned first_block[kMaxRanges + 1] = {};
};

// At most 64 registers, so that 4 blocks fit on an SM as before the
// range table (which costs up to 10 more): the update is memory-bound.
template <Precision Mode, typename G>
__global__ void __launch_bounds__(kThreads, 4)
    adamw_kernel(OptimizerBuffers buffers, LaunchRanges ranges, AdamWStep launch_step, bool aligned) {
  using W = typename ModeTypes<Mode>::Weight;
  using M = typename ModeTypes<Mode>::State;
  // This block's range, found with constant indices only: a parameter array
  // indexed at run time would be copied to local memory.
  size_t begin = ranges.begin[0], end = ranges.end[0];
  bool decay = ranges.decay[0];
  unsigned range_block = blockIdx.x;
#pragma unroll
  for (int r = 1; r < kMaxRanges; ++r)
    if (r < ranges.count && blockIdx.x >= ranges.first_block[r]) {
      begin = ranges.begin[r];
      end = ranges.end[r];
      decay = ranges.decay[r];
      range_block = blockIdx.x - ranges.first_block[r];
    }
  const size_t first = (begin / kGroup + size_t(range_block) * blockDim.x + threadIdx.x) * kGroup;
  if (first >= end) return;
  const size_t lo = first > begin ? first : begin;
  const size_t hi = first + kGroup < end ? first + kGroup : end;
  const bool whole = aligned && lo == first && hi == first + kGroup;
  const AdamWStep step = step_for_range(launch_step, decay);

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
void launch(cudaStream_t stream, const OptimizerBuffers& buffers, const LaunchRanges& ranges, const AdamWStep& step) {
  const unsigned blocks = ranges.first_block[ranges.count];
  const bool aligned = all_aligned16(buffers.weights, buffers.grads, buffers.m, buffers.v, buffers.master,
                                     buffers.compensation);
  if (buffers.f32_grads)
    adamw_kernel<Mode, float><<<blocks, kThreads, 0, stream>>>(buffers, ranges, step, aligned);
  else
    adamw_kernel<Mode, typename ModeTypes<Mode>::Weight><<<blocks, kThreads, 0, stream>>>(buffers, ranges, step,
                                                                                        aligned);
  CUDA_CHECK_LAUNCH("adamw_kernel");
}

void launch(cudaStream_t stream, Precision mode, const OptimizerBuffers& buffers, const LaunchRanges& ranges,
            const AdamWStep& step) {
  switch (mode) {
    case Precision::bf16_sr: return launch<Precision::bf16_sr>(stream, buffers, ranges, step);
    case Precision::bf16_rn: return launch<Precision::bf16_rn>(stream, buffers, ranges, step);
    case Precision::mixed: return launch<Precision::mixed>(stream, buffers, ranges, step);
    case Precision::fp32: return launch<Precision::fp32>(stream, buffers, ranges, step);
    case Precision::bf16_kahan: return launch<Precision::bf16_kahan>(stream, buffers, ranges, step);
  }
  fail("adamw_update: unknown precision mode {}", int(mode));
}

}  // namespace

void adamw_update(DType storage, cudaStream_t stream, Precision mode, const OptimizerBuffers& buffers,
                  const std::vector<AdamWRange>& ranges, const AdamWStep& step) {
  check_adamw_update("cuda", storage, mode, buffers, ranges);
  // Up to kMaxRanges non-empty ranges per launch: the optimizer's ranges are
  // the tensors of one ZeRO unit, at most 12 for a transformer block.
  LaunchRanges batch;
  auto flush = [&] {
    if (batch.count) launch(stream, mode, buffers, batch, step);
    batch = LaunchRanges();
  };
  for (const AdamWRange& range : ranges) {
    if (range.begin == range.end) continue;
    if (batch.count == kMaxRanges) flush();
    const size_t groups = (range.end + kGroup - 1) / kGroup - range.begin / kGroup;
    const size_t blocks = batch.first_block[batch.count] + (groups + kThreads - 1) / kThreads;
    if (blocks > 0x7fffffffu) fail("adamw_update: {} elements in one launch exceed the grid", range.end - range.begin);
    batch.begin[batch.count] = range.begin;
    batch.end[batch.count] = range.end;
    batch.decay[batch.count] = range.decay;
    batch.first_block[++batch.count] = unsigned(blocks);
  }
  flush();
}

}  // namespace srgpt::gpu
