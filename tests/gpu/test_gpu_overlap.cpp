// dist.overlap_comm on the GPU: NCCL's started collectives (queued on its
// stream, ordered against the backend's by events, no host wait) give the
// same losses, reduced gradients and weights as its synchronous ones, and
// as the single-process communicator, at every ZeRO stage, over two
// optimizer steps of a small GPT. One rank: NCCL refuses two on one GPU.
#include "gpu_test_util.h"
#include "overlap_schedule.h"
#include "srgpt/communicator.h"

using namespace srgpt;
using namespace srgpt_test;

TEST_CASE("gpu NCCL with one rank: overlapped collectives give the same bits at every ZeRO stage", "[gpu][overlap]") {
  if (!gpu_test::have_gpu() || !gpu_test::have_nccl()) return;
  for (DType grad_dtype : {DType::bf16, DType::f32}) {
    for (int stage = 0; stage <= 3; ++stage) {
      INFO("ZeRO stage " << stage << ", gradients in " << dtype_name(grad_dtype));
      auto backend = make_cuda_backend(DType::bf16, 0);
      auto single = make_single_process_communicator(*backend);
      const OverlapRun reference = run_overlap_steps(*backend, *single, stage, grad_dtype, false);
      auto nccl = make_nccl_communicator(*backend);
      const OverlapRun completed = run_overlap_steps(*backend, *nccl, stage, grad_dtype, false);
      const OverlapRun overlapped = run_overlap_steps(*backend, *nccl, stage, grad_dtype, true);
      check_same_bits({&completed, &overlapped}, reference);
    }
  }
}
