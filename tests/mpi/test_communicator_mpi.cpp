// The MPI communicator across ranks (ctest runs this under mpiexec -np 2 and
// -np 4). Inputs are random, seeded per test and per rank, so every rank can
// regenerate every rank's inputs and check its own results against the
// contract computed locally. A check that fails on one rank is made to fail
// on all of them, so the ranks keep calling the same collectives.
//
// Each collective is run over host memory (cpu backend) with the default
// and with tiny pieces (many MPI calls per collective, odd remainders), and
// over the scrambled-memory stand-in for a GPU, which takes the host-staged
// path through download/upload. Built into tests/emulation's
// srgpt_emulated_mpi_tests (SRGPT_EMULATED_NCCL), the same checks run the
// NCCL communicator on the emulated device instead.
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <mpi.h>

#include "catch.h"
#include "comm_test_backend.h"
#include "srgpt/backend.h"
#include "srgpt/bf16.h"
#include "srgpt/communicator.h"
#include "srgpt/error.h"

#ifdef SRGPT_EMULATED_NCCL
#include "communicator_nccl.cuh"
#endif

namespace {

using namespace srgpt;
using Bytes = std::vector<char>;

constexpr DType kDTypes[] = {DType::bf16, DType::f32, DType::f64};

// Long enough for a loaded CI machine, short enough that a broken test ends.
constexpr double kTestTimeoutSeconds = 120;

struct Setup {
  std::string label;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Communicator> comm;
};

// Collective: every rank builds the same setups in the same order.
std::vector<Setup> make_setups() {
  CommunicatorOptions standard;
  standard.timeout_s = kTestTimeoutSeconds;
  CommunicatorOptions tiny_pieces = standard;
  tiny_pieces.piece_bytes = 96;
  std::vector<Setup> setups;
#ifdef SRGPT_EMULATED_NCCL
  // The NCCL communicator on the emulated device (tests/emulation), its
  // bytes moved by the emulated NCCL over MPI.
  auto add = [&](std::string label, const CommunicatorOptions& options) {
    std::unique_ptr<Backend> backend = make_cuda_backend(DType::f32, 0);
    std::unique_ptr<Communicator> comm =
        gpu::make_nccl_communicator_over(*backend, make_mpi_host_communicator(options), options);
    setups.push_back({std::move(label), std::move(backend), std::move(comm)});
  };
  add("NCCL on the emulated device", standard);
  add("NCCL on the emulated device, 96-byte pieces", tiny_pieces);
#else
  auto add = [&](std::string label, std::unique_ptr<Backend> backend, const CommunicatorOptions& options) {
    std::unique_ptr<Communicator> comm = make_mpi_communicator(*backend, options);
    setups.push_back({std::move(label), std::move(backend), std::move(comm)});
  };
  add("host memory", make_cpu_backend(DType::f32), standard);
  add("host memory, 96-byte pieces", make_cpu_backend(DType::f32), tiny_pieces);
  add("staged device memory, 96-byte pieces", std::make_unique<test::ScrambledMemoryBackend>(), tiny_pieces);
#endif
  return setups;
}

// True on every rank exactly when `ok` holds on every rank.
bool on_all_ranks(Communicator& comm, bool ok) { return comm.all_reduce_max(ok ? 0.0 : 1.0) == 0.0; }

// Rank `rank`'s input for the test identified by `seed`: values spread over
// many binades, so rounding and summation order matter.
Bytes random_elements(DType dtype, size_t count, uint64_t seed, int rank) {
  std::mt19937_64 rng(seed * 1000003u + uint64_t(rank));
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> exponent(-6.0, 6.0);
  Bytes out(count * dtype_size(dtype));
  for (size_t i = 0; i < count; ++i) {
    const double x = normal(rng) * std::exp2(exponent(rng));
    if (dtype == DType::bf16) {
      const bf16 h = float_to_bf16_rn(float(x));
      std::memcpy(&out[i * 2], &h, 2);
    } else if (dtype == DType::f32) {
      const float f = float(x);
      std::memcpy(&out[i * 4], &f, 4);
    } else {
      std::memcpy(&out[i * 8], &x, 8);
    }
  }
  return out;
}

double element_value(const Bytes& data, DType dtype, size_t i) {
  if (dtype == DType::bf16) {
    bf16 h;
    std::memcpy(&h, &data[i * 2], 2);
    return bf16_to_float(h);
  }
  if (dtype == DType::f32) {
    float f;
    std::memcpy(&f, &data[i * 4], 4);
    return f;
  }
  double d;
  std::memcpy(&d, &data[i * 8], 8);
  return d;
}

// The header's contract for elements [offset, offset + count): summed over
// ranks 0..N-1 in that order in fp32 (fp64 for f64), rounded once.
Bytes rank_order_sum(const std::vector<Bytes>& inputs, DType dtype, size_t offset, size_t count) {
  Bytes out(count * dtype_size(dtype));
  for (size_t i = 0; i < count; ++i) {
    if (dtype == DType::f64) {
      double sum = element_value(inputs[0], dtype, offset + i);
      for (size_t r = 1; r < inputs.size(); ++r) sum += element_value(inputs[r], dtype, offset + i);
      std::memcpy(&out[i * 8], &sum, 8);
    } else {
      float sum = float(element_value(inputs[0], dtype, offset + i));
      for (size_t r = 1; r < inputs.size(); ++r) sum += float(element_value(inputs[r], dtype, offset + i));
      if (dtype == DType::bf16) {
        const bf16 h = float_to_bf16_rn(sum);
        std::memcpy(&out[i * 2], &h, 2);
      } else {
        std::memcpy(&out[i * 4], &sum, 4);
      }
    }
  }
  return out;
}

std::vector<Bytes> all_inputs(DType dtype, size_t count, uint64_t seed, int ranks) {
  std::vector<Bytes> inputs;
  for (int r = 0; r < ranks; ++r) inputs.push_back(random_elements(dtype, count, seed, r));
  return inputs;
}

Bytes download(Backend& backend, const void* src, size_t bytes) {
  Bytes out(bytes);
  backend.download(out.data(), src, bytes);
  return out;
}

uint64_t fnv1a(const Bytes& data) {
  uint64_t hash = 14695981039346656037ull;
  for (char c : data) hash = (hash ^ uint8_t(c)) * 1099511628211ull;
  return hash;
}

// True on every rank when every rank holds these exact bytes (their
// checksums, gathered with the communicator under test, all agree).
bool identical_on_all_ranks(Setup& s, const Bytes& data) {
  const uint64_t mine = fnv1a(data);
  DeviceBuffer sent(*s.backend, 8, "checksum"), gathered(*s.backend, 8 * size_t(s.comm->size()), "checksums");
  s.backend->upload(sent.get(), &mine, 8);
  s.comm->all_gather(sent.get(), gathered.get(), 1, DType::f64);
  const Bytes all = download(*s.backend, gathered.get(), gathered.bytes());
  bool same = true;
  for (int r = 0; r < s.comm->size(); ++r) same = same && std::memcmp(&all[size_t(r) * 8], &mine, 8) == 0;
  return on_all_ranks(*s.comm, same);
}

// The rank among the processes on this node (the GPU a rank picks), from
// MPI itself.
int node_rank() {
  MPI_Comm node;
  REQUIRE(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS);
  int rank = -1;
  const int rank_code = MPI_Comm_rank(node, &rank);
  REQUIRE(MPI_Comm_free(&node) == MPI_SUCCESS);
  REQUIRE(rank_code == MPI_SUCCESS);
  return rank;
}

TEST_CASE("the launch environment agrees with MPI_COMM_WORLD", "[mpi]") {
  for (Setup& s : make_setups()) {
    const LaunchInfo launch = launch_info_from_environment();
    const int local_rank = node_rank();
    CHECK(launched_under_mpi());
    CHECK(launch.rank == s.comm->rank());
    CHECK(launch.size == s.comm->size());
    CHECK(launch.local_rank == local_rank);
    CHECK(s.comm->size() >= 2);
    REQUIRE(on_all_ranks(*s.comm, launch.rank == s.comm->rank() && launch.size == s.comm->size() &&
                                      launch.local_rank == local_rank));
  }
}

TEST_CASE("reduce_scatter_sum gives each rank its chunk summed in rank order, rounded once", "[mpi]") {
  uint64_t seed = 100;
  for (Setup& s : make_setups()) {
    const int ranks = s.comm->size(), me = s.comm->rank();
    for (DType dtype : kDTypes) {
      for (size_t count : {size_t(1), size_t(5), size_t(1001)}) {
        for (bool in_place : {false, true}) {
          INFO(s.label << ", " << dtype_name(dtype) << ", count " << count << (in_place ? ", in place" : ""));
          const size_t element = dtype_size(dtype), chunk_bytes = count * element;
          const std::vector<Bytes> inputs = all_inputs(dtype, size_t(ranks) * count, ++seed, ranks);
          DeviceBuffer send(*s.backend, inputs[me].size(), "send");
          DeviceBuffer separate_recv(*s.backend, chunk_bytes, "recv");
          s.backend->upload(send.get(), inputs[me].data(), inputs[me].size());
          char* recv = in_place ? send.as<char>() + size_t(me) * chunk_bytes : separate_recv.as<char>();
          s.comm->reduce_scatter_sum(send.get(), recv, count, dtype);
          const bool ok = download(*s.backend, recv, chunk_bytes) == rank_order_sum(inputs, dtype, me * count, count);
          CHECK(ok);
          REQUIRE(on_all_ranks(*s.comm, ok));
        }
      }
    }
  }
}

TEST_CASE("all_gather concatenates every rank's chunk exactly", "[mpi]") {
  uint64_t seed = 200;
  for (Setup& s : make_setups()) {
    const int ranks = s.comm->size(), me = s.comm->rank();
    for (DType dtype : kDTypes) {
      for (size_t count : {size_t(1), size_t(7), size_t(1003)}) {
        for (bool in_place : {false, true}) {
          INFO(s.label << ", " << dtype_name(dtype) << ", count " << count << (in_place ? ", in place" : ""));
          const size_t chunk_bytes = count * dtype_size(dtype);
          const std::vector<Bytes> inputs = all_inputs(dtype, count, ++seed, ranks);
          Bytes expected;
          for (const Bytes& chunk : inputs) expected.insert(expected.end(), chunk.begin(), chunk.end());
          DeviceBuffer recv(*s.backend, expected.size(), "recv"), separate_send(*s.backend, chunk_bytes, "send");
          char* send = in_place ? recv.as<char>() + size_t(me) * chunk_bytes : separate_send.as<char>();
          s.backend->upload(send, inputs[me].data(), chunk_bytes);
          s.comm->all_gather(send, recv.get(), count, dtype);
          const bool ok = download(*s.backend, recv.get(), recv.bytes()) == expected;
          CHECK(ok);
          REQUIRE(on_all_ranks(*s.comm, ok));
        }
      }
    }
  }
}

TEST_CASE("all_reduce_sum leaves the same rank-order sums on every rank", "[mpi]") {
  uint64_t seed = 300;
  for (Setup& s : make_setups()) {
    const int ranks = s.comm->size(), me = s.comm->rank();
    // Fewer elements than ranks, a multiple of the world size plus one, and
    // a large odd count: the padded tail and the even head both matter.
    for (size_t count : {size_t(1), size_t(3), size_t(ranks) * 17 + 1, size_t(2001)}) {
      for (DType dtype : kDTypes) {
        INFO(s.label << ", " << dtype_name(dtype) << ", count " << count);
        const std::vector<Bytes> inputs = all_inputs(dtype, count, ++seed, ranks);
        DeviceBuffer data(*s.backend, inputs[me].size(), "data");
        s.backend->upload(data.get(), inputs[me].data(), inputs[me].size());
        s.comm->all_reduce_sum(data.get(), count, dtype);
        const Bytes result = download(*s.backend, data.get(), data.bytes());
        const bool ok = result == rank_order_sum(inputs, dtype, 0, count);
        CHECK(ok);
        REQUIRE(on_all_ranks(*s.comm, ok));
        REQUIRE(identical_on_all_ranks(s, result));
      }
    }
  }
}

TEST_CASE("broadcast copies the root's bytes to every rank", "[mpi]") {
  uint64_t seed = 400;
  for (Setup& s : make_setups()) {
    const int ranks = s.comm->size(), me = s.comm->rank();
    for (int root = 0; root < ranks; ++root) {
      for (size_t bytes : {size_t(1), size_t(12345)}) {
        INFO(s.label << ", root " << root << ", " << bytes << " bytes");
        const std::vector<Bytes> inputs = all_inputs(DType::bf16, (bytes + 1) / 2, ++seed, ranks);
        DeviceBuffer data(*s.backend, bytes, "data");
        s.backend->upload(data.get(), inputs[me].data(), bytes);
        s.comm->broadcast(data.get(), bytes, root);
        const Bytes expected(inputs[root].begin(), inputs[root].begin() + std::ptrdiff_t(bytes));
        const bool ok = download(*s.backend, data.get(), bytes) == expected;
        CHECK(ok);
        REQUIRE(on_all_ranks(*s.comm, ok));
      }
    }
    CHECK_THROWS_WITH(s.comm->broadcast(nullptr, 0, ranks),
                      contains_substring(
                          fmt::format("broadcast from rank {}: the world has ranks 0..{}", ranks, ranks - 1)));
  }
}

TEST_CASE("scalar reductions are rank-order sums and maxima, bit-identical on every rank", "[mpi]") {
  for (Setup& s : make_setups()) {
    const int ranks = s.comm->size(), me = s.comm->rank();
    // Magnitudes far apart: a different summation order gives other bits.
    std::vector<double> values;
    std::mt19937_64 rng(500);
    std::uniform_real_distribution<double> mantissa(1.0, 2.0);
    for (int r = 0; r < ranks; ++r) values.push_back(mantissa(rng) * std::ldexp(r % 2 ? -1.0 : 1.0, 20 * (r % 3)));
    double expected_sum = values[0], expected_max = values[0];
    for (int r = 1; r < ranks; ++r) {
      expected_sum += values[r];
      expected_max = std::max(expected_max, values[r]);
    }
    const double sum = s.comm->all_reduce_sum(values[me]);
    const double largest = s.comm->all_reduce_max(values[me]);
    const double nan_max = s.comm->all_reduce_max(me == ranks - 1 ? std::nan("") : values[me]);
    s.comm->barrier();
    const bool ok = std::memcmp(&sum, &expected_sum, 8) == 0 && largest == expected_max && std::isnan(nan_max);
    CHECK(ok);
    REQUIRE(on_all_ranks(*s.comm, ok));
    Bytes sum_bits(8);
    std::memcpy(sum_bits.data(), &sum, 8);
    REQUIRE(identical_on_all_ranks(s, sum_bits));
  }
}

#ifndef SRGPT_EMULATED_NCCL  // the emulated NCCL blocks inside MPI, where a GPU would spin: no timeout to test
TEST_CASE("a collective that another rank never joins times out with an error naming the call", "[mpi]") {
  CommunicatorOptions standard;
  standard.timeout_s = kTestTimeoutSeconds;
  CommunicatorOptions impatient = standard;
  impatient.timeout_s = 0.2;
  std::unique_ptr<Backend> backend = make_cpu_backend(DType::f32);
  std::unique_ptr<Communicator> comm = make_mpi_communicator(*backend, standard);
  std::unique_ptr<Communicator> impatient_comm = make_mpi_communicator(*backend, impatient);
  bool ok = true;
  if (comm->rank() == 0) {
    // The other ranks arrive long after the 0.2 s limit.
    try {
      impatient_comm->barrier();
      ok = false;
    } catch (const Error& e) {
      const std::string message = e.what();
      // The rank is named by the error reporter (srgpt: rank R: error: ...), once.
      ok = message.find("rank 0") == std::string::npos && message.find("barrier") != std::string::npos &&
           message.find("did not complete") != std::string::npos;
      INFO(message);
      CHECK(ok);
    }
  } else {
    std::this_thread::sleep_for(std::chrono::seconds(3));
    // Completes the barrier rank 0 gave up on: rank 0's request is still
    // pending inside MPI, and collectives match in the order they start.
    comm->barrier();
  }
  CHECK(ok);
  REQUIRE(on_all_ranks(*comm, ok));
}
#endif

}  // namespace
