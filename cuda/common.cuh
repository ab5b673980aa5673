#pragma once
// Device helpers shared by the kernels: storage <-> fp32 conversion (the
// same round-to-nearest as the cpu backend), 16-byte vector access, warp and
// block reductions with a fixed order, and dtype dispatch for launchers.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda_check.cuh"
#include "srgpt/bf16.h"
#include "srgpt/dtype.h"
#include "srgpt/error.h"

namespace srgpt::gpu {

// ---- scalar storage access
__device__ __forceinline__ float load_f(const bf16* p) { return bf16_to_float(*p); }
__device__ __forceinline__ float load_f(const float* p) { return *p; }

template <typename S>
__device__ __forceinline__ S store_f(float x);
template <>
__device__ __forceinline__ bf16 store_f<bf16>(float x) {
  return float_to_bf16_rn(x);
}
template <>
__device__ __forceinline__ float store_f<float>(float x) {
  return x;
}

// The value x has once stored as S (rounded to nearest for bf16).
template <typename S>
__device__ __forceinline__ float round_to_storage(float x) {
  const S stored = store_f<S>(x);
  return load_f(&stored);
}

// "+=" into storage: load, add in fp32, round once (as the cpu backend).
template <typename S>
__device__ __forceinline__ void accumulate_f(S* p, float x) {
  *p = store_f<S>(load_f(p) + x);
}

// ---- 16-byte vectors: 8 bf16 or 4 floats per access
template <typename S>
struct VecWidth {
  static constexpr int value = 16 / sizeof(S);
};

// The floats in 16 bytes of storage S.
template <typename S>
__device__ __forceinline__ void unpack_vec(uint4 raw, float (&out)[VecWidth<S>::value]) {
  if constexpr (sizeof(S) == 2) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[2 * i] = bits_float(words[i] << 16);
      out[2 * i + 1] = bits_float(words[i] & 0xffff0000u);
    }
  } else {
    out[0] = __uint_as_float(raw.x);
    out[1] = __uint_as_float(raw.y);
    out[2] = __uint_as_float(raw.z);
    out[3] = __uint_as_float(raw.w);
  }
}

// Loads the 16 bytes at an aligned address as floats. A plain (coherent)
// load, so it is also right for data the same kernel writes elsewhere.
template <typename S>
__device__ __forceinline__ void load_vec(const S* p, float (&out)[VecWidth<S>::value]) {
  unpack_vec<S>(*reinterpret_cast<const uint4*>(p), out);
}

