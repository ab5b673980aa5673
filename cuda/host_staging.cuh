#pragma once
// Uploads through pinned host memory. cudaMemcpyAsync from pageable memory
// may wait for the stream's queued kernels before it returns, which stalls
// the host's launching of the next micro-step behind the GPU; from pinned
// memory it only queues the copy. Uploads (token ids, every micro-step) are
// copied into one of a few pinned slots, a slot's worth at a time, and sent
// from there; each slot's event says when its last copy has finished, so a
// slot is refilled only once the device has read it.
#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <memory>

#include "stream.cuh"

namespace srgpt::gpu {

class PinnedUploadStaging {
 public:
  PinnedUploadStaging();

  // Bytes a slot holds; larger uploads take several slots in turn.
  static constexpr size_t kSlotBytes = size_t(4) << 20;

  // Queues dst <- host_src on the stream. Returns once host_src has been
  // read, so the caller may reuse it at once.
  void upload(cudaStream_t stream, void* dst, const void* host_src, size_t bytes);

 private:
  struct PinnedDeleter {
    void operator()(void* p) const { CUDA_RELEASE_CHECK(cudaFreeHost(p)); }
  };
  // Pinned memory and the event of its last copy; a copy may still be in
  // flight when the slot goes, so it waits for the event first (members go
  // in reverse order: the event, then the memory).
  struct Slot {
    std::unique_ptr<void, PinnedDeleter> memory;
    EventHandle copied;
    Slot() = default;
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    ~Slot() {
      if (copied) CUDA_RELEASE_CHECK(cudaEventSynchronize(copied.get()));
    }
  };

  static constexpr int kSlots = 4;
  std::array<Slot, kSlots> slots_;
  int next_ = 0;
};

}  // namespace srgpt::gpu
