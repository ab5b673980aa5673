#pragma once
// A CPU emulator for srgpt's CUDA kernels, so that CI (which has no GPU)
// runs their indexing, tiling and synchronisation against the cpu backend.
//
// Every thread of a block is a fiber (ucontext) in one OS thread; blocks run
// one after another (or a few at a time in the interleaved schedule). A
// fiber runs until it reaches __syncthreads, a warp-wide operation
// (shuffle, __syncwarp, ldmatrix, mma) or a flag wait or release, where
// the scheduler switches to the next fiber; a warp-wide operation completes
// when all 32 lanes have reached it, and __syncthreads when every live
// thread of the block has. Faults the hardware would hide or turn into
// garbage are errors here: a barrier some threads never reach (deadlock),
// lanes of one warp at different warp-wide operations, a lane exiting while
// its warp waits for it, ldmatrix or cp.async addresses outside the block's
// shared memory or misaligned, writes past the end of the dynamic shared
// memory, cp.async copies never waited for, writes beside a device
// allocation and accesses beyond its guard bytes (Device memory, below),
// and launch configurations the device would refuse (too much shared
// memory, too many threads).
//
// Streams are asynchronous as on the device: kernels, copies and library
// calls queue on their stream and run when a synchronising call needs them
// (Streams and events, below).
//
// What it cannot show: speed, register pressure, and races that depend on
// timing. It narrows the last: dynamic shared memory starts as NaN bytes,
// and the Schedule below pushes the order of threads, the arrival of
// cp.async data, the turns of blocks that hand data over through flags and
// the order of the streams' work to extremes, so that a missing barrier or
// stream wait reads stale or poisoned data, or overwrites data still in
// use, under one of them.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// Built with AddressSanitizer (SRGPT_SANITIZE).
#if defined(__SANITIZE_ADDRESS__)
#define SRGPT_EMULATOR_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SRGPT_EMULATOR_ASAN 1
#endif
#endif

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
// The runtime's stream and event types: an emulated stream's queue of work
// and an event's place in it.
struct CUstream_st;
struct CUevent_st;
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
struct alignas(8) float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }

