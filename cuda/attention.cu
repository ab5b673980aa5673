#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "attention.cuh"
#include "common.cuh"
#include "cuda_check.cuh"
#include "ptx.cuh"
#include "srgpt/bf16.h"
#include "srgpt/error.h"

namespace srgpt::gpu {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// =====================================================================
// Tensor-core building blocks (sm_80+ instructions, fine on sm_90).
//
// mma.m16n8k16 fragments, with g = lane / 4 and q = lane % 4:
//   A (16x16, row-major): a0 = (g, 2q..2q+1), a1 = (g+8, 2q..), a2 = (g, 2q+8..), a3 = (g+8, 2q+8..)
//   B (16x8, k x n):      b0 = (k 2q..2q+1, n g), b1 = (k 2q+8.., n g)
//   C (16x8, fp32):       c0,c1 = (g, 2q..2q+1), c2,c3 = (g+8, 2q..2q+1)
// All shared-memory tiles are row-major [rows][HD + kPad] bf16; the pad
// shifts consecutive rows by 16 bytes so ldmatrix reads are conflict-free.
// =====================================================================
constexpr int kPad = 8;
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;

// Tile shapes per pass and head size. Each warp owns 16 * kBlocksPerWarp
// rows (queries in the forward pass, keys in the backward pass). With two
// 16-row blocks every fragment a warp reads from shared memory feeds two
// mma instead of one, halving the shared-memory traffic per mma and giving
// each warp two independent chains; head size 128 keeps one block so that
// its accumulators stay within 255 registers.
//
// The head-size-64 shapes can be set at compile time: the attention tiling
// sweep (`scripts/gpu_check.sh sweep`, SRGPT_ATTENTION_SWEEP in
// benchmarks/CMakeLists.txt) builds alternatives and measures them on the
// GPU host in one call; the defaults are the shapes in use.
#ifndef SRGPT_ATTENTION_HD64_FORWARD_BLOCKS
#define SRGPT_ATTENTION_HD64_FORWARD_BLOCKS 2
#endif
#ifndef SRGPT_ATTENTION_HD64_FORWARD_KEYS
#define SRGPT_ATTENTION_HD64_FORWARD_KEYS 64
#endif
#ifndef SRGPT_ATTENTION_HD64_BACKWARD_BLOCKS
#define SRGPT_ATTENTION_HD64_BACKWARD_BLOCKS 2
#endif
#ifndef SRGPT_ATTENTION_HD64_BACKWARD_QUERIES
#define SRGPT_ATTENTION_HD64_BACKWARD_QUERIES 32
#endif

template <int BlocksPerWarp>
struct WarpRows {
  static constexpr int kBlocksPerWarp = BlocksPerWarp;
  static constexpr int kRowsPerWarp = 16 * BlocksPerWarp;
  static constexpr int kRows = kWarps * kRowsPerWarp;  // rows one block owns
};
template <int HD>
struct ForwardTiles : WarpRows<HD == 64 ? SRGPT_ATTENTION_HD64_FORWARD_BLOCKS : 1> {
  static constexpr int kKeys = HD == 64 ? SRGPT_ATTENTION_HD64_FORWARD_KEYS : 64;  // key tile
};
template <int HD>
struct BackwardTiles : WarpRows<HD == 64 ? SRGPT_ATTENTION_HD64_BACKWARD_BLOCKS : 1> {
  // Query rows per step. Larger steps mean fewer of the ordered dQ adds
  // (each a wait on another block) but more registers per warp.
  static constexpr int kQueries = HD == 64 ? SRGPT_ATTENTION_HD64_BACKWARD_QUERIES : 32;
};
// The two-pass backward's dQ pass: a block per query tile, streaming key
// tiles as the forward pass does, in the shape its kernel had when it last
// passed on the H100 (commit 2573f49): 16 queries per warp, 64-key tiles.
template <int HD>
struct DqTiles : WarpRows<1> {
  static constexpr int kKeys = 64;
};

// Fragment addressing. Each helper returns the shared-memory address this
// lane hands to ldmatrix for a 16x16 block at (row0, col0) of a tile.
//
// A operand (rows = M, cols = K) from a row-major tile: matrices
// (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) -> a0..a3.
template <int Stride>
__device__ __forceinline__ const uint16_t* a_address(const uint16_t* tile, int row0, int col0, int lane) {
  return tile + (row0 + (lane % 8) + 8 * ((lane / 8) % 2)) * Stride + col0 + 8 * (lane / 16);
}
// B operand whose n index runs along the tile's rows and k along its
// columns (B = tile^T, e.g. K for S = Q K^T): matrices (rows 0-7, cols 0-7),
// (0-7, 8-15), (8-15, 0-7), (8-15, 8-15) -> b0, b1 of n-block 0, then b0, b1
// of n-block 1 (rows 8-15).
template <int Stride>
__device__ __forceinline__ const uint16_t* bt_address(const uint16_t* tile, int row0, int col0, int lane) {
  return tile + (row0 + (lane % 8) + 8 * (lane / 16)) * Stride + col0 + 8 * ((lane / 8) % 2);
}
// B operand whose k index runs along the tile's rows and n along its
// columns (B = tile, e.g. V for O = P V), read with ldmatrix.trans:
// matrices (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) ->
// b0, b1 of n-block 0 (cols 0-7), then b0, b1 of n-block 1 (cols 8-15).
template <int Stride>
__device__ __forceinline__ const uint16_t* b_address(const uint16_t* tile, int row0, int col0, int lane) {
  return tile + (row0 + (lane % 8) + 8 * ((lane / 8) % 2)) * Stride + col0 + 8 * (lane / 16);
}

// A fragments of MB row blocks (rows row0 + 16 m) x KB column blocks of a
// row-major tile, held in registers.
template <int Stride, int MB, int KB>
__device__ __forceinline__ void load_a_fragments(uint32_t (&a)[MB][KB][4], const uint16_t* tile, int row0,
                                                 int lane) {
#pragma unroll
  for (int m = 0; m < MB; ++m) {
#pragma unroll
    for (int kb = 0; kb < KB; ++kb) ldmatrix_x4(a[m][kb], a_address<Stride>(tile, row0 + 16 * m, kb * 16, lane));
  }
}

// Sources of the A operand for mma_a_bt_tile: fill a[m] with k-block kb of
// row block m, from fragments held in registers, or read from a shared tile
// one k-block at a time (fewer registers, more shared-memory reads).
template <int MB, int KB>
struct FragmentsInRegisters {
  const uint32_t (&fragments)[MB][KB][4];
  __device__ __forceinline__ void operator()(int kb, uint32_t (&a)[MB][4]) const {
#pragma unroll
    for (int m = 0; m < MB; ++m) {
#pragma unroll
      for (int i = 0; i < 4; ++i) a[m][i] = fragments[m][kb][i];
    }
  }
};
template <int Stride, int MB>
struct FragmentsInShared {
  const uint16_t* tile;
  int row0, lane;
  __device__ __forceinline__ void operator()(int kb, uint32_t (&a)[MB][4]) const {
#pragma unroll
    for (int m = 0; m < MB; ++m) ldmatrix_x4(a[m], a_address<Stride>(tile, row0 + 16 * m, kb * 16, lane));
  }
};

// acc[m] (16 x 8*NB) += A_m (16 x 16*KB) times tile_b^T, where tile_b holds
// 8*NB rows of 16*KB columns. Each B fragment read from shared memory
// serves all MB row blocks.
template <int Stride, int MB, int KB, int NB, typename ASource>
__device__ __forceinline__ void mma_a_bt_tile(float (&acc)[MB][NB][4], const ASource& a_source,
                                              const uint16_t* tile_b, int lane) {
#pragma unroll
  for (int kb = 0; kb < KB; ++kb) {
    uint32_t a[MB][4];
    a_source(kb, a);
#pragma unroll
    for (int nb = 0; nb < NB / 2; ++nb) {
      uint32_t b[4];
      ldmatrix_x4(b, bt_address<Stride>(tile_b, nb * 16, kb * 16, lane));
#pragma unroll
      for (int m = 0; m < MB; ++m) {
        mma_bf16(acc[m][2 * nb], a[m], b[0], b[1]);
        mma_bf16(acc[m][2 * nb + 1], a[m], b[2], b[3]);
      }
    }
  }
}

// The A fragment of k-block kb (columns 16 kb ..) of a 16-row block of
// fp32 accumulators, rounded to bf16: the C layout of two adjacent n-blocks
// is the A layout of one k-block.
template <int NB>
__device__ __forceinline__ void pack_p_fragment(uint32_t (&a)[4], const float (&p)[NB][4], int kb) {
  a[0] = pack_bf16(p[2 * kb][0], p[2 * kb][1]);
  a[1] = pack_bf16(p[2 * kb][2], p[2 * kb][3]);
  a[2] = pack_bf16(p[2 * kb + 1][0], p[2 * kb + 1][1]);
  a[3] = pack_bf16(p[2 * kb + 1][2], p[2 * kb + 1][3]);
}

// acc[m] (16 x HD) += P_m (16 x 16*KB fp32 accumulators, rounded to bf16)
// times tile_b (16*KB rows x HD).
template <int Stride, int MB, int KB, int HD>
__device__ __forceinline__ void mma_p_b_tile(float (&acc)[MB][HD / 8][4], const float (&p)[MB][2 * KB][4],
                                             const uint16_t* tile_b, int lane) {
#pragma unroll
  for (int kb = 0; kb < KB; ++kb) {
    uint32_t a[MB][4];
#pragma unroll
    for (int m = 0; m < MB; ++m) pack_p_fragment(a[m], p[m], kb);
#pragma unroll
    for (int db = 0; db < HD / 16; ++db) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, b_address<Stride>(tile_b, kb * 16, db * 16, lane));
#pragma unroll
      for (int m = 0; m < MB; ++m) {
        mma_bf16(acc[m][2 * db], a[m], b[0], b[1]);
        mma_bf16(acc[m][2 * db + 1], a[m], b[2], b[3]);
      }
    }
  }
}

// Copies rows [row0, row0 + Rows) x HD columns of a row-major global matrix
// (row stride `stride` elements, `base` at the head's first column) into a
// shared tile; rows at or beyond T are zero-filled.
template <int Rows, int HD, int Threads = kThreads>
__device__ __forceinline__ void load_tile_async(uint16_t* tile, const uint16_t* base, int row0, int T,
                                                size_t stride) {
  constexpr int kChunksPerRow = HD / 8;
  for (int i = threadIdx.x; i < Rows * kChunksPerRow; i += Threads) {
    const int r = i / kChunksPerRow, c = (i % kChunksPerRow) * 8;
    const int t = row0 + r;
    const bool valid = t < T;
    cp_async_16(tile + r * (HD + kPad) + c, base + size_t(valid ? t : 0) * stride + c, valid);
  }
}

// The same rows in the no-swizzle core-matrix layout that wgmma reads: a
// core matrix is 8 rows x 8 columns, 128 contiguous bytes, row-major;
// element (r, c) sits at (r / 8) 8 HD + (c / 8) 64 + (r % 8) 8 + c % 8.
// Eight consecutive threads fill one core matrix: no bank conflicts.
template <int Rows, int HD, int Threads>
__device__ __forceinline__ void load_core_matrix_tile_async(uint16_t* tile, const uint16_t* base, int row0, int T,
                                                            size_t stride) {
  constexpr int kChunksPerRow = HD / 8;
  for (int i = threadIdx.x; i < Rows * kChunksPerRow; i += Threads) {
    const int row_in_core = i % 8, chunk = i / 8 % kChunksPerRow, row_block = i / (8 * kChunksPerRow);
    const int t = row0 + 8 * row_block + row_in_core;
    const bool valid = t < T;
    cp_async_16(tile + row_block * 8 * HD + chunk * 64 + row_in_core * 8,
                base + size_t(valid ? t : 0) * stride + chunk * 8, valid);
  }
}

