// Fibers switch with the compiler's __builtin_setjmp/__builtin_longjmp
// between their stacks (ucontext only starts them): swapcontext saves the
// signal mask with a system call at every switch, which made the emulation
// several times slower, and glibc's _longjmp still walks the thread's
// cancellation handlers at each; the builtins save and restore only the
// stack and frame pointers and the resumption address.
#include "device_emulator.h"

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "srgpt/error.h"

// Under AddressSanitizer (SRGPT_SANITIZE) every switch between the
// scheduler's stack and a fiber's is announced to it: otherwise a throw or
// longjmp on a fiber makes it clean up from the fiber's stack pointer to
// the thread's own stack top, a range it refuses with a warning, and it
// then reports false stack-buffer-underflows on the fiber stacks.
#ifdef SRGPT_EMULATOR_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// A stream's queue: the work not yet run, in order. An item may wait for
// another stream's first `after_position` items (an event wait; no work).
struct CUstream_st {
  struct Item {
    std::function<void()> work;
    std::string what;  // names the work in fault messages
    CUstream_st* after_stream = nullptr;
    uint64_t after_position = 0;
  };
  std::deque<Item> queue;
  uint64_t enqueued = 0, completed = 0;  // items ever queued, ever run
};
// Recorded: the work queued on `stream` before the record. A timing event
// also queues, at each record, an item that notes when it ran: shared, as
// the event may be recorded again or destroyed before its item runs.
struct CUevent_st {
  CUstream_st* stream = nullptr;
  uint64_t position = 0;
  bool timing = false;
  std::shared_ptr<std::optional<std::chrono::steady_clock::time_point>> reached;
};

namespace srgpt::emulation {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
// The stacks lie kStackBytes apart, so their tops, where the threads
// switch, would all fall in the same cache sets and evict each other at
// every switch: thread t's top is (t % kStaggeredStacks) * kStackStagger
// bytes lower, a different cache line and 1 KiB span for each of 64
// threads, at most 67 KiB of the stack.
constexpr size_t kStaggeredStacks = 64;
constexpr size_t kStackStagger = 1024 + 64;
constexpr size_t kSharedGuardBytes = 4096;
constexpr unsigned char kPoison = 0xFF;  // NaN in bf16 and fp32
constexpr unsigned char kGuardByte = 0xA5;
constexpr int kErrorInvalidValue = 1;
constexpr int kErrorInvalidConfiguration = 9;

struct Copy {
  void* dst;
  const void* src;
  size_t bytes, src_bytes;
};

// What __builtin_setjmp saves: the frame and stack pointers, the
// resumption address and two words the target may use.
using JumpBuffer = void* [5];

// Resumes the __builtin_setjmp that filled `to`. A function of its own:
// __builtin_longjmp may not be called from the function that called
// __builtin_setjmp.
[[gnu::noinline, noreturn]] void jump_to(JumpBuffer& to) { __builtin_longjmp(to, 1); }

enum class State { ready, at_block_barrier, at_warp_operation, at_flag_wait, done };

// What a thread holds for one block's run, reset for each block.
struct ThreadRun {
  uint3 index;
  State state = State::ready;
  uint64_t waiting_for = 0;  // the barrier generation that releases it
  const unsigned* flag = nullptr;  // at_flag_wait: until *flag == flag_value
  unsigned flag_value = 0;
  std::vector<Copy> open_group;
  std::deque<std::vector<Copy>> committed_groups;
};

// A thread of the block in a slot (run_kernel). Once it has run its block
// to the end it waits in fiber_entry (parked) for the slot's next block,
// whose thread of the same index it becomes: a fresh context costs two
// system calls (getcontext, setcontext), a quarter of the time of tests
// with many small blocks.
struct Fiber : ThreadRun {
  ucontext_t start;
  JumpBuffer resume;
  bool started = false;  // has a `resume` point: it yielded or parked
  bool parked = false;
  void* asan_fake_stack = nullptr;  // AddressSanitizer's, while switched away
};

struct DeferredWork {
  const void* target;
  std::function<void()> work;
};

struct Warp {
  int lanes = 0, arrived = 0, exited = 0;
  uint64_t generation = 0;
  const char* kind = nullptr;
  size_t in_bytes = 0, out_bytes = 0;
  unsigned char in[32 * kMaxCollectiveBytes], out[32 * kMaxCollectiveBytes];
  // Asynchronous warp-wide operations (warp_defer).
  std::vector<DeferredWork> open_deferred;
  std::deque<std::vector<DeferredWork>> committed_deferred;
  // Warpgroup-wide operations issued (warpgroup_operation).
  std::vector<std::pair<const char*, uint64_t>> warpgroup_operations;
};

// Fiber stacks, kept across launches; mapped lazily, so only the pages a
// kernel touches cost memory.
class Stacks {
 public:
  ~Stacks() {
    if (base_) munmap(base_, bytes_);
  }
  char* get(size_t count) {
    const size_t bytes = count * kStackBytes;
    if (bytes > bytes_) {
      if (base_) munmap(base_, bytes_);
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) fail("device emulator: cannot map {} bytes of fiber stacks", bytes);
      base_ = static_cast<char*>(p);
      bytes_ = bytes;
    }
    return base_;
  }

 private:
  char* base_ = nullptr;
  size_t bytes_ = 0;
};

