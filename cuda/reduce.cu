#include <algorithm>
#include <cmath>
#include <iterator>
#include <vector>

#include "common.cuh"
#include "cuda_check.cuh"
#include "reduce.cuh"

namespace srgpt::gpu {
namespace {

// ---- whole-vector sums: per-block partials in double, then one block adds
// the partials. The grid size depends only on n.
constexpr int kSumThreads = 256;
constexpr int kMaxSumBlocks = 1024;
constexpr int kFinalThreads = 1024;
static_assert(kMaxSumBlocks <= kFinalThreads, "the final pass gives each partial its own thread");

int sum_blocks(size_t n) {
  const size_t per_block = size_t(kSumThreads) * 16;
  return int(std::clamp<size_t>((n + per_block - 1) / per_block, 1, kMaxSumBlocks));
}

struct Identity {
  __device__ double operator()(float v) const { return double(v); }
};
struct Square {
  __device__ double operator()(float v) const { return double(v) * double(v); }
};
struct NonFinite {
  __device__ double operator()(float v) const { return isfinite(v) ? 0.0 : 1.0; }
};

template <typename S, int W, typename Term>
__global__ void partial_sum_kernel(double* partials, const S* x, size_t n, Term term) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  const size_t first = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t chunks = n / W;
  double acc = 0;
  for (size_t i = first; i < chunks; i += stride) {
    float v[W];
    load_chunk<W>(x + i * W, v);
#pragma unroll
    for (int k = 0; k < W; ++k) acc += term(v[k]);
  }
  for (size_t i = chunks * W + first; i < n; i += stride) acc += term(load_f(x + i));
  __shared__ double shared[32];
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void final_sum_kernel(double* result, const double* partials, int count) {
  double x = int(threadIdx.x) < count ? partials[threadIdx.x] : 0.0;
  __shared__ double shared[32];
  x = block_sum(x, shared);
  if (threadIdx.x == 0) *result = x;
}

// Queues the sum of x[0, n), n > 0, into *result: per-block partials, then
// one block adds them.
template <typename S, typename Term>
void queue_sum(cudaStream_t stream, double* partials, double* result, const S* x, size_t n, Term term) {
  const int blocks = sum_blocks(n);
  dispatch_width<S>(aligned16(x), [&](auto width) {
    constexpr int W = decltype(width)::value;
    partial_sum_kernel<S, W, Term><<<blocks, kSumThreads, 0, stream>>>(partials, x, n, term);
    CUDA_CHECK_LAUNCH("partial_sum_kernel");
  });
  final_sum_kernel<<<1, kFinalThreads, 0, stream>>>(result, partials, blocks);
  CUDA_CHECK_LAUNCH("final_sum_kernel");
}

// The ranges' sums, added in order on the host after one wait for all.
template <typename S, typename Term>
double reduce_sum(cudaStream_t stream, Scratch& scratch, const S* x, const std::vector<ElementRange>& ranges,
                  Term term) {
  std::vector<ElementRange> filled;
  std::copy_if(ranges.begin(), ranges.end(), std::back_inserter(filled),
               [](const ElementRange& r) { return r.end > r.begin; });
  if (filled.empty()) return 0.0;
  // Scratch: the ranges' results, then each range's partials.
  auto carve = [&](ScratchCarver& carver, std::vector<double*>& partials) {
    double* results = carver.take<double>(filled.size());
    for (const ElementRange& r : filled) partials.push_back(carver.take<double>(sum_blocks(r.end - r.begin)));
    return results;
  };
  std::vector<double*> partials;
  ScratchCarver measure(nullptr);
  carve(measure, partials);
  partials.clear();
  ScratchCarver carver(scratch.get(measure.used()));
  double* results = carve(carver, partials);
  for (size_t i = 0; i < filled.size(); ++i)
    queue_sum(stream, partials[i], results + i, x + filled[i].begin, filled[i].end - filled[i].begin, term);
  std::vector<double> host(filled.size());
  CUDA_CHECK(cudaMemcpyAsync(host.data(), results, sizeof(double) * host.size(), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  double total = 0;
  for (double sum : host) total += sum;
  return total;
}

// ---- column sums. Block: 32 lanes across W-wide column chunks x 8 row
// groups; row group y takes rows y, y + 8, ... of the chunk in order, and the
// 8 group sums are added in group order.
constexpr int kRowGroups = 8;

template <typename S, int W>
__global__ void column_partials_kernel(float* partials, const S* in, int rows, int cols) {
  const int c = (blockIdx.y * 32 + threadIdx.x) * W;
  const int row_begin = blockIdx.x * kColumnChunkRows;
  const int row_end = min(row_begin + kColumnChunkRows, rows);
  float sum[W] = {};
  if (c < cols) {
    for (int r = row_begin + threadIdx.y; r < row_end; r += kRowGroups) {
      float v[W];
      load_chunk<W>(in + size_t(r) * cols + c, v);
#pragma unroll
      for (int k = 0; k < W; ++k) sum[k] += v[k];
    }
  }
  __shared__ float shared[kRowGroups][32 * W];
#pragma unroll
  for (int k = 0; k < W; ++k) shared[threadIdx.y][threadIdx.x * W + k] = sum[k];
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
#pragma unroll
  for (int k = 0; k < W; ++k) {
    float total = 0;
    for (int g = 0; g < kRowGroups; ++g) total += shared[g][threadIdx.x * W + k];
    partials[size_t(blockIdx.x) * cols + c + k] = total;
  }
}

constexpr int kPartialGroups = 16;

template <typename S>
__global__ void add_column_partials_kernel(S* out, const float* partials, int chunks, int cols) {
  const int c = blockIdx.x * 32 + threadIdx.x;
  float sum = 0;
  if (c < cols)
    for (int k = threadIdx.y; k < chunks; k += kPartialGroups) sum += partials[size_t(k) * cols + c];
  __shared__ float shared[kPartialGroups][33];
  shared[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  float total = 0;
  for (int g = 0; g < kPartialGroups; ++g) total += shared[g][threadIdx.x];
  accumulate_f(out + c, total);
}

}  // namespace

double sum_accum(cudaStream_t stream, Scratch& scratch, const float* x, size_t n) {
  return reduce_sum(stream, scratch, x, {{0, n}}, Identity{});
}

double sum_squares(DType dtype, cudaStream_t stream, Scratch& scratch, const void* x,
                   const std::vector<ElementRange>& ranges) {
  double result = 0;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    result = reduce_sum(stream, scratch, static_cast<const S*>(x), ranges, Square{});
  });
  return result;
}

bool all_finite(DType dtype, cudaStream_t stream, Scratch& scratch, const void* x, size_t n) {
  double non_finite = 0;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    non_finite = reduce_sum(stream, scratch, static_cast<const S*>(x), {{0, n}}, NonFinite{});
  });
  return non_finite == 0.0;
}

void column_partials(DType dtype, cudaStream_t stream, float* partials, const void* in, int rows, int cols) {
  if (rows <= 0 || cols <= 0) return;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    dispatch_width<S>(rows_vectorisable<S>(cols, in), [&](auto width) {
      constexpr int W = decltype(width)::value;
      const dim3 grid(column_chunks(rows), ceil_div(cols / W, 32));
      column_partials_kernel<S, W><<<grid, dim3(32, kRowGroups), 0, stream>>>(partials, static_cast<const S*>(in),
                                                                                rows, cols);
      CUDA_CHECK_LAUNCH("column_partials_kernel");
    });
  });
}

void add_column_partials(DType dtype, cudaStream_t stream, void* out, const float* partials, int chunks, int cols) {
  if (chunks <= 0 || cols <= 0) return;
  dispatch_storage(dtype, [&](auto tag) {
    using S = decltype(tag);
    add_column_partials_kernel<S><<<ceil_div(cols, 32), dim3(32, kPartialGroups), 0, stream>>>(
        static_cast<S*>(out), partials, chunks, cols);
    CUDA_CHECK_LAUNCH("add_column_partials_kernel");
  });
}

}  // namespace srgpt::gpu