// Writes a warp's 16 x HD fp32 accumulator block (times `scale`) as bf16
// into rows [row0, row0 + 16) of global memory, staged through 16 rows of
// a shared tile that only this warp uses, for 16-byte stores.
template <int HD>
__device__ __forceinline__ void store_warp_rows(uint16_t* global_base, size_t stride, int row0, int T,
                                                const float (&acc)[HD / 8][4], float scale, uint16_t* warp_rows,
                                                int lane) {
  constexpr int S = HD + kPad;
  const int g = lane / 4, q = lane % 4;
#pragma unroll
  for (int db = 0; db < HD / 8; ++db) {
    *reinterpret_cast<uint32_t*>(warp_rows + g * S + db * 8 + 2 * q) =
        pack_bf16(acc[db][0] * scale, acc[db][1] * scale);
    *reinterpret_cast<uint32_t*>(warp_rows + (g + 8) * S + db * 8 + 2 * q) =
        pack_bf16(acc[db][2] * scale, acc[db][3] * scale);
  }
  __syncwarp();
  constexpr int kChunksPerRow = HD / 8;
  for (int i = lane; i < 16 * kChunksPerRow; i += 32) {
    const int r = i / kChunksPerRow, c = (i % kChunksPerRow) * 8;
    const int t = row0 + r;
    if (t < T)
      *reinterpret_cast<uint4*>(global_base + size_t(t) * stride + c) =
          *reinterpret_cast<const uint4*>(warp_rows + r * S + c);
  }
}

// Stores all MB row blocks of a warp (rows row0 + 16 m), staging through
// the warp's own rows of a shared tile.
template <int HD, int MB>
__device__ __forceinline__ void store_warp_blocks(uint16_t* global_base, size_t stride, int row0, int T,
                                                  const float (&acc)[MB][HD / 8][4], float scale,
                                                  uint16_t* warp_rows, int lane) {
#pragma unroll
  for (int m = 0; m < MB; ++m)
    store_warp_rows<HD>(global_base, stride, row0 + 16 * m, T, acc[m], scale, warp_rows + 16 * m * (HD + kPad),
                        lane);
}

// The loop every pass runs over its streamed tiles, double-buffered: the
// caller has issued and committed tile 0's copies into buffer 0. For tile
// i, load(i + 1, buffer) issues the next tile's copies into the other
// buffer, then, once tile i is in shared memory block-wide, body(i, buffer)
// computes on it; the barrier after it lets the next load reuse the buffer.
// ReadByWgmma: the tiles are read through the async proxy (wgmma), which
// sees the threads' copies only after a proxy fence.
template <bool ReadByWgmma = false, typename Load, typename Body>
__device__ __forceinline__ void walk_tiles(int tiles, Load&& load, Body&& body) {
  for (int i = 0; i < tiles; ++i) {
    const int buffer = i & 1;
    if (i + 1 < tiles) {
      load(i + 1, buffer ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    if constexpr (ReadByWgmma) fence_proxy_async_shared();
    __syncthreads();
    body(i, buffer);
    __syncthreads();
  }
}

// Masks the scores S = Q K^T of a warp's MB query blocks (first query
// `query0`) against keys key0..: a key after its query gets -inf. Scores
// stay unscaled: the softmax folds the scale into the one FFMA that feeds
// each exponential, exp2(s * scale_log2 - offset).
template <int MB, int NB>
__device__ __forceinline__ void mask_scores(float (&s)[MB][NB][4], int key0, int query0, int lane) {
  if (key0 + 8 * NB - 1 <= query0) return;  // every key at or before every query
  const int g = lane / 4, q = lane % 4;
#pragma unroll
  for (int m = 0; m < MB; ++m) {
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + nb * 8 + 2 * q + (e & 1);
        const int query = query0 + 16 * m + g + 8 * (e / 2);
        if (key > query) s[m][nb][e] = -INFINITY;
      }
    }
  }
}

// Where the block's (batch, head) pair, blockIdx.y, lives: element offsets
// of its row 0 in the interleaved [B, T, 3C] qkv (and dqkv) tensor, whose
// Q, K and V sit at +0, +C, +2C; in [B, T, C] tensors (out, dout); and in
// the [B, H, T] row statistics (lse, row_dot).
struct HeadOffsets {
  size_t qkv, out, stats, qkv_stride;
  __device__ HeadOffsets(int T, int C, int H, int head_dim) : qkv_stride(3 * size_t(C)) {
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    qkv = size_t(b) * T * qkv_stride + size_t(h) * head_dim;
    out = size_t(b) * T * C + size_t(h) * head_dim;
    stats = size_t(bh) * T;
  }
};

// The forward pass's key loop, for a block owning queries
// q0 .. q0 + kRows - 1: streams the key/value tiles (KT rows) up to the
// block's last query through walk_tiles (the caller has committed tile 0's
// copies together with the block's Q tile in sQ) and, for each tile with a
// key at or before one of this warp's queries, calls body(s, k_tile,
// v_tile) with s = Q K^T of the warp's MB query blocks (unscaled), keys
// after their query at -inf. Tiles wholly after the warp's queries, and
// warps wholly past T, are skipped; every tile passed to body has, for each
// of the warp's rows, a key at or before it (tiles and warp rows are both
// aligned to KT and 16 * MB, KT a multiple of 16 * MB), so every row sees a
// finite score in every tile.
template <int HD, int KT, int MB, typename Body>
__device__ __forceinline__ void for_each_key_tile(const uint16_t* sQ, uint16_t* sK, uint16_t* sV, int q0,
                                                  int block_rows, int T, const uint16_t* k_base,
                                                  const uint16_t* v_base, size_t qkv_stride, Body&& body) {
  constexpr int S = HD + kPad;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_q0 = q0 + warp * 16 * MB;
  uint32_t q_frag[MB][HD / 16][4];
  walk_tiles(
      (min(q0 + block_rows, T) + KT - 1) / KT,
      [&](int j, int buffer) {
        load_tile_async<KT, HD>(sK + buffer * KT * S, k_base, j * KT, T, qkv_stride);
        load_tile_async<KT, HD>(sV + buffer * KT * S, v_base, j * KT, T, qkv_stride);
      },
      [&](int j, int buffer) {
        if (j == 0) load_a_fragments<S, MB, HD / 16>(q_frag, sQ, warp_q0 - q0, lane);
        const int key0 = j * KT;
        if (key0 > warp_q0 + 16 * MB - 1 || warp_q0 >= T) return;
        const uint16_t* k_tile = sK + buffer * KT * S;
        float s[MB][KT / 8][4] = {};
        mma_a_bt_tile<S, MB, HD / 16, KT / 8>(s, FragmentsInRegisters<MB, HD / 16>{q_frag}, k_tile, lane);
        mask_scores(s, key0, warp_q0, lane);
        body(s, k_tile, sV + buffer * KT * S);
      });
}

// Row reductions over the 4 lanes that share a fragment row.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// The backward passes' softmax pieces, for a warp's MB 16-row blocks of
// fragments (rows row0 + 16 m + g (+ 8), columns 8 nb + 2 q (+ 1)).
//
// Query rows (the dQ passes): each lane's rows' log-sum-exp, in the log2
// domain, and D; rows at or past T get zeros.
template <int MB>
__device__ __forceinline__ void load_row_stats(float (&row_lse)[MB][2], float (&row_dot_value)[MB][2],
                                               const float* lse_rows, const float* dot_rows, int row0, int T,
                                               int lane) {
  const int g = lane / 4;
#pragma unroll
  for (int m = 0; m < MB; ++m) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int t = row0 + 16 * m + g + 8 * half;
      row_lse[m][half] = t < T ? lse_rows[t] * kLog2e : 0.0f;
      row_dot_value[m][half] = t < T ? dot_rows[t] : 0.0f;
    }
  }
}

// dS = P (dP - D), P = exp2(s scale_log2 - lse), from the unscaled scores
// s (keys after their query at -inf) and dP, in place of dP.
template <int MB, int NB>
__device__ __forceinline__ void ds_from_scores(float (&dp)[MB][NB][4], const float (&s)[MB][NB][4],
                                               const float (&row_lse)[MB][2], const float (&row_dot_value)[MB][2],
                                               float scale_log2) {
#pragma unroll
  for (int m = 0; m < MB; ++m) {
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(s[m][nb][e] * scale_log2 - row_lse[m][e / 2]);  // one FFMA
        dp[m][nb][e] = p * (dp[m][nb][e] - row_dot_value[m][e / 2]);
      }
    }
  }
}

// Key rows (the dK/dV passes): P^T = exp2(s^T scale_log2 - lse) in place of
// the unscaled S^T of the warp's keys (first warp_k0) and the query tile
// starting at row0, whose lse (log2 domain) tile_lse holds; a query before
// its key, or at or past T, gets 0.
template <int MB, int NB>
__device__ __forceinline__ void probabilities_transposed(float (&p)[MB][NB][4], int warp_k0, int row0, int T,
                                                         const float* tile_lse, float scale_log2, int lane) {
  const int g = lane / 4, q = lane % 4;
#pragma unroll
  for (int m = 0; m < MB; ++m) {
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = warp_k0 + 16 * m + g + 8 * (e / 2);
        const int column = nb * 8 + 2 * q + (e & 1);
        const int query = row0 + column;
        const float value = exp2f(p[m][nb][e] * scale_log2 - tile_lse[column]);  // one FFMA
        p[m][nb][e] = query >= key && query < T ? value : 0.0f;
      }
    }
  }
}

// The one-pass backwards' ordering of dQ's adds (attention_backward_tc_kernel
// explains it): the block's key tile is the ticket it draws from its
// (batch, head)'s counter, the first of that head's 1 + query_tiles words of
// dq_flags; *flags is set to the head's flag per query tile.
__device__ __forceinline__ int draw_key_tile(unsigned* dq_flags, int query_tiles, unsigned** flags) {
  unsigned* const head_flags = dq_flags + size_t(blockIdx.y) * (1 + query_tiles);
  *flags = head_flags + 1;
  __shared__ int ticket;
  if (threadIdx.x == 0) ticket = int(atomicAdd(head_flags, 1u));
  __syncthreads();
  return ticket;
}

// Adds a query tile's share of dQ once the key tiles before key_tile have
// added theirs (*flag == key_tile), then releases the flag to key_tile + 1.
// This thread's share: C fragments of 16 rows from t0 and NB x 8 columns
// from col0, added to dq_rows ([T][HD], fp32); key tile 0 stores instead of
// adding, and the last key tile to add (finishes) writes the sum times
// scale as bf16 into the rows of dq_out (stride out_stride). Every thread
// of the block calls it. ReportStall: wait_for_flag's Report.
template <int HD, bool ReportStall, int NB>
__device__ __forceinline__ void add_dq_share_in_order(const float (&dq)[NB][4], unsigned* flag, int key_tile,
                                                      bool finishes, float* dq_rows, uint16_t* dq_out,
                                                      size_t out_stride, int t0, int col0, int T, float scale,
                                                      int lane) {
  const int g = lane / 4, q = lane % 4;
  if (threadIdx.x == 0) wait_for_flag<ReportStall>(flag, unsigned(key_tile));
  __syncthreads();
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = t0 + g + 8 * half;
    if (t >= T) continue;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
      const int column = col0 + nb * 8 + 2 * q;
      float* target = dq_rows + size_t(t) * HD + column;
      float2 value = make_float2(dq[nb][2 * half], dq[nb][2 * half + 1]);
      if (key_tile > 0) {
        const float2 before = __ldcg(reinterpret_cast<const float2*>(target));
        value.x += before.x;
        value.y += before.y;
      }
      if (finishes)
        *reinterpret_cast<uint32_t*>(dq_out + size_t(t) * out_stride + column) =
            pack_bf16(value.x * scale, value.y * scale);
      else
        *reinterpret_cast<float2*>(target) = value;
    }
  }
  // The barrier orders every thread's adds before thread 0's release,
  // whose GPU-scope release semantics cover them (no fence per thread).
  __syncthreads();
  if (threadIdx.x == 0) release_flag(flag, unsigned(key_tile) + 1);
}

// The forward pass's running softmax over key tiles for a warp's MB row
// blocks: O (unnormalised), the running maximum of the unscaled scores,
// and this lane's share of the sum of exp2(scale_log2 (s - row_max)),
// quad-summed at the end.
template <int MB, int HD>
struct OnlineSoftmax {
  float o[MB][HD / 8][4] = {};
  float row_max[MB][2], row_sum[MB][2];

  __device__ OnlineSoftmax() {
#pragma unroll
    for (int m = 0; m < MB; ++m) {
      row_max[m][0] = row_max[m][1] = -INFINITY;
      row_sum[m][0] = row_sum[m][1] = 0.0f;
    }
  }

