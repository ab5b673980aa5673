#pragma once
// Token + position embedding (backend.h: embedding_forward/_backward).
#include <cuda_runtime.h>

#include <cstdint>

#include "memory.cuh"
#include "srgpt/dtype.h"

namespace srgpt::gpu {

void embedding_forward(DType dtype, cudaStream_t stream, void* out, const int32_t* tokens, const void* wte,
                       const void* wpe, int B, int T, int C);
// Deterministic: rows are grouped by token with a stable sort, and each
// group is summed in row order and added to dwte once.
void embedding_backward(DType dtype, cudaStream_t stream, Scratch& scratch, void* dwte, void* dwpe, const void* dout,
                        const int32_t* tokens, int B, int T, int C);

}  // namespace srgpt::gpu
