#pragma once
// dst[i] += src[i] over a flat range (backend.h: accumulate).
#include <cuda_runtime.h>

#include <cstddef>

#include "srgpt/dtype.h"

namespace srgpt::gpu {

// (dst_dtype, src_dtype): (storage, storage), (f32, storage) or (f32, f32),
// storage being the backend's dtype.
void accumulate(DType storage, cudaStream_t stream, void* dst, DType dst_dtype, const void* src, DType src_dtype,
                size_t n);

}  // namespace srgpt::gpu