  // Turns a key tile's scores s (unscaled, masked; every row with a finite
  // one) into P = exp2(scale_log2 (s - new row max)), and rescales O and
  // the sums to the new maximum.
  template <int NB>
  __device__ __forceinline__ void add_tile(float (&s)[MB][NB][4], float scale_log2) {
#pragma unroll
    for (int m = 0; m < MB; ++m) {
      float tile_max[2] = {row_max[m][0], row_max[m][1]};
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) tile_max[e / 2] = fmaxf(tile_max[e / 2], s[m][nb][e]);
      }
      float correction[2], max_scaled[2];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        tile_max[half] = quad_max(tile_max[half]);
        correction[half] = exp2f((row_max[m][half] - tile_max[half]) * scale_log2);
        row_max[m][half] = tile_max[half];
        max_scaled[half] = tile_max[half] * scale_log2;
        row_sum[m][half] *= correction[half];
      }
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float p = exp2f(s[m][nb][e] * scale_log2 - max_scaled[e / 2]);  // one FFMA
          s[m][nb][e] = p;
          row_sum[m][e / 2] += p;
        }
      }
#pragma unroll
      for (int db = 0; db < HD / 8; ++db) {
        o[m][db][0] *= correction[0];
        o[m][db][1] *= correction[0];
        o[m][db][2] *= correction[1];
        o[m][db][3] *= correction[1];
      }
    }
  }

  // Normalises O and writes the rows' log-sum-exp (natural log, of the
  // scaled scores) for rows below T; the warp's first row is warp_q0.
  __device__ __forceinline__ void finish(float* row_lse, int warp_q0, int T, float scale_log2, int lane) {
    const int g = lane / 4, q = lane % 4;
#pragma unroll
    for (int m = 0; m < MB; ++m) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        row_sum[m][half] = quad_sum(row_sum[m][half]);
        const float inverse = 1.0f / row_sum[m][half];
#pragma unroll
        for (int db = 0; db < HD / 8; ++db) {
          o[m][db][2 * half] *= inverse;
          o[m][db][2 * half + 1] *= inverse;
        }
        const int t = warp_q0 + 16 * m + g + 8 * half;
        if (q == 0 && t < T) row_lse[t] = (row_max[m][half] * scale_log2 + log2f(row_sum[m][half])) * kLn2;
      }
    }
  }
};

// =====================================================================
// Forward, tensor cores: block = (kRows-query tile, batch*head), each warp
// kRowsPerWarp queries; key/value tiles streamed through walk_tiles.
// =====================================================================
template <int HD>
constexpr size_t forward_shared_bytes() {
  using Tiles = ForwardTiles<HD>;
  return sizeof(uint16_t) * size_t(HD + kPad) * (Tiles::kRows + 4 * Tiles::kKeys);  // Q, 2 x K, 2 x V
}

template <int HD>
__global__ void __launch_bounds__(kThreads) attention_forward_tc_kernel(uint16_t* out, float* lse,
                                                                        const uint16_t* qkv, int T, int C, int H,
                                                                        float scale_log2) {
  using Tiles = ForwardTiles<HD>;
  constexpr int S = HD + kPad, MB = Tiles::kBlocksPerWarp, KT = Tiles::kKeys;
  static_assert(KT % (16 * MB) == 0, "the key tile must be a multiple of a warp's query rows (for_each_key_tile)");
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* sQ = smem;                   // [kRows][S]
  uint16_t* sK = sQ + Tiles::kRows * S;  // [2][KT][S]
  uint16_t* sV = sK + 2 * KT * S;        // [2][KT][S]

  // Later query tiles attend to more keys: start them first.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * Tiles::kRows;
  const HeadOffsets head(T, C, H, HD);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_q0 = q0 + warp * Tiles::kRowsPerWarp;  // this warp's first query
  const size_t qkv_stride = head.qkv_stride;
  const uint16_t* q_base = qkv + head.qkv;
  const uint16_t* k_base = q_base + C;
  const uint16_t* v_base = q_base + 2 * C;

  load_tile_async<Tiles::kRows, HD>(sQ, q_base, q0, T, qkv_stride);
  load_tile_async<KT, HD>(sK, k_base, 0, T, qkv_stride);
  load_tile_async<KT, HD>(sV, v_base, 0, T, qkv_stride);
  cp_async_commit();

  OnlineSoftmax<MB, HD> softmax;
  for_each_key_tile<HD, KT, MB>(sQ, sK, sV, q0, Tiles::kRows, T, k_base, v_base, qkv_stride,
                                [&](float(&s)[MB][KT / 8][4], const uint16_t*, const uint16_t* v_tile) {
                                  softmax.add_tile(s, scale_log2);
                                  mma_p_b_tile<S, MB, KT / 16, HD>(softmax.o, s, v_tile, lane);  // O += P V
                                });
  softmax.finish(lse + head.stats, warp_q0, T, scale_log2, lane);
  // The warp's Q rows are in registers; reuse them to stage the output.
  store_warp_blocks<HD, MB>(out + head.out, size_t(C), warp_q0, T, softmax.o, 1.0f,
                            sQ + warp * Tiles::kRowsPerWarp * S, lane);
}

// =====================================================================
// wgmma kernels (sm_90a: AttentionForward::wgmma, AttentionBackward::wgmma).
// A warpgroup (4 warps) owns 64 rows (queries, or keys in the dK/dV pass),
// two warpgroups per block sharing each streamed tile; each warp holds 16
// of those rows in the mma fragment layout. Streamed tiles sit in shared
// memory in the no-swizzle core-matrix layout (load_core_matrix_tile_async)
// and reach wgmma through descriptors: as K-major B (or A) where the
// product's k runs along the tile's columns (head dimension), as N-major B
// where it runs along its rows. Register operands: Q or dO fragments read
// with ldmatrix from a padded row-major tile, or accumulators of the
// previous product rounded to bf16 (the accumulator layout is wgmma's A
// layout).
// =====================================================================
struct WgmmaTiles {
  static constexpr int kWarpgroups = 2;
  static constexpr int kThreads = 128 * kWarpgroups;
  static constexpr int kRows = 64 * kWarpgroups;  // rows a block owns
  static constexpr int kStream = 64;              // rows per streamed tile: S's (or S^T's) N
};

// Descriptors of the 16 columns (K-major: the product's k along the tile's
// head dimension) or 16 rows (N-major: k along the tile's rows) of step kb
// of a core-matrix tile with HD columns. Core matrices are 128 bytes apart
// along a row and 16 HD bytes apart down the tile.
template <int HD>
__device__ __forceinline__ uint64_t k_major_descriptor(const uint16_t* tile, int kb) {
  return wgmma_descriptor(tile + kb * 2 * 64, 128, 16 * HD);
}
template <int HD>
__device__ __forceinline__ uint64_t n_major_descriptor(const uint16_t* tile, int kb) {
  return wgmma_descriptor(tile + kb * 16 * HD, 16 * HD, 128);
}

// One group of wgmma products, issued by issue() into the given
// accumulators, committed and waited for. The accumulators are fenced as
// operands on both sides, so that the compiler neither moves their last
// writes (zeroing, rescaling) past the wgmma fence, which makes ptxas
// serialise the products (tests/scripts/test_wgmma_compile.py), nor their
// reads above the wait.
template <typename Issue, typename... Accumulators>
__device__ __forceinline__ void wgmma_group(Issue&& issue, Accumulators&... accumulators) {
  (wgmma_fence_operands(accumulators), ...);
  wgmma_fence();
  issue();
  wgmma_commit();
  wgmma_wait<0>();
  (wgmma_fence_operands(accumulators), ...);
}

// d += sum over kb < Steps of a[kb] (registers) times the B that
// descriptor(kb) names.
template <int N, bool TransposeB, int Steps, typename A, typename Descriptor>
__device__ __forceinline__ void wgmma_product(float (&d)[N / 8][4], const A& a, const Descriptor& descriptor) {
  wgmma_group(
      [&] {
#pragma unroll
        for (int kb = 0; kb < Steps; ++kb) wgmma_bf16<N, TransposeB>(d, a[kb], descriptor(kb));
      },
      d);
}

// d (64 x N) += sum over kb < Steps of the A that a_descriptor(kb) names
// (shared memory) times the B that b_descriptor(kb) names.
template <int N, bool TransposeA, bool TransposeB, int Steps, typename ADescriptor, typename BDescriptor>
__device__ __forceinline__ void wgmma_product_shared_a(float (&d)[N / 8][4], const ADescriptor& a_descriptor,
                                                       const BDescriptor& b_descriptor) {
  wgmma_group(
      [&] {
#pragma unroll
        for (int kb = 0; kb < Steps; ++kb)
          wgmma_bf16_shared_a<N, TransposeA, TransposeB>(d, a_descriptor(kb), b_descriptor(kb));
      },
      d);
}

// acc (64 x HD) += x (64 x KT, the accumulators of an earlier product,
// rounded to bf16: wgmma's register A layout) times tile (KT x HD, core
// matrices, as N-major B).
template <int HD, int KT>
__device__ __forceinline__ void wgmma_product_of_accumulators(float (&acc)[HD / 8][4], const float (&x)[KT / 8][4],
                                                              const uint16_t* tile) {
  uint32_t a[KT / 16][4];
#pragma unroll
  for (int kb = 0; kb < KT / 16; ++kb) pack_p_fragment(a[kb], x, kb);
  wgmma_product<HD, true, KT / 16>(acc, a, [&](int kb) { return n_major_descriptor<HD>(tile, kb); });
}

// The query-owning wgmma kernels' loop over key tiles (the counterpart of
// for_each_key_tile), for a block owning queries q0 .. q0 + kRows - 1:
// issues tile 0's K and V copies and commits them with the caller's
// pending copies (its Q tile in sQ, padded row-major), streams the rest
// through walk_tiles, and for each tile with a key at or before one of the
// warpgroup's queries calls body(j, s, k_tile, v_tile) with s = Q K^T of
// the warp's 16 queries (unscaled; keys after their query at -inf). The
// warpgroup issues each wgmma together, so it skips tiles by its rows; a
// tile it takes has key0 <= its first query (both multiples of 64), so
// each of its rows has a finite score there.
template <int HD, typename Body>
__device__ __forceinline__ void for_each_key_tile_wgmma(const uint16_t* sQ, uint16_t* sK, uint16_t* sV, int q0,
                                                        int T, const uint16_t* k_base, const uint16_t* v_base,
                                                        size_t qkv_stride, Body&& body) {
  constexpr int S = HD + kPad, KT = WgmmaTiles::kStream, kBlockThreads = WgmmaTiles::kThreads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group_q0 = q0 + 64 * (warp / 4), warp_q0 = q0 + 16 * warp;
  auto load_keys = [&](int j, int buffer) {
    load_core_matrix_tile_async<KT, HD, kBlockThreads>(sK + buffer * KT * HD, k_base, j * KT, T, qkv_stride);
    load_core_matrix_tile_async<KT, HD, kBlockThreads>(sV + buffer * KT * HD, v_base, j * KT, T, qkv_stride);
  };
  load_keys(0, 0);
  cp_async_commit();
  uint32_t q_frag[1][HD / 16][4];
  walk_tiles<true>((min(q0 + WgmmaTiles::kRows, T) + KT - 1) / KT, load_keys, [&](int j, int buffer) {
    if (j == 0) load_a_fragments<S, 1, HD / 16>(q_frag, sQ, 16 * warp, lane);
    const int key0 = j * KT;
    if (key0 > group_q0 + 63 || group_q0 >= T) return;
    const uint16_t* k_tile = sK + buffer * KT * HD;
    float s[1][KT / 8][4] = {};
    wgmma_product<KT, false, HD / 16>(s[0], q_frag[0], [&](int kb) { return k_major_descriptor<HD>(k_tile, kb); });
    mask_scores(s, key0, warp_q0, lane);
    body(j, s, k_tile, sV + buffer * KT * HD);
  });
}

// Forward on wgmma: block = (kRows-query tile, batch*head). S = Q K^T, then
// O += P V with P from registers and V as N-major B; the online softmax of
// the mma kernel.
template <int HD>
constexpr size_t wgmma_forward_shared_bytes() {
  constexpr size_t kTile = size_t(WgmmaTiles::kStream) * HD;
  return sizeof(uint16_t) * (size_t(HD + kPad) * WgmmaTiles::kRows + 4 * kTile);  // Q, 2 x K, 2 x V
}

