#pragma once
// The CPU device emulator's definitions of the PTX wrappers in
// cuda/ptx.cuh, from the PTX ISA's description of each instruction: the
// mma.m16n8k16 fragment layouts, ldmatrix's row addressing (lanes 8i..8i+7
// give the rows of matrix i; lane l receives row l/4, columns 2(l%4) and
// 2(l%4)+1, or with .trans the transposed pair), cvt.rn.bf16x2,
// cp.async with zero fill, the acquire/release flag, and wgmma with
// no-swizzle shared-memory descriptors (its asynchrony included).
#include <cstdint>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>

#include "device_emulator.h"
#include "srgpt/bf16.h"

namespace srgpt::gpu {

namespace emulated_ptx {

// The bf16 in the low (high = 0) or high half of a 32-bit register, as a float.
inline float bf16_half(uint32_t word, int high) {
  return bf16_to_float(bf16{uint16_t(high ? word >> 16 : word & 0xffffu)});
}

struct MmaIn {
  uint32_t a[4], b[2];
  float c[4];
};
struct Fragment {
  uint32_t r[4];
};
struct Accumulator {
  float d[4];
};

// Places a lane's A fragment (16x16, row-major; four registers of bf16
// pairs, the layout mma.m16n8k16 and wgmma's register A share) into A.
inline void unpack_a_fragment(const uint32_t (&a)[4], int lane, float (&A)[16][16]) {
  const int g = lane / 4, q = lane % 4;
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r % 2), col = 2 * q + 8 * (r / 2);
    A[row][col] = bf16_half(a[r], 0);
    A[row][col + 1] = bf16_half(a[r], 1);
  }
}

// D (16x8) = A (16x16, row-major) B (16x8) + C, fp32 accumulation.
inline void mma_m16n8k16(const unsigned char* inputs, unsigned char* outputs) {
  float A[16][16], B[16][8], C[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    MmaIn in;
    std::memcpy(&in, inputs + lane * sizeof(MmaIn), sizeof(MmaIn));
    const int g = lane / 4, q = lane % 4;
    unpack_a_fragment(in.a, lane, A);
    for (int r = 0; r < 2; ++r) {
      const int k = 2 * q + 8 * r;
      B[k][g] = bf16_half(in.b[r], 0);
      B[k + 1][g] = bf16_half(in.b[r], 1);
    }
    for (int e = 0; e < 4; ++e) C[g + 8 * (e / 2)][2 * q + e % 2] = in.c[e];
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, q = lane % 4;
    Accumulator out;
    for (int e = 0; e < 4; ++e) {
      const int row = g + 8 * (e / 2), col = 2 * q + e % 2;
      double sum = C[row][col];
      for (int k = 0; k < 16; ++k) sum += double(A[row][k]) * double(B[k][col]);
      out.d[e] = float(sum);
    }
    std::memcpy(outputs + lane * sizeof(Accumulator), &out, sizeof(Accumulator));
  }
}

template <bool Transposed>
void ldmatrix_x4(const unsigned char* inputs, unsigned char* outputs) {
  const uint16_t* rows[32];
  for (int lane = 0; lane < 32; ++lane) std::memcpy(&rows[lane], inputs + lane * sizeof(rows[0]), sizeof(rows[0]));
  for (int lane = 0; lane < 32; ++lane) {
    Fragment out;
    for (int i = 0; i < 4; ++i) {
      const uint16_t* const* m = rows + 8 * i;  // the 8 rows of matrix i
      uint16_t low, high;
      if (Transposed) {
        low = m[2 * (lane % 4)][lane / 4];
        high = m[2 * (lane % 4) + 1][lane / 4];
      } else {
        low = m[lane / 4][2 * (lane % 4)];
        high = m[lane / 4][2 * (lane % 4) + 1];
      }
      out.r[i] = uint32_t(low) | (uint32_t(high) << 16);
    }
    std::memcpy(outputs + lane * sizeof(Fragment), &out, sizeof(Fragment));
  }
}

