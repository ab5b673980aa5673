#include "cuda_check.cuh"

#include "srgpt/error.h"

namespace srgpt::gpu {

void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
  fail("CUDA error in {} at {}:{}: {} ({})", call, file, line, cudaGetErrorString(err), cudaGetErrorName(err));
}

void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  fail("cuBLAS error in {} at {}:{}: {} ({})", call, file, line, cublasLtGetStatusString(status),
       cublasLtGetStatusName(status));
}

void throw_out_of_memory(const char* what, size_t bytes, size_t held_bytes, cudaError_t err) {
  cudaGetLastError();  // clear the allocation error before querying
  int device = -1;
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaGetDevice(&device) != cudaSuccess || cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess)
    free_bytes = total_bytes = 0;
  constexpr double kMiB = 1024.0 * 1024.0;
  fail(
      "GPU out of memory allocating {} ({:.1f} MiB, {} bytes) on device {}: {}. srgpt already holds {:.1f} MiB; "
      "{:.1f} MiB of {:.1f} MiB are free. To need less memory: set train.recompute = \"all\" and "
      "train.lm_head_chunks = 8 (activations), "
      "lower batch.micro_batch (raising the gradient accumulation to keep batch.total_tokens), raise "
      "dist.zero_stage with more ranks (weights, gradients, optimizer state), or shorten batch.seq_len",
      what, bytes / kMiB, bytes, device, cudaGetErrorString(err), held_bytes / kMiB, free_bytes / kMiB,
      total_bytes / kMiB);
}

}  // namespace srgpt::gpu
