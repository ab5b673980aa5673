// srgpt's NCCL watchdog (NcclCommunicator::watch in cuda/communicator_nccl.cu):
// a collective that never completes (a peer died, or never arrives) ends
// with an error naming it once the timeout has passed, one whose peer
// fails (NCCL's asynchronous error) at once; either way the communicator is
// aborted, its later calls refuse clearly, and the device stays usable:
// never a hang. On the device emulator with one rank, the emulated NCCL
// injecting what srgpt sees of a dead peer (include/nccl.h): queries that
// answer not ready until the abort, and the asynchronous error. Where srgpt
// synchronised on such a collective instead of watching it, the emulator
// reports that a GPU would wait forever there.
#include <chrono>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "communicator_nccl.cuh"
#include "nccl.h"
#include "overlap_schedule.h"
#include "srgpt/backend.h"
#include "srgpt/communicator.h"
#include "srgpt/error.h"
#include "unit/test_util.h"

using namespace srgpt;
using srgpt::emulation::NcclFault;

namespace {

constexpr double kTimeoutS = 0.25;

// A backend of `dtype` and a one-rank NCCL communicator over it.
struct Watched {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Communicator> nccl;
  explicit Watched(DType dtype) : backend(make_cuda_backend(dtype, 0)) {
    CommunicatorOptions options;
    options.timeout_s = kTimeoutS;
    nccl = gpu::make_nccl_communicator_over(*backend, make_single_process_communicator(*backend), options);
  }
};

// One way of running a collective, and the name its errors give it.
struct Collective {
  const char* what;
  std::function<void(Communicator&, Backend&, float* data, float* out, size_t n)> run;
};

const std::vector<Collective>& collectives() {
  static const std::vector<Collective> all = {
      {"all_reduce_sum", [](Communicator& c, Backend&, float* d, float*, size_t n) { c.all_reduce_sum(d, n, DType::f32); }},
      {"all_gather", [](Communicator& c, Backend&, float* d, float* o, size_t n) { c.all_gather(d, o, n, DType::f32); }},
      {"reduce_scatter_sum",
       [](Communicator& c, Backend&, float* d, float* o, size_t n) { c.reduce_scatter_sum(d, o, n, DType::f32); }},
      {"broadcast", [](Communicator& c, Backend&, float* d, float*, size_t n) { c.broadcast(d, n * 4, 0); }},
      // Started, then waited for on the host: the trainer's way.
      {"started collectives",
       [](Communicator& c, Backend&, float* d, float*, size_t n) {
         c.start_all_reduce_sum(d, n, DType::f32);
         c.wait_all();
       }},
      {"started collectives",
       [](Communicator& c, Backend&, float* d, float* o, size_t n) {
         c.wait_on_host(c.start_all_gather(d, o, n, DType::f32));
       }},
      // The backend's stream waits for it first (a GPU-side wait, which an
      // abort must release), then the host.
      {"started collectives",
       [](Communicator& c, Backend& b, float* d, float* o, size_t n) {
         c.wait(c.start_reduce_scatter_sum(d, o, n, DType::f32));
         b.fill_zero(d, n * 4);
         c.wait_all();
       }},
  };
  return all;
}

}  // namespace

