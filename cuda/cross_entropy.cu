#include <cmath>

#include "common.cuh"
#include "cross_entropy.cuh"
#include "cuda_check.cuh"
#include "srgpt/error.h"

namespace srgpt::gpu {
namespace {

constexpr int kThreads = 1024;
// 16-byte chunks of a row each thread can hold in registers: rows up to
// 65536 bf16 (or 32768 fp32) logits are read from memory once.
constexpr int kResidentChunks = 8;

// One block per row, in three phases: the row max, the sum of
// exponentials, then the gradient written over the logits. With Resident
// the row is read once into registers (W is then the vector width);
// otherwise each phase reads it from memory again.
template <typename S, int W, bool Resident>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_kernel(float* losses, S* logits, const int32_t* targets, int V, int Vp, float dloss) {
  const int n = blockIdx.x;
  S* row = logits + size_t(n) * Vp;
  const int target = targets[n];
  const bool target_valid = target >= 0 && target < V;
  // Read before the barriers inside the reductions, so before any write.
  const float target_logit = target_valid && threadIdx.x == 0 ? load_f(row + target) : 0.0f;

  const int chunks = Vp / W;
  HeldChunks<S, W, Resident, kResidentChunks> held;
  // Calls f(first column, values) for each of this thread's chunks.
  auto for_each_chunk = [&](auto&& f) {
    for_strided<Resident, kResidentChunks>(threadIdx.x, kThreads, chunks, [&](int c, int chunk) {
      float x[W];
      held.get(c, row + size_t(chunk) * W, x);
      f(chunk * W, x);
    });
  };
  for_strided<Resident, kResidentChunks>(threadIdx.x, kThreads, chunks,
                                         [&](int c, int chunk) { held.fetch(c, row + size_t(chunk) * W); });

  __shared__ float shared[32];
  float thread_max = -INFINITY;
  for_each_chunk([&](int j0, const float(&x)[W]) {
#pragma unroll
    for (int k = 0; k < W; ++k)
      if (j0 + k < V) thread_max = fmaxf(thread_max, x[k]);
  });
  const float row_max = block_max(thread_max, shared);
  float thread_sum = 0.0f;
  for_each_chunk([&](int j0, const float(&x)[W]) {
#pragma unroll
    for (int k = 0; k < W; ++k)
      if (j0 + k < V) thread_sum += expf(x[k] - row_max);
  });
  const float row_sum = block_sum(thread_sum, shared);
  const float scale = dloss / row_sum;

  for_each_chunk([&](int j0, const float(&x)[W]) {
    float grad[W];
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const int j = j0 + k;
      if (j >= V)
        grad[k] = 0.0f;
      else if (j == target)
        grad[k] = (expf(x[k] - row_max) / row_sum - 1.0f) * dloss;
      else
        grad[k] = expf(x[k] - row_max) * scale;
    }
    store_chunk<W>(row + j0, grad);
  });
  if (threadIdx.x == 0) losses[n] = target_valid ? row_max + logf(row_sum) - target_logit : NAN;
}

}  // namespace

void cross_entropy_forward_backward(DType dtype, cudaStream_t stream, float* losses, void* logits,
                                    const int32_t* targets, int N, int V, int Vp, float dloss) {
  if (V <= 0 || V > Vp) fail("cross entropy: vocabulary size {} must be in [1, padded vocabulary {}]", V, Vp);
  if (N <= 0) return;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    constexpr int kVec = VecWidth<S>::value;
    const bool vectorised = rows_vectorisable<S>(Vp, logits);
    if (vectorised && Vp / kVec <= kThreads * kResidentChunks) {
      cross_entropy_kernel<S, kVec, true>
          <<<N, kThreads, 0, stream>>>(losses, static_cast<S*>(logits), targets, V, Vp, dloss);
      CUDA_CHECK_LAUNCH("cross_entropy_kernel");
      return;
    }
    dispatch_width<S>(vectorised, [&](auto width) {
      constexpr int W = decltype(width)::value;
      cross_entropy_kernel<S, W, false>
          <<<N, kThreads, 0, stream>>>(losses, static_cast<S*>(logits), targets, V, Vp, dloss);
      CUDA_CHECK_LAUNCH("cross_entropy_kernel");
    });
  });
}

}  // namespace srgpt::gpu
