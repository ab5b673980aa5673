// The NCCL communicator across ranks on the emulated device (its bytes
// moved by the emulated NCCL over MPI), against the MPI communicator
// staging the same device buffers through host memory:
//  - two optimizer steps of a small GPT through a ParameterStore give the
//    same losses, reduced gradients and weights with NCCL's synchronous
//    collectives and with its started ones (queued on its stream, ordered
//    against the backend's by events), at every ZeRO stage;
//  - whole trainings (Trainer, dist.communicator = "nccl") write the same
//    checkpoint files, and a run stopped and resumed with NCCL ends with
//    the same bits as one that was not.
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <spdlog/fmt/fmt.h>

#include "catch.h"
#include "communicator_nccl.cuh"
#include "gpu/gpu_test_util.h"
#include "mpi/mpi_world.h"
#include "overlap_schedule.h"
#include "srgpt/checkpoint.h"
#include "srgpt/communicator.h"
#include "srgpt/trainer.h"

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

namespace {

std::vector<char> file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("training with NCCL writes the MPI communicator's checkpoints and resumes bit-exactly", "[nccl][training]") {
  // Without NCCL in the build, dist.communicator = "nccl" is refused.
  if (!gpu_test::have_nccl()) return;
  SharedDir dir("nccl-train");
  if (world().rank() == 0) write_markov_shards(dir.path() / "data", 64, 30000, 4000);
  world().barrier();
  const int rank = world().rank();
  for (int stage : {1, 3}) {
    INFO("ZeRO stage " << stage << ", " << world().size() << " ranks");
    auto config = [&](CommunicatorChoice communicator, const std::string& name) {
      Config c = tiny_config(dir.path() / "data", dir.path() / (name + std::to_string(stage)));
      c.device = DeviceChoice::cuda;
      c.dist.communicator = communicator;
      c.dist.zero_stage = stage;
      c.batch.micro_batch = 2;
      c.batch.total_tokens = 2 * int64_t(c.batch.micro_batch) * c.batch.seq_len * world().size();
      c.train.steps = 4;
      c.data.val.clear();
      return c;
    };
    const Config mpi = config(CommunicatorChoice::mpi, "mpi"), nccl = config(CommunicatorChoice::nccl, "nccl");
    const std::vector<double> mpi_losses = Trainer(mpi, quiet_options()).run().losses;
    const std::vector<double> nccl_losses = Trainer(nccl, quiet_options()).run().losses;
    REQUIRE(nccl_losses.size() == 4);
    CHECK(std::memcmp(nccl_losses.data(), mpi_losses.data(), 4 * sizeof(double)) == 0);
    const std::string last = "checkpoints/step_00000004";
    for (const std::string& file : {std::string("model.bin"), fmt::format("optim_rank{:05d}.bin", rank)})
      CHECK(file_bytes(fs::path(nccl.out_dir) / last / file) == file_bytes(fs::path(mpi.out_dir) / last / file));

    Config split = config(CommunicatorChoice::nccl, "nccl-split");
    TrainOptions stop = quiet_options();
    stop.stop_after_step = 2;
    std::vector<double> joined = Trainer(split, stop).run().losses;
    TrainOptions resume = quiet_options();
    resume.resume = true;
    for (double loss : Trainer(split, resume).run().losses) joined.push_back(loss);
    REQUIRE(joined.size() == 4);
    CHECK(std::memcmp(joined.data(), nccl_losses.data(), 4 * sizeof(double)) == 0);
    CHECK(file_bytes(fs::path(split.out_dir) / last / "model.bin") ==
          file_bytes(fs::path(nccl.out_dir) / last / "model.bin"));
  }
}
