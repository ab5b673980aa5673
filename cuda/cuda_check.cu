#include "cuda_check.cuh"

#include <spdlog/spdlog.h>

#include <atomic>
#include <string>

#include "srgpt/error.h"
#include "srgpt/memory_advice.h"

namespace srgpt::gpu {

void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
  fail("CUDA error in {} at {}:{}: {} ({})", call, file, line, cudaGetErrorString(err), cudaGetErrorName(err));
}

void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  fail("cuBLAS error in {} at {}:{}: {} ({})", call, file, line, cublasLtGetStatusString(status),
       cublasLtGetStatusName(status));
}

void report_release_failure(const char* library, const char* call, const char* file, int line,
                            const char* description, const char* name) noexcept {
  static std::atomic<bool> reported{false};
  if (reported.exchange(true)) return;
  try {
    spdlog::error("{} error releasing a resource in {} at {}:{}: {}{}; later release errors are not logged", library,
                  call, file, line, description, *name ? fmt::format(" ({})", name) : std::string());
  } catch (...) {  // a destructor's report must not throw
  }
}

void report_release_error(cudaError_t err, const char* call, const char* file, int line) noexcept {
  if (err == cudaSuccess) return;
  report_release_failure("CUDA", call, file, line, cudaGetErrorString(err), cudaGetErrorName(err));
}

void report_release_error(cublasStatus_t status, const char* call, const char* file, int line) noexcept {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  report_release_failure("cuBLAS", call, file, line, cublasLtGetStatusString(status), cublasLtGetStatusName(status));
}

void throw_out_of_memory(const char* what, size_t bytes, size_t held_bytes, cudaError_t err) {
  cudaGetLastError();  // clear the allocation error before querying
  int device = -1;
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaGetDevice(&device) != cudaSuccess || cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess)
    free_bytes = total_bytes = 0;
  constexpr double kMiB = 1024.0 * 1024.0;
  fail("GPU out of memory allocating {} ({:.1f} MiB, {} bytes) on device {}: {}. srgpt already holds {:.1f} MiB; "
       "{:.1f} MiB of {:.1f} MiB are free. {}",
       what, bytes / kMiB, bytes, device, cudaGetErrorString(err), held_bytes / kMiB, free_bytes / kMiB,
       total_bytes / kMiB, kMemoryAdvice);
}

}  // namespace srgpt::gpu