template <int HD>
__global__ void __launch_bounds__(WgmmaTiles::kThreads)
    attention_forward_wgmma_kernel(uint16_t* out, float* lse, const uint16_t* qkv, int T, int C, int H,
                                   float scale_log2) {
  constexpr int S = HD + kPad, KT = WgmmaTiles::kStream;
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* sQ = smem;                        // [kRows][S]
  uint16_t* sK = sQ + WgmmaTiles::kRows * S;  // [2][KT * HD], core matrices
  uint16_t* sV = sK + 2 * KT * HD;            // [2][KT * HD], core matrices

  const int q0 = (gridDim.x - 1 - blockIdx.x) * WgmmaTiles::kRows;
  const HeadOffsets head(T, C, H, HD);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_q0 = q0 + 16 * warp;
  const uint16_t* q_base = qkv + head.qkv;
  load_tile_async<WgmmaTiles::kRows, HD, WgmmaTiles::kThreads>(sQ, q_base, q0, T, head.qkv_stride);

  OnlineSoftmax<1, HD> softmax;
  for_each_key_tile_wgmma<HD>(
      sQ, sK, sV, q0, T, q_base + C, q_base + 2 * C, head.qkv_stride,
      [&](int, float(&s)[1][KT / 8][4], const uint16_t*, const uint16_t* v_tile) {
        softmax.add_tile(s, scale_log2);
        wgmma_product_of_accumulators<HD, KT>(softmax.o[0], s[0], v_tile);  // O += P V
      });
  softmax.finish(lse + head.stats, warp_q0, T, scale_log2, lane);
  // The warp's Q rows are in registers; reuse them to stage the output.
  store_warp_blocks<HD, 1>(out + head.out, size_t(C), warp_q0, T, softmax.o, 1.0f, sQ + 16 * warp * S, lane);
}

// Backward on wgmma, in two passes as AttentionBackward::two_pass (seven
// products of the score matrix's size, no waiting between blocks).
//
// dQ pass: block = (kRows-query tile, batch*head), streaming key tiles as
// the forward does: S = Q K^T, P = exp(S - lse), dP = dO V^T (V as K-major
// B), dS = P (dP - D), dQ += dS K (K as N-major B).
template <int HD>
constexpr size_t wgmma_dq_shared_bytes() {
  constexpr size_t kTile = size_t(WgmmaTiles::kStream) * HD;
  return sizeof(uint16_t) * (size_t(HD + kPad) * 2 * WgmmaTiles::kRows + 4 * kTile);  // Q, dO, 2 x K, 2 x V
}

template <int HD>
__global__ void __launch_bounds__(WgmmaTiles::kThreads)
    attention_backward_dq_wgmma_kernel(uint16_t* dqkv, const uint16_t* dout, const uint16_t* qkv, const float* lse,
                                       const float* row_dot, int T, int C, int H, float scale, float scale_log2) {
  constexpr int S = HD + kPad, KT = WgmmaTiles::kStream;
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* sQ = smem;                          // [kRows][S]
  uint16_t* sdO = sQ + WgmmaTiles::kRows * S;   // [kRows][S]
  uint16_t* sK = sdO + WgmmaTiles::kRows * S;   // [2][KT * HD], core matrices
  uint16_t* sV = sK + 2 * KT * HD;              // [2][KT * HD], core matrices

  const int q0 = (gridDim.x - 1 - blockIdx.x) * WgmmaTiles::kRows;
  const HeadOffsets head(T, C, H, HD);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_q0 = q0 + 16 * warp;
  const uint16_t* q_base = qkv + head.qkv;
  load_tile_async<WgmmaTiles::kRows, HD, WgmmaTiles::kThreads>(sQ, q_base, q0, T, head.qkv_stride);
  load_tile_async<WgmmaTiles::kRows, HD, WgmmaTiles::kThreads>(sdO, dout + head.out, q0, T, size_t(C));

  float row_lse[1][2], row_dot_value[1][2];  // log2 domain; D
  load_row_stats(row_lse, row_dot_value, lse + head.stats, row_dot + head.stats, warp_q0, T, lane);

  float dq[1][HD / 8][4] = {};
  uint32_t dout_frag[1][HD / 16][4];
  for_each_key_tile_wgmma<HD>(
      sQ, sK, sV, q0, T, q_base + C, q_base + 2 * C, head.qkv_stride,
      [&](int j, float(&s)[1][KT / 8][4], const uint16_t* k_tile, const uint16_t* v_tile) {
        if (j == 0) load_a_fragments<S, 1, HD / 16>(dout_frag, sdO, 16 * warp, lane);
        float ds[1][KT / 8][4] = {};
        wgmma_product<KT, false, HD / 16>(ds[0], dout_frag[0],
                                          [&](int kb) { return k_major_descriptor<HD>(v_tile, kb); });  // dP
        ds_from_scores(ds, s, row_lse, row_dot_value, scale_log2);
        wgmma_product_of_accumulators<HD, KT>(dq[0], ds[0], k_tile);  // dQ += dS K
      });
  // The warp's Q rows are in registers since the first tile; stage there.
  store_warp_blocks<HD, 1>(dqkv + head.qkv, head.qkv_stride, warp_q0, T, dq, scale, sQ + 16 * warp * S, lane);
}

// dK/dV pass: block = (kRows-key tile, batch*head), each warpgroup 64
// keys, streaming the query tiles at or after the key tile (kStream rows,
// with their lse and D) from the last down:
//   S^T = K Q^T (K and Q both from shared memory), P^T = exp(S^T - lse),
//   dV += P^T dO (dO as N-major B), dP^T = V dO^T (V from shared memory),
//   dS^T = P^T (dP^T - D), dK += dS^T Q (Q as N-major B).
// With AddsDq (AttentionBackward::wgmma_one_pass) the block also adds each
// query tile's share of dQ, dS K, in key-tile order as the mma one-pass
// kernel does (attention_backward_tc_kernel; five products of the score
// matrix's size, no dQ pass): dS^T of the block's keys goes to shared
// memory as bf16, where it is dS as M-major A, and warpgroup w computes
// dQ's columns w HD / 2 .. (w + 1) HD / 2 - 1 over all kRows keys, in the
// same wgmma group as its dK product.
template <int HD, bool AddsDq>
constexpr size_t wgmma_dkdv_shared_bytes() {
  constexpr int QT = WgmmaTiles::kStream;
  const size_t staged_ds = AddsDq ? size_t(WgmmaTiles::kRows) * QT : 0;
  const size_t tiles = sizeof(uint16_t) * (HD * (2 * size_t(WgmmaTiles::kRows) + 4 * QT) + staged_ds) +
                       sizeof(float) * 4 * QT;
  // After the loop, each warp stages its dK and dV rows for the stores.
  const size_t staging = sizeof(uint16_t) * size_t(HD + kPad) * 2 * WgmmaTiles::kRows;
  return tiles > staging ? tiles : staging;
}

template <int HD, bool AddsDq>
__global__ void __launch_bounds__(WgmmaTiles::kThreads)
    attention_backward_dkdv_wgmma_kernel(uint16_t* dqkv, float* dq_accum, unsigned* dq_flags, const uint16_t* dout,
                                         const uint16_t* qkv, const float* lse, const float* row_dot, int T, int C,
                                         int H, float scale, float scale_log2) {
  constexpr int S = HD + kPad, QT = WgmmaTiles::kStream, kRows = WgmmaTiles::kRows;
  constexpr int kBlockThreads = WgmmaTiles::kThreads;
  // A query tile lies within one key tile, so the diagonal block finishes it.
  static_assert(kRows % QT == 0, "the key tile must be a multiple of the query tile");
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* sK = smem;                  // [kRows * HD], core matrices
  uint16_t* sV = sK + kRows * HD;       // [kRows * HD], core matrices
  uint16_t* sQ = sV + kRows * HD;       // [2][QT * HD], core matrices
  uint16_t* sdO = sQ + 2 * QT * HD;     // [2][QT * HD], core matrices
  uint16_t* sdS = sdO + 2 * QT * HD;    // one pass: [kRows * QT], core matrices: dS^T of the query tile
  float* sLse = reinterpret_cast<float*>(sdS + (AddsDq ? kRows * QT : 0));  // [2][QT], log2 domain
  float* sDot = sLse + 2 * QT;                                              // [2][QT]

  unsigned* flags = nullptr;  // one pass: a flag per query tile of this (batch, head)
  const int key_tile = AddsDq ? draw_key_tile(dq_flags, (T + QT - 1) / QT, &flags) : int(blockIdx.x);
  const int k0 = key_tile * kRows;
  const HeadOffsets head(T, C, H, HD);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int group = warp / 4, group_k0 = k0 + 64 * group, warp_k0 = k0 + 16 * warp;
  const size_t qkv_stride = head.qkv_stride;
  const uint16_t* q_base = qkv + head.qkv;
  const uint16_t* dout_base = dout + head.out;
  const int tiles = (T - k0 + QT - 1) / QT;
  // Step i works on the i-th query tile from the last.
  auto tile_row0 = [&](int i) { return k0 + (tiles - 1 - i) * QT; };

  auto load_query_tile = [&](int i, int buffer) {
    const int row0 = tile_row0(i);
    load_core_matrix_tile_async<QT, HD, kBlockThreads>(sQ + buffer * QT * HD, q_base, row0, T, qkv_stride);
    load_core_matrix_tile_async<QT, HD, kBlockThreads>(sdO + buffer * QT * HD, dout_base, row0, T, size_t(C));
    for (int r = threadIdx.x; r < QT; r += kBlockThreads) {
      const int t = row0 + r;
      sLse[buffer * QT + r] = t < T ? lse[head.stats + t] * kLog2e : 0.0f;
      sDot[buffer * QT + r] = t < T ? row_dot[head.stats + t] : 0.0f;
    }
  };
  load_core_matrix_tile_async<kRows, HD, kBlockThreads>(sK, q_base + C, k0, T, qkv_stride);
  load_core_matrix_tile_async<kRows, HD, kBlockThreads>(sV, q_base + 2 * C, k0, T, qkv_stride);
  load_query_tile(0, 0);
  cp_async_commit();

  // This warpgroup's 64 rows of K and V, as A from shared memory.
  const uint16_t* group_k = sK + 64 * group * HD;
  const uint16_t* group_v = sV + 64 * group * HD;
  // This warp's 16 rows of dS^T: 16 core matrices, contiguous.
  uint16_t* warp_ds = sdS + 16 * warp * QT;
  float dk[1][HD / 8][4] = {}, dv[1][HD / 8][4] = {};
  walk_tiles<true>(tiles, load_query_tile, [&](int i, int buffer) {
    const int row0 = tile_row0(i);
    const uint16_t* q_tile = sQ + buffer * QT * HD;
    // Query tiles wholly before the warpgroup's keys add nothing to its dK
    // and dV, and zeros to dQ.
    const bool adds = row0 + QT - 1 >= group_k0 && group_k0 < T;
    uint32_t a[QT / 16][4];  // dS^T, the A of dK's product
    if (adds) {
      const uint16_t* dout_tile = sdO + buffer * QT * HD;
      const float* tile_lse = sLse + buffer * QT;
      const float* tile_dot = sDot + buffer * QT;

      // P^T: the warp's 16 keys x QT queries, masked (a query before its
      // key, or past T, gets 0).
      float p[1][QT / 8][4] = {};
      wgmma_product_shared_a<64, false, false, HD / 16>(
          p[0], [&](int kb) { return k_major_descriptor<HD>(group_k, kb); },
          [&](int kb) { return k_major_descriptor<HD>(q_tile, kb); });
      probabilities_transposed(p, warp_k0, row0, T, tile_lse, scale_log2, lane);
#pragma unroll
      for (int kb = 0; kb < QT / 16; ++kb) pack_p_fragment(a[kb], p[0], kb);
      // dV += P^T dO and dP^T = V dO^T, in one group.
      float ds[1][QT / 8][4] = {};
      wgmma_group(
          [&] {
#pragma unroll
            for (int kb = 0; kb < QT / 16; ++kb)
              wgmma_bf16<HD, true>(dv[0], a[kb], n_major_descriptor<HD>(dout_tile, kb));
#pragma unroll
            for (int kb = 0; kb < HD / 16; ++kb)
              wgmma_bf16_shared_a<64, false, false>(ds[0], k_major_descriptor<HD>(group_v, kb),
                                                    k_major_descriptor<HD>(dout_tile, kb));
          },
          dv[0], ds[0]);
      // dS^T = P^T (dP^T - D)
#pragma unroll
      for (int nb = 0; nb < QT / 8; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e)
          ds[0][nb][e] = p[0][nb][e] * (ds[0][nb][e] - tile_dot[nb * 8 + 2 * q + (e & 1)]);
        if constexpr (AddsDq) {
          // As bf16 (rounded as dK's A is), at key row g (+ 8) of the
          // warp's two rows of core matrices, query column nb 8 + 2 q.
          *reinterpret_cast<uint32_t*>(warp_ds + nb * 64 + g * 8 + 2 * q) = pack_bf16(ds[0][nb][0], ds[0][nb][1]);
          *reinterpret_cast<uint32_t*>(warp_ds + (QT / 8 + nb) * 64 + g * 8 + 2 * q) =
              pack_bf16(ds[0][nb][2], ds[0][nb][3]);
        }
      }
#pragma unroll
      for (int kb = 0; kb < QT / 16; ++kb) pack_p_fragment(a[kb], ds[0], kb);
    } else if constexpr (AddsDq) {
      // dS^T = 0: no share of dQ, and (below) nothing added to dK.
      for (int c = lane; c < 16 * QT / 8; c += 32) reinterpret_cast<uint4*>(warp_ds)[c] = make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int kb = 0; kb < QT / 16; ++kb) a[kb][0] = a[kb][1] = a[kb][2] = a[kb][3] = 0;
    }
    auto dk_product = [&] {
#pragma unroll
      for (int kb = 0; kb < QT / 16; ++kb) wgmma_bf16<HD, true>(dk[0], a[kb], n_major_descriptor<HD>(q_tile, kb));
    };
    if constexpr (!AddsDq) {
      if (adds) wgmma_group(dk_product, dk[0]);  // dK += dS^T Q
    } else {
      fence_proxy_async_shared();
      __syncthreads();  // dS^T of all the block's keys is in sdS
      // dK += dS^T Q, and this warpgroup's columns of dQ's share, dS K:
      // A = dS (queries x keys), M-major, is laid out as N-major B would
      // be; B = K (keys x HD), N-major, from this warpgroup's column. Both
      // products are issued whether or not the warpgroup adds (then with
      // dS^T = 0): a wgmma on a divergent path makes ptxas serialise them
      // all (tests/scripts/test_wgmma_compile.py).
      constexpr int kColumns = HD / 2;
      const uint16_t* k_columns = sK + group * (kColumns / 8) * 64;
      float dq[kColumns / 8][4] = {};
      wgmma_group(
          [&] {
            dk_product();
#pragma unroll
            for (int kb = 0; kb < kRows / 16; ++kb)
              wgmma_bf16_shared_a<kColumns, true, true>(dq, n_major_descriptor<QT>(sdS, kb),
                                                        n_major_descriptor<HD>(k_columns, kb));
          },
          dk[0], dq);
      // A stalled wait traps without saying which block (see wait_for_flag).
      add_dq_share_in_order<HD, false>(dq, flags + row0 / QT, key_tile, row0 < k0 + kRows,
                                       dq_accum + head.stats * HD, dqkv + head.qkv, qkv_stride,
                                       row0 + 16 * (warp % 4), group * kColumns, T, scale, lane);
    }
  });

  // The loop's last barrier has passed: all of shared memory is free. Each
  // warp stages its dK rows, then its dV rows, in rows of its own.
  uint16_t* staging = smem + 32 * warp * S;
  store_warp_blocks<HD, 1>(dqkv + head.qkv + C, qkv_stride, warp_k0, T, dk, scale, staging, lane);
  store_warp_blocks<HD, 1>(dqkv + head.qkv + 2 * C, qkv_stride, warp_k0, T, dv, 1.0f, staging + 16 * S, lane);
}