struct Block {
  uint3 index;
  dim3 dim, grid;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int alive = 0, arrived = 0;
  uint64_t generation = 0;
  std::vector<unsigned char> shared;  // dynamic shared memory, then the guard
  size_t shared_bytes = 0;
  std::string error;
  char* stacks = nullptr;  // its threads' fiber stacks
  bool descending_threads = false;  // its threads' priority (Schedule)
  bool pauses_at_release = false;    // its slice ends when it releases a flag
  // Fibers at positions (in priority order) below scan_from are not
  // runnable: within a slice of the block's run (run_slice) only a
  // barrier's release can change that, so only a release moves it back.
  int scan_from = 0;
};

std::map<const void*, size_t> g_max_dynamic_shared;
int g_launch_error = 0;
Stacks g_stacks;
Block* g_block = nullptr;
Fiber* g_fiber = nullptr;
JumpBuffer g_scheduler;
const std::function<void()>* g_thread_body = nullptr;
// Set by release_flag in the interleaved schedule: the running block's
// slice ends, so that the other blocks run before it goes on.
bool g_flag_released = false;

// The stack switches, announced to AddressSanitizer (no-ops without it).
#ifdef SRGPT_EMULATOR_ASAN
void* g_scheduler_fake_stack = nullptr;
const void* g_scheduler_stack_bottom = nullptr;
size_t g_scheduler_stack_size = 0;
#endif

// Before leaving the scheduler's stack for fiber f's.
void switching_to_fiber([[maybe_unused]] const Fiber& f) {
#ifdef SRGPT_EMULATOR_ASAN
  __sanitizer_start_switch_fiber(&g_scheduler_fake_stack, f.start.uc_stack.ss_sp, f.start.uc_stack.ss_size);
#endif
}
// First thing on a fiber's stack, at its start or on its resumption.
void switched_to_fiber([[maybe_unused]] Fiber& f) {
#ifdef SRGPT_EMULATOR_ASAN
  __sanitizer_finish_switch_fiber(f.asan_fake_stack, &g_scheduler_stack_bottom, &g_scheduler_stack_size);
#endif
}
// Before leaving fiber f's stack for the scheduler's.
void switching_to_scheduler([[maybe_unused]] Fiber& f) {
#ifdef SRGPT_EMULATOR_ASAN
  __sanitizer_start_switch_fiber(&f.asan_fake_stack, g_scheduler_stack_bottom, g_scheduler_stack_size);
#endif
}
// First thing back on the scheduler's stack.
void switched_to_scheduler() {
#ifdef SRGPT_EMULATOR_ASAN
  __sanitizer_finish_switch_fiber(g_scheduler_fake_stack, nullptr, nullptr);
#endif
}

// The schedule in force: SRGPT_EMULATOR_SCHEDULE's until set_schedule.
Schedule& schedule() {
  static Schedule current = [] {
    const char* text = std::getenv("SRGPT_EMULATOR_SCHEDULE");
    return parse_schedule(text ? text : "");
  }();
  return current;
}

Block& block() {
  if (!g_block || !g_fiber) fail("device emulator: a device function was called outside a kernel");
  return *g_block;
}
int linear_index(const Block& b, const uint3& i) { return int(i.x + b.dim.x * (i.y + b.dim.y * i.z)); }
Warp& my_warp() { return block().warps[linear_index(*g_block, g_fiber->index) / 32]; }

void yield() {
  if (__builtin_setjmp(g_fiber->resume) == 0) {
    switching_to_scheduler(*g_fiber);
    jump_to(g_scheduler);
  }
  switched_to_fiber(*g_fiber);
}

void perform(const Copy& c) {
  std::memcpy(c.dst, c.src, c.src_bytes);
  std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
}

// One thread's run of block b, to its end.
void run_thread(Fiber& fiber, Block& b) {
  try {
    (*g_thread_body)();
    if (!fiber.open_group.empty() || !fiber.committed_groups.empty())
      fail("cp.async copies issued but never waited for (cp.async.wait_group)");
  } catch (const std::exception& e) {
    if (b.error.empty())
      b.error = fmt::format("thread ({},{},{}) of block ({},{},{}): {}", fiber.index.x, fiber.index.y, fiber.index.z,
                            b.index.x, b.index.y, b.index.z, e.what());
  }
  fiber.state = State::done;
  --b.alive;
  Warp& warp = b.warps[linear_index(b, fiber.index) / 32];
  ++warp.exited;
  if ((!warp.open_deferred.empty() || !warp.committed_deferred.empty()) && b.error.empty())
    b.error = fmt::format("a lane of warp {} of block ({},{},{}) exited with asynchronous warp-wide operations "
                          "(wgmma) never waited for",
                          linear_index(b, fiber.index) / 32, b.index.x, b.index.y, b.index.z);
  if (warp.arrived > 0 && b.error.empty())
    b.error = fmt::format("a lane of warp {} of block ({},{},{}) exited while the others wait at {}",
                          linear_index(b, fiber.index) / 32, b.index.x, b.index.y, b.index.z, warp.kind);
  // Exited threads no longer hold up __syncthreads.
  if (b.arrived > 0 && b.arrived == b.alive) {
    b.arrived = 0;
    ++b.generation;
  }
}

// A fiber's whole life: the threads of one block after another in its
// slot. When the launch ends its last park is abandoned, with nothing on
// its stack to destroy.
[[noreturn]] void fiber_entry() {
  switched_to_fiber(*g_fiber);
  for (;;) {
    run_thread(*g_fiber, *g_block);
    g_fiber->parked = true;
    yield();  // until the slot's next block (start_block), if any
  }
}