// ---- wgmma. A warpgroup's wgmma m64nNk16 is, per warp, D (its 16 rows x
// N) += A (its 16 rows x 16, from registers in the mma A layout) times B
// (16 x N, shared, the same for the four warps). Each warp's share is a
// warp-wide operation whose product is queued (warp_defer) and computed
// when a wgmma_wait covers its group, as on the device it completes some
// time before: B is read from shared memory at the wait, so a tile
// overwritten before it gives wrong results, and the accumulators hold NaN
// from the issue to the wait, so reading them early shows.
struct WgmmaIn {
  uint32_t a[4];          // A in registers, or
  uint64_t a_descriptor;  // A in shared memory
  uint64_t descriptor;    // B
  float* d;               // this lane's accumulators, N / 2 floats
};

// A no-swizzle descriptor's matrix, element (k, n) of B, or (k, m) of A
// from shared memory (PTX ISA, "Shared Memory Matrix Layout", canonical
// layouts without swizzling, in bytes): K-major ((8,m),(8,2)) :
// ((16,SBO),(2,LBO)) over (n, k); N- or M-major ((8,m),(8,k)) :
// ((2,SBO),(16,LBO)) over (n, k).
struct WgmmaMatrix {
  const unsigned char* start;
  uint32_t leading_bytes, stride_bytes;
  bool n_major;
  explicit WgmmaMatrix(uint64_t descriptor, bool n_major_) : n_major(n_major_) {
    if ((descriptor >> 62) != 0) emulation::fault("wgmma descriptor with swizzling (the emulator has only mode 0)");
    if (((descriptor >> 49) & 7) != 0)
      emulation::fault("wgmma descriptor with a base offset (unused without swizzling)");
    start = emulation::dynamic_shared() + ((descriptor & 0x3FFF) << 4);
    leading_bytes = uint32_t((descriptor >> 16) & 0x3FFF) << 4;
    stride_bytes = uint32_t((descriptor >> 32) & 0x3FFF) << 4;
  }
  float at(int k, int n) const {
    const size_t offset = size_t(n / 8) * stride_bytes + size_t(k / 8) * leading_bytes +
                          (n_major ? (k % 8) * 16 + (n % 8) * 2 : (n % 8) * 16 + (k % 8) * 2);
    const unsigned char* p = start + offset;
    if (!emulation::in_shared(p, 2))
      emulation::fault("wgmma reads an operand outside the block's dynamic shared memory");
    uint16_t bits;
    std::memcpy(&bits, p, 2);
    return bf16_to_float(bf16{bits});
  }
};

// The instruction's name, for the warpgroup's consistency check and faults.
template <int N, bool SharedA>
constexpr const char* wgmma_name() {
  if constexpr (SharedA) return N == 32 ? "wgmma.m64n32k16 (A shared)" : "wgmma.m64n64k16 (A shared)";
  return N == 64 ? "wgmma.m64n64k16" : "wgmma.m64n128k16";
}

