#pragma once
// out = gelu(pre) elementwise (backend.h: gelu_forward).
#include <cuda_runtime.h>

#include <cstddef>

#include "srgpt/dtype.h"

namespace srgpt::gpu {

void gelu_forward(DType dtype, cudaStream_t stream, void* out, const void* pre, size_t n);

}  // namespace srgpt::gpu
