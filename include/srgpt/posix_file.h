#pragma once
// A POSIX file descriptor, closed when destroyed, whose reads and writes
// retry interrupted and partial transfers and fail with an Error naming the
// file. For files that must reach the disk (checkpoints, exported models):
// sync() then close(), both checked.
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>

namespace srgpt {

class PosixFile {
 public:
  // open(2) with `flags` (O_CLOEXEC is added) and, when creating, `mode`.
  PosixFile(const std::filesystem::path& path, int flags, mode_t mode = 0);
  ~PosixFile();
  PosixFile(const PosixFile&) = delete;
  PosixFile& operator=(const PosixFile&) = delete;

  void write_all(const void* data, size_t bytes);
  // Reads exactly `bytes` at `offset`; a short read means the file shrank.
  void read_all(void* data, size_t bytes, uint64_t offset) const;
  void sync();
  // close(2) can report a deferred write error (e.g. on NFS), so it is checked.
  void close();

 private:
  std::filesystem::path path_;
  int fd_;
};

}  // namespace srgpt
