// The single-process communicator: a world of one, where every collective
// is a copy (a sum over one rank is the value itself, with no rounding);
// and the base class's started collectives, which run when waited for.
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
    CHECK_THROWS_WITH(comm->broadcast(nullptr, 0, 1),
                      contains_substring("broadcast from rank 1: a single-process run has only rank 0"));
  }
}

TEST_CASE("started collectives run when waited for, in start order", "[comm][overlap]") {
  auto backend = make_cpu_backend(DType::f32);
  auto comm = make_single_process_communicator(*backend);
  std::mt19937 rng(20261206);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  std::vector<float> a(37), b(37), recv(37, 0.0f), gathered(37, 0.0f);
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = value(rng);
    b[i] = value(rng);
  }
  const CollectiveTicket first = comm->start_reduce_scatter_sum(a.data(), recv.data(), a.size(), DType::f32);
  const CollectiveTicket second = comm->start_all_gather(b.data(), gathered.data(), b.size(), DType::f32);
  const CollectiveTicket third = comm->start_reduce_scatter_sum(b.data(), recv.data(), b.size(), DType::f32);
  CHECK(first == 1);
  CHECK(second == 2);
  CHECK(third == 3);
  CHECK(recv == std::vector<float>(37, 0.0f));  // nothing has run yet
  comm->wait(first);
  CHECK(recv == a);
  CHECK(gathered == std::vector<float>(37, 0.0f));
  comm->wait(first);  // again: nothing more runs
  CHECK(gathered == std::vector<float>(37, 0.0f));
  comm->wait_all();
  CHECK(gathered == b);
  CHECK(recv == b);  // the later reduce-scatter into recv ran last
  comm->wait_all();
  comm->wait(third);
  CHECK(recv == b);
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