bool runnable(const Block& b, const Fiber& f) {
  switch (f.state) {
    case State::ready: return true;
    case State::at_block_barrier: return b.generation != f.waiting_for;
    case State::at_warp_operation: return b.warps[linear_index(b, f.index) / 32].generation != f.waiting_for;
    case State::at_flag_wait: return *f.flag == f.flag_value;
    case State::done: return false;
  }
  return false;
}

// Its own frame, so that no local of the scheduler loop lives across the
// __builtin_setjmp that the fiber's jump returns to.
[[gnu::noinline]] void run_until_it_yields(Fiber& f) {
  g_fiber = &f;
  if (__builtin_setjmp(g_scheduler) == 0) {
    switching_to_fiber(f);
    if (f.started) jump_to(f.resume);
    f.started = true;
    setcontext(&f.start);
  }
  switched_to_scheduler();
  g_fiber = nullptr;
}

// Its own frame too: getcontext may return twice as far as the compiler
// knows, which would make it suspect the caller's loop counter of being
// clobbered. `stagger`: bytes left unused at the stack's top.
[[gnu::noinline]] void prepare_start(Fiber& f, char* stack, size_t stagger) {
  getcontext(&f.start);
  f.start.uc_stack.ss_sp = stack;
  f.start.uc_stack.ss_size = kStackBytes - stagger;
  f.start.uc_link = nullptr;  // fiber_entry never returns
  makecontext(&f.start, fiber_entry, 0);
}

void start_block(Block& b) {
  std::fill(b.shared.begin(), b.shared.begin() + b.shared_bytes, kPoison);
  std::fill(b.shared.begin() + b.shared_bytes, b.shared.end(), kGuardByte);
  const int threads = int(b.fibers.size());
  b.alive = threads;
  b.arrived = 0;
  b.generation = 0;
  b.error.clear();
  for (size_t w = 0; w < b.warps.size(); ++w) {
    b.warps[w] = Warp{};
    b.warps[w].lanes = std::min(32, threads - int(32 * w));
  }
  for (int t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    // A parked fiber goes on from its park; any other starts afresh.
    const bool parked = std::exchange(f.parked, false);
    static_cast<ThreadRun&>(f) = ThreadRun{};
    f.index = uint3{unsigned(t % b.dim.x), unsigned(t / b.dim.x % b.dim.y), unsigned(t / (b.dim.x * b.dim.y))};
    f.started = parked;
    if (!parked) prepare_start(f, b.stacks + size_t(t) * kStackBytes, size_t(t % kStaggeredStacks) * kStackStagger);
  }
}

// How a slice of a block's run ended.
enum class Slice { released_flag, blocked, done };

// Runs the block's threads, by its priority, until one of them releases a
// flag (if the block pauses there), none is runnable, or all have exited.
Slice run_slice(Block& b) {
  const int threads = int(b.fibers.size());
  const bool descending = b.descending_threads;
  auto fiber_at = [&](int position) -> Fiber& {
    return b.fibers[descending ? threads - 1 - position : position];
  };
  // Other blocks may have released flags since the last slice.
  b.scan_from = 0;
  for (;;) {
    int position = b.scan_from;
    while (position < threads && !runnable(b, fiber_at(position))) ++position;
    if (position == threads) return b.alive == 0 ? Slice::done : Slice::blocked;
    Fiber& f = fiber_at(position);
    const int warp = linear_index(b, f.index) / 32;
    const uint64_t block_generation = b.generation, warp_generation = b.warps[warp].generation;
    f.state = State::ready;
    g_block = &b;
    g_flag_released = false;
    run_until_it_yields(f);
    g_block = nullptr;
    if (!b.error.empty()) fail("device emulator: {}", b.error);
    b.scan_from = position;
    if (b.generation != block_generation) {
      b.scan_from = 0;
    } else if (b.warps[warp].generation != warp_generation) {
      const int first_lane = 32 * warp, last_lane = std::min(threads, 32 * warp + 32) - 1;
      b.scan_from = std::min(b.scan_from, descending ? threads - 1 - last_lane : first_lane);
    }
    if (g_flag_released && b.pauses_at_release) return Slice::released_flag;
  }
}

void finish_block(const Block& b) {
  for (size_t i = b.shared_bytes; i < b.shared.size(); ++i)
    if (b.shared[i] != kGuardByte)
      fail("device emulator: block ({},{},{}) wrote {} bytes past the end of its {} bytes of dynamic shared memory",
           b.index.x, b.index.y, b.index.z, i - b.shared_bytes + 1, b.shared_bytes);
  for (size_t w = 0; w < b.warps.size(); ++w) {
    const size_t first = w - w % 4;
    if (b.warps[w].warpgroup_operations.size() != b.warps[first].warpgroup_operations.size())
      fail("device emulator: block ({},{},{}): warp {} issued {} warpgroup-wide operations, warp {} of its "
           "warpgroup {}",
           b.index.x, b.index.y, b.index.z, w, b.warps[w].warpgroup_operations.size(), first,
           b.warps[first].warpgroup_operations.size());
  }
}

