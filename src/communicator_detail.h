#pragma once
// Helpers shared by the communicator implementations in src/.
#include <cstring>
#include <string>
#include <vector>

#include "srgpt/backend.h"

namespace srgpt::comm_detail {

// dst = src for `bytes` of backend memory (regions may not overlap). The
// Backend interface has no device-to-device copy, so device memory goes
// through a host bounce buffer.
inline void copy_backend_memory(Backend& backend, void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  if (backend.memory_on_host()) {
    std::memcpy(dst, src, bytes);
    return;
  }
  std::vector<char> bounce(bytes);
  backend.download(bounce.data(), src, bytes);
  backend.upload(dst, bounce.data(), bytes);
}

}  // namespace srgpt::comm_detail
