// GELU on its own: recomputes the activation of matmul_forward's GELU
// epilogue from the stored pre-activation (the model's recompute option).
#include "common.cuh"
#include "cuda_check.cuh"
#include "gelu.cuh"
#include "srgpt/gelu_math.h"

namespace srgpt::gpu {
namespace {

constexpr int kThreads = 256;

// One thread per W-element chunk; the last chunk may be partial.
template <typename S, int W>
__global__ void gelu_forward_kernel(S* out, const S* pre, size_t n) {
  const size_t first = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) * W;
  if (first >= n) return;
  if (first + W <= n) {
    float x[W];
    load_chunk<W>(pre + first, x);
#pragma unroll
    for (int k = 0; k < W; ++k) x[k] = gelu_tanh(x[k]);
    store_chunk<W>(out + first, x);
  } else {
    for (size_t i = first; i < n; ++i) out[i] = store_f<S>(gelu_tanh(load_f(pre + i)));
  }
}

}  // namespace

void gelu_forward(DType dtype, cudaStream_t stream, void* out, const void* pre, size_t n) {
  if (n == 0) return;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    dispatch_width<S>(all_aligned16(out, pre), [&](auto width) {
      constexpr int W = decltype(width)::value;
      gelu_forward_kernel<S, W><<<ceil_div(ceil_div(n, W), kThreads), kThreads, 0, stream>>>(
          static_cast<S*>(out), static_cast<const S*>(pre), n);
      CUDA_CHECK_LAUNCH("gelu_forward_kernel");
    });
  });
}

}  // namespace srgpt::gpu
