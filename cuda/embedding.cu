#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"
#include "cuda_check.cuh"
#include "embedding.cuh"

namespace srgpt::gpu {
namespace {

constexpr int kThreads = 256;

// One thread per W-element chunk of an output row.
template <typename S, int W>
__global__ void embedding_forward_kernel(S* out, const int32_t* tokens, const S* wte, const S* wpe, int T, int C,
                                         size_t chunks) {
  const size_t chunk = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (chunk >= chunks) return;
  const int chunks_per_row = C / W;
  const size_t n = chunk / chunks_per_row;
  const int c = int(chunk % chunks_per_row) * W;
  float token_part[W], position_part[W];
  load_chunk<W>(wte + size_t(tokens[n]) * C + c, token_part);
  load_chunk<W>(wpe + size_t(n % T) * C + c, position_part);
#pragma unroll
  for (int i = 0; i < W; ++i) token_part[i] += position_part[i];
  store_chunk<W>(out + n * C + c, token_part);
}

__global__ void iota_kernel(int32_t* values, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) values[i] = i;
}

// Rows of a run loaded together: a frequent token's run (a few percent of
// the batch's tokens in real text, a thousand rows) is summed by one thread,
// so its loads must overlap rather than wait on each other.
constexpr int kRunRowsPerLoad = 8;

// Thread (chunk of columns, sorted position i): when i starts a run of equal
// tokens it sums the run's dout rows in ascending row order and adds the sum
// to that token's dwte row, rounding once.
template <typename S, int W>
__global__ void embedding_backward_wte_kernel(S* dwte, const S* dout, const uint32_t* sorted_tokens,
                                              const int32_t* sorted_rows, int N, int C) {
  const int c = (blockIdx.y * blockDim.x + threadIdx.x) * W;
  const int i = blockIdx.x * blockDim.y + threadIdx.y;
  if (c >= C || i >= N) return;
  const uint32_t token = sorted_tokens[i];
  if (i > 0 && sorted_tokens[i - 1] == token) return;
  float sum[W] = {};
  // The run is contiguous in sorted order: once a position leaves it, so
  // do all later ones.
  for (int j0 = i;; j0 += kRunRowsPerLoad) {
    bool in_run[kRunRowsPerLoad];
    float rows[kRunRowsPerLoad][W] = {};
#pragma unroll
    for (int r = 0; r < kRunRowsPerLoad; ++r) {
      const int j = j0 + r;
      in_run[r] = j < N && sorted_tokens[j] == token;
      if (in_run[r]) load_chunk<W>(dout + size_t(sorted_rows[j]) * C + c, rows[r]);
    }
#pragma unroll
    for (int r = 0; r < kRunRowsPerLoad; ++r) {
      if (!in_run[r]) break;
#pragma unroll
      for (int k = 0; k < W; ++k) sum[k] += rows[r][k];
    }
    if (!in_run[kRunRowsPerLoad - 1]) break;
  }
  S* target = dwte + size_t(token) * C + c;
  float current[W];
  load_chunk<W>(target, current);
#pragma unroll
  for (int k = 0; k < W; ++k) current[k] += sum[k];
  store_chunk<W>(target, current);
}

// dwpe[t] += sum over b of dout[b, t], b ascending.
template <typename S, int W>
__global__ void embedding_backward_wpe_kernel(S* dwpe, const S* dout, int B, int T, int C) {
  const int c = (blockIdx.y * blockDim.x + threadIdx.x) * W;
  const int t = blockIdx.x;
  if (c >= C) return;
  float sum[W] = {};
  for (int b = 0; b < B; ++b) {
    float row[W];
    load_chunk<W>(dout + (size_t(b) * T + t) * C + c, row);
#pragma unroll
    for (int k = 0; k < W; ++k) sum[k] += row[k];
  }
  float current[W];
  load_chunk<W>(dwpe + size_t(t) * C + c, current);
#pragma unroll
  for (int k = 0; k < W; ++k) current[k] += sum[k];
  store_chunk<W>(dwpe + size_t(t) * C + c, current);
}

}  // namespace

void embedding_forward(DType dtype, cudaStream_t stream, void* out, const int32_t* tokens, const void* wte,
                       const void* wpe, int B, int T, int C) {
  if (B <= 0 || T <= 0 || C <= 0) return;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    dispatch_width<S>(rows_vectorisable<S>(C, out, wte, wpe), [&](auto width) {
      constexpr int W = decltype(width)::value;
      const size_t chunks = size_t(B) * T * (C / W);
      embedding_forward_kernel<S, W><<<ceil_div(chunks, kThreads), kThreads, 0, stream>>>(
          static_cast<S*>(out), tokens, static_cast<const S*>(wte), static_cast<const S*>(wpe), T, C, chunks);
      CUDA_CHECK_LAUNCH("embedding_forward_kernel");
    });
  });
}

void embedding_backward(DType dtype, cudaStream_t stream, Scratch& scratch, void* dwte, void* dwpe, const void* dout,
                        const int32_t* tokens, int B, int T, int C) {
  if (B <= 0 || T <= 0 || C <= 0) return;
  const int N = B * T;
  // Stable radix sort of (token, row) pairs by token: equal tokens keep
  // their rows in ascending order, so the grouping is unique.
  const uint32_t* keys_in = reinterpret_cast<const uint32_t*>(tokens);
  size_t sort_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys_in, static_cast<uint32_t*>(nullptr),
                                             static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), N,
                                             0, 32, stream));
  auto carve = [&](ScratchCarver& carver) {
    struct Pieces {
      uint32_t* sorted_tokens;
      int32_t* rows;
      int32_t* sorted_rows;
      void* sort_temp;
    } p;
    p.sorted_tokens = carver.take<uint32_t>(N);
    p.rows = carver.take<int32_t>(N);
    p.sorted_rows = carver.take<int32_t>(N);
    p.sort_temp = carver.take<char>(sort_bytes);
    return p;
  };
  ScratchCarver measure(nullptr);
  carve(measure);
  ScratchCarver carver(scratch.get(measure.used()));
  auto pieces = carve(carver);

  iota_kernel<<<ceil_div(N, kThreads), kThreads, 0, stream>>>(pieces.rows, N);
  CUDA_CHECK_LAUNCH("iota_kernel");
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(pieces.sort_temp, sort_bytes, keys_in, pieces.sorted_tokens, pieces.rows,
                                             pieces.sorted_rows, N, 0, 32, stream));

  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    dispatch_width<S>(rows_vectorisable<S>(C, dwte, dwpe, dout), [&](auto width) {
      constexpr int W = decltype(width)::value;
      const int chunks_per_row = C / W;
      const dim3 wte_block(32, 8);
      const dim3 wte_grid(ceil_div(N, wte_block.y), ceil_div(chunks_per_row, wte_block.x));
      embedding_backward_wte_kernel<S, W><<<wte_grid, wte_block, 0, stream>>>(
          static_cast<S*>(dwte), static_cast<const S*>(dout), pieces.sorted_tokens, pieces.sorted_rows, N, C);
      CUDA_CHECK_LAUNCH("embedding_backward_wte_kernel");
      const int wpe_threads = 128;
      const dim3 wpe_grid(T, ceil_div(chunks_per_row, wpe_threads));
      embedding_backward_wpe_kernel<S, W><<<wpe_grid, wpe_threads, 0, stream>>>(
          static_cast<S*>(dwpe), static_cast<const S*>(dout), B, T, C);
      CUDA_CHECK_LAUNCH("embedding_backward_wpe_kernel");
    });
  });
}

}  // namespace srgpt::gpu
