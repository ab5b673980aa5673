#include <algorithm>
#include <cstring>

#include "cuda_check.cuh"
#include "host_staging.cuh"
#include "srgpt/error.h"

namespace srgpt::gpu {

PinnedUploadStaging::PinnedUploadStaging() {
  for (Slot& slot : slots_) {
    void* memory = nullptr;
    const cudaError_t err = cudaHostAlloc(&memory, kSlotBytes, cudaHostAllocDefault);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // not sticky: clear it
      fail("host out of page-locked memory allocating the upload staging slots ({} of {:.1f} MiB) for device {}: {}. "
           "The host's memory is exhausted: run fewer ranks on this host, or free host memory",
           kSlots, double(kSlotBytes) / (1 << 20), current_device(), cudaGetErrorString(err));
    }
    if (err != cudaSuccess) throw_cuda_error(err, "cudaHostAlloc", __FILE__, __LINE__);
    slot.memory.reset(memory);
    slot.copied = make_event();
  }
}

void PinnedUploadStaging::upload(cudaStream_t stream, void* dst, const void* host_src, size_t bytes) {
  // Larger uploads go slot by slot too: a direct cudaMemcpyAsync from a
  // caller's pinned buffer (the MPI communicator's staging) would return
  // before the buffer has been read.
  const char* source = static_cast<const char*>(host_src);
  char* target = static_cast<char*>(dst);
  for (size_t done = 0; done < bytes; done += kSlotBytes) {
    const size_t chunk = std::min(kSlotBytes, bytes - done);
    Slot& slot = slots_[next_];
    next_ = (next_ + 1) % kSlots;
    // Usually long done: the slot was last used kSlots copies ago.
    CUDA_CHECK(cudaEventSynchronize(slot.copied.get()));
    std::memcpy(slot.memory.get(), source + done, chunk);
    CUDA_CHECK(cudaMemcpyAsync(target + done, slot.memory.get(), chunk, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaEventRecord(slot.copied.get(), stream));
  }
}

}  // namespace srgpt::gpu
