// Without the CUDA backend there are no GPUs to select.
#ifndef SRGPT_HAVE_CUDA
#include "srgpt/backend.h"
#include "srgpt/error.h"

namespace srgpt {

int cuda_device_count(std::string*) { return 0; }

std::unique_ptr<Backend> make_cuda_backend(DType, int) {
  fail("srgpt was built without the CUDA backend (configure with -DSRGPT_CUDA=ON on a machine with nvcc)");
}

}  // namespace srgpt
#endif