// Where this build and device run the wgmma kernels: compiled for sm_90a
// (the probe kernel reports it) on a compute-capability 9.0 GPU, whose
// wgmma gives the products the kernels' layouts assume (the check kernel).
__global__ void wgmma_probe_kernel(int* compiled) { *compiled = wgmma_compiled() ? 1 : 0; }

// The wgmma self-check's ways, as bits, and which the strategies' kernels
// use (attention_support).
enum WgmmaCheckWay : unsigned {
  kRegistersAKMajorB = 1u << 0,
  kRegistersANMajorB = 1u << 1,
  kSharedKMajorAKMajorB = 1u << 2,
  kSharedMMajorANMajorB = 1u << 3,
  kSharedMMajorANMajorB32 = 1u << 4,
};

// The wgmma self-check: one warpgroup computes D = A B (64 x 64, k = 32 in
// two chained steps) in each way the kernels use wgmma, with their own
// loaders and descriptors: A from registers (ldmatrix from a padded tile)
// with B K-major (a core-matrix tile of B^T) and with B N-major (one of B);
// A from shared memory K-major (a core-matrix tile of A) with B K-major;
// and A from shared memory M-major (one of A^T) with B N-major, as one
// 64-column product and as two of 32 columns (B's descriptor moved to
// column 32, as the one-pass dK/dV kernel moves it to its warpgroup's).
// d_out: [kWgmmaCheckWays][64][64], row-major.
constexpr int kWgmmaCheckK = 32, kWgmmaCheckWays = 5;
constexpr size_t kWgmmaCheckShared = sizeof(uint16_t) * (64 * (kWgmmaCheckK + kPad) + 4 * 64 * kWgmmaCheckK);

// Writes a warpgroup's 64 x 8 NB product, columns col0 .., into the rows of d_out (64 columns).
template <int NB>
__device__ __forceinline__ void store_check_product(float* d_out, const float (&d)[NB][4], int col0) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
    for (int e = 0; e < 4; ++e)
      d_out[(16 * warp + g + 8 * (e / 2)) * 64 + col0 + 8 * nb + 2 * q + e % 2] = d[nb][e];
  }
}

__global__ void __launch_bounds__(128) wgmma_check_kernel(float* d_out, const uint16_t* a, const uint16_t* a_transposed,
                                                          const uint16_t* b, const uint16_t* b_transposed) {
  constexpr int K = kWgmmaCheckK, S = K + kPad;
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* sA = smem;                    // [64][S], row-major
  uint16_t* sA_core = sA + 64 * S;        // A, 64 x K, core matrices
  uint16_t* sAt_core = sA_core + 64 * K;  // A^T, K x 64, core matrices
  uint16_t* sBt_core = sAt_core + 64 * K; // B^T, 64 x K, core matrices
  uint16_t* sB_core = sBt_core + 64 * K;  // B, K x 64, core matrices
  load_tile_async<64, K, 128>(sA, a, 0, 64, K);
  load_core_matrix_tile_async<64, K, 128>(sA_core, a, 0, 64, K);
  load_core_matrix_tile_async<K, 64, 128>(sAt_core, a_transposed, 0, K, 64);
  load_core_matrix_tile_async<64, K, 128>(sBt_core, b_transposed, 0, 64, K);
  load_core_matrix_tile_async<K, 64, 128>(sB_core, b, 0, K, 64);
  cp_async_commit();
  cp_async_wait<0>();
  fence_proxy_async_shared();
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint32_t a_frag[1][K / 16][4];
  load_a_fragments<S, 1, K / 16>(a_frag, sA, 16 * warp, lane);
  auto a_m_major = [&](int kb) { return n_major_descriptor<64>(sAt_core, kb); };  // laid out as N-major B
  {
    float d[8][4] = {};
    wgmma_product<64, false, K / 16>(d, a_frag[0], [&](int kb) { return k_major_descriptor<K>(sBt_core, kb); });
    store_check_product(d_out, d, 0);
  }
  {
    float d[8][4] = {};
    wgmma_product<64, true, K / 16>(d, a_frag[0], [&](int kb) { return n_major_descriptor<64>(sB_core, kb); });
    store_check_product(d_out + 64 * 64, d, 0);
  }
  {
    float d[8][4] = {};
    wgmma_product_shared_a<64, false, false, K / 16>(d, [&](int kb) { return k_major_descriptor<K>(sA_core, kb); },
                                                     [&](int kb) { return k_major_descriptor<K>(sBt_core, kb); });
    store_check_product(d_out + 2 * 64 * 64, d, 0);
  }
  {
    float d[8][4] = {};
    wgmma_product_shared_a<64, true, true, K / 16>(d, a_m_major,
                                                   [&](int kb) { return n_major_descriptor<64>(sB_core, kb); });
    store_check_product(d_out + 3 * 64 * 64, d, 0);
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float d[4][4] = {};
    const uint16_t* b_columns = sB_core + half * 4 * 64;
    wgmma_product_shared_a<32, true, true, K / 16>(d, a_m_major,
                                                   [&](int kb) { return n_major_descriptor<64>(b_columns, kb); });
    store_check_product(d_out + 4 * 64 * 64, d, 32 * half);
  }
}

// =====================================================================
// Backward, tensor cores: block = (kRows-key tile j, batch*head), each
// warp kRowsPerWarp keys; streams the query tiles at or after the key
// tile (kQueries rows each) from the last down, accumulating dK and dV in
// registers:
//   S^T = K Q^T, P^T = exp(S^T - lse), dV += P^T dO,
//   dP^T = V dO^T, dS^T = P^T (dP^T - D), dK += dS^T Q.
// dQ = sum over key tiles j of dS K_j comes one of two ways
// (AttentionBackward, attention.cuh):
//
// One pass (AddsDq): the block also adds each query tile's share of dQ,
// dS K_j, to an fp32 accumulator in global memory. The adds to one query
// tile are ordered by key tile: a flag per query tile counts the key tiles
// added so far, and block j waits for it to read j. So dQ sums in the same
// order on every run, without a second pass that recomputes S and dP. The
// last key tile to add to a query tile (the one on its diagonal) writes
// the sum as dQ, in bf16. Because every block walks the query tiles from
// the last down, the blocks of a head reach a query tile at about the same
// step and each waits only for its predecessor's add. A block's key tile j
// is the ticket it draws from its head's counter when it starts, not
// blockIdx.x: the block it waits for drew ticket j - 1 and so has started,
// whatever order the hardware starts blocks in (CUDA promises none).
//
// Two passes: this kernel computes dK and dV only (key tile blockIdx.x,
// no ordering between blocks), and attention_backward_dq_tc_kernel below
// recomputes S and dP per query tile and sums dQ in registers: two more
// matmuls of the score matrix's size (7 instead of 5).
// =====================================================================
template <int HD, bool AddsDq>
constexpr size_t backward_shared_bytes() {
  using Tiles = BackwardTiles<HD>;
  constexpr int QT = Tiles::kQueries;
  constexpr size_t staged_ds = AddsDq ? size_t(QT + kPad) * Tiles::kRows : 0;
  return sizeof(uint16_t) * (size_t(HD + kPad) * (2 * Tiles::kRows + 4 * QT) + staged_ds) + sizeof(float) * 4 * QT;
}

