#pragma once
// A CPU emulator for srgpt's CUDA kernels, so that CI (which has no GPU)
// runs their indexing, tiling and synchronisation against the cpu backend.
//
// Every thread of a block is a fiber (ucontext) in one OS thread; blocks run
// one after another. A fiber runs until it reaches __syncthreads or a
// warp-wide operation (shuffle, __syncwarp, ldmatrix, mma), where the
// scheduler switches to the next fiber; a warp-wide operation completes
// when all 32 lanes have reached it, and __syncthreads when every live
// thread of the block has. Faults the hardware would hide or turn into
// garbage are errors here: a barrier some threads never reach (deadlock),
// lanes of one warp at different warp-wide operations, a lane exiting while
// its warp waits for it, ldmatrix or cp.async addresses outside the block's
// shared memory or misaligned, writes past the end of the dynamic shared
// memory, cp.async copies never waited for, and launch configurations the
// device would refuse (too much shared memory, too many threads).
//
// What it cannot show: speed, register pressure, and races that depend on
// timing. It narrows the last: dynamic shared memory starts as NaN bytes,
// and the Schedule below pushes the order of threads and the arrival of
// cp.async data to extremes, so that a missing barrier reads stale or
// poisoned data, or overwrites data still in use, under one of them.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
struct alignas(8) float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }

namespace srgpt::emulation {

// A kernel launch's <<<grid, block, shared bytes, stream>>>.
struct Launch {
  Launch(dim3 grid_, dim3 block_, size_t shared_bytes_ = 0, const void* = nullptr)
      : grid(grid_), block(block_), shared_bytes(shared_bytes_) {}
  dim3 grid, block;
  size_t shared_bytes;
};

// How the emulator settles what the hardware leaves open. Threads run by
// priority: the runnable thread with the lowest (descending: highest)
// index always runs next, so warps drift as far apart as the barriers let
// them. cp.async data lands when the copy is issued, or only at the
// cp.async.wait_group that covers it. The kernels with barriers are tested
// under all four combinations: a missing barrier then shows in at least one.
//
// A process starts with the schedule SRGPT_EMULATOR_SCHEDULE names (see
// parse_schedule; unset: ascending, data at the wait); ctest sets it.
struct Schedule {
  bool descending = false;
  bool copies_at_issue = false;
};
// "" for the default, else flags joined with '+': "descending",
// "copies_at_issue". Throws srgpt::Error naming an unknown flag.
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

// Runs `thread` for every thread of every block of the launch; throws
// srgpt::Error when the emulation detects a fault. A configuration the
// device would refuse is not run but leaves a launch error.
void run_kernel(const void* kernel, const Launch& launch, const std::function<void()>& thread);

// Inside a kernel.
const uint3& thread_index();
const uint3& block_index();
const dim3& block_dim();
const dim3& grid_dim();
unsigned char* dynamic_shared();
void sync_threads();
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
  run_kernel(reinterpret_cast<const void*>(bound.kernel), bound.launch,
             [&] { std::apply([&](const auto&... a) { bound.kernel(a...); }, arguments); });
}

}  // namespace srgpt::emulation
