#pragma once
// Every CUDA runtime and cuBLASLt call goes through these checks, so a
// failure becomes an srgpt::Error naming the call, the source line and the
// library's own description of the error.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace srgpt::gpu {

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line);
// cudaMalloc failed for lack of memory: says what was being allocated, how
// big it was, how much this backend already holds, how much the device has
// free and which setting to lower.
[[noreturn]] void throw_out_of_memory(const char* what, size_t bytes, size_t held_bytes, cudaError_t err);

// Releases (cudaFree, cudaStreamDestroy, ...) run in destructors, which must
// not throw, so a failing one is logged instead. Only the first is: after a
// sticky device error every later release fails the same way.
void report_release_failure(const char* library, const char* call, const char* file, int line,
                            const char* description, const char* name) noexcept;
void report_release_error(cudaError_t err, const char* call, const char* file, int line) noexcept;
void report_release_error(cublasStatus_t status, const char* call, const char* file, int line) noexcept;

}  // namespace srgpt::gpu

#define CUDA_CHECK(call)                                                              \
  do {                                                                                \
    cudaError_t srgpt_cuda_err_ = (call);                                             \
    if (srgpt_cuda_err_ != cudaSuccess)                                               \
      ::srgpt::gpu::throw_cuda_error(srgpt_cuda_err_, #call, __FILE__, __LINE__);     \
  } while (0)

#define CUBLAS_CHECK(call)                                                            \
  do {                                                                                \
    cublasStatus_t srgpt_cublas_status_ = (call);                                     \
    if (srgpt_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                \
      ::srgpt::gpu::throw_cublas_error(srgpt_cublas_status_, #call, __FILE__, __LINE__); \
  } while (0)

#define CUDA_RELEASE_CHECK(call) ::srgpt::gpu::report_release_error((call), #call, __FILE__, __LINE__)

// After a kernel launch: catches bad launch configurations at once (the
// kernel's own faults surface at the next synchronising call).
#define CUDA_CHECK_LAUNCH(kernel_name) ::srgpt::gpu::check_launch(kernel_name, __FILE__, __LINE__)

namespace srgpt::gpu {
inline void check_launch(const char* kernel_name, const char* file, int line) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda_error(err, kernel_name, file, line);
}

// The current CUDA device, and one of its attributes.
inline int current_device() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  return device;
}
inline int current_device_attribute(cudaDeviceAttr what) {
  int value = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&value, what, current_device()));
  return value;
}
}  // namespace srgpt::gpu
