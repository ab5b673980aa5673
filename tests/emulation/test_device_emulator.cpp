// The CPU device emulator itself: that it turns the synchronisation and
// addressing faults it claims to catch into errors or poisoned results,
// and that correct kernels give the same result in both thread schedules.
#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <vector>

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

__global__ void ldmatrix_global_kernel(uint32_t* out, const uint16_t* global_rows) {
  uint32_t r[4];
  gpu::ldmatrix_x4(r, global_rows + 8 * (threadIdx.x % 32));
  out[threadIdx.x] = r[0];
}

__global__ void overflow_kernel(int bytes) {
  if (threadIdx.x == 0) emulation::dynamic_shared()[bytes] = 1;
}

__global__ void early_exit_kernel(float* out) {
  if (threadIdx.x % 32 == 5) return;
  out[threadIdx.x] = gpu::warp_sum(1.0f);
}

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

TEST_CASE("device emulator: threads waiting on each other at different barriers are a deadlock error", "[emulated]") {
  emulation::set_schedule(Schedule{false, false});
  std::vector<float> out(32);
  CHECK(error_of([&] { divergent_barrier_kernel ^ Launch(1, 32) ^ kernel_arguments(out.data()); }).find("deadlock") != std::string::npos);
}

TEST_CASE("device emulator: cp.async data arrives only at the wait", "[emulated]") {
  emulation::set_schedule(Schedule{false, false});
  std::vector<uint16_t> in(8 * 32), out(32);
  for (size_t i = 0; i < in.size(); ++i) in[i] = uint16_t(0x3f80 + i);  // finite bf16
  for (bool wait : {true, false}) {
    cp_async_kernel ^ Launch(1, 32, in.size() * 2) ^ kernel_arguments(out.data(), in.data(), wait);
    for (int t = 0; t < 32; ++t) CHECK(out[t] == (wait ? in[8 * t] : 0xFFFF));
  }
}

TEST_CASE("device emulator: ldmatrix from global memory is an error", "[emulated]") {
  emulation::set_schedule(Schedule{false, false});
  std::vector<uint16_t> rows(8 * 32, 0x3f80);
  std::vector<uint32_t> out(32);
  CHECK(error_of([&] { ldmatrix_global_kernel ^ Launch(1, 32, 1024) ^ kernel_arguments(out.data(), rows.data()); }).find("ldmatrix row outside") != std::string::npos);
}

TEST_CASE("device emulator: writing past the dynamic shared memory is an error", "[emulated]") {
  CHECK_NOTHROW(overflow_kernel ^ Launch(1, 32, 256) ^ kernel_arguments(255));
  CHECK(error_of([&] { overflow_kernel ^ Launch(1, 32, 256) ^ kernel_arguments(256); }).find("past the end") != std::string::npos);
}

TEST_CASE("device emulator: a shuffle after a lane has exited is an error", "[emulated]") {
  std::vector<float> out(32);
  CHECK(error_of([&] { early_exit_kernel ^ Launch(1, 32) ^ kernel_arguments(out.data()); }).find("exited") != std::string::npos);
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
  const std::string message = error_of([] { emulation::parse_schedule("descending+backwards"); });
  CHECK(message.find("unknown schedule flag 'backwards'") != std::string::npos);
  CHECK(message.find("allowed: descending, copies_at_issue") != std::string::npos);
}