template <int N, bool TransposeA, bool TransposeB, bool SharedA>
void wgmma_issue(const unsigned char* inputs, unsigned char*) {
  auto lanes = std::make_shared<std::array<WgmmaIn, 32>>();
  std::memcpy(lanes->data(), inputs, sizeof(*lanes));
  const uint64_t descriptor = (*lanes)[0].descriptor, a_descriptor = (*lanes)[0].a_descriptor;
  for (const WgmmaIn& lane : *lanes)
    if (lane.descriptor != descriptor || lane.a_descriptor != a_descriptor)
      emulation::fault("wgmma with different descriptors in one warp");
  // Which 16 rows of the warpgroup's 64 this warp's A and D hold.
  const uint3& thread = emulation::thread_index();
  const dim3& block = emulation::block_dim();
  const int warp_in_group = int((thread.x + block.x * (thread.y + block.y * thread.z)) / 32 % 4);
  emulation::warpgroup_operation(wgmma_name<N, SharedA>(), descriptor ^ uint64_t(TransposeB) ^ (a_descriptor << 1) ^
                                                               (uint64_t(TransposeA) << 63));
  // Continuing a queued product on the same accumulators: the device chains
  // them, so this one starts from that one's result.
  const bool chained = emulation::warp_has_deferred((*lanes)[0].d);
  auto c = std::make_shared<std::array<float, 32 * N / 2>>();
  for (int lane = 0; lane < 32; ++lane) {
    float* d = (*lanes)[lane].d;
    if (!chained) std::memcpy(c->data() + lane * N / 2, d, sizeof(float) * N / 2);
    std::fill(d, d + N / 2, std::numeric_limits<float>::quiet_NaN());
  }
  emulation::warp_defer((*lanes)[0].d, [lanes, c, chained, warp_in_group] {
    float A[16][16];
    if (SharedA) {
      const WgmmaMatrix a((*lanes)[0].a_descriptor, TransposeA);  // a.at(k, m)
      for (int row = 0; row < 16; ++row)
        for (int k = 0; k < 16; ++k) A[row][k] = a.at(k, 16 * warp_in_group + row);
    } else {
      for (int lane = 0; lane < 32; ++lane) unpack_a_fragment((*lanes)[lane].a, lane, A);
    }
    const WgmmaMatrix b((*lanes)[0].descriptor, TransposeB);
    std::array<float, 16 * N> B;
    for (int k = 0; k < 16; ++k)
      for (int n = 0; n < N; ++n) B[k * N + n] = b.at(k, n);
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, q = lane % 4;
      float* d = (*lanes)[lane].d;
      for (int i = 0; i < N / 2; ++i) {
        const int nb = i / 4, e = i % 4;
        const int row = g + 8 * (e / 2), col = 8 * nb + 2 * q + e % 2;
        double sum = chained ? d[i] : (*c)[lane * N / 2 + i];
        for (int k = 0; k < 16; ++k) sum += double(A[row][k]) * double(B[k * N + col]);
        d[i] = float(sum);
      }
    }
  });
}

inline void wgmma_commit_group(const unsigned char*, unsigned char*) {
  emulation::warpgroup_operation("wgmma.commit_group", 0);
  emulation::warp_commit_deferred();
}
template <int Pending>
void wgmma_wait_group(const unsigned char*, unsigned char*) {
  emulation::warpgroup_operation("wgmma.wait_group", Pending);
  emulation::warp_wait_deferred(Pending);
}
inline void wgmma_fence_compute(const unsigned char*, unsigned char*) {
  emulation::warpgroup_operation("wgmma.fence", 0);
}

inline const uint16_t* checked_row(const uint16_t* p) {
  if (!emulation::in_shared(p, 16)) emulation::fault("ldmatrix row outside the block's dynamic shared memory");
  if (reinterpret_cast<uintptr_t>(p) % 16) emulation::fault("ldmatrix row address not 16-byte aligned");
  return p;
}

}  // namespace emulated_ptx

inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  using namespace emulated_ptx;
  MmaIn in{{a[0], a[1], a[2], a[3]}, {b0, b1}, {d[0], d[1], d[2], d[3]}};
  const auto out = emulation::warp_collective<MmaIn, Accumulator>("mma.m16n8k16", in, mma_m16n8k16);
  for (int e = 0; e < 4; ++e) d[e] = out.d[e];
}

inline void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* p) {
  using namespace emulated_ptx;
  const auto out = emulation::warp_collective<const uint16_t*, Fragment>("ldmatrix.x4", checked_row(p),
                                                                         emulated_ptx::ldmatrix_x4<false>);
  for (int i = 0; i < 4; ++i) r[i] = out.r[i];
}

