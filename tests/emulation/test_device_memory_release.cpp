// The CUDA backend owns its device memory and page-locked buffers (RAII),
// and unwinds cleanly when one cannot be had. On the emulated device, which
// counts every cudaMalloc and cudaHostAlloc not yet freed and can fail a
// chosen one (device_emulator.h): whole training runs, with evaluation,
// checkpoints, a resume and the default communicator (ZeRO stage 0 and 3
// for the failing runs), leave as many
// allocations live as there were before them; so do runs that fail part
// way, with a non-finite loss mid-run or out of memory at any of a run's
// allocations, where the exception destroys the owners. Each failed
// allocation must end the run with an out-of-memory error naming what was
// being allocated (it found the upload staging's page-locked slots
// reported as a bare CUDA error).
#include <filesystem>
#include <string>

#include "catch.h"
#include "device_emulator.h"
#include "srgpt/trainer.h"
#include "unit/test_util.h"

using namespace srgpt;
using namespace srgpt_test;
namespace emulation = srgpt::emulation;

namespace {

std::string in_use() {
  const emulation::DeviceMemoryInUse m = emulation::device_memory_in_use();
  return std::to_string(m.allocations) + " allocations of " + std::to_string(m.bytes) + " bytes";
}

// The message of the error a training run throws, or "" when it throws none.
std::string run_error(const Config& c, const TrainOptions& options) {
  try {
    Trainer(c, options).run();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

struct Runs {
  TempDir tmp{"emulated-memory-release"};
  Runs() { write_markov_shards(tmp.path() / "data", 64, 8000, 1000); }
  // Steps 1-4, with evaluations and checkpoints every 2; resumed: 5-6.
  Config config(const std::string& name, Precision precision) const {
    Config c = tiny_config(tmp.path() / "data", tmp.path() / name);
    c.device = DeviceChoice::cuda;
    c.precision = precision;
    c.train.steps = 4;
    c.train.eval_every = 2;
    c.checkpoint.every = 2;
    return c;
  }
};

TrainOptions resuming() {
  TrainOptions o = quiet_options();
  o.resume = true;
  return o;
}

}  // namespace

TEST_CASE("cuda backend: training runs, resumed or failed, free every device and page-locked allocation",
          "[emulated]") {
  const Runs runs;
  const std::string before = in_use();
  for (Precision p : {Precision::bf16_sr, Precision::mixed}) {
    INFO(precision_name(p));
    Config c = runs.config(std::string("run-") + precision_name(p), p);
    CHECK(run_error(c, quiet_options()).empty());
    CHECK(in_use() == before);
    c.train.steps = 6;
    CHECK(run_error(c, resuming()).empty());
    CHECK(in_use() == before);
  }

  // A non-finite loss mid-run, after steps with every buffer in use.
  Config diverging = runs.config("diverging", Precision::bf16_sr);
  diverging.optimizer.lr = 1e30;
  diverging.optimizer.warmup_steps = 0;
  diverging.train.steps = 20;
  CHECK(run_error(diverging, quiet_options()).find("non-finite") != std::string::npos);
  CHECK(in_use() == before);
}

TEST_CASE("cuda backend: a training run out of memory at any of its allocations fails clearly and frees the rest",
          "[emulated]") {
  const Runs runs;
  const std::string before = in_use();
  // A run and its resume, counting their allocations. The resume starts
  // from a copy of the run's directory as the run left it (step 4). At
  // ZeRO stage 0 and 3 (one rank: its gathers and shards still allocate).
  const int zero_stage = GENERATE(0, 3);
  INFO("ZeRO stage " << zero_stage);
  Config straight = runs.config("straight-" + std::to_string(zero_stage), Precision::bf16_sr);
  straight.dist.zero_stage = zero_stage;
  auto resumable_copy = [&](const std::string& name) {
    Config c = straight;
    c.train.steps = 6;
    c.out_dir = (runs.tmp.path() / name).string();
    std::filesystem::copy(straight.out_dir, c.out_dir, std::filesystem::copy_options::recursive);
    return c;
  };
  size_t start = emulation::device_allocations_requested();
  REQUIRE(run_error(straight, quiet_options()).empty());
  const size_t straight_count = emulation::device_allocations_requested() - start;
  const Config resumed = resumable_copy("resumed-" + std::to_string(zero_stage));
  start = emulation::device_allocations_requested();
  REQUIRE(run_error(resumed, resuming()).empty());
  const size_t resumed_count = emulation::device_allocations_requested() - start;
  REQUIRE(in_use() == before);
  // The same runs again, each with one allocation failing, every one in
  // turn (18 each at stage 0 and 22 at stage 3 on 2026-12-07, half a
  // second a run).
  int tried = 0;
  for (bool resume : {false, true}) {
    const size_t count = resume ? resumed_count : straight_count;
    for (size_t at = 0; at < count; ++at) {
      INFO("allocation " << at << " of " << count << (resume ? " of the resumed run" : ""));
      const std::string name = "failed-" + std::to_string(zero_stage) + "-" + std::to_string(++tried);
      Config failed = straight;
      if (resume)
        failed = resumable_copy(name);
      else
        failed.out_dir = (runs.tmp.path() / name).string();
      start = emulation::device_allocations_requested();
      emulation::inject_allocation_failure(at);
      const std::string error = run_error(failed, resume ? resuming() : quiet_options());
      INFO(error);
      REQUIRE(emulation::device_allocations_requested() > start + at);  // the failure was met
      // What was being allocated, and the runtime's word for the failure.
      CHECK(error.find(" out of ") != std::string::npos);
      CHECK(error.find(" allocating ") != std::string::npos);
      CHECK(error.find(": out of memory") != std::string::npos);
      CHECK(in_use() == before);
    }
  }
}
