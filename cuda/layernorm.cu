#include <type_traits>

#include "common.cuh"
#include "cuda_check.cuh"
#include "layernorm.cuh"
#include "reduce.cuh"
#include "srgpt/model_config.h"

namespace srgpt::gpu {
namespace {

// Rows that fit in registers: at most kHeldChunks 16-byte chunks per lane
// (C <= 1024 in bf16, 512 in fp32) are read from memory once; wider rows
// are kept in shared memory (forward) or read again (backward).
constexpr int kHeldChunks = 4;

// Calls f(i, c) for a lane's W-wide chunks of a C-wide row (the i-th at
// column c; W divides C); unrolled over kHeldChunks when Held, so that i may
// index register arrays.
template <int W, bool Held, typename F>
__device__ __forceinline__ void for_lane_chunks(int C, int lane, F&& f) {
  for_strided<Held, kHeldChunks>(lane, 32, C / W, [&](int i, int chunk) { f(i, chunk * W); });
}

// Where element k of chunk `chunk` (columns chunk * W ..) of a row kept in
// shared memory (the forward's row when not Held, the backward's dw and db
// sums) sits: the 32 chunks a warp's lanes handle together are stored
// element-major, so for each k the lanes touch 32 consecutive words, one
// per bank (at chunk * W + k their W-wide chunks would fall on 32 / W
// banks, a W-way conflict on every access). A row takes C rounded up to
// 32 W words.
template <int W>
__device__ __forceinline__ int shared_slot(int chunk, int k) {
  return (chunk / 32) * (32 * W) + k * 32 + chunk % 32;
}
template <int W>
__host__ __device__ constexpr int shared_row_words(int C) {
  return (C + 32 * W - 1) / (32 * W) * (32 * W);
}

// ---- forward: one warp per row; the row (after the residual add, rounded
// to storage as the cpu backend sees it) is kept for the mean, variance and
// normalise passes, in registers when Held, else in shared memory.
constexpr int kForwardRowsPerBlock = 4;

template <typename S, int W, bool Held>
__global__ void residual_layernorm_forward_kernel(S* res_out, S* out, float* mean, float* rstd, const S* res_in,
                                                  const S* delta, const S* w, const S* b, int N, int C,
                                                  bool write_residual) {
  extern __shared__ float rows[];  // [kForwardRowsPerBlock][shared_row_words] unless Held
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n = blockIdx.x * kForwardRowsPerBlock + warp;
  if (n >= N) return;
  const size_t row = size_t(n) * C;
  float held[Held ? kHeldChunks : 1][W];
  float* shared_row = rows + size_t(warp) * shared_row_words<W>(C);
  // This lane's value k of chunk i (at column c) of the row.
  auto x = [&](int i, int c, int k) -> float& {
    if constexpr (Held)
      return held[i][k];
    else
      return shared_row[shared_slot<W>(c / W, k)];
  };

  // res_out may alias res_in (and delta): each element is read before the
  // same thread writes it. When Held, every load is issued before the first
  // store, which the compiler could not do itself across the aliasing.
  HeldChunks<S, W, Held, kHeldChunks> held_res, held_delta;
  for_lane_chunks<W, Held>(C, lane, [&](int i, int c) {
    held_res.fetch(i, res_in + row + c);
    if (delta) held_delta.fetch(i, delta + row + c);
  });
  float sum = 0;
  for_lane_chunks<W, Held>(C, lane, [&](int i, int c) {
    float v[W];
    held_res.get(i, res_in + row + c, v);
    if (delta) {
      float d[W];
      held_delta.get(i, delta + row + c, d);
#pragma unroll
      for (int k = 0; k < W; ++k) v[k] = round_to_storage<S>(v[k] + d[k]);
    }
    if (write_residual) store_chunk<W>(res_out + row + c, v);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      x(i, c, k) = v[k];
      sum += v[k];
    }
  });
  const float mu = warp_sum(sum) / float(C);
  float squares = 0;
  for_lane_chunks<W, Held>(C, lane, [&](int i, int c) {
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const float d = x(i, c, k) - mu;
      squares += d * d;
    }
  });
  const float rs = 1.0f / sqrtf(warp_sum(squares) / float(C) + float(kLayerNormEps));
  for_lane_chunks<W, Held>(C, lane, [&](int i, int c) {
    float weight[W], bias[W], y[W];
    load_chunk<W>(w + c, weight);
    load_chunk<W>(b + c, bias);
#pragma unroll
    for (int k = 0; k < W; ++k) y[k] = (x(i, c, k) - mu) * rs * weight[k] + bias[k];
    store_chunk<W>(out + row + c, y);
  });
  if (lane == 0) {
    mean[n] = mu;
    rstd[n] = rs;
  }
}

