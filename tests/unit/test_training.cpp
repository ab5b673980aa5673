// End-to-end training on the cpu backend: the loss falls in every precision
// mode, bf16-sr, mixed and bf16-kahan land close to fp32, and resume is
// bit-exact; training with the memory options follows the default run.
#include <cmath>
#include <cstring>
#include <vector>

#include <nlohmann/json.hpp>

#include "catch.h"
#include "srgpt/checkpoint.h"
#include "srgpt/trainer.h"
#include "test_util.h"

using namespace srgpt;
using namespace srgpt_test;

namespace {

const Precision kAllModes[] = {Precision::bf16_sr, Precision::bf16_rn, Precision::mixed, Precision::fp32,
                               Precision::bf16_kahan};

double mean_of(const std::vector<double>& v, size_t begin, size_t end) {
  double s = 0;
  for (size_t i = begin; i < end; ++i) s += v[i];
  return s / double(end - begin);
}

std::vector<char> weights_of(Trainer& t) { return t.params().full_weights_on_host(); }

}  // namespace

TEST_CASE("training loss falls in every precision mode, and bf16-sr, mixed and bf16-kahan end within 1% of fp32",
          "[training]") {
  TempDir tmp("train");
  write_markov_shards(tmp.path() / "data", 64, 60000, 8000);
  double final_loss[5];
  int i = 0;
  for (Precision p : kAllModes) {
    Config c = tiny_config(tmp.path() / "data", tmp.path() / precision_name(p));
    c.precision = p;
    c.train.steps = 100;
    c.optimizer.lr = 1e-2;
    c.train.eval_tokens = 4096;
    Trainer trainer(c, quiet_options());
    TrainResult r = trainer.run();
    REQUIRE(r.losses.size() == 100);
    const double first = mean_of(r.losses, 0, 5), last = mean_of(r.losses, 90, 100);
    INFO(precision_name(p) << ": first " << first << " last " << last << " val " << r.val_loss.value_or(-1));
    CHECK(std::log(64.0) - first < 0.2);  // starts near uniform
    CHECK(last < first - 1.0);            // learns the chain
    REQUIRE(r.val_loss.has_value());
    CHECK(*r.val_loss < first - 1.0);
    final_loss[i++] = last;
  }
  // Mean loss of the last 10 steps relative to fp32's, measured here
  // (over 8 data and init seeds): bf16-sr -0.007% (-0.19% to +0.24%),
  // mixed -0.04% (-0.19% to +0.14%), bf16-kahan -0.04% (-0.24% to +0.19%).
  // bf16-rn lands +0.24% (+0.20% to +0.70%): the seeds' spread overlaps
  // it, so no bound here separates SR from RN robustly; test_stagnation.cpp
  // does. 1% is 4x the largest gap measured.
  // Whatever the bounds, bf16-sr is not bf16-rn: an optimizer that lost
  // its stochastic rounding would give bf16-rn's losses bit for bit.
  CHECK(final_loss[0] != final_loss[1]);
  const double fp32 = final_loss[3];
  for (int mode : {0, 2, 4}) {
    INFO(precision_name(kAllModes[mode]) << " " << final_loss[mode] << " fp32 " << fp32);
    CHECK(std::fabs(final_loss[mode] - fp32) / fp32 < 0.01);
  }
}

