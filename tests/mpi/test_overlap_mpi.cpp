// dist.overlap_comm across ranks: the ParameterStore's overlapped
// collectives (the MPI communicator defers them until waited for; the eager
// wrapper runs them at once) give the same bits as collectives completed at
// each call, at every ZeRO stage and gradient dtype, with each rank on its
// own tokens so every reduction sums real contributions. (Whole training
// runs with the option on and off: tests/mpi/test_zero_mpi.cpp.)
#include "catch.h"
#include "overlap_schedule.h"
#include "srgpt/checkpoint.h"
#include "srgpt/communicator.h"

using namespace srgpt;
using namespace srgpt_test;

TEST_CASE("overlapped collectives across ranks: the same losses, gradients and weights at every ZeRO stage",
          "[overlap]") {
  auto backend = make_cpu_backend(DType::bf16);
  auto comm = make_mpi_communicator(*backend);
  for (DType grad_dtype : {DType::bf16, DType::f32}) {
    for (int stage = 0; stage <= 3; ++stage) {
      INFO("ZeRO stage " << stage << ", gradients in " << dtype_name(grad_dtype) << ", " << comm->size()
                         << " ranks");
      const OverlapRun completed = run_overlap_steps(*backend, *comm, stage, grad_dtype, false);
      const OverlapRun deferred = run_overlap_steps(*backend, *comm, stage, grad_dtype, true);
      EagerCommunicator eager(make_mpi_communicator(*backend));
      const OverlapRun at_once = run_overlap_steps(*backend, eager, stage, grad_dtype, true);
      check_same_bits({&deferred, &at_once}, completed);
      // The ranks' gradients were summed: every rank ends with the same weights.
      const double crc = crc32(completed.weights.data(), completed.weights.size());
      CHECK(comm->all_reduce_max(crc) == -comm->all_reduce_max(-crc));
    }
  }
}
