#pragma once
// AdamW over flat elements [begin, end) for every precision mode, in one
// launch, through the element functions of srgpt/adamw_math.h: the GPU step
// is bit-identical to the cpu backend's (adamw.cu is built with -fmad=false).
#include <cuda_runtime.h>

#include <cstddef>

#include "srgpt/adamw_math.h"
#include "srgpt/backend.h"
#include "srgpt/dtype.h"
#include "srgpt/precision.h"

namespace srgpt::gpu {

void adamw_update(DType storage, cudaStream_t stream, Precision mode, const OptimizerBuffers& buffers, size_t begin,
                  size_t end, const AdamWStep& step);

}  // namespace srgpt::gpu
