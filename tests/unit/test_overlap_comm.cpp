// dist.overlap_comm on one process: a ParameterStore gives the same bits
// with the collectives overlapped (deferred or run at once) as completed
// at each call, at every ZeRO stage and gradient dtype.
// tests/mpi/test_overlap_mpi.cpp repeats the check across ranks, where the
// reductions add real sums.
#include <cstring>

#include "catch.h"
#include "overlap_schedule.h"
#include "srgpt/backend.h"
#include "srgpt/communicator.h"

using namespace srgpt;
using namespace srgpt_test;

TEST_CASE("overlapped collectives give the same losses, gradients and weights at every ZeRO stage", "[overlap]") {
  for (DType grad_dtype : {DType::bf16, DType::f32}) {
    for (int stage = 0; stage <= 3; ++stage) {
      INFO("ZeRO stage " << stage << ", gradients in " << dtype_name(grad_dtype));
      auto backend = make_cpu_backend(DType::bf16);
      auto comm = make_single_process_communicator(*backend);
      const OverlapRun completed = run_overlap_steps(*backend, *comm, stage, grad_dtype, false);
      const OverlapRun deferred = run_overlap_steps(*backend, *comm, stage, grad_dtype, true);
      EagerCommunicator eager(make_single_process_communicator(*backend));
      const OverlapRun at_once = run_overlap_steps(*backend, eager, stage, grad_dtype, true);
      REQUIRE(completed.losses.size() == 8);
      for (const OverlapRun* run : {&deferred, &at_once}) {
        CHECK(run->losses == completed.losses);
        CHECK(run->grads == completed.grads);
        CHECK(run->weights == completed.weights);
      }
      // The steps did something: the second step's gradients differ from the first's.
      const size_t half = completed.grads.size() / 2;
      CHECK(std::memcmp(completed.grads.data(), completed.grads.data() + half, half) != 0);
    }
  }
}