// What a blocked block's threads wait for, for a deadlock message.
std::string waits_of(const Block& b) {
  int at_block = 0, at_warp = 0;
  std::string flags;
  for (const Fiber& f : b.fibers) {
    at_block += f.state == State::at_block_barrier;
    at_warp += f.state == State::at_warp_operation;
    if (f.state == State::at_flag_wait)
      flags += fmt::format(", thread {} for a flag to become {} (it is {})", linear_index(b, f.index), f.flag_value,
                           *f.flag);
  }
  return fmt::format("block ({},{},{}): {} threads wait at __syncthreads, {} at a warp-wide operation, {} have "
                     "exited{}",
                     b.index.x, b.index.y, b.index.z, at_block, at_warp, int(b.fibers.size()) - b.alive, flags);
}

}  // namespace

Schedule parse_schedule(const std::string& text) {
  Schedule parsed;
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = std::min(text.find('+', start), text.size());
    const std::string flag = text.substr(start, end - start);
    if (flag == "descending")
      parsed.descending = true;
    else if (flag == "copies_at_issue")
      parsed.copies_at_issue = true;
    else if (flag == "interleaved")
      parsed.interleaved = true;
    else if (flag == "oldest_first")
      parsed.oldest_first = true;
    else
      fail("device emulator: unknown schedule flag '{}' in SRGPT_EMULATOR_SCHEDULE='{}' (allowed: descending, "
           "copies_at_issue, interleaved, oldest_first, joined with '+'; empty for the default)",
           flag, text);
    start = end + 1;
  }
  if (parsed.descending && parsed.oldest_first)
    fail("device emulator: SRGPT_EMULATOR_SCHEDULE='{}' asks for streams newest first (descending) and oldest first "
         "(oldest_first); choose one",
         text);
  return parsed;
}

void set_schedule(const Schedule& chosen) { schedule() = chosen; }

void set_max_dynamic_shared(const void* kernel, size_t bytes) { g_max_dynamic_shared[kernel] = bytes; }

int take_launch_error() { return std::exchange(g_launch_error, 0); }

std::string describe(const Launch& launch) {
  std::string site = "a test";
  if (launch.site.file) {
    const char* slash = std::strrchr(launch.site.file, '/');
    site = fmt::format("{}:{}", slash ? slash + 1 : launch.site.file, launch.site.line);
  }
  return fmt::format("kernel launched at {} (grid ({},{},{}), block ({},{},{}))", site, launch.grid.x, launch.grid.y,
                     launch.grid.z, launch.block.x, launch.block.y, launch.block.z);
}

bool accept_launch(const void* kernel, const Launch& launch) {
  if (g_block) fail("device emulator: a kernel launched another kernel");
  const size_t threads = size_t(launch.block.x) * launch.block.y * launch.block.z;
  const size_t blocks = size_t(launch.grid.x) * launch.grid.y * launch.grid.z;
  const auto limit = g_max_dynamic_shared.find(kernel);
  const size_t shared_limit = limit == g_max_dynamic_shared.end() ? kDefaultDynamicShared : limit->second;
  if (threads == 0 || threads > kMaxThreadsPerBlock || blocks == 0 || launch.grid.y > 65535 ||
      launch.grid.z > 65535) {
    g_launch_error = kErrorInvalidConfiguration;
    return false;
  }
  if (launch.shared_bytes > shared_limit || launch.shared_bytes > kMaxDynamicSharedOptIn) {
    g_launch_error = kErrorInvalidValue;
    return false;
  }
  return true;
}

void run_kernel(const Launch& launch, const std::function<void()>& thread) {
  const size_t threads = size_t(launch.block.x) * launch.block.y * launch.block.z;
  const size_t blocks = size_t(launch.grid.x) * launch.grid.y * launch.grid.z;
  const bool descending = schedule().descending;
  // Resident blocks: one, or in the interleaved schedule up to
  // kInterleavedBlocks, each in its slot with its own fibers, stacks and
  // shared memory.
  const size_t slots = std::min(blocks, schedule().interleaved ? kInterleavedBlocks : size_t(1));
  char* stacks = g_stacks.get(threads * slots);
  std::vector<std::unique_ptr<Block>> resident(slots);
  for (size_t s = 0; s < slots; ++s) {
    auto& b = resident[s];
    b = std::make_unique<Block>();
    b->dim = launch.block;
    b->grid = launch.grid;
    b->fibers.resize(threads);
    b->warps.resize((threads + 31) / 32);
    b->shared_bytes = launch.shared_bytes;
    b->shared.resize(launch.shared_bytes + kSharedGuardBytes);
    b->stacks = stacks + s * threads * kStackBytes;
    // Interleaved, the slots alternate between two roles. Even: threads in
    // the schedule's order, pausing at each release, so a block whose
    // thread 0 releases a flag first leaves the others' writes to come.
    // Odd: threads in the reverse order, running until blocked, so a
    // block's other threads read first, before its thread 0 has waited,
    // and run ahead into data the even blocks have not released yet.
    const bool odd = schedule().interleaved && s % 2 == 1;
    b->descending_threads = descending != odd;
    b->pauses_at_release = schedule().interleaved && !odd;
  }
  g_thread_body = &thread;
  // Blocks start in blockIdx order (descending: the reverse), each as a
  // slot frees; the slots run in turn, a slice each (run_slice).
  size_t started = 0;
  std::vector<bool> running(slots, false);
  auto start_next = [&](size_t s) {
    if (started == blocks) {
      running[s] = false;
      return;
    }
    const size_t i = descending ? blocks - 1 - started : started;
    ++started;
    Block& b = *resident[s];
    b.index = uint3{unsigned(i % launch.grid.x), unsigned(i / launch.grid.x % launch.grid.y),
                    unsigned(i / (size_t(launch.grid.x) * launch.grid.y))};
    start_block(b);
    running[s] = true;
  };
  for (size_t s = 0; s < slots; ++s) start_next(s);
  for (;;) {
    bool any_running = false, progress = false;
    for (size_t s = 0; s < slots; ++s) {
      if (!running[s]) continue;
      any_running = true;
      const Slice slice = run_slice(*resident[s]);
      if (slice == Slice::blocked) continue;
      progress = true;
      if (slice == Slice::done) {
        finish_block(*resident[s]);
        start_next(s);
      }
    }
    if (!any_running) break;
    if (!progress) {
      std::string waits;
      for (size_t s = 0; s < slots; ++s)
        if (running[s]) waits += (waits.empty() ? "" : "; ") + waits_of(*resident[s]);
      fail("device emulator: deadlock with {} of {} blocks started: {}", started, blocks, waits);
    }
  }
  g_thread_body = nullptr;
}

