// The single-process communicator: a world of one, where every collective
// is a copy (a sum over one rank is the value itself, with no rounding).
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "comm_test_backend.h"
#include "srgpt/backend.h"
#include "srgpt/communicator.h"
#include "srgpt/error.h"

namespace {

using namespace srgpt;

std::vector<char> random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::vector<char> out(n);
  for (char& c : out) c = char(byte(rng));
  return out;
}

std::vector<char> download(Backend& backend, const void* src, size_t bytes) {
  std::vector<char> out(bytes);
  backend.download(out.data(), src, bytes);
  return out;
}

}  // namespace

TEST_CASE("single-process collectives copy their input unchanged", "[comm]") {
  // Host memory, and the scrambled stand-in for device memory, which
  // crashes if the communicator dereferences a device pointer itself.
  std::vector<std::unique_ptr<Backend>> backends;
  backends.push_back(make_cpu_backend(DType::f32));
  backends.push_back(std::make_unique<test::ScrambledMemoryBackend>());
  uint64_t seed = 7;
  for (auto& backend : backends) {
    INFO(backend->name());
    std::unique_ptr<Communicator> comm = make_single_process_communicator(*backend);
    CHECK(comm->rank() == 0);
    CHECK(comm->size() == 1);
    CHECK(comm->local_rank() == 0);
    for (DType dtype : {DType::bf16, DType::f32, DType::f64}) {
      const size_t count = 1013, bytes = count * dtype_size(dtype);
      // Random bit patterns include NaNs and negative zeros: a copy must keep them all.
      const std::vector<char> input = random_bytes(bytes, ++seed);
      DeviceBuffer send(*backend, bytes, "send"), recv(*backend, bytes, "recv");
      backend->upload(send.get(), input.data(), bytes);

      comm->reduce_scatter_sum(send.get(), recv.get(), count, dtype);
      CHECK(download(*backend, recv.get(), bytes) == input);
      comm->reduce_scatter_sum(send.get(), send.get(), count, dtype);
      CHECK(download(*backend, send.get(), bytes) == input);

      backend->fill_zero(recv.get(), bytes);
      comm->all_gather(send.get(), recv.get(), count, dtype);
      CHECK(download(*backend, recv.get(), bytes) == input);

      comm->all_reduce_sum(send.get(), count, dtype);
      CHECK(download(*backend, send.get(), bytes) == input);
      comm->broadcast(send.get(), bytes, 0);
      CHECK(download(*backend, send.get(), bytes) == input);
    }
    comm->barrier();
    CHECK(comm->all_reduce_sum(-2.75e-3) == -2.75e-3);
    CHECK(comm->all_reduce_max(12.5) == 12.5);
    CHECK(std::isnan(comm->all_reduce_max(std::nan(""))));
    REQUIRE_THROWS_AS(comm->broadcast(nullptr, 0, 1), Error);
  }
}

TEST_CASE("communicators this build lacks fail with a clear error", "[comm]") {
  std::unique_ptr<Backend> cpu = make_cpu_backend(DType::f32);
  // A cpu backend never gets NCCL: either the build has no NCCL, or NCCL
  // refuses host memory.
  try {
    make_nccl_communicator(*cpu);
    FAIL("make_nccl_communicator accepted the cpu backend");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("NCCL") != std::string::npos);
  }
#ifndef SRGPT_HAVE_MPI
  try {
    make_mpi_communicator(*cpu);
    FAIL("make_mpi_communicator worked in a build without MPI");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("without MPI") != std::string::npos);
  }
#endif
}
