// The CPU device emulator itself: that it turns the synchronisation and
// addressing faults it claims to catch into errors or poisoned results,
// that correct kernels give the same result in both thread schedules, and
// that streams run their work asynchronously, so that a missing event wait
// shows in one of the schedules.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "catch.h"
#include "common.cuh"
#include "emulated_ptx.h"
#include "srgpt/error.h"

using namespace srgpt;
using emulation::kernel_arguments;
using emulation::Launch;
using emulation::Schedule;

namespace {

constexpr int kWarps = 4;

// Warp w writes its sum to slot w, then reads slot w + 1: correct only
// with the barrier in between.
__global__ void neighbour_kernel(float* out, const float* in, bool barrier) {
  float* slots = reinterpret_cast<float*>(emulation::dynamic_shared());
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float sum = gpu::warp_sum(in[threadIdx.x]);
  if (lane == 0) slots[warp] = sum;
  if (barrier) __syncthreads();
  if (lane == 0) out[warp] = slots[(warp + 1) % kWarps];
}

// Half a warp waits at __syncthreads for the other half, which waits at a
// shuffle for the first.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 16)
    __syncthreads();
  else
    out[threadIdx.x] = gpu::warp_sum(1.0f);
}

// Thread t copies in[t] into shared memory with cp.async and reads it back,
// waiting for the copy or not.
__global__ void cp_async_kernel(uint16_t* out, const uint16_t* in, bool wait) {
  auto* tile = reinterpret_cast<uint16_t*>(emulation::dynamic_shared());
  gpu::cp_async_16(tile + 8 * threadIdx.x, in + 8 * threadIdx.x, true);
  gpu::cp_async_commit();
  if (wait) gpu::cp_async_wait<0>();
  out[threadIdx.x] = tile[8 * threadIdx.x];
  if (!wait) gpu::cp_async_wait<0>();
}

// out[i] = in[i] + 1 for n values, one thread each.
__global__ void increment_kernel(float* out, const float* in, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i] + 1.0f;
}

__global__ void ldmatrix_global_kernel(uint32_t* out, const uint16_t* global_rows) {
  uint32_t r[4];
  gpu::ldmatrix_x4(r, global_rows + 8 * (threadIdx.x % 32));
  out[threadIdx.x] = r[0];
}

__global__ void overflow_kernel(int bytes) {
  if (threadIdx.x == 0) emulation::dynamic_shared()[bytes] = 1;
}

// Each block records the ticket it draws: its place in the start order.
__global__ void ticket_kernel(unsigned* counter, unsigned* order) {
  if (threadIdx.x == 0) order[blockIdx.x] = atomicAdd(counter, 1u);
}

// Block 0's threads each write their slot, then its thread 0 releases the
// flag, after a barrier or without one; block 1's thread 0 waits for the
// flag, then (after a barrier) each thread reads the slot of block 0's
// thread of its index.
__global__ void handoff_kernel(float* slots, float* seen, unsigned* flag, bool barrier_before_release) {
  if (blockIdx.x == 0) {
    slots[threadIdx.x] = float(threadIdx.x) + 0.5f;
    if (barrier_before_release) __syncthreads();
    if (threadIdx.x == 0) gpu::release_flag(flag, 1);
  } else {
    if (threadIdx.x == 0) gpu::wait_for_flag(flag, 1);
    __syncthreads();
    seen[threadIdx.x] = slots[threadIdx.x];
  }
}

// Block 1 waits for a value no block stores.
__global__ void unreleased_flag_kernel(unsigned* flag) {
  if (blockIdx.x == 0 && threadIdx.x == 0) gpu::release_flag(flag, 1);
  if (blockIdx.x == 1 && threadIdx.x == 0) gpu::wait_for_flag(flag, 2);
}

__global__ void early_exit_kernel(float* out) {
  if (threadIdx.x % 32 == 5) return;
  out[threadIdx.x] = gpu::warp_sum(1.0f);
}

// *out = base[index], by one thread.
template <typename T>
__global__ void load_kernel(T* out, const T* base, long index) {
  *out = base[index];
}

// base[index] = value, by the last thread of the last block.
__global__ void store_kernel(float* base, long index, float value) {
  if (blockIdx.x == gridDim.x - 1 && threadIdx.x == blockDim.x - 1) base[index] = value;
}

