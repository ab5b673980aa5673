#pragma once
// Device memory: plain cudaMalloc with byte accounting (current and peak),
// and a grow-only scratch arena for the temporaries some ops need
// (reduction partials, sort buffers, attention row statistics).
#include <cuda_runtime.h>

#include <cstddef>
#include <mutex>
#include <unordered_map>
#include <vector>

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

// A grow-only buffer reused by the work on one stream: the backend's for
// every op that needs temporaries, the matmul's cuBLASLt workspaces. Work on
// a stream runs in order, so the next use comes only after the previous one
// is done with it. Growing keeps the old buffer until the Scratch is
// destroyed: cudaFree waits for the whole device, and mid-step that means
// the communicator's collectives in flight too, which, should a peer have
// died, never finish (the NCCL communicator's watchdog could not end that
// wait). The requests grow to their largest within the first step, and the
// earlier ones are small (reduction partials before the attention
// backward's row statistics), so little is kept. `what` names it in
// out-of-memory errors.
class Scratch {
 public:
  explicit Scratch(DeviceMemory& memory, const char* what = "scratch for op temporaries")
      : memory_(memory), what_(what) {}
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch();

  // At least `bytes` of device memory, 256-byte aligned, valid until the
  // next call.
  void* get(size_t bytes);

 private:
  DeviceMemory& memory_;
  const char* what_;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  std::vector<void*> outgrown_;  // earlier buffers, released with the Scratch
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