namespace srgpt::emulation {

// Where a kernel was launched: the prepared kernel sources pass their
// __FILE__ and __LINE__ (tests/emulation/CMakeLists.txt), so that the
// emulator's messages name the launch.
struct LaunchSite {
  const char* file = nullptr;
  int line = 0;
};

// A kernel launch's <<<grid, block, shared bytes, stream>>>.
struct Launch {
  Launch(dim3 grid_, dim3 block_, size_t shared_bytes_ = 0, CUstream_st* stream_ = nullptr)
      : grid(grid_), block(block_), shared_bytes(shared_bytes_), stream(stream_) {}
  Launch(LaunchSite site_, dim3 grid_, dim3 block_, size_t shared_bytes_ = 0, CUstream_st* stream_ = nullptr)
      : Launch(grid_, block_, shared_bytes_, stream_) {
    site = site_;
  }
  dim3 grid, block;
  size_t shared_bytes;
  CUstream_st* stream;
  LaunchSite site;
};
// "kernel launched at attention.cu:1536 (grid (8,12,32), block (128,1,1))".
std::string describe(const Launch& launch);

// How the emulator settles what the hardware leaves open. Blocks run one
// at a time, in blockIdx order (descending: the last first; CUDA promises
// no order); interleaved: up to kInterleavedBlocks at once, taking turns.
// Blocks in even slots run until one of their threads releases a flag
// (release_flag) or none can go on; blocks in odd slots run until none can
// go on, their threads in the reverse priority. So a block whose thread 0
// releases a flag before its other threads have written is followed by one
// whose other threads read first, and that one runs ahead into data not
// yet released: a missing barrier before the release, or after the wait,
// reads unwritten data; and a wait for a flag no resident block will set is
// a deadlock. Threads run by
// priority: the runnable thread with the lowest (descending: highest)
// index always runs next, so warps drift as far apart as the barriers let
// them. cp.async data lands when the copy is issued, or only at the
// cp.async.wait_group that covers it. The kernels with barriers are tested
// under all four combinations: a missing barrier then shows in at least one.
// Streams: ascending runs only the work a synchronising call needs, oldest
// stream first, leaving work nothing waits for queued (a missing join shows);
// descending runs all runnable work, newest stream first, so a stream's work
// runs as early as its event waits allow (a missing fork shows);
// oldest_first runs all runnable work, oldest stream first, so an older
// stream's work runs before a newer stream's that it does not wait for, even
// where the host waits for the newer stream first (a missing join shows
// there too: NCCL's stream beside the backend's).
//
// A process starts with the schedule SRGPT_EMULATOR_SCHEDULE names (see
// parse_schedule; unset: ascending, data at the wait); ctest sets it.
struct Schedule {
  bool descending = false;
  bool copies_at_issue = false;
  bool interleaved = false;
  bool oldest_first = false;  // streams only; not with descending
};
constexpr size_t kInterleavedBlocks = 4;
// "" for the default, else flags joined with '+': "descending",
// "copies_at_issue", "interleaved", "oldest_first". Throws srgpt::Error
// naming an unknown flag, or for descending with oldest_first.
Schedule parse_schedule(const std::string& text);
void set_schedule(const Schedule& schedule);

// Device limits the launch checks (those of an H100).
constexpr size_t kDefaultDynamicShared = 48 * 1024;
constexpr size_t kMaxDynamicSharedOptIn = 232448;
constexpr unsigned kMaxThreadsPerBlock = 1024;

// cudaFuncSetAttribute(kernel, MaxDynamicSharedMemorySize, bytes).
void set_max_dynamic_shared(const void* kernel, size_t bytes);
// The launch error a kernel launch left (cudaGetLastError): 0 for none.
int take_launch_error();

// False, leaving a launch error, for a configuration the device would
// refuse.
bool accept_launch(const void* kernel, const Launch& launch);
// Runs `thread` for every thread of every block of the launch; throws
// srgpt::Error when the emulation detects a fault.
void run_kernel(const Launch& launch, const std::function<void()>& thread);

// ---- Streams and events
// Kernels, copies, memsets and library calls queue on their stream (null:
// the legacy default stream, the oldest) and run when a synchronisation
// needs them, in the order the Schedule picks among streams; within a
// stream, in order, and after the work of the events it waits for. Faults
// of queued work are thrown by the synchronising call that ran it; the
// queues are then emptied.
CUstream_st* create_stream();
void destroy_stream(CUstream_st* stream);  // runs its queued work first
// `what` names the work in fault messages ("cudaMemcpyAsync", describe(launch)).
void enqueue(CUstream_st* stream, std::function<void()> work, std::string what);
// A timing event (without cudaEventDisableTiming) notes the host time at
// which the work before each record has run.
CUevent_st* create_event(bool timing);
void destroy_event(CUevent_st* event);
void record_event(CUevent_st* event, CUstream_st* stream);
// The host time between two timing events' records, after running the work
// before them (as cudaEventQuery does here); false if either is not a
// timing event or was never recorded.
bool event_elapsed_ms(float* ms, CUevent_st* start, CUevent_st* end);
// The stream's later work waits for the work before the event's last record.
void stream_wait_event(CUstream_st* stream, CUevent_st* event);
void synchronize_event(CUevent_st* event);
void synchronize_stream(CUstream_st* stream);
void synchronize_device();
// Thrown by queued work that cannot run yet and may never (an emulated
// NCCL collective whose peers do not arrive): it stays queued. A query
// (cudaStreamQuery, cudaEventQuery) then answers not ready; a
// synchronisation, which on a GPU would wait forever, is a fault saying so.
struct WorkNotReady : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// As synchronize_stream and synchronize_event, but false where work that
// is not ready stops them.
bool query_stream(CUstream_st* stream);
bool query_event(CUevent_st* event);

// ---- Device memory (cudaMalloc; cudaHostAlloc too)
// Each allocation is aligned to 256 bytes, as the runtime's, and ends
// where an inaccessible page begins, with another before its first page.
// The bytes between its end and that page (fewer than 256), and between
// the page start and its start, hold guard bytes, which read as NaN in
// bf16 and fp32. So a read of them spreads NaN into the reader's results;
// a write into them is a fault of the work that made it, found when that
// work has run (and one by the host, found at the next synchronisation or
// query); an access
// beyond them is a segmentation fault, for which the emulator first
// writes to stderr which allocation it missed, by how far, and which work
// and thread made it. (Under AddressSanitizer the guard bytes are poisoned
// instead, and it reports the access.) New allocations hold 0xFF bytes,
// NaN in bf16 and fp32: a GPU's hold whatever was there before.
// nullptr when the memory cannot be mapped.
void* allocate_device_memory(size_t bytes);
// False, freeing nothing, when p is not a live allocation's start.
bool free_device_memory(void* p);
// The allocations not yet freed: what a test of srgpt's ownership of device
// memory compares before and after the objects that own it.
struct DeviceMemoryInUse {
  size_t allocations = 0, bytes = 0;
};
DeviceMemoryInUse device_memory_in_use();
// Allocations asked for so far, failed ones too.
size_t device_allocations_requested();
// The allocation `after` requests from now (0: the next) fails, once, as
// on a device that is full: what a test of srgpt's unwinding injects.
void inject_allocation_failure(size_t after);

// Page-locked host memory (cudaHostAlloc): copies from it read it when
// they run; copies from other host memory read it when queued, as the
// runtime stages pageable memory before it returns.
void register_pinned(const void* p, size_t bytes);
void unregister_pinned(const void* p);
bool is_pinned(const void* p);

// Inside a kernel.
const uint3& thread_index();
const uint3& block_index();
const dim3& block_dim();
const dim3& grid_dim();
unsigned char* dynamic_shared();
void sync_threads();
// A flag between blocks (ptx.cuh's wait_for_flag and release_flag). One
// block at a time, a wait for a value the flag does not hold is a fault
// (the block that would set it has not started); interleaved, the thread
// waits, and a release ends its block's turn.
void wait_until_equal(const unsigned* flag, unsigned value);
void release_flag(unsigned* flag, unsigned value);
[[noreturn]] void fault(const std::string& message);
// True when [p, p + bytes) lies in the block's dynamic shared memory.
bool in_shared(const void* p, size_t bytes);

// A warp-wide operation: every lane hands in `in_bytes` of input; once all
// 32 have, compute(inputs, outputs) runs once over the lanes' inputs
// (lane-major, in_bytes apart) and fills their outputs (out_bytes apart);
// each lane then gets its own. `kind` names the operation, and all lanes
// must be at the same one.
constexpr size_t kMaxCollectiveBytes = 64;
using CollectiveCompute = void (*)(const unsigned char* inputs, unsigned char* outputs);
void warp_collective(const char* kind, const void* in, size_t in_bytes, void* out, size_t out_bytes,
                     CollectiveCompute compute);

template <typename In, typename Out>
Out warp_collective(const char* kind, const In& in, CollectiveCompute compute) {
  static_assert(sizeof(In) <= kMaxCollectiveBytes && sizeof(Out) <= kMaxCollectiveBytes);
  static_assert(std::is_trivially_copyable_v<In> && std::is_trivially_copyable_v<Out>);
  Out out;
  warp_collective(kind, &in, sizeof(In), &out, sizeof(Out), compute);
  return out;
}

// Asynchronous warp-wide operations (wgmma): a warp-wide operation's
// compute may queue work on its warp, to run when the warp waits for the
// work's group, as cp.async's groups but per warp. Called from inside a
// compute. `target` names what the work writes (lane 0's accumulators), so
// that an operation can tell it continues one still queued: the hardware
// chains such operations in issue order. A warp whose lanes exit with work
// still queued is a fault.
bool warp_has_deferred(const void* target);
void warp_defer(const void* target, std::function<void()> work);
void warp_commit_deferred();
// Runs the queued work of all but the newest `pending_groups` committed
// groups, oldest first.
void warp_wait_deferred(int pending_groups);

// Warpgroup-wide operations (wgmma): the four warps of a warpgroup (warps
// 4k .. 4k+3 of the block, all present) must issue the same operations in
// the same order, with the same `signature` (what must agree across the
// warps, e.g. a shared-memory descriptor). Called from inside a warp-wide
// operation's compute; checked as the warps go and when the block ends.
void warpgroup_operation(const char* kind, uint64_t signature);

// cp.async: a copy of `bytes` into shared memory from `src_bytes` of src
// (the rest zero-filled), made when a wait_group covers its group.
void cp_async(void* shared_dst, const void* src, size_t bytes, size_t src_bytes);
void cp_async_commit();
void cp_async_wait(int pending_groups);

// kernel<<<launch>>>(arguments) is rewritten, when the kernel sources are
// prepared for the emulator, as kernel ^ Launch(...) ^ kernel_arguments(...).
template <typename... P>
struct BoundLaunch {
  void (*kernel)(P...);
  Launch launch;
};
template <typename... P>
BoundLaunch<P...> operator^(void (*kernel)(P...), const Launch& launch) {
  return {kernel, launch};
}
template <typename... A>
std::tuple<std::decay_t<A>...> kernel_arguments(A&&... arguments) {
  return std::tuple<std::decay_t<A>...>(std::forward<A>(arguments)...);
}
template <typename... P, typename... A>
void operator^(const BoundLaunch<P...>& bound, const std::tuple<A...>& arguments) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  if (!accept_launch(reinterpret_cast<const void*>(bound.kernel), bound.launch)) return;
  enqueue(
      bound.launch.stream,
      [kernel = bound.kernel, launch = bound.launch, arguments] {
        run_kernel(launch, [&] { std::apply([&](const auto&... a) { kernel(a...); }, arguments); });
      },
      describe(bound.launch));
}

}  // namespace srgpt::emulation
