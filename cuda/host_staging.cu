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
  if (bytes > kSlotBytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream));
    return;
  }
  const int slot = next_;
  next_ = (next_ + 1) % kSlots;
  // Usually long done: the slot was last used kSlots uploads ago.
  CUDA_CHECK(cudaEventSynchronize(copied_[slot]));
  std::memcpy(slots_[slot], host_src, bytes);
  CUDA_CHECK(cudaMemcpyAsync(dst, slots_[slot], bytes, cudaMemcpyHostToDevice, stream));
  CUDA_CHECK(cudaEventRecord(copied_[slot], stream));
}

}  // namespace srgpt::gpu
