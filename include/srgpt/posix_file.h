#pragma once
// A POSIX file descriptor, closed when destroyed, whose reads and writes
// retry interrupted and partial transfers and fail with an Error naming the
// file. For files that must reach the disk (checkpoints, exported models):
// sync() then close(), both checked.
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

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

// Removes a file or directory tree when it goes out of scope, unless
// released: keeps a failed write from leaving its temporary behind.
class RemovePathOnExit {
 public:
  explicit RemovePathOnExit(std::filesystem::path path) : path_(std::move(path)) {}
  ~RemovePathOnExit();
  RemovePathOnExit(const RemovePathOnExit&) = delete;
  RemovePathOnExit& operator=(const RemovePathOnExit&) = delete;
  void release() { path_.clear(); }

 private:
  std::filesystem::path path_;
};

// An exclusive advisory lock (flock(2)) on `path`, created if absent and
// holding the holder's pid, kept until destroyed: the kernel drops it when
// the process ends, however it ends, so no stale lock outlives a killed run.
// When another process holds it, throws an Error saying `what` is in use,
// by which pid, and `remedy`. Where the file system cannot lock, it warns
// and goes on.
class ExclusiveFileLock {
 public:
  ExclusiveFileLock(const std::filesystem::path& path, const std::string& what, const std::string& remedy);
  ~ExclusiveFileLock();
  ExclusiveFileLock(const ExclusiveFileLock&) = delete;
  ExclusiveFileLock& operator=(const ExclusiveFileLock&) = delete;

 private:
  int fd_ = -1;
};

// Directories made for a job, undone if it fails to start: unless keep() is
// called, the destructor removes the files given to own_file() and then the
// directories create() made, innermost first, where they are then empty.
// Only what create() made goes: a directory that existed before, or that
// holds anything else, stays. A mistyped data.train leaves no empty out_dir.
class StartDirectories {
 public:
  StartDirectories() = default;
  ~StartDirectories();
  StartDirectories(const StartDirectories&) = delete;
  StartDirectories& operator=(const StartDirectories&) = delete;
  // std::filesystem::create_directories, remembering which were missing.
  void create(const std::filesystem::path& dir, std::error_code& ec);
  // A file the job made; removed with its directory if create() made that.
  void own_file(const std::filesystem::path& file);
  void keep();

 private:
  std::vector<std::filesystem::path> made_;  // absolute, outermost first
  std::vector<std::filesystem::path> files_;
};

// Whether `name` is `prefix` followed by the pid (digits) of a writer that
// is gone, so that what it left may be deleted. A zombie counts as gone (a
// writer killed mid-save, such as an aborted MPI job's rank, stays one until
// its parent reaps it, which in a container without an init may be never),
// and so does this process's own pid: a leftover of an earlier process that
// had it (a restarted container), never in use.
bool left_by_gone_writer(const std::string& name, const std::string& prefix);

// Whether `path` is a regular file, missing, or neither - a FIFO, whose
// open would block until a writer comes, a directory, a path that cannot be
// looked up: then `*why` says why ("cannot be read: <reason>" or "is not a
// regular file").
enum class FileCheck { regular, missing, unusable };
FileCheck check_regular_file(const std::filesystem::path& path, std::string* why);
// Whether `path` names a regular file (true) or nothing (false); anything
// else is an Error "<what> <path> <why>".
bool regular_file_exists(const std::filesystem::path& path, const std::string& what);

// fsync(2) of a directory: makes the creations, renames and removals in it
// durable.
void sync_directory(const std::filesystem::path& dir);
// rename(2), or an Error naming both paths and the reason.
void rename_path(const std::filesystem::path& from, const std::filesystem::path& to);

// What makes a file the same file under any name (another spelling, a
// symlink, a hard link): its device and inode. An Error naming `what` and
// the path when it cannot be looked up.
using FileIdentity = std::pair<uint64_t, uint64_t>;
FileIdentity file_identity(const std::filesystem::path& path, const std::string& what);

// Receives the bytes of a file being written, in order.
using ByteSink = std::function<void(const void* data, size_t bytes)>;
// Writes `path` through a temporary file beside it (`path`.tmp-<pid>) that
// is fsynced and then renamed over `path` (its directory fsynced after), so
// a reader never sees a partial file and a failed write leaves any previous
// file intact. Temporaries of
// `path` left by writers that were killed (a Ctrl-C mid-export) go first.
void write_file_atomically(const std::filesystem::path& path, const std::function<void(const ByteSink&)>& produce);

}  // namespace srgpt