template <int HD, bool AddsDq>
__global__ void __launch_bounds__(kThreads)
    attention_backward_tc_kernel(uint16_t* dqkv, float* dq_accum, unsigned* dq_flags, const uint16_t* dout,
                                 const uint16_t* qkv, const float* lse, const float* row_dot, int T, int C, int H,
                                 float scale, float scale_log2) {
  using Tiles = BackwardTiles<HD>;
  constexpr int S = HD + kPad, MB = Tiles::kBlocksPerWarp, QT = Tiles::kQueries, SD = QT + kPad;
  // The dQ share (QT queries x HD) splits into a piece per warp: QT / 16
  // row blocks x kDqParts column parts of kDqColumns.
  constexpr int kRowBlocks = QT / 16, kDqParts = kWarps / kRowBlocks, kDqColumns = HD / kDqParts;
  static_assert(QT % 16 == 0 && kWarps % kRowBlocks == 0 && kDqColumns % 16 == 0,
                "the dQ share must split into one piece per warp");
  // A query tile lies within one key tile, so the diagonal block finishes it.
  static_assert(Tiles::kRows % QT == 0, "the key tile must be a multiple of the query tile");
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* sK = smem;                   // [kRows][S]
  uint16_t* sV = sK + Tiles::kRows * S;  // [kRows][S]
  uint16_t* sQ = sV + Tiles::kRows * S;  // [2][QT][S]
  uint16_t* sdO = sQ + 2 * QT * S;       // [2][QT][S]
  uint16_t* sdS = sdO + 2 * QT * S;      // one pass: [kRows][SD], dS^T of the current query tile
  float* sLse = reinterpret_cast<float*>(sdS + (AddsDq ? Tiles::kRows * SD : 0));  // [2][QT], log2 domain
  float* sDot = sLse + 2 * QT;                                                      // [2][QT]

  unsigned* flags = nullptr;  // one pass: a flag per query tile of this (batch, head)
  const int key_tile = AddsDq ? draw_key_tile(dq_flags, (T + QT - 1) / QT, &flags) : int(blockIdx.x);
  const int k0 = key_tile * Tiles::kRows;
  const HeadOffsets head(T, C, H, HD);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int warp_k0 = k0 + warp * Tiles::kRowsPerWarp;  // this warp's first key
  const size_t qkv_stride = head.qkv_stride;
  const uint16_t* q_base = qkv + head.qkv;
  const uint16_t* k_base = q_base + C;
  const uint16_t* v_base = q_base + 2 * C;
  const uint16_t* dout_base = dout + head.out;
  const float* lse_row = lse + head.stats;
  const float* dot_row = row_dot + head.stats;
  uint16_t* dqkv_base = dqkv + head.qkv;
  const int tiles = (T - k0 + QT - 1) / QT;
  // Step i works on the i-th query tile from the last.
  auto tile_row0 = [&](int i) { return k0 + (tiles - 1 - i) * QT; };

  auto load_query_tile = [&](int i, int buffer) {
    const int row0 = tile_row0(i);
    load_tile_async<QT, HD>(sQ + buffer * QT * S, q_base, row0, T, qkv_stride);
    load_tile_async<QT, HD>(sdO + buffer * QT * S, dout_base, row0, T, size_t(C));
    for (int r = threadIdx.x; r < QT; r += kThreads) {
      const int t = row0 + r;
      sLse[buffer * QT + r] = t < T ? lse_row[t] * kLog2e : 0.0f;
      sDot[buffer * QT + r] = t < T ? dot_row[t] : 0.0f;
    }
  };

  load_tile_async<Tiles::kRows, HD>(sK, k_base, k0, T, qkv_stride);
  load_tile_async<Tiles::kRows, HD>(sV, v_base, k0, T, qkv_stride);
  load_query_tile(0, 0);
  cp_async_commit();

  float dk[MB][HD / 8][4] = {}, dv[MB][HD / 8][4] = {};
  walk_tiles(tiles, load_query_tile, [&](int i, int buffer) {
    const int row0 = tile_row0(i);
    uint16_t* warp_ds = sdS + warp * Tiles::kRowsPerWarp * SD;
    // Query tiles wholly before this warp's keys, and warps wholly past T,
    // add nothing to dK and dV, and zeros to dQ.
    if (row0 + QT - 1 < warp_k0 || warp_k0 >= T) {
      if constexpr (AddsDq) {
        for (int pair = lane; pair < Tiles::kRowsPerWarp * QT / 2; pair += 32)
          reinterpret_cast<uint32_t*>(warp_ds + (pair / (QT / 2)) * SD)[pair % (QT / 2)] = 0;
      }
    } else {
      const uint16_t* q_tile = sQ + buffer * QT * S;
      const uint16_t* dout_tile = sdO + buffer * QT * S;
      const float* tile_lse = sLse + buffer * QT;
      const float* tile_dot = sDot + buffer * QT;

      // P^T for this warp's keys x QT queries (fp32, masked). The mask is
      // applied to every tile: skipping it where no element is masked costs
      // this kernel more spills than it saves.
      float p[MB][QT / 8][4] = {};
      mma_a_bt_tile<S, MB, HD / 16, QT / 8>(p, FragmentsInShared<S, MB>{sK, warp * Tiles::kRowsPerWarp, lane},
                                            q_tile, lane);
      probabilities_transposed(p, warp_k0, row0, T, tile_lse, scale_log2, lane);
      mma_p_b_tile<S, MB, QT / 16, HD>(dv, p, dout_tile, lane);  // dV += P^T dO
      // dS^T = P^T (dP^T - D), dP^T = V dO^T
      float ds[MB][QT / 8][4] = {};
      mma_a_bt_tile<S, MB, HD / 16, QT / 8>(ds, FragmentsInShared<S, MB>{sV, warp * Tiles::kRowsPerWarp, lane},
                                            dout_tile, lane);
#pragma unroll
      for (int m = 0; m < MB; ++m) {
#pragma unroll
        for (int nb = 0; nb < QT / 8; ++nb) {
#pragma unroll
          for (int e = 0; e < 4; ++e)
            ds[m][nb][e] = p[m][nb][e] * (ds[m][nb][e] - tile_dot[nb * 8 + 2 * q + (e & 1)]);
          if constexpr (AddsDq) {
            // dS^T as bf16, the A operand of dQ's share (rounded as dK's is).
            *reinterpret_cast<uint32_t*>(warp_ds + (16 * m + g) * SD + nb * 8 + 2 * q) =
                pack_bf16(ds[m][nb][0], ds[m][nb][1]);
            *reinterpret_cast<uint32_t*>(warp_ds + (16 * m + g + 8) * SD + nb * 8 + 2 * q) =
                pack_bf16(ds[m][nb][2], ds[m][nb][3]);
          }
        }
      }
      mma_p_b_tile<S, MB, QT / 16, HD>(dk, ds, q_tile, lane);  // dK += dS^T Q
    }
    if constexpr (AddsDq) {
      __syncthreads();  // dS^T of all the block's keys is in sdS

      // This warp's piece of dQ's share: queries rb*16.., columns col0...
      const int rb = warp % kRowBlocks, col0 = (warp / kRowBlocks) * kDqColumns;
      float dq[kDqColumns / 8][4] = {};
#pragma unroll
      for (int kb = 0; kb < Tiles::kRows / 16; ++kb) {
        // A = dS (queries x keys), read transposed from dS^T.
        uint32_t a[4];
        ldmatrix_x4_trans(a, bt_address<SD>(sdS, kb * 16, rb * 16, lane));
#pragma unroll
        for (int db = 0; db < kDqColumns / 16; ++db) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, b_address<S>(sK, kb * 16, col0 + db * 16, lane));
          mma_bf16(dq[2 * db], a, b[0], b[1]);
          mma_bf16(dq[2 * db + 1], a, b[2], b[3]);
        }
      }

      // Add it after the key tiles before this one, in order. No later key
      // tile adds to this block's own (diagonal) query tiles: there it
      // writes the finished dQ, times the scale, as bf16 into dqkv instead.
      add_dq_share_in_order<HD, true>(dq, flags + row0 / QT, key_tile, row0 < k0 + Tiles::kRows,
                                      dq_accum + head.stats * HD, dqkv_base, qkv_stride, row0 + rb * 16, col0, T,
                                      scale, lane);
    }
  });

  // Each warp's K and V rows were only read by that warp since the last
  // barrier of walk_tiles: stage there.
  store_warp_blocks<HD, MB>(dqkv_base + C, qkv_stride, warp_k0, T, dk, scale, sK + warp * Tiles::kRowsPerWarp * S,
                            lane);
  store_warp_blocks<HD, MB>(dqkv_base + 2 * C, qkv_stride, warp_k0, T, dv, 1.0f,
                            sV + warp * Tiles::kRowsPerWarp * S, lane);
}

// =====================================================================
// Backward, tensor cores, the two-pass backward's dQ pass: block =
// (kRows-query tile, batch*head), each warp kRowsPerWarp queries; streams
// the key tiles up to the block's last query through for_each_key_tile:
//   S = Q K^T, P = exp(S - lse), dP = dO V^T, dS = P (dP - D), dQ += dS K.
// =====================================================================
template <int HD>
constexpr size_t dq_shared_bytes() {
  using Tiles = DqTiles<HD>;
  return sizeof(uint16_t) * size_t(HD + kPad) * (2 * Tiles::kRows + 4 * Tiles::kKeys);  // Q, dO, 2 x K, 2 x V
}

template <int HD>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_tc_kernel(uint16_t* dqkv, const uint16_t* dout, const uint16_t* qkv, const float* lse,
                                    const float* row_dot, int T, int C, int H, float scale, float scale_log2) {
  using Tiles = DqTiles<HD>;
  constexpr int S = HD + kPad, MB = Tiles::kBlocksPerWarp, KT = Tiles::kKeys;
  static_assert(KT % (16 * MB) == 0, "the key tile must be a multiple of a warp's query rows (for_each_key_tile)");
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* sQ = smem;                    // [kRows][S]
  uint16_t* sdO = sQ + Tiles::kRows * S;  // [kRows][S]
  uint16_t* sK = sdO + Tiles::kRows * S;  // [2][KT][S]
  uint16_t* sV = sK + 2 * KT * S;         // [2][KT][S]

  // Later query tiles attend to more keys: start them first.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * Tiles::kRows;
  const HeadOffsets head(T, C, H, HD);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_q0 = q0 + warp * Tiles::kRowsPerWarp;
  const size_t qkv_stride = head.qkv_stride;
  const uint16_t* q_base = qkv + head.qkv;
  const uint16_t* k_base = q_base + C;
  const uint16_t* v_base = q_base + 2 * C;
  const uint16_t* dout_base = dout + head.out;

  load_tile_async<Tiles::kRows, HD>(sQ, q_base, q0, T, qkv_stride);
  load_tile_async<Tiles::kRows, HD>(sdO, dout_base, q0, T, size_t(C));
  load_tile_async<KT, HD>(sK, k_base, 0, T, qkv_stride);
  load_tile_async<KT, HD>(sV, v_base, 0, T, qkv_stride);
  cp_async_commit();

  float row_lse[MB][2], row_dot_value[MB][2];  // log2 domain; D
  load_row_stats(row_lse, row_dot_value, lse + head.stats, row_dot + head.stats, warp_q0, T, lane);

  float dq[MB][HD / 8][4] = {};
  for_each_key_tile<HD, KT, MB>(
      sQ, sK, sV, q0, Tiles::kRows, T, k_base, v_base, qkv_stride,
      [&](float(&p)[MB][KT / 8][4], const uint16_t* k_tile, const uint16_t* v_tile) {
        // dS = P (dP - D), dP = dO V^T. dO's fragments are read again for
        // every tile: holding them as well as Q's would cost registers.
        float ds[MB][KT / 8][4] = {};
        mma_a_bt_tile<S, MB, HD / 16, KT / 8>(ds, FragmentsInShared<S, MB>{sdO, warp * Tiles::kRowsPerWarp, lane},
                                              v_tile, lane);
        ds_from_scores(ds, p, row_lse, row_dot_value, scale_log2);
        mma_p_b_tile<S, MB, KT / 16, HD>(dq, ds, k_tile, lane);  // dQ += dS K
      });

  // The warp's Q rows are in registers since the first tile; stage there.
  store_warp_blocks<HD, MB>(dqkv + head.qkv, qkv_stride, warp_q0, T, dq, scale, sQ + warp * Tiles::kRowsPerWarp * S,
                            lane);
}

// =====================================================================
// Row dot products D = sum_d dout * out per (batch, head, query), the
// softmax backward's row term; shared by both backward implementations.
// kRowDotLanes lanes per row, each summing W-element chunks strided over
// the head (16-byte vectors where rows allow, else single elements), then
// summed across the lanes in a fixed order.
// =====================================================================
constexpr int kRowDotLanes = 8;

template <typename S, int W>
__global__ void attention_row_dot_kernel(float* row_dot, const S* dout, const S* out, int B, int T, int C, int H,
                                         int hd) {
  const size_t thread = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t row_id = thread / kRowDotLanes;  // (batch * head, t)
  const int member = int(thread % kRowDotLanes);
  // Lanes past the last row still take part in the shuffles.
  const bool valid = row_id < size_t(B) * H * T;
  float sum = 0;
  if (valid) {
    const int t = int(row_id % T);
    const int bh = int(row_id / T), b = bh / H, h = bh % H;
    const size_t row = (size_t(b) * T + t) * C + size_t(h) * hd;
    for (int d = member * W; d < hd; d += kRowDotLanes * W) {
      float x[W], y[W];
      load_chunk<W>(dout + row + d, x);
      load_chunk<W>(out + row + d, y);
#pragma unroll
      for (int i = 0; i < W; ++i) sum += x[i] * y[i];
    }
  }
#pragma unroll
  for (int offset = kRowDotLanes / 2; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (valid && member == 0) row_dot[row_id] = sum;
}

// =====================================================================
// Simple fp32 path (f32 storage, or head sizes the tensor-core kernels do
// not cover): one warp per row, each lane holding head elements
// lane, lane + 32, ...; scores are warp-wide dot products.
// =====================================================================
constexpr int kMaxHeadDimPerLane = 8;  // head sizes up to 256

template <typename S>
struct HeadRow {
  float v[kMaxHeadDimPerLane];
  __device__ void load(const S* row, int hd, int lane) {
#pragma unroll
    for (int i = 0; i < kMaxHeadDimPerLane; ++i) {
      const int d = lane + 32 * i;
      v[i] = d < hd ? load_f(row + d) : 0.0f;
    }
  }
  __device__ float dot(const HeadRow& o) const {
    float sum = 0;
#pragma unroll
    for (int i = 0; i < kMaxHeadDimPerLane; ++i) sum += v[i] * o.v[i];
    return warp_sum(sum);
  }
};

template <typename S>
__device__ void store_head_row(S* row, const float (&v)[kMaxHeadDimPerLane], float scale, int hd, int lane) {
#pragma unroll
  for (int i = 0; i < kMaxHeadDimPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) row[d] = store_f<S>(v[i] * scale);
  }
}