void wait_until_equal(const unsigned* flag, unsigned value) {
  block();  // fails outside a kernel
  if (*flag == value) return;
  if (!schedule().interleaved)
    fault(fmt::format("waits for a flag to become {} but it is {}: no block that started earlier will store that "
                      "value (blocks run one at a time in this schedule)",
                      value, *flag));
  g_fiber->state = State::at_flag_wait;
  g_fiber->flag = flag;
  g_fiber->flag_value = value;
  yield();
}

void release_flag(unsigned* flag, unsigned value) {
  block();
  *flag = value;
  if (!schedule().interleaved) return;
  // The other resident blocks run before this one goes on: a waiter then
  // sees exactly what this block wrote before its release.
  g_flag_released = true;
  yield();
}

const uint3& thread_index() {
  block();  // fails outside a kernel
  return g_fiber->index;
}
const uint3& block_index() { return block().index; }
const dim3& block_dim() { return block().dim; }
const dim3& grid_dim() { return block().grid; }
unsigned char* dynamic_shared() { return block().shared.data(); }

bool in_shared(const void* p, size_t bytes) {
  const Block& b = block();
  const auto* c = static_cast<const unsigned char*>(p);
  return c >= b.shared.data() && c + bytes <= b.shared.data() + b.shared_bytes;
}

void fault(const std::string& message) { fail("{}", message); }

void sync_threads() {
  Block& b = block();
  if (++b.arrived == b.alive) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  g_fiber->state = State::at_block_barrier;
  g_fiber->waiting_for = b.generation;
  yield();
}

void warp_collective(const char* kind, const void* in, size_t in_bytes, void* out, size_t out_bytes,
                     CollectiveCompute compute) {
  Warp& warp = my_warp();
  const int lane = linear_index(*g_block, g_fiber->index) % 32;
  if (warp.lanes != 32) fault(fmt::format("{} in a warp of {} threads (the block size is not a multiple of 32)", kind, warp.lanes));
  if (warp.exited) fault(fmt::format("{} in a warp some of whose lanes have exited", kind));
  if (warp.arrived == 0) {
    warp.kind = kind;
    warp.in_bytes = in_bytes;
    warp.out_bytes = out_bytes;
  } else if (warp.kind != kind && std::strcmp(warp.kind, kind) != 0) {
    fault(fmt::format("lanes of one warp at different warp-wide operations: {} and {}", warp.kind, kind));
  }
  std::memcpy(warp.in + lane * in_bytes, in, in_bytes);
  if (++warp.arrived == 32) {
    compute(warp.in, warp.out);
    warp.arrived = 0;
    ++warp.generation;
  } else {
    g_fiber->state = State::at_warp_operation;
    g_fiber->waiting_for = warp.generation;
    yield();
  }
  std::memcpy(out, warp.out + lane * out_bytes, out_bytes);
}

void warpgroup_operation(const char* kind, uint64_t signature) {
  Block& b = block();
  const size_t warp = linear_index(b, g_fiber->index) / 32, first = warp - warp % 4;
  if (first + 4 > b.warps.size() || b.warps[first + 3].lanes != 32)
    fault(fmt::format("{} by warp {} of a block of {} threads: its warpgroup (4 warps) is not whole", kind, warp,
                      b.fibers.size()));
  auto& mine = b.warps[warp].warpgroup_operations;
  mine.emplace_back(kind, signature);
  for (size_t w = first; w < first + 4; ++w) {
    const auto& other = b.warps[w].warpgroup_operations;
    if (w == warp || other.size() < mine.size()) continue;
    const auto& theirs = other[mine.size() - 1];
    if (std::strcmp(theirs.first, kind) != 0 || theirs.second != signature)
      fault(fmt::format("warps {} and {} of a warpgroup differ at their warpgroup-wide operation {}: {} ({:#x}) "
                        "and {} ({:#x})",
                        w, warp, mine.size(), theirs.first, theirs.second, kind, signature));
  }
}

bool warp_has_deferred(const void* target) {
  const Warp& warp = my_warp();
  auto targets = [&](const std::vector<DeferredWork>& group) {
    return std::any_of(group.begin(), group.end(), [&](const DeferredWork& d) { return d.target == target; });
  };
  return targets(warp.open_deferred) ||
         std::any_of(warp.committed_deferred.begin(), warp.committed_deferred.end(), targets);
}

void warp_defer(const void* target, std::function<void()> work) {
  my_warp().open_deferred.push_back(DeferredWork{target, std::move(work)});
}

void warp_commit_deferred() {
  Warp& warp = my_warp();
  warp.committed_deferred.push_back(std::move(warp.open_deferred));
  warp.open_deferred.clear();
}

