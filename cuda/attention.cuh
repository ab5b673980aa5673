#pragma once
// Causal multi-head self-attention (backend.h: attention_forward/_backward).
// bf16 with head size 64 or 128 runs flash-style tiled kernels on the tensor
// cores (mma.sync m16n8k16, fp32 accumulation, online softmax, only the
// log-sum-exp saved); other shapes and f32 storage run a simple fp32 kernel
// with one warp per row. Both are deterministic: the tensor-core backward
// is one pass with a block per key tile, which adds its share of dQ to an
// fp32 accumulator in key-tile order (a flag per query tile), the last
// adder writing dQ; the simple backward computes dQ and dK/dV in separate
// passes. No atomics.
#include <cuda_runtime.h>

#include "memory.cuh"
#include "srgpt/dtype.h"

namespace srgpt::gpu {

void attention_forward(DType dtype, cudaStream_t stream, void* out, float* lse, const void* qkv, int B, int T, int C,
                       int H);
void attention_backward(DType dtype, cudaStream_t stream, Scratch& scratch, void* dqkv, const void* dout,
                        const void* qkv, const void* out, const float* lse, int B, int T, int C, int H);

// Which implementation attention_* uses for these arguments (for tests).
bool attention_uses_tensor_cores(DType dtype, int C, int H, const void* a, const void* b, const void* c);

}  // namespace srgpt::gpu
