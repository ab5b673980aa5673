// Training runs on the GPU. Resume is bit-exact: a run stopped after step 6
// and resumed from its checkpoint gives the same losses, weights and
// optimizer state as the run that went straight through 12 steps (as
// tests/unit/test_training.cpp checks on the cpu backend). The logged MFU
// is of the GPU's tensor-core rate.
#include <cuda_runtime.h>

#include <cstring>
#include <vector>

#include "gpu_test_util.h"
#include "srgpt/trainer.h"
#include "unit/test_util.h"

using namespace srgpt;
using namespace srgpt_test;

TEST_CASE("gpu training logs its MFU of the GPU's tensor-core rate", "[gpu]") {
  if (!gpu_test::have_gpu()) return;
  TempDir tmp("gpu-mfu");
  write_markov_shards(tmp.path() / "data", 64, 8000, 1000);
  Config c = tiny_config(tmp.path() / "data", tmp.path() / "run");
  c.device = DeviceChoice::cuda;
  c.train.steps = 3;
  c.data.val.clear();
  Trainer trainer(c, quiet_options());
  trainer.run();
  // H100s and H200s (compute capability 9.0; the emulated device is an
  // H100 SXM) run 4096 dense bf16 FLOPs per SM and clock: 820-1071
  // TFLOP/s among their models. Another GPU's rate may be unknown (0).
  const auto backend = make_cuda_backend(DType::bf16, 0);
  const double peak = backend->tensor_peak_flops();
  int major = 0, minor = 0;
  REQUIRE(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) == cudaSuccess);
  REQUIRE(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0) == cudaSuccess);
  if (major == 9 && minor == 0) {
    CHECK(peak >= 800e12);
    CHECK(peak <= 1100e12);
  }
  CHECK(check_logged_mfu(fs::path(c.out_dir) / "metrics.jsonl", c, trainer.params().layout().num_params(), peak) == 3);
}

TEST_CASE("gpu resume is bit-exact", "[gpu]") {
  if (!gpu_test::have_gpu()) return;
  TempDir tmp("gpu-resume");
  write_markov_shards(tmp.path() / "data", 64, 30000, 4000);
  for (Precision p : {Precision::bf16_sr, Precision::mixed}) {
    INFO(precision_name(p));
    Config c = tiny_config(tmp.path() / "data", tmp.path() / (std::string("straight-") + precision_name(p)));
    c.device = DeviceChoice::cuda;
    c.precision = p;
    c.model.d_model = 128;  // head size 64: the tensor-core attention kernels
    c.train.steps = 12;
    c.data.val.clear();
    Trainer straight(c, quiet_options());
    const TrainResult full = straight.run();
    REQUIRE(full.losses.size() == 12);

    Config split = c;
    split.out_dir = (tmp.path() / (std::string("split-") + precision_name(p))).string();
    TrainOptions stop = quiet_options();
    stop.stop_after_step = 6;
    std::vector<double> joined;
    {
      Trainer first(split, stop);
      joined = first.run().losses;
    }
    TrainOptions resume = quiet_options();
    resume.resume = true;
    Trainer second(split, resume);
    const TrainResult rest = second.run();
    REQUIRE(rest.first_step == 7);
    joined.insert(joined.end(), rest.losses.begin(), rest.losses.end());
    REQUIRE(joined.size() == full.losses.size());
    CHECK(std::memcmp(joined.data(), full.losses.data(), joined.size() * sizeof(double)) == 0);
    CHECK(second.params().full_weights_on_host() == straight.params().full_weights_on_host());
    CHECK(second.optimizer().state_on_host() == straight.optimizer().state_on_host());
  }
}
