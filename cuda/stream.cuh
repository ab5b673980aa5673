#pragma once
// Owning handles for CUDA streams and events.
#include <cuda_runtime.h>

#include <memory>

#include "cuda_check.cuh"

namespace srgpt::gpu {

struct StreamDeleter {
  void operator()(cudaStream_t stream) const { CUDA_RELEASE_CHECK(cudaStreamDestroy(stream)); }
};
using StreamHandle = std::unique_ptr<CUstream_st, StreamDeleter>;

struct EventDeleter {
  void operator()(cudaEvent_t event) const { CUDA_RELEASE_CHECK(cudaEventDestroy(event)); }
};
using EventHandle = std::unique_ptr<CUevent_st, EventDeleter>;

// A stream that does not synchronise with the legacy default stream, on the
// current device.
inline StreamHandle make_stream() {
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return StreamHandle(stream);
}

// Events that only order streams skip the timestamp, which makes recording
// and waiting on them cheaper.
enum class EventUse { ordering, timing };

inline EventHandle make_event(EventUse use = EventUse::ordering) {
  cudaEvent_t event = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&event, use == EventUse::timing ? cudaEventDefault : cudaEventDisableTiming));
  return EventHandle(event);
}

}  // namespace srgpt::gpu
