#pragma once
// Residual add fused with LayerNorm, and LayerNorm backward (backend.h).
#include <cuda_runtime.h>

#include "memory.cuh"
#include "srgpt/dtype.h"
#include "srgpt/layernorm_math.h"

namespace srgpt::gpu {

void residual_layernorm_forward(DType dtype, cudaStream_t stream, void* res_out, void* out, float* mean, float* rstd,
                                const void* res_in, const void* delta, const void* w, const void* b, int N, int C);
// din +=, dw +=, db += (x: the forward's input or output, as `from` says).
// dw and db are summed per fixed chunk of rows, then the chunks in order:
// deterministic, no atomics.
void layernorm_backward(DType dtype, cudaStream_t stream, Scratch& scratch, void* din, void* dw, void* db,
                        const void* dout, LayerNormBackwardFrom from, const void* x, const void* w, const void* b,
                        const float* mean, const float* rstd, int N, int C);

}  // namespace srgpt::gpu
