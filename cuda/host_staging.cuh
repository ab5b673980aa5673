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

namespace srgpt::gpu {

class PinnedUploadStaging {
 public:
  PinnedUploadStaging();
  PinnedUploadStaging(const PinnedUploadStaging&) = delete;
  PinnedUploadStaging& operator=(const PinnedUploadStaging&) = delete;
  ~PinnedUploadStaging();

  // Bytes a slot holds; larger uploads take several slots in turn.
  static constexpr size_t kSlotBytes = size_t(4) << 20;

  // Queues dst <- host_src on the stream. Returns once host_src has been
  // read, so the caller may reuse it at once.
  void upload(cudaStream_t stream, void* dst, const void* host_src, size_t bytes);

 private:
  void release() noexcept;

  static constexpr int kSlots = 4;
  std::array<void*, kSlots> slots_{};
  std::array<cudaEvent_t, kSlots> copied_{};
  int next_ = 0;
};

}  // namespace srgpt::gpu