// wgmma on one warpgroup: D (64 x 64, fp32, row-major in d_out) = A (64 x
// 32, row-major bf16 in a) times B (32 x 64, row-major bf16 in b), as two
// m64n64k16 products chained on the same accumulators in one group. B goes
// into shared memory as core matrices of 8 rows x 16 bytes, 128 contiguous
// bytes each, placed with gaps: the leading byte offset (k by 8) is 256,
// the stride byte offset (n by 8) 1024, and the second k16 step starts
// 512 bytes on. A core matrix's rows are n (8 consecutive k each:
// K-major) or k (8 consecutive n: N-major). A comes from registers or from
// shared memory, after B, K-major or M-major: core matrices 128 bytes apart
// along k, 256 along m, the second step 2048 bytes on. With halves, from
// shared memory, each product is two m64n32k16, for columns 0-31 and 32-63
// (B's descriptor four core matrices on). How it goes wrong, if asked:
// read_early reads the accumulators before the wait; skip_warp leaves one
// warp out of the products; no_wait never waits.
struct WgmmaFaults {
  bool read_early = false, skip_warp = false, no_wait = false;
};
enum class ASource { registers, shared_k_major, shared_m_major };
constexpr size_t kWgmmaBBytes = 2 * 512 + 8 * 1024, kWgmmaSharedBytes = kWgmmaBBytes + 2 * 2048;
__global__ void wgmma_kernel(float* d_out, const uint16_t* a, const uint16_t* b, bool n_major, ASource a_source,
                             bool halves, WgmmaFaults faults) {
  constexpr uint32_t kLeading = 256, kStride = 1024, kStep = 512;
  constexpr uint32_t kLeadingA = 128, kStrideA = 256, kStepA = 2048;
  unsigned char* smem = emulation::dynamic_shared();
  unsigned char* smem_a = smem + kWgmmaBBytes;
  const int t = threadIdx.x, warp = t / 32, lane = t % 32, g = lane / 4, q = lane % 4;
  for (int i = t; i < 32 * 64; i += 128) {
    const int k = i / 64, n = i % 64, step = k / 16, kk = k % 16;
    const int row = n_major ? kk % 8 : n % 8, column = n_major ? n % 8 : kk % 8;
    std::memcpy(smem + step * kStep + (n / 8) * kStride + (kk / 8) * kLeading + row * 16 + column * 2, b + i, 2);
  }
  const bool shared_a = a_source != ASource::registers, m_major = a_source == ASource::shared_m_major;
  if (shared_a) {
    for (int i = t; i < 64 * 32; i += 128) {
      const int m = i / 32, k = i % 32, step = k / 16, kk = k % 16;
      const int row = m_major ? kk % 8 : m % 8, column = m_major ? m % 8 : kk % 8;
      std::memcpy(smem_a + step * kStepA + (m / 8) * kStrideA + (kk / 8) * kLeadingA + row * 16 + column * 2, a + i,
                  2);
    }
  }
  __syncthreads();
  // This warp's 16 rows of A, k-step s, in the mma A layout.
  auto a_pair = [&](int r, int c) { return uint32_t(a[r * 32 + c]) | (uint32_t(a[r * 32 + c + 1]) << 16); };
  uint32_t frag[2][4];
  for (int s = 0; s < 2; ++s) {
    const int r = 16 * warp + g, c = 16 * s + 2 * q;
    frag[s][0] = a_pair(r, c);
    frag[s][1] = a_pair(r + 8, c);
    frag[s][2] = a_pair(r, c + 8);
    frag[s][3] = a_pair(r + 8, c + 8);
  }
  float d[8][4] = {};
  gpu::wgmma_fence();
  if (!(faults.skip_warp && warp == 2)) {
    for (int s = 0; s < 2; ++s) {
      const uint64_t descriptor = gpu::wgmma_descriptor(reinterpret_cast<const uint16_t*>(smem + s * kStep),
                                                        kLeading, kStride);
      const uint64_t a_descriptor =
          gpu::wgmma_descriptor(reinterpret_cast<const uint16_t*>(smem_a + s * kStepA), kLeadingA, kStrideA);
      // Every combination of the template flags, chosen at run time.
      auto shared_product = [&](auto n, auto transpose_a, auto transpose_b) {
        constexpr int N = decltype(n)::value;
        for (int half = 0; half < 64 / N; ++half) {
          float(&d_half)[N / 8][4] = *reinterpret_cast<float(*)[N / 8][4]>(&d[half * N / 8][0]);
          const uint64_t b_half = gpu::wgmma_descriptor(
              reinterpret_cast<const uint16_t*>(smem + s * kStep + half * (N / 8) * kStride), kLeading, kStride);
          gpu::wgmma_bf16_shared_a<N, decltype(transpose_a)::value, decltype(transpose_b)::value>(
              d_half, a_descriptor, b_half);
        }
      };
      auto with_b = [&](auto n, auto transpose_a) {
        if (n_major)
          shared_product(n, transpose_a, std::true_type{});
        else
          shared_product(n, transpose_a, std::false_type{});
      };
      auto with_a = [&](auto n) {
        if (m_major)
          with_b(n, std::true_type{});
        else
          with_b(n, std::false_type{});
      };
      if (shared_a && halves)
        with_a(std::integral_constant<int, 32>{});
      else if (shared_a)
        with_a(std::integral_constant<int, 64>{});
      else if (n_major)
        gpu::wgmma_bf16<64, true>(d, frag[s], descriptor);
      else
        gpu::wgmma_bf16<64, false>(d, frag[s], descriptor);
    }
  }
  gpu::wgmma_commit();
  if (faults.read_early) d_out[t] = d[0][0];
  if (faults.no_wait) return;
  gpu::wgmma_wait<0>();
  if (faults.read_early) return;
  for (int nb = 0; nb < 8; ++nb)
    for (int e = 0; e < 4; ++e) d_out[(16 * warp + g + 8 * (e / 2)) * 64 + 8 * nb + 2 * q + e % 2] = d[nb][e];
}

// Runs the launches queued so far.
void finish() { emulation::synchronize_device(); }

// The message of the error f throws, or "" when it throws none.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

std::vector<float> run_neighbour(bool barrier, const Schedule& schedule) {
  emulation::set_schedule(schedule);
  std::vector<float> in(32 * kWarps), out(kWarps, 0.0f);
  for (size_t i = 0; i < in.size(); ++i) in[i] = float(i % 7) - 3.0f + 0.25f * float(i / 32);
  neighbour_kernel ^ Launch(1, 32 * kWarps, kWarps * sizeof(float)) ^ kernel_arguments(out.data(), in.data(), barrier);
  finish();
  return out;
}

}  // namespace

