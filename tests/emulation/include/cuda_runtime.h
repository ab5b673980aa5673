#pragma once
// Stands in for the CUDA runtime header when the kernel sources are built
// for the CPU device emulator (tests/emulation): the CUDA keywords and
// built-in variables, the device functions the kernels call, and the few
// runtime calls their launchers make, over host memory.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "device_emulator.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict
#define __align__(n) alignas(n)
#define __launch_bounds__(...)

#define threadIdx (::srgpt::emulation::thread_index())
#define blockIdx (::srgpt::emulation::block_index())
#define blockDim (::srgpt::emulation::block_dim())
#define gridDim (::srgpt::emulation::grid_dim())

inline void __syncthreads() { ::srgpt::emulation::sync_threads(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) ::srgpt::emulation::fault("__syncwarp with a partial mask is not emulated");
  ::srgpt::emulation::warp_collective<char, char>("__syncwarp", 0, [](const unsigned char*, unsigned char*) {});
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  if (mask != 0xffffffffu || width != 32)
    ::srgpt::emulation::fault("__shfl_xor_sync with a partial mask or width is not emulated");
  struct In {
    T value;
    int lane_mask;
  };
  return ::srgpt::emulation::warp_collective<In, T>(
      "__shfl_xor_sync", In{value, lane_mask}, [](const unsigned char* in, unsigned char* out) {
        for (int lane = 0; lane < 32; ++lane) {
          In mine;
          std::memcpy(&mine, in + lane * sizeof(In), sizeof(In));
          const int source = lane ^ mine.lane_mask;
          std::memcpy(out + lane * sizeof(T), in + (source < 32 ? source : lane) * sizeof(In), sizeof(T));
        }
      });
}

// One fiber runs at a time and switches only at barriers and warp
// collectives, so a plain read-modify-write is atomic here.
inline unsigned atomicAdd(unsigned* address, unsigned value) {
  const unsigned old = *address;
  *address = old + value;
  return old;
}
template <typename T>
T __ldcg(const T* p) {
  return *p;
}

inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
using std::isfinite;
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// ---- runtime API over host memory
struct CUstream_st;
typedef CUstream_st* cudaStream_t;

// Named as in the CUDA headers (enum cudaError), so that functions taking a
// cudaError_t have the same linker names as in srgpt_cuda, which CUDA builds
// link beside the emulated objects.
enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorLaunchFailure = 719,
};
typedef cudaError cudaError_t;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr {
  cudaDevAttrClockRate = 13,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMemoryClockRate = 36,
  cudaDevAttrGlobalMemoryBusWidth = 37,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
};

namespace srgpt::emulation::runtime {
// The message of the last fault a synchronising call ran into: the
// description of cudaErrorLaunchFailure, as the runtime reports a kernel's
// fault at the next synchronisation.
inline std::string& last_fault() {
  static std::string message;
  return message;
}
// Runs a synchronising call; a fault of the work it ran becomes
// cudaErrorLaunchFailure (destructors that synchronise must not throw),
// returned by every later synchronising call too, as the runtime's errors
// of this kind stick to the context.
template <typename Call>
cudaError_t synchronizing(Call call) {
  if (!last_fault().empty()) return cudaErrorLaunchFailure;
  try {
    call();
    return cudaSuccess;
  } catch (const std::exception& e) {
    last_fault() = e.what();
    return cudaErrorLaunchFailure;
  }
}
}  // namespace srgpt::emulation::runtime

inline const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}
inline const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorLaunchFailure: return ::srgpt::emulation::runtime::last_fault().c_str();
  }
  return "unknown error";
}
inline cudaError_t cudaGetLastError() { return cudaError_t(::srgpt::emulation::take_launch_error()); }

// Guarded and poisoned (device_emulator.h, Device memory).
inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = ::srgpt::emulation::allocate_device_memory(bytes);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFree(void* p) {
  // As the runtime's, waits for the device first.
  const cudaError_t err = ::srgpt::emulation::runtime::synchronizing(::srgpt::emulation::synchronize_device);
  if (p && !::srgpt::emulation::free_device_memory(p)) return cudaErrorInvalidValue;
  return err;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t stream = nullptr) {
  if (kind == cudaMemcpyHostToDevice && !::srgpt::emulation::is_pinned(src)) {
    auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src),
                                                               static_cast<const unsigned char*>(src) + bytes);
    ::srgpt::emulation::enqueue(
        stream, [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); }, "cudaMemcpyAsync");
  } else {
    ::srgpt::emulation::enqueue(stream, [dst, src, bytes] { std::memcpy(dst, src, bytes); }, "cudaMemcpyAsync");
  }
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream = nullptr) {
  ::srgpt::emulation::enqueue(stream, [dst, value, bytes] { std::memset(dst, value, bytes); }, "cudaMemsetAsync");
  return cudaSuccess;
}
inline cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned) {
  const cudaError_t err = cudaMalloc(p, bytes);
  if (err == cudaSuccess) ::srgpt::emulation::register_pinned(*p, bytes);
  return err;
}
inline cudaError_t cudaFreeHost(void* p) {
  ::srgpt::emulation::unregister_pinned(p);
  return cudaFree(p);
}