TEST_CASE("resume is bit-exact in every precision mode", "[training][resume]") {
  TempDir tmp("resume");
  write_markov_shards(tmp.path() / "data", 64, 30000, 4000);
  for (Precision p : kAllModes) {
    SECTION(precision_name(p)) {
      Config c = tiny_config(tmp.path() / "data", tmp.path() / "straight");
      c.precision = p;
      c.train.steps = 12;
      c.data.val.clear();
      Trainer straight(c, quiet_options());
      TrainResult full = straight.run();
      REQUIRE(full.losses.size() == 12);

      // The same 12-step run stopped after step 6 (as a preempted job
      // would), then resumed from its checkpoint in a fresh trainer.
      Config split = c;
      split.out_dir = (tmp.path() / "split").string();
      TrainOptions stop = quiet_options();
      stop.stop_after_step = 6;
      const TrainResult a = Trainer(split, stop).run();  // gone before the next one locks out_dir
      REQUIRE(a.losses.size() == 6);
      TrainOptions resume = quiet_options();
      resume.resume = true;
      Trainer second(split, resume);
      TrainResult b = second.run();
      REQUIRE(b.first_step == 7);
      REQUIRE(b.losses.size() == 6);

      std::vector<double> joined = a.losses;
      joined.insert(joined.end(), b.losses.begin(), b.losses.end());
      for (size_t i = 0; i < joined.size(); ++i) {
        INFO("step " << i + 1);
        CHECK(std::memcmp(&joined[i], &full.losses[i], sizeof(double)) == 0);
      }
      CHECK(weights_of(second) == weights_of(straight));
      CHECK(second.optimizer().state_on_host() == straight.optimizer().state_on_host());
      // The counters too: the last checkpoint's state (tokens seen, skipped
      // steps, loader position, ...) and each step's tokens in metrics.jsonl.
      auto saved_state = [](const Config& run) {
        nlohmann::json state = CheckpointReader(fs::path(run.out_dir) / "checkpoints" / "step_00000012").state();
        state["config"].erase("out_dir");
        return state;
      };
      CHECK(saved_state(split) == saved_state(c));
      auto tokens_by_step = [](const Config& run) {
        std::vector<int64_t> tokens;
        for (const nlohmann::json& j : step_lines_in(fs::path(run.out_dir) / "metrics.jsonl"))
          tokens.push_back(j.at("tokens").get<int64_t>());
        return tokens;
      };
      CHECK(tokens_by_step(split).size() == 12);
      CHECK(tokens_by_step(split) == tokens_by_step(c));
    }
  }
}

TEST_CASE("the memory options reach the model from the config, and training with them follows the default run",
          "[training]") {
  TempDir tmp("memory options");
  write_markov_shards(tmp.path() / "data", 64, 30000, 4000);
  Config c = tiny_config(tmp.path() / "data", tmp.path() / "plain");
  c.train.steps = 12;
  c.data.val.clear();
  Trainer plain(c, quiet_options());
  Config saving_config = c;
  saving_config.out_dir = (tmp.path() / "saving").string();
  saving_config.train.recompute = Recompute::gelu;
  saving_config.train.lm_head_chunks = 2;
  saving_config.train.layernorm_backward_from = LayerNormBackwardFrom::output;
  Trainer saving(saving_config, quiet_options());
  // Its model has the layout of these options.
  GPT expected(c.model, saving.params(), c.batch.micro_batch, c.batch.seq_len,
               {Recompute::gelu, 2, LayerNormBackwardFrom::output});
  CHECK(saving.model().activation_bytes() == expected.activation_bytes());
  CHECK(saving.model().activation_bytes() < plain.model().activation_bytes());

  const TrainResult a = plain.run(), b = saving.run();
  REQUIRE(a.losses.size() == 12);
  REQUIRE(b.losses.size() == 12);
  // The first step's forward is the same; after that, the gradients'
  // rounding differs (the LayerNorm backward, wte's chunks), not the
  // training.
  CHECK(std::memcmp(&a.losses[0], &b.losses[0], sizeof(double)) == 0);
  const double plain_end = mean_of(a.losses, 9, 12), saving_end = mean_of(b.losses, 9, 12);
  INFO("mean loss of the last 3 steps: default " << plain_end << ", memory options " << saving_end);
  CHECK(std::fabs(saving_end - plain_end) / plain_end < 0.01);
  CHECK(saving_end < mean_of(b.losses, 0, 3));  // and it trains
}