TEST_CASE("device emulator: a correct kernel gives the same result in both schedules", "[emulated]") {
  std::vector<float> expected(kWarps);
  for (int w = 0; w < kWarps; ++w) {
    const int next = (w + 1) % kWarps;
    float sum = 0;
    for (int l = 0; l < 32; ++l) sum += float((32 * next + l) % 7) - 3.0f + 0.25f * float(next);
    expected[w] = sum;
  }
  CHECK(run_neighbour(true, Schedule{false, false}) == expected);
  CHECK(run_neighbour(true, Schedule{true, false}) == expected);
}

TEST_CASE("device emulator: a missing __syncthreads reads unwritten shared memory in one schedule", "[emulated]") {
  const auto ascending = run_neighbour(false, Schedule{false, false});
  const auto descending = run_neighbour(false, Schedule{true, false});
  // Ascending: warps 0-2 read their neighbour's slot before it is written
  // (poison, NaN); descending: only warp 3 (wrapping to warp 0) does.
  CHECK(std::isnan(ascending[0]));
  CHECK(std::isnan(descending[3]));
  CHECK(std::isfinite(descending[0]));
}

TEST_CASE("device emulator: blocks start in blockIdx order, or the reverse in the descending schedule", "[emulated]") {
  constexpr unsigned kBlocks = 5;
  for (const bool descending : {false, true}) {
    emulation::set_schedule(Schedule{descending, false});
    unsigned counter = 0;
    std::vector<unsigned> order(kBlocks, 99);
    ticket_kernel ^ Launch(kBlocks, 64) ^ kernel_arguments(&counter, order.data());
    finish();
    CHECK(counter == kBlocks);
    for (unsigned i = 0; i < kBlocks; ++i) CHECK(order[i] == (descending ? kBlocks - 1 - i : i));
  }
  emulation::set_schedule(Schedule{false, false});
}

TEST_CASE("device emulator: threads waiting on each other at different barriers are a deadlock error", "[emulated]") {
  emulation::set_schedule(Schedule{false, false});
  std::vector<float> out(32);
  CHECK(error_of([&] { divergent_barrier_kernel ^ Launch(1, 32) ^ kernel_arguments(out.data()); finish(); }).find("deadlock") != std::string::npos);
}

TEST_CASE("device emulator: cp.async data arrives only at the wait", "[emulated]") {
  emulation::set_schedule(Schedule{false, false});
  std::vector<uint16_t> in(8 * 32), out(32);
  for (size_t i = 0; i < in.size(); ++i) in[i] = uint16_t(0x3f80 + i);  // finite bf16
  for (bool wait : {true, false}) {
    cp_async_kernel ^ Launch(1, 32, in.size() * 2) ^ kernel_arguments(out.data(), in.data(), wait);
    finish();
    for (int t = 0; t < 32; ++t) CHECK(out[t] == (wait ? in[8 * t] : 0xFFFF));
  }
}

TEST_CASE("device emulator: wgmma multiplies through K-major and N-major descriptors, A from registers or shared "
          "memory (K- or M-major), 64 or 32 columns at a time, completing at the wait",
          "[emulated]") {
  emulation::set_schedule(Schedule{false, false});
  // Small integers times powers of two: every product and sum is exact in
  // fp32, so the result must equal the host's to the bit.
  std::vector<uint16_t> a(64 * 32), b(32 * 64);
  std::vector<float> af(a.size()), bf(b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    af[i] = float(int((i * 7919) % 13) - 6) * 0.25f;
    a[i] = float_to_bf16_rn(af[i]).bits;
  }
  for (size_t i = 0; i < b.size(); ++i) {
    bf[i] = float(int((i * 104729) % 11) - 5) * 0.5f;
    b[i] = float_to_bf16_rn(bf[i]).bits;
  }
  std::vector<float> expected(64 * 64, 0.0f);
  for (int r = 0; r < 64; ++r)
    for (int n = 0; n < 64; ++n)
      for (int k = 0; k < 32; ++k) expected[r * 64 + n] += af[r * 32 + k] * bf[k * 64 + n];
  for (const bool n_major : {false, true}) {
    INFO((n_major ? "B N-major" : "B K-major"));
    for (const ASource a_source : {ASource::registers, ASource::shared_k_major, ASource::shared_m_major}) {
      INFO((a_source == ASource::registers        ? "A in registers"
            : a_source == ASource::shared_k_major ? "A in shared memory, K-major"
                                                  : "A in shared memory, M-major"));
      for (const bool halves : {false, true}) {
        if (halves && a_source == ASource::registers) continue;
        INFO((halves ? "two m64n32k16" : "one product"));
        std::vector<float> d(64 * 64, -1.0f);
        wgmma_kernel ^ Launch(1, 128, kWgmmaSharedBytes) ^
            kernel_arguments(d.data(), a.data(), b.data(), n_major, a_source, halves, WgmmaFaults{});
        finish();
        CHECK(d == expected);
      }
    }
    // Before the wait the accumulators hold NaN.
    std::vector<float> early(128, 0.0f);
    WgmmaFaults read_early;
    read_early.read_early = true;
    wgmma_kernel ^ Launch(1, 128, kWgmmaSharedBytes) ^
        kernel_arguments(early.data(), a.data(), b.data(), n_major, ASource::registers, false, read_early);
    finish();
    CHECK(std::all_of(early.begin(), early.end(), [](float x) { return std::isnan(x); }));
  }
}