// One emulated device; streams and events are the emulator's
// (device_emulator.h: work runs when a synchronisation needs it).
constexpr unsigned cudaStreamNonBlocking = 1;
constexpr unsigned cudaHostAllocDefault = 0;
constexpr unsigned cudaEventDefault = 0;
constexpr unsigned cudaEventDisableTiming = 2;
typedef CUevent_st* cudaEvent_t;
struct cudaDeviceProp {
  char name[256];
};
inline cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidValue; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* properties, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  std::strcpy(properties->name, "srgpt CPU device emulator");
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
  *stream = ::srgpt::emulation::create_stream();
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  return ::srgpt::emulation::runtime::synchronizing([&] { ::srgpt::emulation::destroy_stream(stream); });
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  return ::srgpt::emulation::runtime::synchronizing([&] { ::srgpt::emulation::synchronize_stream(stream); });
}
inline cudaError_t cudaDeviceSynchronize() {
  return ::srgpt::emulation::runtime::synchronizing(::srgpt::emulation::synchronize_device);
}
// Drops queued work and clears a stuck fault.
inline cudaError_t cudaDeviceReset() {
  ::srgpt::emulation::runtime::synchronizing(::srgpt::emulation::synchronize_device);
  ::srgpt::emulation::runtime::last_fault().clear();
  return cudaSuccess;
}
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags) {
  *event = ::srgpt::emulation::create_event((flags & cudaEventDisableTiming) == 0);
  return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t event) {
  ::srgpt::emulation::destroy_event(event);
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr) {
  ::srgpt::emulation::record_event(event, stream);
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  return ::srgpt::emulation::runtime::synchronizing([&] { ::srgpt::emulation::synchronize_event(event); });
}
// Host time, not device time: the emulation's timings say nothing of a GPU's.
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  bool timed = false;
  const cudaError_t err = ::srgpt::emulation::runtime::synchronizing(
      [&] { timed = ::srgpt::emulation::event_elapsed_ms(ms, start, end); });
  if (err != cudaSuccess) return err;
  return timed ? cudaSuccess : cudaErrorInvalidResourceHandle;
}
// Queued work runs only when something needs it, so a query runs the work
// it asks about, and answers cudaErrorNotReady only where work that cannot
// complete yet stops it (device_emulator.h).
namespace srgpt::emulation::runtime {
template <typename Query>
cudaError_t querying(Query query) {
  bool done = false;
  const cudaError_t err = synchronizing([&] { done = query(); });
  if (err != cudaSuccess) return err;
  return done ? cudaSuccess : cudaErrorNotReady;
}
}  // namespace srgpt::emulation::runtime
inline cudaError_t cudaStreamQuery(cudaStream_t stream) {
  return ::srgpt::emulation::runtime::querying([&] { return ::srgpt::emulation::query_stream(stream); });
}
inline cudaError_t cudaEventQuery(cudaEvent_t event) {
  return ::srgpt::emulation::runtime::querying([&] { return ::srgpt::emulation::query_event(event); });
}
inline cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned) {
  ::srgpt::emulation::stream_wait_event(stream, event);
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  *free_bytes = *total_bytes = 0;
  return cudaSuccess;
}
// The emulated device is an H100 SXM: compute capability 9.0, its
// shared-memory limit, SMs, clocks (kHz) and memory bus.
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrClockRate:
      *value = 1980000;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = 132;
      return cudaSuccess;
    case cudaDevAttrMemoryClockRate:
      *value = 2619000;
      return cudaSuccess;
    case cudaDevAttrGlobalMemoryBusWidth:
      *value = 5120;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
      *value = 9;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = int(::srgpt::emulation::kMaxDynamicSharedOptIn);
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      size_t(value) > ::srgpt::emulation::kMaxDynamicSharedOptIn)
    return cudaErrorInvalidValue;
  ::srgpt::emulation::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), size_t(value));
  return cudaSuccess;
}
