#pragma once
// dst[i] += src[i] over a flat range (backend.h: accumulate).
#include <cuda_runtime.h>

#include <cstddef>

#include "srgpt/dtype.h"

namespace srgpt::gpu {

void accumulate(DType dtype, cudaStream_t stream, void* dst, const void* src, size_t n);

}  // namespace srgpt::gpu