TEST_CASE("device emulator: wgmma left out by a warp of its warpgroup, or never waited for, is an error",
          "[emulated]") {
  emulation::set_schedule(Schedule{false, false});
  std::vector<uint16_t> a(64 * 32, 0x3f80), b(32 * 64, 0x3f80);
  std::vector<float> d(64 * 64);
  WgmmaFaults skip, no_wait;
  skip.skip_warp = true;
  no_wait.no_wait = true;
  const std::string skipped = error_of([&] {
    wgmma_kernel ^ Launch(1, 128, kWgmmaSharedBytes) ^
        kernel_arguments(d.data(), a.data(), b.data(), false, ASource::registers, false, skip);
    finish();
  });
  CHECK(skipped.find("warpgroup") != std::string::npos);
  const std::string unwaited = error_of([&] {
    wgmma_kernel ^ Launch(1, 128, kWgmmaSharedBytes) ^
        kernel_arguments(d.data(), a.data(), b.data(), false, ASource::registers, false, no_wait);
    finish();
  });
  CHECK(unwaited.find("never waited for") != std::string::npos);
  // A warpgroup needs four whole warps.
  const std::string partial = error_of([&] {
    wgmma_kernel ^ Launch(1, 96, kWgmmaSharedBytes) ^
        kernel_arguments(d.data(), a.data(), b.data(), false, ASource::registers, false, WgmmaFaults{});
    finish();
  });
  CHECK(partial.find("not whole") != std::string::npos);
}

TEST_CASE("device emulator: ldmatrix from global memory is an error", "[emulated]") {
  emulation::set_schedule(Schedule{false, false});
  std::vector<uint16_t> rows(8 * 32, 0x3f80);
  std::vector<uint32_t> out(32);
  CHECK(error_of([&] { ldmatrix_global_kernel ^ Launch(1, 32, 1024) ^ kernel_arguments(out.data(), rows.data()); finish(); }).find("ldmatrix row outside") != std::string::npos);
}

TEST_CASE("device emulator: writing past the dynamic shared memory is an error", "[emulated]") {
  CHECK(error_of([&] { overflow_kernel ^ Launch(1, 32, 256) ^ kernel_arguments(255); finish(); }).empty());
  CHECK(error_of([&] { overflow_kernel ^ Launch(1, 32, 256) ^ kernel_arguments(256); finish(); }).find("past the end") != std::string::npos);
}

TEST_CASE("device emulator: a shuffle after a lane has exited is an error", "[emulated]") {
  std::vector<float> out(32);
  CHECK(error_of([&] { early_exit_kernel ^ Launch(1, 32) ^ kernel_arguments(out.data()); finish(); }).find("exited") != std::string::npos);
}

TEST_CASE("device emulator: launches the device would refuse leave a launch error", "[emulated]") {
  CHECK(cudaGetLastError() == cudaSuccess);
  overflow_kernel ^ Launch(1, 32, 64 * 1024) ^ kernel_arguments(0);  // over the 48 KiB default
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  REQUIRE(cudaFuncSetAttribute(overflow_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024) ==
          cudaSuccess);
  overflow_kernel ^ Launch(1, 32, 64 * 1024) ^ kernel_arguments(0);
  CHECK(cudaGetLastError() == cudaSuccess);
  overflow_kernel ^ Launch(1, 2048) ^ kernel_arguments(0);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  finish();
}

namespace {

// handoff_kernel's reads in `schedule`: what block 1 saw of each slot.
std::vector<float> run_handoff(bool barrier_before_release, const Schedule& schedule) {
  emulation::set_schedule(schedule);
  constexpr int kThreads = 64;
  std::vector<float> slots(kThreads, NAN), seen(kThreads, -1.0f);
  unsigned flag = 0;
  handoff_kernel ^ Launch(2, kThreads) ^
      kernel_arguments(slots.data(), seen.data(), &flag, barrier_before_release);
  finish();
  emulation::set_schedule(Schedule{});
  return seen;
}

bool all_written(const std::vector<float>& seen) {
  for (size_t t = 0; t < seen.size(); ++t)
    if (seen[t] != float(t) + 0.5f) return false;
  return true;
}

}  // namespace

TEST_CASE("device emulator: interleaved blocks hand data over through a flag, and a missing barrier before the "
          "release reads unwritten data",
          "[emulated]") {
  const Schedule interleaved{false, false, true};
  CHECK(all_written(run_handoff(true, interleaved)));
  const auto early = run_handoff(false, interleaved);
  // Block 0's thread 0 releases before its other threads write; block 1's
  // threads read at once.
  CHECK(early[0] == 0.5f);
  CHECK(std::isnan(early[1]));
  // One block at a time, block 0 finishes first and the missing barrier
  // does not show: what the interleaved schedule is for.
  CHECK(all_written(run_handoff(false, Schedule{})));
}

TEST_CASE("device emulator: a wait for a flag no block will set is a fault, or interleaved a deadlock", "[emulated]") {
  unsigned flag = 0;
  emulation::set_schedule(Schedule{});
  const std::string one_at_a_time =
      error_of([&] { unreleased_flag_kernel ^ Launch(2, 32) ^ kernel_arguments(&flag); finish(); });
  CHECK(one_at_a_time.find("waits for a flag to become 2 but it is 1") != std::string::npos);
  REQUIRE(cudaDeviceReset() == cudaSuccess);
  flag = 0;
  emulation::set_schedule(Schedule{false, false, true});
  const std::string interleaved =
      error_of([&] { unreleased_flag_kernel ^ Launch(2, 32) ^ kernel_arguments(&flag); finish(); });
  CHECK(interleaved.find("deadlock with 2 of 2 blocks started") != std::string::npos);
  CHECK(interleaved.find("thread 0 for a flag to become 2 (it is 1)") != std::string::npos);
  REQUIRE(cudaDeviceReset() == cudaSuccess);
  emulation::set_schedule(Schedule{});
}