void warp_wait_deferred(int pending_groups) {
  Warp& warp = my_warp();
  while (int(warp.committed_deferred.size()) > pending_groups) {
    // Moved out first: the work may not queue more on this group.
    std::vector<DeferredWork> group = std::move(warp.committed_deferred.front());
    warp.committed_deferred.pop_front();
    for (DeferredWork& d : group) d.work();
  }
}

void cp_async(void* shared_dst, const void* src, size_t bytes, size_t src_bytes) {
  if (!in_shared(shared_dst, bytes)) fault("cp.async destination outside the block's dynamic shared memory");
  if (reinterpret_cast<uintptr_t>(shared_dst) % bytes || reinterpret_cast<uintptr_t>(src) % bytes)
    fault(fmt::format("cp.async of {} bytes with a misaligned address", bytes));
  if (src_bytes > bytes) fault("cp.async source size larger than the copy");
  Copy copy{shared_dst, src, bytes, src_bytes};
  if (schedule().copies_at_issue)
    perform(copy);
  else
    g_fiber->open_group.push_back(copy);
}

void cp_async_commit() {
  Fiber& f = *g_fiber;
  f.committed_groups.push_back(std::move(f.open_group));
  f.open_group.clear();
}

void cp_async_wait(int pending_groups) {
  Fiber& f = *g_fiber;
  while (int(f.committed_groups.size()) > pending_groups) {
    for (const Copy& c : f.committed_groups.front()) perform(c);
    f.committed_groups.pop_front();
  }
}

// ---- Device memory

namespace {

struct DeviceAllocation {
  char* mapping;  // a guard page, the pages holding the allocation, a guard page
  size_t mapping_bytes;
  size_t bytes;
};
constexpr size_t kDeviceAlignment = 256;  // cudaMalloc's
// The live allocations by their start.
std::map<const char*, DeviceAllocation> g_device_memory;
size_t g_allocations_requested = 0;
std::optional<size_t> g_failing_request;  // inject_allocation_failure
// What the device runs now, for the messages of faults in device memory.
const std::string* g_running_work = nullptr;
struct RunningWork {
  explicit RunningWork(const std::string& what) : previous(std::exchange(g_running_work, &what)) {}
  ~RunningWork() { g_running_work = previous; }
  const std::string* previous;
};

size_t page_bytes() {
  static const size_t bytes = size_t(sysconf(_SC_PAGESIZE));
  return bytes;
}
// The guard bytes: [mapping + page, start) and [start + bytes, back guard page).
char* guard_front(const DeviceAllocation& a) { return a.mapping + page_bytes(); }
char* guard_back_end(const DeviceAllocation& a) { return a.mapping + a.mapping_bytes - page_bytes(); }

// The SIGSEGV action before the emulator's.
struct sigaction g_previous_segv_action;

// Writes to stderr which allocation's guard page a segmentation fault hit,
// then restores the action before it, which the repeated access meets (a
// test framework's report, or the end of the process). Async-signal-safe
// but for snprintf, the map lookup and the strings, which nothing else
// touches while a kernel or a copy runs.
[[maybe_unused]] void name_device_memory_fault(int, siginfo_t* info, void*) {
  const char* address = static_cast<const char*>(info->si_addr);
  for (const auto& [start, a] : g_device_memory) {
    const bool before = address >= a.mapping && address < guard_front(a);
    const bool after = address >= guard_back_end(a) && address < a.mapping + a.mapping_bytes;
    if (!before && !after) continue;
    char text[768];
    int n = std::snprintf(text, sizeof text,
                          "srgpt device emulator: segmentation fault %zu bytes %s the %zu-byte device allocation at "
                          "%p, by %s",
                          before ? size_t(start - address) : size_t(address - (start + a.bytes)),
                          before ? "before the start of" : "past the end of", a.bytes, static_cast<const void*>(start),
                          g_running_work ? g_running_work->c_str() : "the host");
    if (g_running_work && g_block && g_fiber && n > 0 && size_t(n) < sizeof text)
      n += std::snprintf(text + n, sizeof text - size_t(n), ", thread (%u,%u,%u) of block (%u,%u,%u)",
                         g_fiber->index.x, g_fiber->index.y, g_fiber->index.z, g_block->index.x, g_block->index.y,
                         g_block->index.z);
    if (n > 0 && size_t(n) < sizeof text - 1) {
      text[n++] = '\n';
      [[maybe_unused]] const ssize_t written = write(STDERR_FILENO, text, size_t(n));
    }
    break;
  }
  sigaction(SIGSEGV, &g_previous_segv_action, nullptr);
}

// Puts name_device_memory_fault before the current SIGSEGV action, unless
// it is that already. Test frameworks install their own for each test, so
// every allocation checks.
void name_device_memory_faults() {
#ifndef SRGPT_EMULATOR_ASAN  // AddressSanitizer reports them itself
  struct sigaction current {};
  if (sigaction(SIGSEGV, nullptr, &current) != 0) fail("device emulator: cannot read the SIGSEGV action");
  if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == name_device_memory_fault) return;
  struct sigaction action {};
  action.sa_sigaction = name_device_memory_fault;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  if (sigaction(SIGSEGV, &action, &g_previous_segv_action) != 0)
    fail("device emulator: cannot install its SIGSEGV action");
#endif
}