// ---- backward: one warp per row for din; each warp also sums dw and db of
// its rows into its own shared-memory row (lanes own disjoint columns), and
// the block adds its warps in order into one fp32 partial row per chunk of
// kColumnChunkRows rows. The row's dout and x (the forward's input or
// output, as From says) are read once into registers when Held; otherwise
// the second pass reads them again.
constexpr int kBackwardMaxWarps = 8;

template <typename S, int W, bool Held, LayerNormBackwardFrom From>
__global__ void layernorm_backward_kernel(S* din, float* dw_partials, float* db_partials, const S* dout, const S* in,
                                          const S* w, const S* b, const float* mean, const float* rstd, int N,
                                          int C) {
  extern __shared__ float sums[];  // [warps][2][shared_row_words]: dw, db
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row_words = shared_row_words<W>(C);
  float* dw_sum = sums + size_t(warp) * 2 * row_words;
  float* db_sum = dw_sum + row_words;
  // Zeroed by the lanes that accumulate them: no barrier needed.
  for_lane_chunks<W, Held>(C, lane, [&](int, int c) {
#pragma unroll
    for (int k = 0; k < W; ++k) dw_sum[shared_slot<W>(c / W, k)] = db_sum[shared_slot<W>(c / W, k)] = 0.0f;
  });

  const float xhat_bound = sqrtf(float(C));
  HeldChunks<S, W, Held, kHeldChunks> held_dout, held_in;
  const int row_begin = blockIdx.x * kColumnChunkRows, row_end = min(row_begin + kColumnChunkRows, N);
  for (int n = row_begin + warp; n < row_end; n += warps) {
    const size_t row = size_t(n) * C;
    const float mu = From == LayerNormBackwardFrom::input ? mean[n] : 0.0f, rs = rstd[n];
    // x[] becomes the normalised input, chunk by chunk.
    auto normalise = [&](int c, float (&x)[W], const float (&weight)[W]) {
      if constexpr (From == LayerNormBackwardFrom::output) {
        float bias[W];
        load_chunk<W>(b + c, bias);
#pragma unroll
        for (int k = 0; k < W; ++k) x[k] = layernorm_xhat_from_output(x[k], bias[k], weight[k], xhat_bound);
      } else {
#pragma unroll
        for (int k = 0; k < W; ++k) x[k] = (x[k] - mu) * rs;
      }
    };
    float dxhat_sum = 0, dxhat_xhat_sum = 0;
    for_lane_chunks<W, Held>(C, lane, [&](int i, int c) {
      float g[W], x[W], weight[W];
      held_dout.fetch(i, dout + row + c);
      held_in.fetch(i, in + row + c);
      held_dout.get(i, dout + row + c, g);
      held_in.get(i, in + row + c, x);
      load_chunk<W>(w + c, weight);
      normalise(c, x, weight);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const float xhat = x[k];
        const float dxhat = g[k] * weight[k];
        dxhat_sum += dxhat;
        dxhat_xhat_sum += dxhat * xhat;
        dw_sum[shared_slot<W>(c / W, k)] += g[k] * xhat;
        db_sum[shared_slot<W>(c / W, k)] += g[k];
      }
    });
    const float dxhat_mean = warp_sum(dxhat_sum) / float(C);
    const float dxhat_xhat_mean = warp_sum(dxhat_xhat_sum) / float(C);
    for_lane_chunks<W, Held>(C, lane, [&](int i, int c) {
      float g[W], x[W], weight[W], d[W];
      held_dout.get(i, dout + row + c, g);
      held_in.get(i, in + row + c, x);
      load_chunk<W>(w + c, weight);
      load_chunk<W>(din + row + c, d);
      normalise(c, x, weight);
#pragma unroll
      for (int k = 0; k < W; ++k) d[k] += rs * (g[k] * weight[k] - dxhat_mean - x[k] * dxhat_xhat_mean);
      store_chunk<W>(din + row + c, d);
    });
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const int slot = shared_slot<W>(c / W, c % W);
    float dw_total = 0, db_total = 0;
    for (int k = 0; k < warps; ++k) {
      dw_total += sums[size_t(k) * 2 * row_words + slot];
      db_total += sums[size_t(k) * 2 * row_words + row_words + slot];
    }
    dw_partials[size_t(blockIdx.x) * C + c] = dw_total;
    db_partials[size_t(blockIdx.x) * C + c] = db_total;
  }
}

}  // namespace

