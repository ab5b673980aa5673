#pragma once
// Deterministic reductions: whole-vector sums (loss sum, squared norm,
// finiteness) and column sums over the rows of a matrix (bias and
// LayerNorm weight gradients). Every sum has a fixed order that depends only
// on the shape, never on timing or the device, so reruns give the same bits.
#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "memory.cuh"
#include "srgpt/backend.h"
#include "srgpt/dtype.h"

namespace srgpt::gpu {

// Sum of n floats, in double.
double sum_accum(cudaStream_t stream, Scratch& scratch, const float* x, size_t n);
// Sum of squares of the storage elements in the ranges, in double
// (Backend::sum_squares).
double sum_squares(DType dtype, cudaStream_t stream, Scratch& scratch, const void* x,
                   const std::vector<ElementRange>& ranges);
// True when none of the n storage elements is NaN or infinite.
bool all_finite(DType dtype, cudaStream_t stream, Scratch& scratch, const void* x, size_t n);

// Rows of fp32 column partials per chunk: column_partials produces one row
// of partial sums per kColumnChunkRows input rows.
constexpr int kColumnChunkRows = 64;
inline int column_chunks(int rows) { return (rows + kColumnChunkRows - 1) / kColumnChunkRows; }

// partials[k][c] = sum of in[n][c] over the rows n of chunk k, in order.
// partials holds column_chunks(rows) x cols floats.
void column_partials(DType dtype, cudaStream_t stream, float* partials, const void* in, int rows, int cols);
// out[c] += sum over k of partials[k][c], k ascending, rounded once.
void add_column_partials(DType dtype, cudaStream_t stream, void* out, const float* partials, int chunks, int cols);

}  // namespace srgpt::gpu