// Guard bytes of device memory: 0xA5 at even addresses, 0xFF at odd ones,
// so that a bf16 or fp32 read of them is a NaN (0xFFA5, 0xFFA5FFA5) that
// spreads into the reader's results, while the NaNs kernels write (0x7FC0,
// 0x7FC00000) still differ from them.
unsigned char guard_byte(const char* p) { return (reinterpret_cast<uintptr_t>(p) & 1) ? 0xFF : 0xA5; }
[[maybe_unused]] bool guard_intact(const char* p) { return static_cast<unsigned char>(*p) == guard_byte(p); }
void fill_guard(char* from, char* to) {
  for (char* p = from; p < to; ++p) *p = char(guard_byte(p));
}

// Throws, naming `by`, if a write reached an allocation's guard bytes;
// those are restored, so that one write is reported once.
void check_guard_bytes([[maybe_unused]] const std::string& by) {
#ifndef SRGPT_EMULATOR_ASAN  // there the guard bytes are poisoned
  for (const auto& [start, a] : g_device_memory) {
    char* first = const_cast<char*>(start);
    char* end = first + a.bytes;
    char* changed_before = guard_front(a);  // the first changed byte before `first`, or `first`
    while (changed_before < first && guard_intact(changed_before)) ++changed_before;
    char* changed_after = guard_back_end(a);  // one past the last changed byte after `end`, or `end`
    while (changed_after > end && guard_intact(changed_after - 1)) --changed_after;
    if (changed_before == first && changed_after == end) continue;
    fill_guard(guard_front(a), first);
    fill_guard(end, guard_back_end(a));
    const bool after = changed_after != end;
    fail("device emulator: {} wrote {} the {}-byte device allocation at {} (guard bytes changed {} {} bytes {} it)",
         by, after ? "past the end of" : "before the start of", a.bytes, static_cast<const void*>(start),
         after ? "up to" : "from", after ? size_t(changed_after - end) : size_t(first - changed_before),
         after ? "past" : "before");
  }
#endif
}

}  // namespace

