// dst += src elementwise (ZeRO-2/3 gradient shards), rounded once like the
// cpu backend's accumulate.
#include "accumulate.cuh"
#include "common.cuh"
#include "cuda_check.cuh"

namespace srgpt::gpu {
namespace {

constexpr int kThreads = 256;

// One thread per W-element chunk; the last chunk may be partial.
template <typename S, int W>
__global__ void accumulate_kernel(S* dst, const S* src, size_t n) {
  const size_t first = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) * W;
  if (first >= n) return;
  if (first + W <= n) {
    float a[W], b[W];
    load_chunk<W>(dst + first, a);
    load_chunk<W>(src + first, b);
#pragma unroll
    for (int k = 0; k < W; ++k) a[k] += b[k];
    store_chunk<W>(dst + first, a);
  } else {
    for (size_t i = first; i < n; ++i) accumulate_f(dst + i, load_f(src + i));
  }
}

}  // namespace

void accumulate(DType dtype, cudaStream_t stream, void* dst, const void* src, size_t n) {
  if (n == 0) return;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    dispatch_width<S>(all_aligned16(dst, src), [&](auto width) {
      constexpr int W = decltype(width)::value;
      accumulate_kernel<S, W><<<ceil_div(ceil_div(n, W), kThreads), kThreads, 0, stream>>>(
          static_cast<S*>(dst), static_cast<const S*>(src), n);
      CUDA_CHECK_LAUNCH("accumulate_kernel");
    });
  });
}

}  // namespace srgpt::gpu
