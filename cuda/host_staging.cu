#include <algorithm>
#include <cstring>

#include "cuda_check.cuh"
#include "host_staging.cuh"

namespace srgpt::gpu {

PinnedUploadStaging::PinnedUploadStaging() {
  try {
    for (int i = 0; i < kSlots; ++i) {
      CUDA_CHECK(cudaHostAlloc(&slots_[i], kSlotBytes, cudaHostAllocDefault));
      CUDA_CHECK(cudaEventCreateWithFlags(&copied_[i], cudaEventDisableTiming));
    }
  } catch (...) {
    release();
    throw;
  }
}

PinnedUploadStaging::~PinnedUploadStaging() { release(); }

void PinnedUploadStaging::release() noexcept {
  for (int i = 0; i < kSlots; ++i) {
    // A slot's copy may still be in flight: let it finish before freeing.
    if (copied_[i]) {
      cudaEventSynchronize(copied_[i]);
      cudaEventDestroy(copied_[i]);
      copied_[i] = nullptr;
    }
    if (slots_[i]) {
      cudaFreeHost(slots_[i]);
      slots_[i] = nullptr;
    }
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
    const int slot = next_;
    next_ = (next_ + 1) % kSlots;
    // Usually long done: the slot was last used kSlots copies ago.
    CUDA_CHECK(cudaEventSynchronize(copied_[slot]));
    std::memcpy(slots_[slot], source + done, chunk);
    CUDA_CHECK(cudaMemcpyAsync(target + done, slots_[slot], chunk, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaEventRecord(copied_[slot], stream));
  }
}

}  // namespace srgpt::gpu
