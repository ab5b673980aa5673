#pragma once
// The PTX instructions the tensor-core kernels use (sm_80+, fine on sm_90),
// one wrapper each: bf16 mma with fp32 accumulation, ldmatrix, the bf16 pair
// conversion, cp.async, and the acquire/release flag that orders blocks.
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
// visible after the wait.
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

}  // namespace srgpt::gpu