// Rounds to nearest and stores kVec elements at a 16-byte aligned address.
template <typename S>
__device__ __forceinline__ void store_vec(S* p, const float (&in)[VecWidth<S>::value]) {
  uint4 raw;
  if constexpr (sizeof(S) == 2) {
    uint32_t words[4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
      words[i] = uint32_t(float_to_bf16_rn(in[2 * i]).bits) | (uint32_t(float_to_bf16_rn(in[2 * i + 1]).bits) << 16);
    raw = make_uint4(words[0], words[1], words[2], words[3]);
  } else {
    raw = make_uint4(__float_as_uint(in[0]), __float_as_uint(in[1]), __float_as_uint(in[2]), __float_as_uint(in[3]));
  }
  *reinterpret_cast<uint4*>(p) = raw;
}

// W consecutive elements: one 16-byte access when W is the vector width,
// else W scalar accesses (unaligned or odd-sized rows).
template <int W, typename S>
__device__ __forceinline__ void load_chunk(const S* p, float (&out)[W]) {
  if constexpr (W == VecWidth<S>::value) {
    load_vec(p, out);
  } else {
#pragma unroll
    for (int i = 0; i < W; ++i) out[i] = load_f(p + i);
  }
}
template <int W, typename S>
__device__ __forceinline__ void store_chunk(S* p, const float (&in)[W]) {
  if constexpr (W == VecWidth<S>::value) {
    store_vec(p, in);
  } else {
#pragma unroll
    for (int i = 0; i < W; ++i) p[i] = store_f<S>(in[i]);
  }
}

// True when every pointer is 16-byte aligned (null pointers are ignored).
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
template <typename... P>
inline bool all_aligned16(const P*... p) {
  return (aligned16(p) && ...);
}
// True when rows of `row_length` S elements starting at each pointer can be
// accessed VecWidth<S> elements (16 bytes) at a time.
template <typename S, typename... P>
inline bool rows_vectorisable(int row_length, const P*... p) {
  return row_length % VecWidth<S>::value == 0 && all_aligned16(p...);
}

// Calls f(i, index) for index = first + i * stride while index < count.
// When Held the loop is unrolled over MaxHeld iterations, so that i may
// index register arrays holding the items (the caller guarantees that
// MaxHeld iterations cover count); otherwise it is a plain loop.
template <bool Held, int MaxHeld, typename F>
__device__ __forceinline__ void for_strided(int first, int stride, int count, F&& f) {
  if constexpr (Held) {
#pragma unroll
    for (int i = 0; i < MaxHeld; ++i) {
      const int index = first + i * stride;
      if (index < count) f(i, index);
    }
  } else {
    for (int i = 0, index = first; index < count; ++i, index += stride) f(i, index);
  }
}

// The 16-byte chunks of a row one thread reads more than once: with Held,
// fetch(i, p) keeps chunk i in registers (i a compile-time index, see
// for_strided) and get() unpacks it from there; without, fetch does nothing
// and get() reads memory again (W may then be 1, the scalar path).
template <typename S, int W, bool Held, int MaxHeld>
struct HeldChunks {
  uint4 raw[Held ? MaxHeld : 1];
  __device__ __forceinline__ void fetch(int i, const S* p) {
    if constexpr (Held) raw[i] = *reinterpret_cast<const uint4*>(p);
  }
  __device__ __forceinline__ void get(int i, const S* p, float (&out)[W]) const {
    if constexpr (Held)
      unpack_vec<S>(raw[i], out);
    else
      load_chunk<W>(p, out);
  }
};

// ---- reductions in a fixed order (butterfly), so results are reproducible
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}
__device__ __forceinline__ double warp_sum(double x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `shared` holds 32 values; the barrier before the
// writes keeps them clear of a previous call's reads, so calls (block_max
// too) may follow each other on the same `shared`.
template <typename A>
__device__ A block_sum(A x, A* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  x = warp_sum(x);
  __syncthreads();
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  A total = lane < warps ? shared[lane] : A(0);
  total = warp_sum(total);
  return total;
}

__device__ __forceinline__ float block_max(float x, float* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  x = warp_max(x);
  __syncthreads();
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  float m = lane < warps ? shared[lane] : -INFINITY;
  return warp_max(m);
}

inline unsigned ceil_div(size_t a, size_t b) { return unsigned((a + b - 1) / b); }

// Calls f(S{}) with S the storage type of dtype (bf16 or float); the
// backend refuses other dtypes at construction.
template <typename F>
void dispatch_storage(DType dtype, F&& f) {
  switch (dtype) {
    case DType::bf16: f(bf16{}); return;
    case DType::f32: f(float{}); return;
    case DType::f64: break;
  }
  fail("cuda backend: dtype {} is not supported on the GPU (allowed: bf16, f32)", dtype_name(dtype));
}

// Opts a kernel into more than the default 48 KiB of dynamic shared memory
// when it needs it; `op` names the caller for the error when even the
// device's opt-in limit is too small.
template <typename Kernel>
void allow_dynamic_shared_memory(Kernel kernel, size_t bytes, const char* op) {
  constexpr size_t kDefaultLimit = 48 * 1024;
  if (bytes <= kDefaultLimit) return;
  const int limit = current_device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  if (bytes > size_t(limit))
    fail("{}: needs {} bytes of shared memory per block, the device allows {}; the shape is too wide", op, bytes,
         limit);
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (err != cudaSuccess) fail("{}: cudaFuncSetAttribute failed: {}", op, cudaGetErrorString(err));
}

// Calls f(std::integral_constant<int, W>{}): W is the 16-byte vector width
// of S when `vectorised`, else 1 (the scalar fallback for odd shapes).
template <typename S, typename F>
void dispatch_width(bool vectorised, F&& f) {
  if (vectorised)
    f(std::integral_constant<int, VecWidth<S>::value>{});
  else
    f(std::integral_constant<int, 1>{});
}

}  // namespace srgpt::gpu
