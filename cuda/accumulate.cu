// dst += src elementwise (gradient accumulation: ZeRO-2/3 shards, fp32
// gradients), rounded once like the cpu backend's accumulate.
#include "accumulate.cuh"
#include "common.cuh"
#include "cuda_check.cuh"
#include "srgpt/error.h"

namespace srgpt::gpu {
namespace {

constexpr int kThreads = 256;

// One thread per W-element chunk; the last chunk may be partial. W is dst's
// vector width (a narrower src is read element by element).
template <typename D, typename S, int W>
__global__ void accumulate_kernel(D* dst, const S* src, size_t n) {
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

template <typename D, typename S>
void launch(cudaStream_t stream, void* dst, const void* src, size_t n) {
  dispatch_width<D>(all_aligned16(dst, src), [&](auto width) {
    constexpr int W = decltype(width)::value;
    accumulate_kernel<D, S, W><<<ceil_div(ceil_div(n, W), kThreads), kThreads, 0, stream>>>(
        static_cast<D*>(dst), static_cast<const S*>(src), n);
    CUDA_CHECK_LAUNCH("accumulate_kernel");
  });
}

}  // namespace

void accumulate(DType storage, cudaStream_t stream, void* dst, DType dst_dtype, const void* src, DType src_dtype,
                size_t n) {
  if (n == 0) return;
  if (dst_dtype == storage && src_dtype == storage) {
    dispatch_storage(storage, [&](auto tag) {
      using S = decltype(tag);
      launch<S, S>(stream, dst, src, n);
    });
  } else if (dst_dtype == DType::f32 && src_dtype == DType::f32) {
    launch<float, float>(stream, dst, src, n);
  } else if (dst_dtype == DType::f32 && src_dtype == storage) {
    dispatch_storage(storage, [&](auto tag) {
      using S = decltype(tag);
      launch<float, S>(stream, dst, src, n);
    });
  } else {
    fail("cuda backend ({}): accumulate of {} into {} is not supported (allowed: into {} or f32)",
         dtype_name(storage), dtype_name(src_dtype), dtype_name(dst_dtype), dtype_name(storage));
  }
}

}  // namespace srgpt::gpu
