#pragma once
// The PTX instructions the tensor-core kernels use (sm_80+, fine on sm_90),
// one wrapper each: bf16 mma with fp32 accumulation, ldmatrix, the bf16 pair
// conversion, cp.async, the acquire/release flag that orders blocks, and
// Hopper's wgmma (sm_90a only) with its fences.
// Kept apart so that the CPU kernel emulator (tests/emulation) can stand in
// its own definitions of exactly these.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

namespace srgpt::gpu {

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* p) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const uint16_t* p) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// Two floats rounded to nearest into a bf16 pair, `low` in the low half.
__device__ __forceinline__ uint32_t pack_bf16(float low, float high) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(high), "f"(low));
  return r;
}

// 16-byte global -> shared copy; zero-fills the destination when !valid.
__device__ __forceinline__ void cp_async_16(uint16_t* shared_dst, const uint16_t* global_src, bool valid) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(shared_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global_src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
}

// Nanoseconds of the GPU's global timer.
__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// How long a block waits for another's flag before it concludes that the
// other is not running (a real wait lasts microseconds): it then traps, so
// the launch fails with an error instead of hanging the run.
constexpr uint64_t kFlagWaitLimitNs = 10'000'000'000ull;

// Spins until *flag == value; the load has acquire semantics at GPU scope,
// so what the thread that stored the value wrote before its release is
// visible after the wait. With Report, a block that gives up prints which
// block and flag first; kernels with wgmma leave that out, since ptxas
// serialises every wgmma of a kernel that calls printf (C7510).
template <bool Report = true>
__device__ __forceinline__ void wait_for_flag(const unsigned* flag, unsigned value) {
  uint64_t start = 0;
  for (;;) {
    unsigned seen;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(seen) : "l"(flag) : "memory");
    if (seen == value) return;
    const uint64_t now = global_timer_ns();
    if (start == 0) {
      start = now;
    } else if (now - start > kFlagWaitLimitNs) {
      if constexpr (Report)
        printf("srgpt: block (%d, %d) waited over 10 s for a flag to become %u (it is %u): the block that sets it "
               "is not running; aborting the kernel\n",
               int(blockIdx.x), int(blockIdx.y), value, seen);
      __trap();
    }
    __nanosleep(32);  // poll gently: the other blocks share the L2
  }
}

// Stores value with release semantics at GPU scope.
__device__ __forceinline__ void release_flag(unsigned* flag, unsigned value) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(flag), "r"(value) : "memory");
}

// ---- wgmma: Hopper's warpgroup matrix multiply (sm_90a). Four consecutive
// warps (a warpgroup, the first warp's index a multiple of 4) issue each one
// together; it runs asynchronously: wgmma_fence before it (after the
// threads last wrote its accumulators or A registers), wgmma_commit to
// close a group, wgmma_wait<n> until at most n groups are in flight, and
// wgmma_fence_operands on the accumulators after the wait, so that the
// compiler does not move their reads above it. Shared memory written by
// the threads (cp.async included) and read next by wgmma needs
// fence_proxy_async_shared in each writing thread before the barrier.

// True where this code was compiled for sm_90a, the target with wgmma;
// elsewhere the wgmma wrappers trap.
__device__ __forceinline__ bool wgmma_compiled() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  return true;
#else
  return false;
#endif
}

// A shared-memory matrix descriptor without swizzling: the matrix is made
// of core matrices of 8 rows x 16 bytes, each contiguous (128 bytes);
// leading_bytes and stride_bytes are the distances between adjacent core
// matrices along the leading and the stride dimension (PTX ISA, "Matrix
// Descriptor Format": bits 0-13 start address, 16-29 leading, 32-45
// stride, each in 16-byte units; swizzle mode 0 in bits 62-63).
__device__ __forceinline__ uint64_t wgmma_descriptor(const uint16_t* tile, uint32_t leading_bytes,
                                                     uint32_t stride_bytes) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(tile));
  return uint64_t((address & 0x3FFFF) >> 4) | (uint64_t((leading_bytes & 0x3FFFF) >> 4) << 16) |
         (uint64_t((stride_bytes & 0x3FFFF) >> 4) << 32);
}