namespace {

// Two streams as the matmul backward uses them: `main` writes x; `side`
// reads x into y, forked after the write (or not); main joins side before
// its last work (or not). The result is y as the host sees it after
// synchronising main (and, first, side's last work: as the NCCL
// communicator's host wait for a collective before the loss is read).
struct ForkJoin {
  bool fork = true, join = true, host_waits_for_side_first = false;
  std::vector<float> run(const Schedule& schedule) const {
    emulation::set_schedule(schedule);
    constexpr int n = 64;
    std::vector<float> host(n), x(n, -100.0f), y(n, -100.0f), result(n);
    for (int i = 0; i < n; ++i) host[i] = float(i);
    cudaStream_t main = nullptr, side = nullptr;
    cudaEvent_t forked = nullptr, joined = nullptr;
    REQUIRE(cudaStreamCreateWithFlags(&main, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cudaEventCreateWithFlags(&forked, cudaEventDisableTiming) == cudaSuccess);
    REQUIRE(cudaEventCreateWithFlags(&joined, cudaEventDisableTiming) == cudaSuccess);
    REQUIRE(cudaMemcpyAsync(x.data(), host.data(), n * sizeof(float), cudaMemcpyHostToDevice, main) == cudaSuccess);
    if (fork) {
      REQUIRE(cudaEventRecord(forked, main) == cudaSuccess);
      REQUIRE(cudaStreamWaitEvent(side, forked, 0) == cudaSuccess);
    }
    increment_kernel ^ Launch(1, n, 0, side) ^ kernel_arguments(y.data(), x.data(), n);
    if (join) {
      REQUIRE(cudaEventRecord(joined, side) == cudaSuccess);
      REQUIRE(cudaStreamWaitEvent(main, joined, 0) == cudaSuccess);
    }
    REQUIRE(cudaMemcpyAsync(result.data(), y.data(), n * sizeof(float), cudaMemcpyDeviceToHost, main) == cudaSuccess);
    if (host_waits_for_side_first) REQUIRE(cudaStreamQuery(side) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(main) == cudaSuccess);
    REQUIRE(cudaEventDestroy(forked) == cudaSuccess);
    REQUIRE(cudaEventDestroy(joined) == cudaSuccess);
    REQUIRE(cudaStreamDestroy(side) == cudaSuccess);
    REQUIRE(cudaStreamDestroy(main) == cudaSuccess);
    return result;
  }
};

std::vector<float> incremented(int n) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = float(i) + 1.0f;
  return v;
}

}  // namespace

TEST_CASE("device emulator: work queued on a stream runs when a synchronisation needs it", "[emulated]") {
  emulation::set_schedule(Schedule{false, false});
  std::vector<float> in{1.0f, 2.0f}, out{0.0f, 0.0f};
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  increment_kernel ^ Launch(1, 32, 0, stream) ^ kernel_arguments(out.data(), in.data(), 2);
  CHECK(out == std::vector<float>{0.0f, 0.0f});
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  CHECK(out == std::vector<float>{2.0f, 3.0f});
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}

TEST_CASE("device emulator: streams forked and joined by events give the same result in every schedule", "[emulated]") {
  Schedule oldest_first;
  oldest_first.oldest_first = true;
  for (const Schedule schedule : {Schedule{false, false}, Schedule{true, false}, oldest_first})
    for (bool host_waits : {false, true}) CHECK(ForkJoin{true, true, host_waits}.run(schedule) == incremented(64));
}

TEST_CASE("device emulator: a missing join the host's wait hides elsewhere shows in the oldest_first schedule",
          "[emulated]") {
  // The host's wait for side runs side's work before main's copy in the
  // default schedule; oldest_first runs main's copy first, as a GPU may.
  CHECK(ForkJoin{true, false, true}.run(Schedule{false, false}) == incremented(64));
  Schedule oldest_first;
  oldest_first.oldest_first = true;
  CHECK(ForkJoin{true, false, true}.run(oldest_first)[0] == -100.0f);
  finish();
}

TEST_CASE("device emulator: a missing join leaves the side stream's work undone in the ascending schedule", "[emulated]") {
  const auto result = ForkJoin{true, false}.run(Schedule{false, false});
  CHECK(result[0] == -100.0f);
  finish();
}

TEST_CASE("device emulator: a missing fork runs the side stream's work first in the descending schedule", "[emulated]") {
  const auto result = ForkJoin{false, true}.run(Schedule{true, false});
  CHECK(result[0] == -99.0f);  // x as it was before main's copy, plus one
}

TEST_CASE("device emulator: a copy from pageable host memory reads it when queued, from pinned memory when run", "[emulated]") {
  emulation::set_schedule(Schedule{false, false});
  float device_value = 0.0f, pageable = 1.0f;
  float* pinned = nullptr;
  REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&pinned), sizeof(float), cudaHostAllocDefault) == cudaSuccess);
  REQUIRE(cudaMemcpyAsync(&device_value, &pageable, sizeof(float), cudaMemcpyHostToDevice, nullptr) == cudaSuccess);
  pageable = 2.0f;
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(device_value == 1.0f);
  *pinned = 3.0f;
  REQUIRE(cudaMemcpyAsync(&device_value, pinned, sizeof(float), cudaMemcpyHostToDevice, nullptr) == cudaSuccess);
  *pinned = 4.0f;
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(device_value == 4.0f);
  REQUIRE(cudaFreeHost(pinned) == cudaSuccess);
}

