#pragma once
// Device memory: plain cudaMalloc with byte accounting (current and peak),
// and a grow-only scratch arena for the temporaries some ops need
// (reduction partials, sort buffers, attention row statistics).
#include <cuda_runtime.h>

#include <cstddef>
#include <mutex>
#include <unordered_map>

namespace srgpt::gpu {

class DeviceMemory {
 public:
  DeviceMemory() = default;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  ~DeviceMemory();

  // Throws srgpt::Error on failure (out of memory names `what`).
  void* allocate(size_t bytes, const char* what);
  void release(void* p) noexcept;

  size_t current_bytes() const;
  size_t peak_bytes() const;

 private:
  mutable std::mutex mutex_;
  std::unordered_map<void*, size_t> sizes_;
  size_t current_ = 0;
  size_t peak_ = 0;
};

// One allocation from a DeviceMemory, released when the owner goes.
class DeviceBuffer {
 public:
  DeviceBuffer(DeviceMemory& memory, size_t bytes, const char* what)
      : memory_(memory), ptr_(memory.allocate(bytes, what)), bytes_(bytes) {}
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { memory_.release(ptr_); }

  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  DeviceMemory& memory_;
  void* ptr_;
  size_t bytes_;
};

// One buffer reused by every op that needs temporaries. Ops run in order on
// the backend's single stream, so the next op reuses it only after the
// previous one is done with it. Growing frees the old buffer first
// (cudaFree waits for the device), so the largest request is allocated once.
class Scratch {
 public:
  explicit Scratch(DeviceMemory& memory) : memory_(memory) {}
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch();

  // At least `bytes` of device memory, 256-byte aligned, valid until the
  // next call.
  void* get(size_t bytes);

 private:
  DeviceMemory& memory_;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Carves consecutive 256-byte aligned pieces out of one scratch buffer:
// first measure (with a null base) to learn the total, then carve for real.
class ScratchCarver {
 public:
  explicit ScratchCarver(void* base) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* take(size_t count) {
    size_t offset = used_;
    used_ += (count * sizeof(T) + 255) / 256 * 256;
    return base_ ? reinterpret_cast<T*>(base_ + offset) : nullptr;
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

}  // namespace srgpt::gpu
