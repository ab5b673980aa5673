#pragma once
// The CPU device emulator's definitions of the PTX wrappers in
// cuda/ptx.cuh, from the PTX ISA's description of each instruction: the
// mma.m16n8k16 fragment layouts, ldmatrix's row addressing (lanes 8i..8i+7
// give the rows of matrix i; lane l receives row l/4, columns 2(l%4) and
// 2(l%4)+1, or with .trans the transposed pair), cvt.rn.bf16x2,
// cp.async with zero fill, and the acquire/release flag.
#include <cstdint>
#include <cstring>
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

// D (16x8) = A (16x16, row-major) B (16x8) + C, fp32 accumulation.
inline void mma_m16n8k16(const unsigned char* inputs, unsigned char* outputs) {
  float A[16][16], B[16][8], C[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    MmaIn in;
    std::memcpy(&in, inputs + lane * sizeof(MmaIn), sizeof(MmaIn));
    const int g = lane / 4, q = lane % 4;
    for (int r = 0; r < 4; ++r) {
      const int row = g + 8 * (r % 2), col = 2 * q + 8 * (r / 2);
      A[row][col] = bf16_half(in.a[r], 0);
      A[row][col + 1] = bf16_half(in.a[r], 1);
    }
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

// The emulator's flags (device_emulator.h, wait_until_equal): a fault for a
// wait no earlier block can satisfy, one block at a time; interleaved, a
// wait, and a release ends the block's turn.
inline void wait_for_flag(const unsigned* flag, unsigned value) { emulation::wait_until_equal(flag, value); }
inline void release_flag(unsigned* flag, unsigned value) { emulation::release_flag(flag, value); }

}  // namespace srgpt::gpu