struct RowIndex {
  int b, h, t, bh;
};
__device__ __forceinline__ bool warp_row(int B, int T, int H, RowIndex* r) {
  const size_t warp_id = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (warp_id >= size_t(B) * H * T) return false;
  r->t = int(warp_id % T);
  r->bh = int(warp_id / T);
  r->b = r->bh / H;
  r->h = r->bh % H;
  return true;
}

template <typename S>
__global__ void attention_forward_simple_kernel(S* out, float* lse, const S* qkv, int B, int T, int C, int H, int hd,
                                                float scale) {
  RowIndex r;
  if (!warp_row(B, T, H, &r)) return;
  const int lane = threadIdx.x % 32;
  const size_t stride = 3 * size_t(C);
  const S* head = qkv + size_t(r.b) * T * stride + size_t(r.h) * hd;
  HeadRow<S> query, key, value;
  query.load(head + size_t(r.t) * stride, hd, lane);
  float acc[kMaxHeadDimPerLane] = {};
  float running_max = -INFINITY, sum = 0;
  for (int j = 0; j <= r.t; ++j) {
    key.load(head + size_t(j) * stride + C, hd, lane);
    value.load(head + size_t(j) * stride + 2 * C, hd, lane);
    const float s = query.dot(key) * scale;
    const float new_max = fmaxf(running_max, s);
    const float correction = expf(running_max - new_max), p = expf(s - new_max);
    sum = sum * correction + p;
#pragma unroll
    for (int i = 0; i < kMaxHeadDimPerLane; ++i) acc[i] = acc[i] * correction + p * value.v[i];
    running_max = new_max;
  }
  store_head_row(out + (size_t(r.b) * T + r.t) * C + size_t(r.h) * hd, acc, 1.0f / sum, hd, lane);
  if (lane == 0) lse[size_t(r.bh) * T + r.t] = running_max + logf(sum);
}

// dQ for one query row: sum over keys j <= t of dS_j k_j.
template <typename S>
__global__ void attention_backward_dq_simple_kernel(S* dqkv, const S* dout, const S* qkv, const float* lse,
                                                    const float* row_dot, int B, int T, int C, int H, int hd,
                                                    float scale) {
  RowIndex r;
  if (!warp_row(B, T, H, &r)) return;
  const int lane = threadIdx.x % 32;
  const size_t stride = 3 * size_t(C);
  const S* head = qkv + size_t(r.b) * T * stride + size_t(r.h) * hd;
  HeadRow<S> query, grad_out, key, value;
  query.load(head + size_t(r.t) * stride, hd, lane);
  grad_out.load(dout + (size_t(r.b) * T + r.t) * C + size_t(r.h) * hd, hd, lane);
  const float row_lse = lse[size_t(r.bh) * T + r.t], dot = row_dot[size_t(r.bh) * T + r.t];
  float dq[kMaxHeadDimPerLane] = {};
  for (int j = 0; j <= r.t; ++j) {
    key.load(head + size_t(j) * stride + C, hd, lane);
    value.load(head + size_t(j) * stride + 2 * C, hd, lane);
    const float p = expf(query.dot(key) * scale - row_lse);
    const float ds = p * (grad_out.dot(value) - dot);
#pragma unroll
    for (int i = 0; i < kMaxHeadDimPerLane; ++i) dq[i] += ds * key.v[i];
  }
  store_head_row(dqkv + (size_t(r.b) * T + r.t) * stride + size_t(r.h) * hd, dq, scale, hd, lane);
}

// dK and dV for one key row j: sums over queries i >= j.
template <typename S>
__global__ void attention_backward_dkdv_simple_kernel(S* dqkv, const S* dout, const S* qkv, const float* lse,
                                                      const float* row_dot, int B, int T, int C, int H, int hd,
                                                      float scale) {
  RowIndex r;
  if (!warp_row(B, T, H, &r)) return;
  const int lane = threadIdx.x % 32;
  const size_t stride = 3 * size_t(C);
  const S* head = qkv + size_t(r.b) * T * stride + size_t(r.h) * hd;
  HeadRow<S> key, value, query, grad_out;
  key.load(head + size_t(r.t) * stride + C, hd, lane);
  value.load(head + size_t(r.t) * stride + 2 * C, hd, lane);
  float dk[kMaxHeadDimPerLane] = {}, dv[kMaxHeadDimPerLane] = {};
  for (int i = r.t; i < T; ++i) {
    query.load(head + size_t(i) * stride, hd, lane);
    grad_out.load(dout + (size_t(r.b) * T + i) * C + size_t(r.h) * hd, hd, lane);
    const float p = expf(query.dot(key) * scale - lse[size_t(r.bh) * T + i]);
    const float ds = p * (grad_out.dot(value) - row_dot[size_t(r.bh) * T + i]);
#pragma unroll
    for (int d = 0; d < kMaxHeadDimPerLane; ++d) {
      dk[d] += ds * query.v[d];
      dv[d] += p * grad_out.v[d];
    }
  }
  S* row = dqkv + (size_t(r.b) * T + r.t) * stride + size_t(r.h) * hd;
  store_head_row(row + C, dk, scale, hd, lane);
  store_head_row(row + 2 * C, dv, 1.0f, hd, lane);
}

constexpr int kSimpleThreads = 128;

// The tensor-core kernels put batch x heads on the grid's y dimension.
constexpr int kMaxGridY = 65535;

int head_dim(int C, int H, const char* op) {
  if (H <= 0 || C % H != 0) fail("{}: model width {} is not divisible by the number of heads {}", op, C, H);
  const int hd = C / H;
  if (hd > 32 * kMaxHeadDimPerLane)
    fail("{}: head size {} is larger than the cuda backend supports ({})", op, hd, 32 * kMaxHeadDimPerLane);
  return hd;
}

unsigned simple_blocks(int B, int T, int H) { return ceil_div(size_t(B) * H * T * 32, kSimpleThreads); }

template <int HD>
void forward_tc(cudaStream_t stream, AttentionForward how, void* out, float* lse, const void* qkv, int B, int T,
                int C, int H) {
  auto* out16 = static_cast<uint16_t*>(out);
  const auto* qkv16 = static_cast<const uint16_t*>(qkv);
  const float scale_log2 = kLog2e / sqrtf(float(HD));
  if (how == AttentionForward::wgmma) {
    auto kernel = attention_forward_wgmma_kernel<HD>;
    constexpr size_t shared = wgmma_forward_shared_bytes<HD>();
    allow_dynamic_shared_memory(kernel, shared, "attention_forward");
    const dim3 grid(ceil_div(T, WgmmaTiles::kRows), B * H);
    kernel<<<grid, WgmmaTiles::kThreads, shared, stream>>>(out16, lse, qkv16, T, C, H, scale_log2);
    CUDA_CHECK_LAUNCH("attention_forward_wgmma_kernel");
    return;
  }
  auto kernel = attention_forward_tc_kernel<HD>;
  constexpr size_t shared = forward_shared_bytes<HD>();
  allow_dynamic_shared_memory(kernel, shared, "attention_forward");
  const dim3 grid(ceil_div(T, ForwardTiles<HD>::kRows), B * H);
  kernel<<<grid, kThreads, shared, stream>>>(out16, lse, qkv16, T, C, H, scale_log2);
  CUDA_CHECK_LAUNCH("attention_forward_tc_kernel");
}

// The pass over key tiles: dK and dV, and with AddsDq dQ as well.
template <int HD, bool AddsDq>
void backward_key_pass(cudaStream_t stream, uint16_t* dqkv, float* dq_accum, unsigned* dq_flags, const uint16_t* dout,
                       const uint16_t* qkv, const float* lse, const float* row_dot, int B, int T, int C, int H,
                       float scale) {
  const dim3 grid(ceil_div(T, BackwardTiles<HD>::kRows), B * H);
  auto kernel = attention_backward_tc_kernel<HD, AddsDq>;
  constexpr size_t shared = backward_shared_bytes<HD, AddsDq>();
  allow_dynamic_shared_memory(kernel, shared, "attention_backward");
  kernel<<<grid, kThreads, shared, stream>>>(dqkv, dq_accum, dq_flags, dout, qkv, lse, row_dot, T, C, H, scale,
                                              scale * kLog2e);
  CUDA_CHECK_LAUNCH("attention_backward_tc_kernel");
}

template <int HD>
void backward_tc(cudaStream_t stream, AttentionBackward how, void* dqkv, float* dq_accum, unsigned* dq_flags,
                 size_t flag_count, const void* dout, const void* qkv, const float* lse, const float* row_dot, int B,
                 int T, int C, int H) {
  auto* dqkv16 = static_cast<uint16_t*>(dqkv);
  const auto* dout16 = static_cast<const uint16_t*>(dout);
  const auto* qkv16 = static_cast<const uint16_t*>(qkv);
  const float scale = 1.0f / sqrtf(float(HD));
  if (attention_backward_adds_dq(how)) CUDA_CHECK(cudaMemsetAsync(dq_flags, 0, sizeof(unsigned) * flag_count, stream));
  if (attention_backward_uses_wgmma(how)) {
    auto launch = [&](auto kernel, size_t shared, const char* name, auto... arguments) {
      allow_dynamic_shared_memory(kernel, shared, "attention_backward");
      const dim3 grid(ceil_div(T, WgmmaTiles::kRows), B * H);
      kernel<<<grid, WgmmaTiles::kThreads, shared, stream>>>(arguments...);
      CUDA_CHECK_LAUNCH(name);
    };
    if (how == AttentionBackward::wgmma_one_pass) {
      launch(attention_backward_dkdv_wgmma_kernel<HD, true>, wgmma_dkdv_shared_bytes<HD, true>(),
             "attention_backward_dkdv_wgmma_kernel", dqkv16, dq_accum, dq_flags, dout16, qkv16, lse, row_dot, T, C, H,
             scale, scale * kLog2e);
      return;
    }
    launch(attention_backward_dkdv_wgmma_kernel<HD, false>, wgmma_dkdv_shared_bytes<HD, false>(),
           "attention_backward_dkdv_wgmma_kernel", dqkv16, static_cast<float*>(nullptr),
           static_cast<unsigned*>(nullptr), dout16, qkv16, lse, row_dot, T, C, H, scale, scale * kLog2e);
    launch(attention_backward_dq_wgmma_kernel<HD>, wgmma_dq_shared_bytes<HD>(), "attention_backward_dq_wgmma_kernel",
           dqkv16, dout16, qkv16, lse, row_dot, T, C, H, scale, scale * kLog2e);
    return;
  }
  if (how == AttentionBackward::one_pass) {
    backward_key_pass<HD, true>(stream, dqkv16, dq_accum, dq_flags, dout16, qkv16, lse, row_dot, B, T, C, H, scale);
    return;
  }
  backward_key_pass<HD, false>(stream, dqkv16, nullptr, nullptr, dout16, qkv16, lse, row_dot, B, T, C, H, scale);
  const dim3 grid(ceil_div(T, DqTiles<HD>::kRows), B * H);
  auto kernel = attention_backward_dq_tc_kernel<HD>;
  constexpr size_t shared = dq_shared_bytes<HD>();
  allow_dynamic_shared_memory(kernel, shared, "attention_backward");
  kernel<<<grid, kThreads, shared, stream>>>(dqkv16, dout16, qkv16, lse, row_dot, T, C, H, scale, scale * kLog2e);
  CUDA_CHECK_LAUNCH("attention_backward_dq_tc_kernel");
}

// The strategy an environment variable names: `choices` in order, the
// first being the default when it is unset.
template <typename Strategy, size_t N>
Strategy strategy_from_environment(const char* variable, const char* what, const Strategy (&choices)[N],
                                   const char* (*name)(Strategy)) {
  const char* text = std::getenv(variable);
  if (text == nullptr) return choices[0];
  std::string allowed;
  for (Strategy how : choices) {
    if (std::strcmp(text, name(how)) == 0) return how;
    allowed += (allowed.empty() ? "" : ", ") + std::string(name(how));
  }
  fail("{}='{}' is not {} (allowed: {}; unset means {})", variable, text, what, allowed, name(choices[0]));
}

}  // namespace

