#pragma once
// AdamW over ranges of flat elements for every precision mode, one launch
// for up to 16 ranges, through the element functions of srgpt/adamw_math.h:
// the GPU step is bit-identical to the cpu backend's (adamw.cu is built with
// -fmad=false).
#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "srgpt/adamw_math.h"
#include "srgpt/backend.h"
#include "srgpt/dtype.h"
#include "srgpt/precision.h"

namespace srgpt::gpu {

void adamw_update(DType storage, cudaStream_t stream, Precision mode, const OptimizerBuffers& buffers,
                  const std::vector<AdamWRange>& ranges, const AdamWStep& step);

}  // namespace srgpt::gpu