TEST_CASE("device emulator: timing events give the host time of the work between their records", "[emulated]") {
  emulation::set_schedule(Schedule{false, false});
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, end = nullptr, unrecorded = nullptr, ordering = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  for (cudaEvent_t* timing : {&start, &end, &unrecorded})
    REQUIRE(cudaEventCreateWithFlags(timing, cudaEventDefault) == cudaSuccess);
  REQUIRE(cudaEventCreateWithFlags(&ordering, cudaEventDisableTiming) == cudaSuccess);
  const int sleep_ms = 20 + int(std::random_device{}() % 20);
  bool ran = false;
  REQUIRE(cudaEventRecord(start, stream) == cudaSuccess);
  emulation::enqueue(stream, [&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
    ran = true;
  }, "a sleep");
  REQUIRE(cudaEventRecord(end, stream) == cudaSuccess);
  REQUIRE(cudaEventRecord(ordering, stream) == cudaSuccess);
  CHECK_FALSE(ran);
  float ms = -1.0f;
  REQUIRE(cudaEventElapsedTime(&ms, start, end) == cudaSuccess);
  CHECK(ran);
  CHECK(ms >= float(sleep_ms));
  CHECK(ms < float(sleep_ms) + 1000.0f);
  // As the runtime: events without timing, or never recorded, have none.
  CHECK(cudaEventElapsedTime(&ms, start, ordering) == cudaErrorInvalidResourceHandle);
  CHECK(cudaEventElapsedTime(&ms, unrecorded, end) == cudaErrorInvalidResourceHandle);
  // A timing event destroyed before the work of its record has run.
  REQUIRE(cudaEventRecord(start, stream) == cudaSuccess);
  REQUIRE(cudaEventDestroy(start) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  for (cudaEvent_t event : {end, unrecorded, ordering}) REQUIRE(cudaEventDestroy(event) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}

TEST_CASE("device emulator: work that is not ready stays queued, queries answer not ready, a synchronisation is a "
          "fault",
          "[emulated]") {
  emulation::set_schedule(Schedule{false, false});
  cudaStream_t stream = nullptr;
  cudaEvent_t after = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaEventCreateWithFlags(&after, cudaEventDisableTiming) == cudaSuccess);
  const int attempts_before_ready = 1 + int(std::random_device{}() % 5);
  int attempts = 0, later_runs = 0;
  emulation::enqueue(stream, [&] {
    if (++attempts <= attempts_before_ready) throw emulation::WorkNotReady("waiting for a peer");
  }, "work not ready at first");
  emulation::enqueue(stream, [&] { ++later_runs; }, "later work");
  REQUIRE(cudaEventRecord(after, stream) == cudaSuccess);
  for (int i = 0; i < attempts_before_ready; ++i) {
    CHECK(cudaStreamQuery(stream) == cudaErrorNotReady);
    CHECK(later_runs == 0);  // nothing after it ran, nothing was dropped
  }
  CHECK(cudaEventQuery(after) == cudaSuccess);  // ready now: the rest runs
  CHECK(later_runs == 1);
  CHECK(attempts == attempts_before_ready + 1);

  // What a GPU would wait for forever, a synchronisation reports.
  emulation::enqueue(stream, [] { throw emulation::WorkNotReady("waiting for a peer that never comes"); },
                     "work never ready");
  CHECK(cudaEventQuery(after) == cudaSuccess);  // recorded before it
  CHECK(cudaStreamQuery(stream) == cudaErrorNotReady);
  CHECK(cudaStreamSynchronize(stream) == cudaErrorLaunchFailure);
  const std::string message = cudaGetErrorString(cudaErrorLaunchFailure);
  CHECK(message.find("would wait forever") != std::string::npos);
  CHECK(message.find("waiting for a peer that never comes") != std::string::npos);
  REQUIRE(cudaDeviceReset() == cudaSuccess);
  CHECK(cudaStreamSynchronize(stream) == cudaSuccess);
  REQUIRE(cudaEventDestroy(after) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}

TEST_CASE("device emulator: a fault in queued work is the synchronising call's error, until a device reset", "[emulated]") {
  emulation::set_schedule(Schedule{false, false});
  std::vector<float> out(32);
  const emulation::LaunchSite site{__FILE__, __LINE__};
  early_exit_kernel ^ Launch(site, 1, 32) ^ kernel_arguments(out.data());
  CHECK(cudaGetLastError() == cudaSuccess);  // the launch itself is fine
  CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
  // The message names the launch, then the fault.
  const std::string message = cudaGetErrorString(cudaErrorLaunchFailure);
  CHECK(message.find(fmt::format("kernel launched at test_device_emulator.cpp:{} (grid (1,1,1), block (32,1,1)): ",
                                 site.line)) == 0);
  CHECK(message.find("exited") != std::string::npos);
  CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
  REQUIRE(cudaDeviceReset() == cudaSuccess);
  CHECK(cudaDeviceSynchronize() == cudaSuccess);
}

// A number of floats whose bytes are not a multiple of the 256-byte
// alignment, so that guard bytes follow them; at most 255, so that more
// than 3 KiB of guard bytes precede them in their 4 KiB page.
int unaligned_float_count(std::mt19937& rng) { return 64 * int(rng() % 4) + 1 + int(rng() % 63); }

std::string device_allocation(const void* start, size_t bytes) {
  return fmt::format("the {}-byte device allocation at {}", bytes, start);
}

// Runs f in a child process, with the default SIGSEGV action and no core
// dumps; its wait status and what it wrote to stderr.
std::pair<int, std::string> run_in_child(const std::function<void()>& f) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], STDERR_FILENO);
    const rlimit no_core{0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    signal(SIGSEGV, SIG_DFL);
    f();
    _exit(0);
  }
  close(fds[1]);
  std::string text;
  char buffer[512];
  for (ssize_t got; (got = read(fds[0], buffer, sizeof buffer)) > 0;) text.append(buffer, size_t(got));
  close(fds[0]);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  return {status, text};
}

