// File faults for the tests (LD_PRELOAD; never linked into srgpt):
//
// - A full disk for chosen files. SRGPT_FAIL_WRITES_TO=<text>: every
//   write(2) to a file opened for writing through open(2) whose path
//   contains <text> fails with ENOSPC, as on a full disk, after
//   SRGPT_FAIL_WRITES_AFTER bytes (default 0) have gone to such files.
//   Unlike `ulimit -f`, which limits every file alike, this fails one chosen
//   file (a manifest smaller than the files before it, or one rank's shard
//   while the other ranks' writes succeed).
// - A failing fsync. SRGPT_FAIL_SYNC_OF=<text>: fsync(2) of a file or
//   directory opened through open(2) by a path ending in <text> fails with
//   EIO, as on a device error (a directory's fsync is what makes a rename
//   in it durable).
// - A file that shrinks while mapped. SRGPT_SHRINK_ON_MAP=<text>: right
//   after the SRGPT_SHRINK_ON_MAP_NTH-th (default 1) mmap(2) of a file whose
//   path contains <text>, the file is cut to half its size, as another
//   program truncating or rewriting it in place would: reading the mapping
//   past the new end then raises SIGBUS.
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <cstdio>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace {

constexpr int kMaxFds = 4096;
std::atomic<bool> g_failing[kMaxFds];  // fds opened for writing to a matching path
std::atomic<bool> g_sync_failing[kMaxFds];  // fds opened by a path ending in SRGPT_FAIL_SYNC_OF
std::atomic<long long> g_budget{0};    // bytes such files may still take

__attribute__((constructor)) void read_budget() {
  const char* after = std::getenv("SRGPT_FAIL_WRITES_AFTER");
  g_budget = after ? std::atoll(after) : 0;
}

bool matches(const char* path, int flags) {
  const char* text = std::getenv("SRGPT_FAIL_WRITES_TO");
  return text && *text && path && (flags & (O_WRONLY | O_RDWR)) && std::strstr(path, text);
}

bool sync_fails(const char* path) {
  const char* text = std::getenv("SRGPT_FAIL_SYNC_OF");
  if (!text || !*text || !path) return false;
  const size_t length = std::strlen(path), suffix = std::strlen(text);
  return length >= suffix && std::strcmp(path + length - suffix, text) == 0;
}

int track(int fd, const char* path, int flags) {
  if (fd >= 0 && fd < kMaxFds) {
    g_failing[fd] = matches(path, flags);
    g_sync_failing[fd] = sync_fails(path);
  }
  return fd;
}

template <typename F>
F next(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

using OpenFunction = int (*)(const char*, int, ...);

int open_and_track(OpenFunction real, const char* path, int flags, va_list args) {
  const mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? mode_t(va_arg(args, int)) : 0;
  return track(real(path, flags, mode), path, flags);
}

}  // namespace

extern "C" {

int open(const char* path, int flags, ...) {
  static const auto real = next<OpenFunction>("open");
  va_list args;
  va_start(args, flags);
  const int fd = open_and_track(real, path, flags, args);
  va_end(args);
  return fd;
}

int open64(const char* path, int flags, ...) {
  static const auto real = next<OpenFunction>("open64");
  va_list args;
  va_start(args, flags);
  const int fd = open_and_track(real, path, flags, args);
  va_end(args);
  return fd;
}

ssize_t write(int fd, const void* data, size_t bytes) {
  static auto real = next<ssize_t (*)(int, const void*, size_t)>("write");
  if (fd >= 0 && fd < kMaxFds && g_failing[fd]) {
    long long expected = g_budget.load();
    // Up to the budget the write goes through (possibly short), then ENOSPC.
    while (true) {
      if (expected <= 0) {
        errno = ENOSPC;
        return -1;
      }
      const long long allowed = expected < (long long)bytes ? expected : (long long)bytes;
      if (g_budget.compare_exchange_weak(expected, expected - allowed)) return real(fd, data, size_t(allowed));
    }
  }
  return real(fd, data, bytes);
}

int fsync(int fd) {
  static auto real = next<int (*)(int)>("fsync");
  if (fd >= 0 && fd < kMaxFds && g_sync_failing[fd]) {
    errno = EIO;
    return -1;
  }
  return real(fd);
}

int close(int fd) {
  static auto real = next<int (*)(int)>("close");
  if (fd >= 0 && fd < kMaxFds) {
    g_failing[fd] = false;
    g_sync_failing[fd] = false;
  }
  return real(fd);
}

void* mmap(void* address, size_t length, int protection, int flags, int fd, off_t offset) {
  static const auto real = next<void* (*)(void*, size_t, int, int, int, off_t)>("mmap");
  void* mapped = real(address, length, protection, flags, fd, offset);
  const char* text = fd >= 0 && mapped != MAP_FAILED ? std::getenv("SRGPT_SHRINK_ON_MAP") : nullptr;
  if (!text || !*text) return mapped;
  char link[64], path[4096];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return mapped;
  path[n] = '\0';
  if (!std::strstr(path, text)) return mapped;
  static std::atomic<int> mappings{0};
  const char* nth = std::getenv("SRGPT_SHRINK_ON_MAP_NTH");
  struct stat info {};
  if (++mappings == (nth ? std::atoi(nth) : 1) && stat(path, &info) == 0) truncate(path, info.st_size / 2);
  return mapped;
}

}  // extern "C"