void* allocate_device_memory(size_t bytes) {
  name_device_memory_faults();
  if (g_failing_request == g_allocations_requested++) {
    g_failing_request.reset();
    return nullptr;
  }
  const size_t page = page_bytes();
  const size_t rounded = (bytes + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment;
  const size_t mapping_bytes = (rounded + page - 1) / page * page + 2 * page;
  void* mapped = mmap(nullptr, mapping_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) return nullptr;
  const DeviceAllocation a{static_cast<char*>(mapped), mapping_bytes, bytes};
  if (mprotect(a.mapping, page, PROT_NONE) != 0 || mprotect(guard_back_end(a), page, PROT_NONE) != 0) {
    munmap(mapped, mapping_bytes);
    return nullptr;
  }
  char* start = guard_back_end(a) - rounded;
  fill_guard(guard_front(a), start);
  std::fill(start, start + bytes, char(kPoison));
  fill_guard(start + bytes, guard_back_end(a));
#ifdef SRGPT_EMULATOR_ASAN
  // The guard pages' shadow too: AddressSanitizer names a fault in an
  // allocation's last, partly addressable 8 bytes by the shadow after them,
  // which without this was the back guard page's, unpoisoned ("unknown-crash").
  ASAN_POISON_MEMORY_REGION(a.mapping, size_t(start - a.mapping));
  ASAN_POISON_MEMORY_REGION(start + bytes, size_t(a.mapping + a.mapping_bytes - (start + bytes)));
#endif
  g_device_memory.emplace(start, a);
  return start;
}

bool free_device_memory(void* p) {
  auto it = g_device_memory.find(static_cast<const char*>(p));
  if (it == g_device_memory.end()) return false;
  const DeviceAllocation a = it->second;
  g_device_memory.erase(it);
#ifdef SRGPT_EMULATOR_ASAN
  ASAN_UNPOISON_MEMORY_REGION(a.mapping, a.mapping_bytes);
#endif
  munmap(a.mapping, a.mapping_bytes);
  return true;
}

size_t device_allocations_requested() { return g_allocations_requested; }

void inject_allocation_failure(size_t after) { g_failing_request = g_allocations_requested + after; }

DeviceMemoryInUse device_memory_in_use() {
  DeviceMemoryInUse in_use;
  for (const auto& [start, a] : g_device_memory) {
    ++in_use.allocations;
    in_use.bytes += a.bytes;
  }
  return in_use;
}

// ---- Streams and events

namespace {

// Every stream ever created, in creation order; the legacy default stream
// first. Destroyed streams stay (emptied), so events and waits that name
// them remain valid.
std::vector<std::unique_ptr<CUstream_st>>& streams() {
  static std::vector<std::unique_ptr<CUstream_st>> all = [] {
    std::vector<std::unique_ptr<CUstream_st>> created;
    created.push_back(std::make_unique<CUstream_st>());
    return created;
  }();
  return all;
}
CUstream_st* resolve(CUstream_st* stream) { return stream ? stream : streams().front().get(); }

std::map<const char*, size_t> g_pinned;  // start -> bytes

bool runnable(const CUstream_st& stream) {
  const CUstream_st::Item& front = stream.queue.front();
  return !front.after_stream || front.after_stream->completed >= front.after_position;
}

// Runs the work in place, so that work that is not ready (WorkNotReady)
// stays at the front. (Work queued meanwhile does not move it: a deque's
// push_back keeps references to its elements.)
void run_front(CUstream_st& stream) {
  CUstream_st::Item& item = stream.queue.front();
  if (item.work) {
    try {
      const RunningWork running(item.what);
      item.work();
    } catch (const WorkNotReady&) {
      throw;
    } catch (const std::exception& e) {
      fail("{}: {}", item.what, e.what());  // names the launch, copy or call that faulted
    }
    check_guard_bytes(item.what);
  }
  stream.queue.pop_front();
  ++stream.completed;
}

// Ascending: only what the stream's first `position` items need.
void run_needed(CUstream_st& stream, uint64_t position) {
  while (stream.completed < position) {
    const CUstream_st::Item& front = stream.queue.front();
    if (front.after_stream) run_needed(*front.after_stream, front.after_position);
    run_front(stream);
  }
}

// Descending and oldest_first: any runnable item, from the newest stream or
// the oldest, until the target is reached. Waits name items queued before
// them, so one is always runnable.
void run_any_first(const CUstream_st& target, uint64_t position, bool newest) {
  auto ready = [](const auto& s) { return !s->queue.empty() && runnable(*s); };
  while (target.completed < position) {
    auto& all = streams();
    run_front(newest ? **std::find_if(all.rbegin(), all.rend(), ready) : **std::find_if(all.begin(), all.end(), ready));
  }
}

void drop_all_work() {
  for (auto& s : streams()) {
    s->queue.clear();
    s->completed = s->enqueued;
  }
}

void run_until(CUstream_st& stream, uint64_t position) {
  try {
    // Only the host runs between synchronisations; each piece of work is
    // checked as it ends (run_front).
    check_guard_bytes("the host");
    if (schedule().descending || schedule().oldest_first)
      run_any_first(stream, position, schedule().descending);
    else
      run_needed(stream, position);
  } catch (const WorkNotReady&) {
    throw;  // nothing went wrong yet: the work stays queued
  } catch (...) {
    // The device is unusable after a fault: drop the rest of the work.
    drop_all_work();
    throw;
  }
}

// A query: false where work that is not ready stops it.
bool run_until_ready(CUstream_st& stream, uint64_t position) {
  try {
    run_until(stream, position);
    return true;
  } catch (const WorkNotReady&) {
    return false;
  }
}

// A synchronisation: work that is not ready would keep a GPU's waiting
// forever, so here it is a fault.
void synchronize_until(CUstream_st& stream, uint64_t position) {
  try {
    run_until(stream, position);
  } catch (const WorkNotReady& e) {
    drop_all_work();
    fault(std::string("a synchronisation would wait forever for queued work that cannot complete: ") + e.what());
  }
}

}  // namespace

CUstream_st* create_stream() {
  streams().push_back(std::make_unique<CUstream_st>());
  return streams().back().get();
}

void destroy_stream(CUstream_st* stream) { synchronize_stream(stream); }

void enqueue(CUstream_st* stream, std::function<void()> work, std::string what) {
  CUstream_st& s = *resolve(stream);
  s.queue.push_back({std::move(work), std::move(what)});
  ++s.enqueued;
}

CUevent_st* create_event(bool timing) {
  auto* event = new CUevent_st;
  event->timing = timing;
  return event;
}
void destroy_event(CUevent_st* event) { delete event; }

void record_event(CUevent_st* event, CUstream_st* stream) {
  if (event->timing) {
    auto reached = std::make_shared<std::optional<std::chrono::steady_clock::time_point>>();
    enqueue(stream, [reached] { *reached = std::chrono::steady_clock::now(); }, "cudaEventRecord");
    event->reached = reached;
  }
  event->stream = resolve(stream);
  event->position = event->stream->enqueued;
}

bool event_elapsed_ms(float* ms, CUevent_st* start, CUevent_st* end) {
  if (!start->timing || !end->timing || !start->reached || !end->reached) return false;
  synchronize_event(start);
  synchronize_event(end);
  *ms = std::chrono::duration<float, std::milli>(**end->reached - **start->reached).count();
  return true;
}

void stream_wait_event(CUstream_st* stream, CUevent_st* event) {
  if (!event->stream) return;  // never recorded: nothing to wait for
  CUstream_st& s = *resolve(stream);
  s.queue.push_back({nullptr, "cudaStreamWaitEvent", event->stream, event->position});
  ++s.enqueued;
}

void synchronize_event(CUevent_st* event) {
  if (event->stream) synchronize_until(*event->stream, event->position);
}

void synchronize_stream(CUstream_st* stream) {
  CUstream_st& s = *resolve(stream);
  synchronize_until(s, s.enqueued);
}

void synchronize_device() {
  auto& all = streams();
  if (schedule().descending)
    for (auto it = all.rbegin(); it != all.rend(); ++it) synchronize_until(**it, (*it)->enqueued);
  else
    for (auto& s : all) synchronize_until(*s, s->enqueued);
}

bool query_stream(CUstream_st* stream) {
  CUstream_st& s = *resolve(stream);
  return run_until_ready(s, s.enqueued);
}

bool query_event(CUevent_st* event) { return !event->stream || run_until_ready(*event->stream, event->position); }

void register_pinned(const void* p, size_t bytes) { g_pinned[static_cast<const char*>(p)] = bytes; }
void unregister_pinned(const void* p) { g_pinned.erase(static_cast<const char*>(p)); }
bool is_pinned(const void* p) {
  const char* c = static_cast<const char*>(p);
  auto it = g_pinned.upper_bound(c);
  if (it == g_pinned.begin()) return false;
  --it;
  return c < it->first + it->second;
}

}  // namespace srgpt::emulation
