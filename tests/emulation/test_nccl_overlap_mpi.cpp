// The NCCL communicator across ranks on the emulated device (its bytes
// moved by the emulated NCCL over MPI): two optimizer steps of a small GPT
// through a ParameterStore give the same losses, reduced gradients and
// weights with NCCL's synchronous collectives, with its started ones
// (queued on its stream, ordered against the backend's by events), and
// with the MPI communicator staging the same device buffers through host
// memory, at every ZeRO stage.
#include "catch.h"
#include "communicator_nccl.cuh"
#include "overlap_schedule.h"
#include "srgpt/checkpoint.h"
#include "srgpt/communicator.h"

using namespace srgpt;
using namespace srgpt_test;

TEST_CASE("NCCL across ranks: synchronous and overlapped collectives give the MPI communicator's bits",
          "[nccl][overlap]") {
  auto backend = make_cuda_backend(DType::bf16, 0);
  const CommunicatorOptions options = CommunicatorOptions::from_environment();
  auto mpi = make_mpi_communicator(*backend, options);
  auto nccl = gpu::make_nccl_communicator_over(*backend, make_mpi_host_communicator(options), options);
  REQUIRE(nccl->name() == "nccl");
  const std::pair<int, DType> cases[] = {
      {0, DType::bf16}, {1, DType::bf16}, {2, DType::bf16}, {2, DType::f32}, {3, DType::bf16}};
  for (const auto& [stage, grad_dtype] : cases) {
    INFO("ZeRO stage " << stage << ", gradients in " << dtype_name(grad_dtype) << ", " << nccl->size() << " ranks");
    const OverlapRun reference = run_overlap_steps(*backend, *mpi, stage, grad_dtype, false);
    const OverlapRun completed = run_overlap_steps(*backend, *nccl, stage, grad_dtype, false);
    const OverlapRun overlapped = run_overlap_steps(*backend, *nccl, stage, grad_dtype, true);
    check_same_bits({&completed, &overlapped}, reference);
    // The ranks' gradients were summed: every rank ends with the same weights.
    const double crc = crc32(reference.weights.data(), reference.weights.size());
    CHECK(mpi->all_reduce_max(crc) == -mpi->all_reduce_max(-crc));
  }
}
