#include "srgpt/mapped_read.h"

#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <utility>

#include "srgpt/error.h"

namespace srgpt {
namespace {

// While a mapping is read, the handler jumps back to read_mapped.
thread_local sigjmp_buf* t_mapped_read = nullptr;
struct sigaction g_previous_sigbus;

void on_sigbus(int sig, siginfo_t* info, void*) {
  if (t_mapped_read) siglongjmp(*t_mapped_read, 1);
  // Not a guarded read: put the previous disposition back, so that it gets
  // the signal with its own flags (one-shot, mask, stack) when the faulting
  // access runs again on return, or at once for a signal sent by kill.
  ::sigaction(sig, &g_previous_sigbus, nullptr);
  if (info->si_code <= 0) ::raise(sig);
}

}  // namespace

void install_mapped_read_guard() {
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  struct sigaction current {};
  if (::sigaction(SIGBUS, nullptr, &current) != 0)
    fail("cannot read the SIGBUS handler: {}", std::strerror(errno));
  if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == on_sigbus) return;
  struct sigaction action {};
  action.sa_sigaction = on_sigbus;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  if (::sigaction(SIGBUS, &action, &g_previous_sigbus) != 0)
    fail("cannot install the SIGBUS handler for memory-mapped files: {}", std::strerror(errno));
}

void read_mapped(const char* kind, const std::string& path, const std::function<void()>& read) {
  sigjmp_buf jump;
  // No signal mask saved (that would be a system call per read): the jump
  // leaves SIGBUS blocked, as the handler runs with it blocked; unblock it.
  if (sigsetjmp(jump, 0) != 0) {
    t_mapped_read = nullptr;
    sigset_t bus;
    sigemptyset(&bus);
    sigaddset(&bus, SIGBUS);
    ::pthread_sigmask(SIG_UNBLOCK, &bus, nullptr);
    fail("{} {} shrank while being read (truncated or rewritten in place since it was opened); files being read "
         "must not change",
         kind, path);
  }
  // The fences keep the compiler from moving the reads of the mapping out
  // of the guarded stretch, or dropping the store the handler reads.
  t_mapped_read = &jump;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  try {
    read();
  } catch (...) {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    t_mapped_read = nullptr;
    throw;
  }
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_mapped_read = nullptr;
}

MappedFile::MappedFile(const char* kind, const std::string& path) {
  // O_NONBLOCK: opening a FIFO would otherwise wait for a writer, before
  // the check below could refuse it (no effect on regular files).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail("cannot read {} '{}': {}", kind, path, std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat info {};
  if (::fstat(fd, &info) != 0) fail("cannot read {} '{}': {}", kind, path, std::strerror(errno));
  if (!S_ISREG(info.st_mode))
    fail("cannot read {} '{}': {}", kind, path, S_ISDIR(info.st_mode) ? "it is a directory" : "not a regular file");
  install_mapped_read_guard();
  if (info.st_size == 0) return;
  void* data = ::mmap(nullptr, size_t(info.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  if (data == MAP_FAILED) fail("cannot map {} '{}' into memory: {}", kind, path, std::strerror(errno));
  data_ = data;
  size_ = size_t(info.st_size);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  std::swap(data_, other.data_);
  std::swap(size_, other.size_);
  return *this;
}

void MappedFile::advise_sequential() const {
  if (data_) ::madvise(data_, size_, MADV_SEQUENTIAL);
}

}  // namespace srgpt
