#include "srgpt/posix_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>
#include <utility>

#include <spdlog/spdlog.h>

#include "srgpt/error.h"

namespace srgpt {

PosixFile::PosixFile(const std::filesystem::path& path, int flags, mode_t mode)
    : path_(path), fd_(::open(path.c_str(), flags | O_CLOEXEC, mode)) {
  if (fd_ < 0) fail("cannot open {}: {}", path_.string(), std::strerror(errno));
}

FileIdentity file_identity(const std::filesystem::path& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail("{}: cannot read '{}': {}", what, path.string(), std::strerror(errno));
  return {uint64_t(st.st_dev), uint64_t(st.st_ino)};
}

FileCheck check_regular_file(const std::filesystem::path& path, std::string* why) {
  std::error_code ec;
  const std::filesystem::file_type type = std::filesystem::status(path, ec).type();
  if (type == std::filesystem::file_type::not_found) return FileCheck::missing;
  if (ec) {
    *why = "cannot be read: " + ec.message();
    return FileCheck::unusable;
  }
  if (type == std::filesystem::file_type::regular) return FileCheck::regular;
  *why = "is not a regular file";
  return FileCheck::unusable;
}

bool regular_file_exists(const std::filesystem::path& path, const std::string& what) {
  std::string why;
  const FileCheck check = check_regular_file(path, &why);
  if (check == FileCheck::unusable) fail("{} {} {}", what, path.string(), why);
  return check == FileCheck::regular;
}

void sync_directory(const std::filesystem::path& dir) {
  PosixFile fd(dir, O_RDONLY | O_DIRECTORY);
  fd.sync();
}

void rename_path(const std::filesystem::path& from, const std::filesystem::path& to) {
  if (::rename(from.c_str(), to.c_str()) != 0)
    fail("cannot rename {} to {}: {}", from.string(), to.string(), std::strerror(errno));
}

ExclusiveFileLock::ExclusiveFileLock(const std::filesystem::path& path, const std::string& what,
                                     const std::string& remedy)
    : fd_(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644)) {
  if (fd_ < 0) fail("cannot open the lock file {}: {}", path.string(), std::strerror(errno));
  int result;
  do {
    result = ::flock(fd_, LOCK_EX | LOCK_NB);
  } while (result != 0 && errno == EINTR);
  if (result != 0 && errno == EWOULDBLOCK) {
    char holder[32] = {};
    const ssize_t n = ::pread(fd_, holder, sizeof(holder) - 1, 0);
    ::close(fd_);
    const std::string pid = n > 0 ? std::string(holder, size_t(n)) : std::string("?");
    fail("{} is in use by another process: pid {} (on the host that wrote it) holds the lock {}; {}", what, pid,
         path.string(), remedy);
  }
  if (result != 0) {
    spdlog::warn("cannot lock {}: {}; a second process using {} at the same time would not be stopped", path.string(),
                 std::strerror(errno), what);
    return;
  }
  const std::string pid = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != ssize_t(pid.size()))
    spdlog::warn("cannot record this process's pid in the lock file {}: {}", path.string(), std::strerror(errno));
}

ExclusiveFileLock::~ExclusiveFileLock() {
  if (fd_ >= 0) ::close(fd_);  // which releases the lock
}

namespace {

std::filesystem::path absolute_normal(const std::filesystem::path& path) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::absolute(path, ec).lexically_normal();
  if (ec) p = path.lexically_normal();
  return p.has_filename() ? p : p.parent_path();  // "out/" names "out"
}

}  // namespace

void StartDirectories::create(const std::filesystem::path& dir, std::error_code& ec) {
  std::vector<std::filesystem::path> missing;
  for (std::filesystem::path p = absolute_normal(dir); p.has_relative_path(); p = p.parent_path()) {
    std::error_code probe;
    if (std::filesystem::symlink_status(p, probe).type() != std::filesystem::file_type::not_found) break;
    missing.push_back(p);
  }
  std::filesystem::create_directories(dir, ec);
  if (!ec) made_.insert(made_.end(), missing.rbegin(), missing.rend());
}

void StartDirectories::own_file(const std::filesystem::path& file) { files_.push_back(absolute_normal(file)); }

void StartDirectories::keep() {
  made_.clear();
  files_.clear();
}

StartDirectories::~StartDirectories() {
  std::error_code ec;
  for (const auto& file : files_)
    if (std::find(made_.begin(), made_.end(), file.parent_path()) != made_.end()) std::filesystem::remove(file, ec);
  // remove() takes only empty directories: anything put there since stays.
  for (auto dir = made_.rbegin(); dir != made_.rend(); ++dir) std::filesystem::remove(*dir, ec);
}

PosixFile::~PosixFile() {
  if (fd_ >= 0) ::close(fd_);
}

void PosixFile::write_all(const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, p, bytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("cannot write {}: {}", path_.string(), std::strerror(errno));
    }
    p += n;
    bytes -= size_t(n);
  }
}

void PosixFile::read_all(void* data, size_t bytes, uint64_t offset) const {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::pread(fd_, p, bytes, off_t(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("cannot read {}: {}", path_.string(), std::strerror(errno));
    }
    if (n == 0) fail("{}: unexpected end of file at byte {} (truncated)", path_.string(), offset);
    p += n;
    offset += uint64_t(n);
    bytes -= size_t(n);
  }
}

void PosixFile::sync() {
  if (::fsync(fd_) != 0) fail("cannot fsync {}: {}", path_.string(), std::strerror(errno));
}

void PosixFile::close() {
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) fail("cannot close {}: {}", path_.string(), std::strerror(errno));
}

RemovePathOnExit::~RemovePathOnExit() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

namespace {

// A process that exists and is not a zombie.
bool process_alive(pid_t pid) {
  if (pid <= 0 || (::kill(pid, 0) != 0 && errno != EPERM)) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;  // no /proc: kill's answer stands
  // "pid (comm) state ...", where comm may itself contain ')'.
  const size_t paren = line.rfind(')');
  return paren == std::string::npos || paren + 2 >= line.size() || line[paren + 2] != 'Z';
}

// Removes `path`.tmp-<pid> files whose writer is gone.
void remove_abandoned_temporaries(const std::filesystem::path& path) {
  const std::string prefix = path.filename().string() + ".tmp-";
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!left_by_gone_writer(it->path().filename().string(), prefix)) continue;
    std::error_code removed;
    std::filesystem::remove(it->path(), removed);
  }
}

}  // namespace

bool left_by_gone_writer(const std::string& name, const std::string& prefix) {
  // pids have at most 9 digits (pid_max is at most 2^22).
  if (name.size() <= prefix.size() || name.size() > prefix.size() + 9 || name.compare(0, prefix.size(), prefix) != 0 ||
      name.find_first_not_of("0123456789", prefix.size()) != std::string::npos)
    return false;
  const pid_t pid = pid_t(std::stol(name.substr(prefix.size())));
  return pid == ::getpid() || !process_alive(pid);
}

void write_file_atomically(const std::filesystem::path& path, const std::function<void(const ByteSink&)>& produce) {
  remove_abandoned_temporaries(path);
  const std::filesystem::path temporary = path.string() + ".tmp-" + std::to_string(::getpid());
  RemovePathOnExit cleanup(temporary);
  PosixFile out(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  produce([&](const void* data, size_t bytes) { out.write_all(data, bytes); });
  out.sync();
  out.close();
  rename_path(temporary, path);
  cleanup.release();
  // The rename itself reaches the disk only with its directory.
  sync_directory(path.has_parent_path() ? path.parent_path() : std::filesystem::path("."));
}

}  // namespace srgpt
