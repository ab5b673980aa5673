#pragma once
// Reading memory-mapped files (token shards, prepare's inputs) that may
// shrink while mapped: truncated, or rewritten in place by another program.
// Reading the pages that are gone raises SIGBUS, which would kill the
// process; inside read_mapped it becomes an Error naming the file instead.
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace srgpt {

// A whole regular file, memory-mapped read-only (inputs can be far larger
// than memory), unmapped when destroyed. Anything but a regular file is
// refused (a FIFO would block the open). Errors name the file as a `kind`
// of file ("token shard", "input file"). Read it inside read_mapped.
class MappedFile {
 public:
  MappedFile(const char* kind, const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const { return static_cast<const unsigned char*>(data_); }
  size_t size() const { return size_; }
  std::string_view text() const { return {static_cast<const char*>(data_), size_}; }
  // The file will be read front to back (a read-ahead hint).
  void advise_sequential() const;

 private:
  void* data_ = nullptr;  // null for an empty file
  size_t size_ = 0;
};

// Installs the SIGBUS handler read_mapped relies on, if another one has
// taken its place (a library or a test framework may install its own).
// Call it when mapping a file. A SIGBUS outside read_mapped goes to the
// handler that was there before, with that handler's own flags.
void install_mapped_read_guard();

// Runs read(), which reads a mapping of the file at `path` (a `kind` of
// file: "token shard", "input file"); a SIGBUS inside it becomes the Error
// "<kind> <path> shrank while being read ...". Nothing is built per call
// (token reads call it per sample). read() must not hold locks or own
// resources other than memory while it touches the mapping: the jump out
// of the signal handler leaves its frames without running their
// destructors.
void read_mapped(const char* kind, const std::string& path, const std::function<void()>& read);

}  // namespace srgpt