#define SRGPT_WGMMA_ACCUMULATORS(d, nb) "+f"(d[nb][0]), "+f"(d[nb][1]), "+f"(d[nb][2]), "+f"(d[nb][3])
// The accumulators of 32 columns from 8 nb on, as asm operands.
#define SRGPT_WGMMA_ACCUMULATORS_32(d, nb)                                   \
  SRGPT_WGMMA_ACCUMULATORS(d, nb), SRGPT_WGMMA_ACCUMULATORS(d, nb + 1),      \
      SRGPT_WGMMA_ACCUMULATORS(d, nb + 2), SRGPT_WGMMA_ACCUMULATORS(d, nb + 3)

// d (64 x N per warpgroup, fp32) += A (64 x 16, bf16, in registers) times
// B (16 x N, bf16, in shared memory). Each warp holds 16 rows of A and D in
// the mma.m16n8k16 layout (g = lane / 4, q = lane % 4): a as an A fragment,
// d[nb] as the C fragment of columns 8 nb .. 8 nb + 7. B is K-major (each
// core matrix row holds 8 consecutive k of one n) or, with TransposeB,
// N-major (8 consecutive n of one k).
template <int N, bool TransposeB>
__device__ __forceinline__ void wgmma_bf16(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b_descriptor) {
  static_assert(N == 64 || N == 128, "wgmma_bf16: N is 64 or 128");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (N == 64) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
        : SRGPT_WGMMA_ACCUMULATORS_32(d, 0), SRGPT_WGMMA_ACCUMULATORS_32(d, 4)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_descriptor), "r"(1), "n"(int(TransposeB)));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
        : SRGPT_WGMMA_ACCUMULATORS_32(d, 0), SRGPT_WGMMA_ACCUMULATORS_32(d, 4), SRGPT_WGMMA_ACCUMULATORS_32(d, 8),
          SRGPT_WGMMA_ACCUMULATORS_32(d, 12)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_descriptor), "r"(1), "n"(int(TransposeB)));
  }
#else
  __trap();
#endif
}

// d (64 x N per warpgroup, N 32 or 64) += A (64 x 16) B (16 x N), both in
// shared memory: A K-major (core matrix rows hold 8 consecutive k of one m;
// the warpgroup's 64 rows, warp w taking rows 16 w ..) or, with
// TransposeA, M-major (8 consecutive m of one k); B as in wgmma_bf16.
template <int N, bool TransposeA, bool TransposeB>
__device__ __forceinline__ void wgmma_bf16_shared_a(float (&d)[N / 8][4], uint64_t a_descriptor,
                                                    uint64_t b_descriptor) {
  static_assert(N == 32 || N == 64, "wgmma_bf16_shared_a: N is 32 or 64");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (N == 32) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
        "%16, %17, p, 1, 1, %19, %20;\n}\n"
        : SRGPT_WGMMA_ACCUMULATORS_32(d, 0)
        : "l"(a_descriptor), "l"(b_descriptor), "r"(1), "n"(int(TransposeA)), "n"(int(TransposeB)));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, p, 1, 1, %35, %36;\n}\n"
        : SRGPT_WGMMA_ACCUMULATORS_32(d, 0), SRGPT_WGMMA_ACCUMULATORS_32(d, 4)
        : "l"(a_descriptor), "l"(b_descriptor), "r"(1), "n"(int(TransposeA)), "n"(int(TransposeB)));
  }
#else
  __trap();
#endif
}

#undef SRGPT_WGMMA_ACCUMULATORS_32
#undef SRGPT_WGMMA_ACCUMULATORS

__device__ __forceinline__ void wgmma_fence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int Pending>
__device__ __forceinline__ void wgmma_wait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
#endif
}
template <int NB>
__device__ __forceinline__ void wgmma_fence_operands(float (&d)[NB][4]) {
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[nb][e])::"memory");
  }
}
__device__ __forceinline__ void fence_proxy_async_shared() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

}  // namespace srgpt::gpu