const char* attention_backward_name(AttentionBackward how) {
  switch (how) {
    case AttentionBackward::one_pass:
      return "one-pass";
    case AttentionBackward::two_pass:
      return "two-pass";
    case AttentionBackward::wgmma:
      return "wgmma";
    case AttentionBackward::wgmma_one_pass:
      return "wgmma-one-pass";
  }
  return "?";
}

AttentionBackward attention_backward_from_environment() {
  return strategy_from_environment(kAttentionBackwardEnv, "an attention backward", kAttentionBackwards,
                                   attention_backward_name);
}

const char* attention_forward_name(AttentionForward how) { return how == AttentionForward::mma ? "mma" : "wgmma"; }

AttentionForward attention_forward_from_environment() {
  return strategy_from_environment(kAttentionForwardEnv, "an attention forward", kAttentionForwards,
                                   attention_forward_name);
}

namespace {

// Runs wgmma_check_kernel against the host's product: small integers times
// powers of two, so every product and sum is exact in fp32 and each way must
// give the host's result to the bit. Returns the ways (WgmmaCheckWay bits)
// among `needed` that differ, and says in *why how many elements each got
// wrong.
unsigned wgmma_check_failures(unsigned needed, DeviceMemory& memory, std::string* why) {
  constexpr int K = kWgmmaCheckK;
  std::vector<uint16_t> a(64 * K), a_transposed(K * 64), b(K * 64), b_transposed(64 * K);
  std::vector<float> expected(64 * 64, 0.0f);
  auto bits = [](float x) { return float_to_bf16_rn(x).bits; };
  for (int i = 0; i < 64 * K; ++i) {
    a[i] = bits(float(int((i * 7919) % 13) - 6) * 0.25f);
    a_transposed[(i % K) * 64 + i / K] = a[i];
  }
  for (int k = 0; k < K; ++k) {
    for (int n = 0; n < 64; ++n) {
      b[k * 64 + n] = bits(float(int(((k * 64 + n) * 104729) % 11) - 5) * 0.5f);
      b_transposed[n * K + k] = b[k * 64 + n];
    }
  }
  for (int m = 0; m < 64; ++m)
    for (int n = 0; n < 64; ++n)
      for (int k = 0; k < K; ++k)
        expected[m * 64 + n] += bf16_to_float(bf16{a[m * K + k]}) * bf16_to_float(bf16{b[k * 64 + n]});

  auto upload = [&](const std::vector<uint16_t>& host, const char* what) {
    auto* device = static_cast<uint16_t*>(memory.allocate(host.size() * sizeof(uint16_t), what));
    CUDA_CHECK(cudaMemcpyAsync(device, host.data(), host.size() * sizeof(uint16_t), cudaMemcpyHostToDevice, nullptr));
    return device;
  };
  const uint16_t* a_device = upload(a, "the wgmma check's A");
  const uint16_t* at_device = upload(a_transposed, "the wgmma check's A^T");
  const uint16_t* b_device = upload(b, "the wgmma check's B");
  const uint16_t* bt_device = upload(b_transposed, "the wgmma check's B^T");
  auto* d_device = static_cast<float*>(
      memory.allocate(sizeof(float) * kWgmmaCheckWays * 64 * 64, "the wgmma check's products"));
  allow_dynamic_shared_memory(wgmma_check_kernel, kWgmmaCheckShared, "the wgmma check");
  wgmma_check_kernel<<<1, 128, kWgmmaCheckShared>>>(d_device, a_device, at_device, b_device, bt_device);
  CUDA_CHECK_LAUNCH("wgmma_check_kernel");
  std::vector<float> d(size_t(kWgmmaCheckWays) * 64 * 64);
  CUDA_CHECK(cudaMemcpyAsync(d.data(), d_device, d.size() * sizeof(float), cudaMemcpyDeviceToHost, nullptr));
  CUDA_CHECK(cudaStreamSynchronize(nullptr));

  const char* ways[kWgmmaCheckWays] = {"A in registers, B K-major", "A in registers, B N-major",
                                       "A in shared memory K-major, B K-major",
                                       "A in shared memory M-major, B N-major",
                                       "A in shared memory M-major, B N-major, 32 columns at a time"};
  std::string wrong;
  unsigned failures = 0;
  for (int way = 0; way < kWgmmaCheckWays; ++way) {
    if (!(needed & (1u << way))) continue;
    int differ = 0;
    for (int i = 0; i < 64 * 64; ++i) differ += d[size_t(way) * 64 * 64 + i] != expected[i];
    if (differ == 0) continue;
    failures |= 1u << way;
    wrong += fmt::format("{}{}: {} of 4096 elements", wrong.empty() ? "" : "; ", ways[way], differ);
  }
  if (failures != 0)
    *why = "this GPU's wgmma does not give the products the kernels' shared-memory layouts assume (" + wrong +
           " differ from the host's); the kernels that multiply this way stay off";
  return failures;
}

// Whether the wgmma kernels run here, for kernels that use the self-check's
// ways `needed` (WgmmaCheckWay bits).
AttentionSupport wgmma_support(unsigned needed, std::string* why) {
  const int major = current_device_attribute(cudaDevAttrComputeCapabilityMajor),
            minor = current_device_attribute(cudaDevAttrComputeCapabilityMinor);
  if (major != 9 || minor != 0) {
    *why = fmt::format("wgmma needs a compute-capability 9.0 GPU (H100, H200); device {} is {}.{}", current_device(),
                       major, minor);
    return AttentionSupport::other_gpu;
  }
  DeviceMemory memory;
  int* compiled = static_cast<int*>(memory.allocate(sizeof(int), "the wgmma probe's result"));
  int host = 0;
  wgmma_probe_kernel<<<1, 1>>>(compiled);
  CUDA_CHECK_LAUNCH("wgmma_probe_kernel");
  CUDA_CHECK(cudaMemcpyAsync(&host, compiled, sizeof(int), cudaMemcpyDeviceToHost, nullptr));
  CUDA_CHECK(cudaStreamSynchronize(nullptr));
  if (host != 1) {
    *why = "this build has no sm_90a code (CMAKE_CUDA_ARCHITECTURES must include 90a; the default does)";
    return AttentionSupport::no_sm90a_code;
  }
  return wgmma_check_failures(needed, memory, why) == 0 ? AttentionSupport::available
                                                         : AttentionSupport::wrong_products;
}

}  // namespace

// The forward: S = Q K^T with K as K-major B, O += P V with V as N-major B.
AttentionSupport attention_support(AttentionForward how, std::string* why) {
  if (how == AttentionForward::mma) return AttentionSupport::available;
  return wgmma_support(kRegistersAKMajorB | kRegistersANMajorB, why);
}

// The two-pass dQ kernel multiplies as the forward does; both dK/dV kernels
// take K and V as K-major A from shared memory and P^T, dS^T from
// registers; the one-pass one also dS as M-major A (32 columns at a time
// at head size 64, 64 at 128).
AttentionSupport attention_support(AttentionBackward how, std::string* why) {
  switch (how) {
    case AttentionBackward::one_pass:
    case AttentionBackward::two_pass:
      return AttentionSupport::available;
    case AttentionBackward::wgmma:
      return wgmma_support(kRegistersAKMajorB | kRegistersANMajorB | kSharedKMajorAKMajorB, why);
    case AttentionBackward::wgmma_one_pass:
      return wgmma_support(kRegistersANMajorB | kSharedKMajorAKMajorB | kSharedMMajorANMajorB |
                               kSharedMMajorANMajorB32,
                           why);
  }
  return AttentionSupport::available;
}

bool attention_uses_tensor_cores(DType dtype, int C, int H, const void* a, const void* b, const void* c) {
  if (dtype != DType::bf16 || H <= 0 || C % H != 0) return false;
  const int hd = C / H;
  // 16-byte rows for cp.async: every row and head offset a multiple of 8.
  return (hd == 64 || hd == 128) && C % 8 == 0 && all_aligned16(a, b, c);
}

void attention_forward(DType dtype, cudaStream_t stream, AttentionForward how, void* out, float* lse, const void* qkv,
                       int B, int T, int C, int H) {
  const int hd = head_dim(C, H, "attention_forward");
  if (B <= 0 || T <= 0) return;
  if (attention_uses_tensor_cores(dtype, C, H, out, qkv, nullptr) && B * H <= kMaxGridY) {
    if (hd == 64)
      forward_tc<64>(stream, how, out, lse, qkv, B, T, C, H);
    else
      forward_tc<128>(stream, how, out, lse, qkv, B, T, C, H);
    return;
  }
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    attention_forward_simple_kernel<S><<<simple_blocks(B, T, H), kSimpleThreads, 0, stream>>>(
        static_cast<S*>(out), lse, static_cast<const S*>(qkv), B, T, C, H, hd, 1.0f / sqrtf(float(hd)));
    CUDA_CHECK_LAUNCH("attention_forward_simple_kernel");
  });
}

void attention_backward(DType dtype, cudaStream_t stream, Scratch& scratch, AttentionBackward how, void* dqkv,
                        const void* dout, const void* qkv, const void* out, const float* lse, int B, int T, int C,
                        int H) {
  const int hd = head_dim(C, H, "attention_backward");
  if (B <= 0 || T <= 0) return;
  const bool tensor_cores = attention_uses_tensor_cores(dtype, C, H, dqkv, dout, qkv) && B * H <= kMaxGridY;
  const bool one_pass = tensor_cores && attention_backward_adds_dq(how);
  // Scratch: the row dot products; for the one-pass backwards also dQ's
  // fp32 accumulator and, per (batch, head), a ticket counter and a flag
  // per query tile.
  const size_t rows = size_t(B) * H * T;
  const int query_tile = attention_backward_uses_wgmma(how) ? WgmmaTiles::kStream
                         : hd == 64                         ? BackwardTiles<64>::kQueries
                                                            : BackwardTiles<128>::kQueries;
  const size_t flag_count = size_t(B) * H * (1 + ceil_div(T, query_tile));
  auto carve = [&](ScratchCarver& carver) {
    struct Pieces {
      float* row_dot;
      float* dq_accum;
      unsigned* dq_flags;
    } p;
    p.row_dot = carver.take<float>(rows);
    p.dq_accum = one_pass ? carver.take<float>(rows * hd) : nullptr;
    p.dq_flags = one_pass ? carver.take<unsigned>(flag_count) : nullptr;
    return p;
  };
  ScratchCarver measure(nullptr);
  carve(measure);
  ScratchCarver carver(scratch.get(measure.used()));
  const auto pieces = carve(carver);
  float* row_dot = pieces.row_dot;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    constexpr int kVec = VecWidth<S>::value;
    const unsigned blocks = ceil_div(size_t(B) * H * T * kRowDotLanes, kSimpleThreads);
    if (hd % kVec == 0 && rows_vectorisable<S>(C, dout, out))
      attention_row_dot_kernel<S, kVec><<<blocks, kSimpleThreads, 0, stream>>>(
          row_dot, static_cast<const S*>(dout), static_cast<const S*>(out), B, T, C, H, hd);
    else
      attention_row_dot_kernel<S, 1><<<blocks, kSimpleThreads, 0, stream>>>(
          row_dot, static_cast<const S*>(dout), static_cast<const S*>(out), B, T, C, H, hd);
    CUDA_CHECK_LAUNCH("attention_row_dot_kernel");
  });
  if (tensor_cores) {
    if (hd == 64)
      backward_tc<64>(stream, how, dqkv, pieces.dq_accum, pieces.dq_flags, flag_count, dout, qkv, lse, row_dot, B, T,
                      C, H);
    else
      backward_tc<128>(stream, how, dqkv, pieces.dq_accum, pieces.dq_flags, flag_count, dout, qkv, lse, row_dot, B, T,
                       C, H);
    return;
  }
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    const float scale = 1.0f / sqrtf(float(hd));
    attention_backward_dq_simple_kernel<S><<<simple_blocks(B, T, H), kSimpleThreads, 0, stream>>>(
        static_cast<S*>(dqkv), static_cast<const S*>(dout), static_cast<const S*>(qkv), lse, row_dot, B, T, C, H, hd,
        scale);
    CUDA_CHECK_LAUNCH("attention_backward_dq_simple_kernel");
    attention_backward_dkdv_simple_kernel<S><<<simple_blocks(B, T, H), kSimpleThreads, 0, stream>>>(
        static_cast<S*>(dqkv), static_cast<const S*>(dout), static_cast<const S*>(qkv), lse, row_dot, B, T, C, H, hd,
        scale);
    CUDA_CHECK_LAUNCH("attention_backward_dkdv_simple_kernel");
  });
}

}  // namespace srgpt::gpu