TEST_CASE("device emulator: device memory starts as NaN, and a write into the guard bytes beside an allocation is "
          "the fault of the work that made it",
          "[emulated]") {
  emulation::set_schedule(Schedule{false, false});
  std::mt19937 rng(std::random_device{}());
  const int n = unaligned_float_count(rng);
  const size_t bytes = size_t(n) * sizeof(float);
  float* device = nullptr;
  REQUIRE(cudaMalloc(reinterpret_cast<void**>(&device), bytes) == cudaSuccess);
  CHECK(reinterpret_cast<uintptr_t>(device) % 256 == 0);
  std::vector<float> host(size_t(n), 0.0f);
  REQUIRE(cudaMemcpyAsync(host.data(), device, bytes, cudaMemcpyDeviceToHost, nullptr) == cudaSuccess);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(std::all_of(host.begin(), host.end(), [](float x) { return std::isnan(x); }));
  const std::string allocation = device_allocation(device, bytes);

  // The first and the last element are the allocation's.
  store_kernel ^ Launch(1, 1) ^ kernel_arguments(device, 0L, 1.0f);
  store_kernel ^ Launch(1, 1) ^ kernel_arguments(device, long(n - 1), 1.0f);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);

  const long past = long(rng() % ((256 - bytes % 256) / sizeof(float)));  // within the alignment
  const long before = 1 + long(rng() % 256);

#ifndef SRGPT_EMULATOR_ASAN  // there the guard bytes are poisoned: AddressSanitizer reports reads of them
  // Reads of the guard bytes are NaN, as fp32 and as bf16.
  float loaded[2] = {0.0f, 0.0f};
  uint16_t loaded_bf16[2] = {0, 0};
  const auto* device_bf16 = reinterpret_cast<const uint16_t*>(device);
  load_kernel<float> ^ Launch(1, 1) ^ kernel_arguments(&loaded[0], static_cast<const float*>(device), long(n) + past);
  load_kernel<float> ^ Launch(1, 1) ^ kernel_arguments(&loaded[1], static_cast<const float*>(device), -before);
  load_kernel<uint16_t> ^ Launch(1, 1) ^ kernel_arguments(&loaded_bf16[0], device_bf16, long(2 * (n + past) + 1));
  load_kernel<uint16_t> ^ Launch(1, 1) ^ kernel_arguments(&loaded_bf16[1], device_bf16, -2 * before);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(std::isnan(loaded[0]));
  CHECK(std::isnan(loaded[1]));
  for (uint16_t bits : loaded_bf16) CHECK(((bits & 0x7F80) == 0x7F80 && (bits & 0x7F) != 0));
#endif

  // Writes into the guard bytes, each with the fault it must be.
  const emulation::LaunchSite site{__FILE__, __LINE__};
  std::vector<float> longer(size_t(n) + 1, 4.0f);
  float* pinned = nullptr;
  REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&pinned), bytes, cudaHostAllocDefault) == cudaSuccess);
  struct Case {
    std::function<void()> write;
    std::string fault;
  };
  const Case cases[] = {
      {[&] { store_kernel ^ Launch(site, 2, 32) ^ kernel_arguments(device, long(n) + past, 2.0f); },
       fmt::format("kernel launched at test_device_emulator.cpp:{} (grid (2,1,1), block (32,1,1)) wrote past the end "
                   "of {} (guard bytes changed up to {} bytes past it)",
                   site.line, allocation, sizeof(float) * size_t(past + 1))},
      {[&] { store_kernel ^ Launch(1, 1) ^ kernel_arguments(device, -before, 3.0f); },
       fmt::format("kernel launched at a test (grid (1,1,1), block (1,1,1)) wrote before the start of {} (guard bytes "
                   "changed from {} bytes before it)",
                   allocation, sizeof(float) * size_t(before))},
      {[&] {
         REQUIRE(cudaMemcpyAsync(device, longer.data(), longer.size() * sizeof(float), cudaMemcpyHostToDevice,
                                 nullptr) == cudaSuccess);
       },
       fmt::format("cudaMemcpyAsync wrote past the end of {} (guard bytes changed up to {} bytes past it)", allocation,
                   sizeof(float))},
      // The host, past the end of page-locked memory: found at the next synchronisation.
      {[&] {
         pinned[n] = 5.0f;
         REQUIRE(cudaMemsetAsync(device, 0, bytes, nullptr) == cudaSuccess);
       },
       fmt::format("the host wrote past the end of {} (guard bytes changed up to {} bytes past it)",
                   device_allocation(pinned, bytes), sizeof(float))},
  };
  for (const Case& c : cases) {
#ifdef SRGPT_EMULATOR_ASAN  // the guard bytes are poisoned: AddressSanitizer ends the process
    const auto [status, report] = run_in_child([&] {
      c.write();
      (void)cudaDeviceSynchronize();
    });
    INFO(report);
    CHECK_FALSE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    CHECK(report.find("AddressSanitizer: use-after-poison") != std::string::npos);
#else
    c.write();
    CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
    CHECK(std::string(cudaGetErrorString(cudaErrorLaunchFailure)).find(c.fault) != std::string::npos);
    REQUIRE(cudaDeviceReset() == cudaSuccess);
#endif
  }

  // Each fault was reported once: the guard bytes hold again.
  REQUIRE(cudaMemsetAsync(device, 0, bytes, nullptr) == cudaSuccess);
  CHECK(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(cudaFree(device + 1) == cudaErrorInvalidValue);  // not an allocation's start
  CHECK(cudaFree(nullptr) == cudaSuccess);
  REQUIRE(cudaFreeHost(pinned) == cudaSuccess);
  REQUIRE(cudaFree(device) == cudaSuccess);
}

