// Resume on the GPU is bit-exact: a run stopped after step 6 and resumed
// from its checkpoint gives the same losses, weights and optimizer state as
// the run that went straight through 12 steps (as tests/unit/test_training.cpp
// checks on the cpu backend).
#include <cstring>
#include <vector>

#include "gpu_test_util.h"
#include "srgpt/trainer.h"
#include "unit/test_util.h"

using namespace srgpt;
using namespace srgpt_test;

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