void residual_layernorm_forward(DType dtype, cudaStream_t stream, void* res_out, void* out, float* mean, float* rstd,
                                const void* res_in, const void* delta, const void* w, const void* b, int N, int C) {
  if (N <= 0 || C <= 0) return;
  const bool write_residual = delta != nullptr || res_out != res_in;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    constexpr int kVec = VecWidth<S>::value;
    const bool vectorised = rows_vectorisable<S>(C, res_out, out, res_in, delta, w, b);
    auto launch = [&](auto kernel, size_t shared) {
      allow_dynamic_shared_memory(kernel, shared, "residual_layernorm_forward");
      kernel<<<ceil_div(N, kForwardRowsPerBlock), 32 * kForwardRowsPerBlock, shared, stream>>>(
          static_cast<S*>(res_out), static_cast<S*>(out), mean, rstd, static_cast<const S*>(res_in),
          static_cast<const S*>(delta), static_cast<const S*>(w), static_cast<const S*>(b), N, C, write_residual);
      CUDA_CHECK_LAUNCH("residual_layernorm_forward_kernel");
    };
    if (vectorised && C <= 32 * kVec * kHeldChunks) {
      launch(residual_layernorm_forward_kernel<S, kVec, true>, 0);
      return;
    }
    dispatch_width<S>(vectorised, [&](auto width) {
      constexpr int W = decltype(width)::value;
      launch(residual_layernorm_forward_kernel<S, W, false>,
             sizeof(float) * kForwardRowsPerBlock * size_t(shared_row_words<W>(C)));
    });
  });
}

void layernorm_backward(DType dtype, cudaStream_t stream, Scratch& scratch, void* din, void* dw, void* db,
                        const void* dout, LayerNormBackwardFrom from, const void* x, const void* w, const void* b,
                        const float* mean, const float* rstd, int N, int C) {
  if (N <= 0 || C <= 0) return;
  const int chunks = column_chunks(N);
  float* dw_partials = static_cast<float*>(scratch.get(sizeof(float) * 2 * size_t(chunks) * C));
  float* db_partials = dw_partials + size_t(chunks) * C;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    constexpr int kVec = VecWidth<S>::value;
    const bool vectorised = rows_vectorisable<S>(C, din, dout, x, w, b);
    auto launch = [&](auto kernel, int row_words) {
      // Fewer warps per block for very wide rows, so the per-warp sums fit.
      int warps = kBackwardMaxWarps;
      while (warps > 1 && sizeof(float) * 2 * size_t(row_words) * warps > 100 * 1024) warps /= 2;
      const size_t shared = sizeof(float) * 2 * size_t(row_words) * warps;
      allow_dynamic_shared_memory(kernel, shared, "layernorm_backward");
      kernel<<<chunks, 32 * warps, shared, stream>>>(static_cast<S*>(din), dw_partials, db_partials,
                                                    static_cast<const S*>(dout), static_cast<const S*>(x),
                                                    static_cast<const S*>(w), static_cast<const S*>(b), mean, rstd,
                                                    N, C);
      CUDA_CHECK_LAUNCH("layernorm_backward_kernel");
    };
    auto launch_from = [&](auto from_tag) {
      constexpr LayerNormBackwardFrom From = decltype(from_tag)::value;
      if (vectorised && C <= 32 * kVec * kHeldChunks) {
        launch(layernorm_backward_kernel<S, kVec, true, From>, shared_row_words<kVec>(C));
        return;
      }
      dispatch_width<S>(vectorised, [&](auto width) {
        constexpr int W = decltype(width)::value;
        launch(layernorm_backward_kernel<S, W, false, From>, shared_row_words<W>(C));
      });
    };
    if (from == LayerNormBackwardFrom::output)
      launch_from(std::integral_constant<LayerNormBackwardFrom, LayerNormBackwardFrom::output>{});
    else
      launch_from(std::integral_constant<LayerNormBackwardFrom, LayerNormBackwardFrom::input>{});
  });
  add_column_partials(dtype, stream, dw, dw_partials, chunks, C);
  add_column_partials(dtype, stream, db, db_partials, chunks, C);
}

}  // namespace srgpt::gpu
