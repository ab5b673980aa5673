#include "srgpt/mapped_read.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

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

}  // namespace srgpt