inline void ldmatrix_x4_trans(uint32_t (&r)[4], const uint16_t* p) {
  using namespace emulated_ptx;
  const auto out = emulation::warp_collective<const uint16_t*, Fragment>("ldmatrix.x4.trans", checked_row(p),
                                                                         emulated_ptx::ldmatrix_x4<true>);
  for (int i = 0; i < 4; ++i) r[i] = out.r[i];
}

inline uint32_t pack_bf16(float low, float high) {
  return uint32_t(float_to_bf16_rn(low).bits) | (uint32_t(float_to_bf16_rn(high).bits) << 16);
}

inline void cp_async_16(uint16_t* shared_dst, const uint16_t* global_src, bool valid) {
  emulation::cp_async(shared_dst, global_src, 16, valid ? 16 : 0);
}
inline void cp_async_commit() { emulation::cp_async_commit(); }
template <int Pending>
void cp_async_wait() {
  emulation::cp_async_wait(Pending);
}

inline bool wgmma_compiled() { return true; }

inline uint64_t wgmma_descriptor(const uint16_t* tile, uint32_t leading_bytes, uint32_t stride_bytes) {
  if (!emulation::in_shared(tile, 16))
    emulation::fault("wgmma descriptor for memory outside the block's dynamic shared memory");
  if (reinterpret_cast<uintptr_t>(tile) % 16) emulation::fault("wgmma descriptor address not 16-byte aligned");
  const uint32_t address = uint32_t(reinterpret_cast<const unsigned char*>(tile) - emulation::dynamic_shared());
  return uint64_t((address & 0x3FFFF) >> 4) | (uint64_t((leading_bytes & 0x3FFFF) >> 4) << 16) |
         (uint64_t((stride_bytes & 0x3FFFF) >> 4) << 32);
}

template <int N, bool TransposeB>
void wgmma_bf16(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b_descriptor) {
  static_assert(N == 64 || N == 128, "wgmma_bf16: N is 64 or 128");
  using namespace emulated_ptx;
  const WgmmaIn in{{a[0], a[1], a[2], a[3]}, 0, b_descriptor, &d[0][0]};
  emulation::warp_collective<WgmmaIn, char>(wgmma_name<N, false>(), in, wgmma_issue<N, false, TransposeB, false>);
}
template <int N, bool TransposeA, bool TransposeB>
void wgmma_bf16_shared_a(float (&d)[N / 8][4], uint64_t a_descriptor, uint64_t b_descriptor) {
  static_assert(N == 32 || N == 64, "wgmma_bf16_shared_a: N is 32 or 64");
  using namespace emulated_ptx;
  const WgmmaIn in{{0, 0, 0, 0}, a_descriptor, b_descriptor, &d[0][0]};
  emulation::warp_collective<WgmmaIn, char>(wgmma_name<N, true>(), in, wgmma_issue<N, TransposeA, TransposeB, true>);
}
inline void wgmma_fence() {
  emulation::warp_collective<char, char>("wgmma.fence", 0, emulated_ptx::wgmma_fence_compute);
}
inline void wgmma_commit() {
  emulation::warp_collective<char, char>("wgmma.commit_group", 0, emulated_ptx::wgmma_commit_group);
}
template <int Pending>
void wgmma_wait() {
  emulation::warp_collective<char, char>("wgmma.wait_group", 0, emulated_ptx::wgmma_wait_group<Pending>);
}
// The compiler-ordering fence and the proxy fence have no effect on the
// emulator, whose shared memory has a single view; it cannot check that a
// kernel issues them.
template <int NB>
void wgmma_fence_operands(float (&)[NB][4]) {}
inline void fence_proxy_async_shared() {}

// The emulator's flags (device_emulator.h, wait_until_equal): a fault for a
// wait no earlier block can satisfy, one block at a time; interleaved, a
// wait, and a release ends the block's turn.
template <bool Report = true>
void wait_for_flag(const unsigned* flag, unsigned value) {
  emulation::wait_until_equal(flag, value);
}
inline void release_flag(unsigned* flag, unsigned value) { emulation::release_flag(flag, value); }

}  // namespace srgpt::gpu