TEST_CASE("NCCL watchdog: a collective whose peers never arrive, or fail, ends in an error naming it, and the device "
          "stays usable",
          "[emulated][nccl]") {
  std::mt19937_64 rng(srgpt_test::fresh_seed());
  for (const Collective& collective : collectives()) {
    for (NcclFault fault : {NcclFault::peers_never_arrive, NcclFault::remote_error}) {
      const bool never = fault == NcclFault::peers_never_arrive;
      INFO(collective.what << (never ? ", peers never arrive" : ", a peer fails"));
      Watched w(DType::f32);
      const size_t n = 1 + rng() % 5000;
      DeviceBuffer data(*w.backend, n * 4, "data"), out(*w.backend, n * 4, "out");
      std::vector<float> values(n);
      for (float& v : values) v = std::normal_distribution<float>()(rng);
      w.backend->upload(data.get(), values.data(), n * 4);

      emulation::inject_nccl_fault(fault);
      const auto start = std::chrono::steady_clock::now();
      const std::string message = srgpt_test::error_message(
          [&] { collective.run(*w.nccl, *w.backend, data.as<float>(), out.as<float>(), n); });
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      INFO(message);
      CHECK(message.find(std::string("rank 0: NCCL ") + collective.what) != std::string::npos);
      if (never) {
        CHECK(message.find("did not complete within 0.25 s") != std::string::npos);
        CHECK(message.find("SRGPT_COMM_TIMEOUT_S") != std::string::npos);
        CHECK(waited >= kTimeoutS);
      } else {
        CHECK(message.find("failed: remote process exited or there was a network error: emulated NCCL: a peer of "
                           "rank 0 failed (injected)") != std::string::npos);
        CHECK(waited < kTimeoutS);  // at once, not at the timeout
      }
      CHECK(message.find("would wait forever") == std::string::npos);

      // Aborted: the next collective refuses; the backend goes on.
      CHECK(srgpt_test::contains(srgpt_test::error_message([&] { w.nccl->all_reduce_sum(data.get(), n, DType::f32); }),
                                 "rank 0: the NCCL communicator was shut down after an earlier collective failed"));
      CHECK_NOTHROW(w.backend->synchronize());
      std::vector<float> back(n);
      w.backend->upload(out.get(), values.data(), n * 4);
      w.backend->download(back.data(), out.get(), n * 4);
      CHECK(back == values);
      w.nccl.reset();
      CHECK(cudaDeviceSynchronize() == cudaSuccess);
    }
  }
}

TEST_CASE("NCCL watchdog: optimizer steps at any ZeRO stage end in the watchdog's error wherever a collective hangs",
          "[emulated][nccl]") {
  // Where the ParameterStore or the model synchronised on a started
  // collective instead of letting the communicator watch it, the run would
  // hang on a GPU, and here ends in the emulator's "would wait forever".
  std::mt19937_64 rng(srgpt_test::fresh_seed());
  for (int stage = 0; stage <= 3; ++stage) {
    for (bool overlap : {false, true}) {
      INFO("ZeRO stage " << stage << (overlap ? ", overlapped" : ", synchronous"));
      uint64_t collectives = 0;
      {
        Watched w(DType::bf16);
        const uint64_t before = emulation::nccl_collectives_queued();
        srgpt_test::run_overlap_steps(*w.backend, *w.nccl, stage, DType::bf16, overlap);
        collectives = emulation::nccl_collectives_queued() - before;
      }
      REQUIRE(collectives > 0);
      for (int draw = 0; draw < 2; ++draw) {
        const uint64_t at = rng() % collectives;
        const NcclFault fault = rng() % 2 ? NcclFault::peers_never_arrive : NcclFault::remote_error;
        INFO("collective " << at << " of " << collectives
                           << (fault == NcclFault::peers_never_arrive ? ", peers never arrive" : ", a peer fails"));
        Watched w(DType::bf16);
        emulation::inject_nccl_fault(fault, at);
        const std::string message = srgpt_test::error_message(
            [&] { srgpt_test::run_overlap_steps(*w.backend, *w.nccl, stage, DType::bf16, overlap); });
        INFO(message);
        CHECK(message.find("rank 0: NCCL ") != std::string::npos);
        CHECK(message.find(fault == NcclFault::peers_never_arrive ? "did not complete within 0.25 s"
                                                                  : "remote process exited") != std::string::npos);
        CHECK(message.find("would wait forever") == std::string::npos);
        w.nccl.reset();
        CHECK(cudaDeviceSynchronize() == cudaSuccess);
      }
    }
  }
}
