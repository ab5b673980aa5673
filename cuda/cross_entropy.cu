#include <cmath>

#include "common.cuh"
#include "cross_entropy.cuh"
#include "cuda_check.cuh"
#include "srgpt/error.h"

namespace srgpt::gpu {
namespace {

constexpr int kThreads = 512;

// Folds x into a running (max, sum of exp(x - max)) pair.
__device__ __forceinline__ void online_softmax_add(float x, float* running_max, float* sum) {
  if (x > *running_max) {
    *sum = *sum * expf(*running_max - x) + 1.0f;
    *running_max = x;
  } else {
    *sum += expf(x - *running_max);
  }
}

// One block per row: one read for the max and sum of exponentials (online),
// a second read to write the gradient over the logits.
template <typename S, int W>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_kernel(float* losses, S* logits, const int32_t* targets, int V, int Vp, float dloss) {
  const int n = blockIdx.x;
  S* row = logits + size_t(n) * Vp;
  const int target = targets[n];
  const bool target_valid = target >= 0 && target < V;
  // Read before the barriers inside the reductions, so before any write.
  const float target_logit = target_valid && threadIdx.x == 0 ? load_f(row + target) : 0.0f;

  float running_max = -INFINITY, sum = 0.0f;
  const int chunks = Vp / W;
  for (int chunk = threadIdx.x; chunk < chunks; chunk += kThreads) {
    const int j0 = chunk * W;
    if (j0 >= V) break;
    float x[W];
    load_chunk<W>(row + j0, x);
#pragma unroll
    for (int k = 0; k < W; ++k)
      if (j0 + k < V) online_softmax_add(x[k], &running_max, &sum);
  }
  __shared__ float shared[32];
  const float row_max = block_max(running_max, shared);
  const float row_sum = block_sum(running_max == -INFINITY ? 0.0f : sum * expf(running_max - row_max), shared);
  const float scale = dloss / row_sum;

  for (int chunk = threadIdx.x; chunk < chunks; chunk += kThreads) {
    const int j0 = chunk * W;
    float x[W];
    load_chunk<W>(row + j0, x);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const int j = j0 + k;
      if (j >= V)
        x[k] = 0.0f;
      else if (j == target)
        x[k] = (expf(x[k] - row_max) / row_sum - 1.0f) * dloss;
      else
        x[k] = expf(x[k] - row_max) * scale;
    }
    store_chunk<W>(row + j0, x);
  }
  if (threadIdx.x == 0) losses[n] = target_valid ? row_max + logf(row_sum) - target_logit : NAN;
}

}  // namespace

void cross_entropy_forward_backward(DType dtype, cudaStream_t stream, float* losses, void* logits,
                                    const int32_t* targets, int N, int V, int Vp, float dloss) {
  if (V <= 0 || V > Vp) fail("cross entropy: vocabulary size {} must be in [1, padded vocabulary {}]", V, Vp);
  if (N <= 0) return;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    dispatch_width<S>(Vp % VecWidth<S>::value == 0 && aligned16(logits), [&](auto width) {
      constexpr int W = decltype(width)::value;
      cross_entropy_kernel<S, W><<<N, kThreads, 0, stream>>>(losses, static_cast<S*>(logits), targets, V, Vp, dloss);
      CUDA_CHECK_LAUNCH("cross_entropy_kernel");
    });
  });
}

}  // namespace srgpt::gpu
