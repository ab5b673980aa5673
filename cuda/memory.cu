#include <algorithm>

#include "cuda_check.cuh"
#include "memory.cuh"
#include "srgpt/error.h"

namespace srgpt::gpu {

DeviceMemory::~DeviceMemory() {
  // Everything still held belongs to owners that outlived the backend's
  // contract; free it rather than leak device memory.
  for (auto& entry : sizes_) CUDA_RELEASE_CHECK(cudaFree(entry.first));
}

void* DeviceMemory::allocate(size_t bytes, const char* what) {
  if (bytes == 0) bytes = 1;  // a distinct pointer, as the cpu backend
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) throw_out_of_memory(what ? what : "a buffer", bytes, current_bytes(), err);
  if (err != cudaSuccess) throw_cuda_error(err, "cudaMalloc", __FILE__, __LINE__);
  std::lock_guard<std::mutex> lock(mutex_);
  sizes_[p] = bytes;
  current_ += bytes;
  peak_ = std::max(peak_, current_);
  return p;
}

void DeviceMemory::release(void* p) noexcept {
  if (!p) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = sizes_.find(p);
    if (it == sizes_.end()) return;  // not ours: never free foreign pointers
    current_ -= it->second;
    sizes_.erase(it);
  }
  CUDA_RELEASE_CHECK(cudaFree(p));
}

size_t DeviceMemory::current_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return current_;
}

size_t DeviceMemory::peak_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return peak_;
}

Scratch::~Scratch() {
  memory_.release(ptr_);
  for (void* p : outgrown_) memory_.release(p);
}

void* Scratch::get(size_t bytes) {
  if (bytes <= bytes_ && ptr_) return ptr_;
  void* grown = memory_.allocate(bytes, what_);
  if (ptr_) outgrown_.push_back(ptr_);
  ptr_ = grown;
  bytes_ = bytes;
  return ptr_;
}

}  // namespace srgpt::gpu