TEST_CASE("device emulator: an access beyond an allocation's guard bytes is a segmentation fault that names the "
          "allocation, the work and the thread",
          "[emulated]") {
  emulation::set_schedule(Schedule{false, false});
  std::mt19937 rng(std::random_device{}());
  const int n = unaligned_float_count(rng);
  const size_t bytes = size_t(n) * sizeof(float), rounded = (bytes + 255) / 256 * 256;
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  // Into the page after the allocation, and into the page before its page.
  const long past = long((rounded + rng() % page) / sizeof(float));
  const long before = long((page - rounded + sizeof(float) + rng() % page) / sizeof(float));
  const emulation::LaunchSite site{__FILE__, __LINE__};
  // In the child (the allocation too, after its SIGSEGV action is reset).
  auto allocated = [&] {
    float* device = nullptr;
    if (cudaMalloc(reinterpret_cast<void**>(&device), bytes) != cudaSuccess) _exit(2);
    return device;
  };
  struct Case {
    std::function<void()> access;
    std::string fault, by;
  };
  const std::string allocation = fmt::format("the {}-byte device allocation at 0x", bytes);
  const Case cases[] = {
      {[&] {
         store_kernel ^ Launch(site, 3, 2) ^ kernel_arguments(allocated(), past, 1.0f);
         (void)cudaDeviceSynchronize();
       },
       fmt::format("segmentation fault {} bytes past the end of {}", sizeof(float) * size_t(past) - bytes, allocation),
       fmt::format(", by kernel launched at test_device_emulator.cpp:{} (grid (3,1,1), block (2,1,1)), thread (1,0,0) "
                   "of block (2,0,0)\n",
                   site.line)},
      {[&] {
         store_kernel ^ Launch(1, 1) ^ kernel_arguments(allocated(), -before, 1.0f);
         (void)cudaDeviceSynchronize();
       },
       fmt::format("segmentation fault {} bytes before the start of {}", sizeof(float) * size_t(before), allocation),
       ", by kernel launched at a test (grid (1,1,1), block (1,1,1)), thread (0,0,0) of block (0,0,0)\n"},
      {[&] { *reinterpret_cast<volatile float*>(allocated() + past) = 1.0f; },
       fmt::format("segmentation fault {} bytes past the end of {}", sizeof(float) * size_t(past) - bytes, allocation),
       ", by the host\n"},
  };
  for (const Case& c : cases) {
    const auto [status, report] = run_in_child(c.access);
    INFO(report);
    CHECK_FALSE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
#ifndef SRGPT_EMULATOR_ASAN  // AddressSanitizer reports the access itself
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGSEGV);
    CHECK(report.find(c.fault) != std::string::npos);
    CHECK(report.find(c.by) != std::string::npos);
#endif
  }
}

TEST_CASE("device emulator: SRGPT_EMULATOR_SCHEDULE flags parse, and an unknown one is an error naming it", "[emulated]") {
  const auto none = emulation::parse_schedule("");
  CHECK_FALSE(none.descending);
  CHECK_FALSE(none.copies_at_issue);
  const auto both = emulation::parse_schedule("descending+copies_at_issue");
  CHECK(both.descending);
  CHECK(both.copies_at_issue);
  const auto one = emulation::parse_schedule("copies_at_issue");
  CHECK_FALSE(one.descending);
  CHECK(one.copies_at_issue);
  const auto interleaved = emulation::parse_schedule("descending+interleaved");
  CHECK(interleaved.descending);
  CHECK(interleaved.interleaved);
  CHECK_FALSE(interleaved.copies_at_issue);
  const auto oldest = emulation::parse_schedule("oldest_first+copies_at_issue");
  CHECK(oldest.oldest_first);
  CHECK(oldest.copies_at_issue);
  CHECK_FALSE(oldest.descending);
  const std::string message = error_of([] { emulation::parse_schedule("descending+backwards"); });
  CHECK(message.find("unknown schedule flag 'backwards'") != std::string::npos);
  CHECK(message.find("allowed: descending, copies_at_issue, interleaved, oldest_first") != std::string::npos);
  CHECK(error_of([] { emulation::parse_schedule("oldest_first+descending"); }).find("choose one") !=
        std::string::npos);
}

TEST_CASE("emulated cuBLASLt: SRGPT_EMULATED_CUBLASLT_EPILOGUES values parse, and another is an error naming it",
          "[emulated]") {
  using emulation::cublaslt::EpilogueSupport;
  using emulation::cublaslt::parse_epilogue_support;
  CHECK(parse_epilogue_support("all") == EpilogueSupport::all);
  CHECK(parse_epilogue_support("refused_by_heuristic") == EpilogueSupport::refused_by_heuristic);
  CHECK(parse_epilogue_support("refused_at_launch") == EpilogueSupport::refused_at_launch);
  const std::string message = error_of([] { parse_epilogue_support("none"); });
  CHECK(message.find("SRGPT_EMULATED_CUBLASLT_EPILOGUES='none' is not one of all, refused_by_heuristic, "
                     "refused_at_launch") != std::string::npos);
}
