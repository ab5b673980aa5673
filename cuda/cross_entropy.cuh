#pragma once
// Fused softmax + cross-entropy + gradient, in place over the logits
// (backend.h: cross_entropy_forward_backward). No fp32 copy of the logits.
#include <cuda_runtime.h>

#include <cstdint>

#include "srgpt/dtype.h"

namespace srgpt::gpu {

// A target outside [0, V) cannot be reported from the device without a
// synchronisation; its row gets a NaN loss (which the trainer's finiteness
// check catches) and the plain softmax gradient.
void cross_entropy_forward_backward(DType dtype, cudaStream_t stream, float* losses, void* logits,
                                    const int32_t* targets, int N, int V, int Vp, float dloss);

}  // namespace srgpt::gpu
