// One training step taken apart on the cpu backend: the gradient norm each
// ZeRO stage reports, global-norm clipping, skipping non-finite steps, and
// evaluate()'s mean and token budget, validation during a run, each
// against a path computed here through the public API.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "catch.h"
#include "srgpt/bf16.h"
#include "srgpt/checkpoint.h"
#include "srgpt/model.h"
#include "srgpt/trainer.h"
#include "test_util.h"

using namespace srgpt;
using namespace srgpt_test;

namespace {

// Random token ids in [0, vocab).
std::vector<int32_t> random_tokens(std::mt19937& rng, size_t n, int vocab) {
  std::vector<int32_t> out(n);
  for (auto& t : out) t = int32_t(rng() % uint32_t(vocab));
  return out;
}

// A device buffer of n elements of `dtype` (bf16 or f32) as doubles.
std::vector<double> download_as_double(Backend& backend, const void* data, DType dtype, size_t n) {
  std::vector<double> out(n);
  if (dtype == DType::bf16) {
    std::vector<bf16> h(n);
    backend.download(h.data(), data, n * sizeof(bf16));
    for (size_t i = 0; i < n; ++i) out[i] = bf16_to_float(h[i]);
  } else {
    REQUIRE(dtype == DType::f32);
    std::vector<float> h(n);
    backend.download(h.data(), data, n * sizeof(float));
    for (size_t i = 0; i < n; ++i) out[i] = h[i];
  }
  return out;
}

std::vector<char> grad_bytes_of(ParameterStore& p) {
  std::vector<char> host(p.grad_bytes());
  p.backend().download(host.data(), p.grads(), host.size());
  return host;
}

// The train loader a Trainer builds for `c` on one rank (trainer.cpp).
TokenLoader train_loader_like_trainer(const Config& c) {
  return TokenLoader(expand_shard_pattern(c.data.train, "data.train"), c.batch.micro_batch, c.batch.seq_len, 0, 1,
                     c.model.vocab_size, true, c.train.seed);
}

// The val loader: evaluate reads its samples one at a time.
TokenLoader val_loader_like_trainer(const Config& c) {
  return TokenLoader(expand_shard_pattern(c.data.val, "data.val"), 1, c.batch.seq_len, 0, 1, c.model.vocab_size, false,
                     c.train.seed);
}

TrainOptions single_quiet() {
  TrainOptions o = quiet_options();
  o.single_process = true;
  return o;
}

// Trainer::train_step's work up to the optimizer, by hand: zero grads, the
// micro-steps with dloss = 1/(B*T*accum), the reduction. Returns the norm,
// and the step's loss (the mean of the micro-steps') in *loss when given.
double gradients_by_hand(Trainer& t, TokenLoader& loader, double* loss = nullptr) {
  const Config& c = t.config();
  const int accum = c.batch.grad_accum(1);
  const size_t n = size_t(c.batch.micro_batch) * c.batch.seq_len;
  std::vector<int32_t> in(n), tg(n);
  const float dloss = float(1.0 / (double(c.batch.micro_batch) * c.batch.seq_len * accum));
  t.params().zero_grads();
  double sum = 0;
  for (int micro = 0; micro < accum; ++micro) {
    loader.next_batch(in.data(), tg.data());
    sum += t.model().forward_backward(in.data(), tg.data(), dloss);
  }
  if (loss) *loss = sum / double(accum);
  t.params().reduce_gradients();
  return std::sqrt(t.params().grad_norm_squared());
}

struct State {
  std::vector<char> weights;
  std::vector<std::vector<char>> optimizer;
  bool operator==(const State& o) const { return weights == o.weights && optimizer == o.optimizer; }
};

State state_of(Trainer& t) { return {t.params().full_weights_on_host(), t.optimizer().state_on_host()}; }

}  // namespace

TEST_CASE("grad_norm_squared at ZeRO stages 0-3 is the fp64 sum of squares of the reduced gradients",
          "[trainer][zero][grad_norm]") {
  const uint32_t seed = fresh_seed();
  INFO("token seed " << seed);
  TempDir tmp("gradnorm");
  write_markov_shards(tmp.path() / "data", 64, 20000, 2000);
  for (GradReduceChoice gd : {GradReduceChoice::bf16, GradReduceChoice::fp32}) {
    for (int accum : {1, 2}) {
      INFO("grad dtype " << grad_reduce_choice_name(gd) << ", " << accum << " micro-steps");
      std::mt19937 rng(seed);
      std::vector<std::vector<int32_t>> inputs, targets;
      for (int m = 0; m < accum; ++m) {
        inputs.push_back(random_tokens(rng, 64, 64));
        targets.push_back(random_tokens(rng, 64, 64));
      }
      double norm_sq[4];
      std::vector<char> grads[4];
      for (int stage = 0; stage <= 3; ++stage) {
        INFO("stage " << stage);
        Config c = tiny_config(tmp.path() / "data", tmp.path() / ("s" + std::to_string(stage)));
        c.dist.zero_stage = stage;
        c.dist.grad_reduce_dtype = gd;
        c.train.seed = seed;  // fresh initial weights too
        Trainer t(c, single_quiet());
        ParameterStore& p = t.params();
        p.zero_grads();
        for (int m = 0; m < accum; ++m)
          t.model().forward_backward(inputs[m].data(), targets[m].data(), float(1.0 / (64.0 * accum)));
        p.reduce_gradients();
        norm_sq[stage] = p.grad_norm_squared();
        grads[stage] = grad_bytes_of(p);
        // On one rank every stage's gradient buffer holds the whole layout
        // (stages 2-3: the shard is everything, at the same offsets).
        const size_t n = p.layout().total();
        REQUIRE(p.grad_bytes() == n * dtype_size(p.grad_dtype()));
        REQUIRE(p.grad_dtype() == (gd == GradReduceChoice::bf16 ? DType::bf16 : DType::f32));
        const std::vector<double> g = download_as_double(p.backend(), p.grads(), p.grad_dtype(), n);
        double reference = 0;
        for (double x : g) reference += x * x;
        // Each square of a bf16 or f32 value is exact in double (16 or 48
        // significant bits), so both sides differ only by the rounding of a
        // sum of n non-negative terms: at most (n-1) * 2^-53 relative each,
        // whatever the order. n * 2^-52 covers both.
        const double bound = double(n) * std::ldexp(1.0, -52);
        INFO("norm^2 " << norm_sq[stage] << " fp64 reference " << reference);
        REQUIRE(reference > 0);
        CHECK(std::fabs(norm_sq[stage] - reference) / reference <= bound);
      }
      // Stage 1 on one rank accumulates in place like stage 0 and its
      // reduce-scatter is the identity: the same gradient bits.
      CHECK(grads[1] == grads[0]);
      // Stage 3 on one rank is stage 2 with copies for gathers.
      CHECK(grads[3] == grads[2]);
      CHECK(std::memcmp(&norm_sq[3], &norm_sq[2], sizeof(double)) == 0);
      // With one micro-step, stage 2's add of the micro-step into zeroed
      // shard gradients is exact, so its gradients are stage 1's, and
      // stages 1-3 sum the same per-unit ranges: identical norms. (Over
      // several micro-steps stage 2 rounds the sum in another order, so
      // only the fp64 bound above holds.)
      if (accum == 1) {
        CHECK(grads[2] == grads[1]);
        CHECK(std::memcmp(&norm_sq[2], &norm_sq[1], sizeof(double)) == 0);
      }
    }
  }
}

TEST_CASE("a clipped Trainer step is the by-hand step with scale clip / norm, grad_clip 0 never clips, and "
          "metrics.jsonl logs each step's loss, lr and gradient norm before clipping",
          "[trainer][clip]") {
  const uint32_t seed = fresh_seed();
  INFO("init and data-order seed " << seed);
  TempDir tmp("clip");
  write_markov_shards(tmp.path() / "data", 64, 20000, 2000);
  const int64_t steps = 3;  // warmup 2: steps 1-2 warm up, step 3 decays
  // 1e-4 is far below the norms of this model's gradients (REQUIREd each
  // step below), so every step clips; grad_clip 0 turns clipping off.
  for (double clip : {1e-4, 0.0}) {
    INFO("grad_clip " << clip);
    auto config = [&](const std::string& tag) {
      Config c = tiny_config(tmp.path() / "data", tmp.path() / (tag + std::to_string(clip)));
      c.train.steps = steps;
      c.train.seed = seed;
      c.optimizer.grad_clip = clip;
      c.data.val.clear();
      return c;
    };
    Trainer trained(config("run"), single_quiet());
    REQUIRE(trained.run().losses.size() == size_t(steps));

    Trainer by_hand(config("hand"), single_quiet());
    TokenLoader loader = train_loader_like_trainer(by_hand.config());
    std::vector<double> norms, losses, lrs;
    for (int64_t step = 1; step <= steps; ++step) {
      double loss = 0;
      const double norm = gradients_by_hand(by_hand, loader, &loss);
      INFO("step " << step << " grad norm " << norm);
      REQUIRE(std::isfinite(norm));
      REQUIRE(norm > 1e-2);  // well above the clip, and "large" for clip 0
      const float scale = clip > 0 ? float(clip / norm) : 1.0f;
      const double lr = learning_rate(by_hand.config().optimizer, step, steps);
      by_hand.optimizer().step(step, lr, scale);
      norms.push_back(norm);
      losses.push_back(loss);
      lrs.push_back(lr);
    }
    const State want = state_of(by_hand), got = state_of(trained);
    CHECK(got.weights == want.weights);
    CHECK(got.optimizer == want.optimizer);

    // The same steps, so the logged values are the by-hand ones: each step's
    // scheduled lr (all three differ), the norm before clipping (after it,
    // it would read 1e-4) and the mean of the micro-steps' losses.
    const std::vector<nlohmann::json> logged = step_lines_in(fs::path(trained.config().out_dir) / "metrics.jsonl");
    REQUIRE(logged.size() == size_t(steps));
    for (size_t i = 0; i < logged.size(); ++i) {
      INFO("logged step " << i + 1);
      CHECK(logged[i].at("lr").get<double>() == lrs[i]);
      CHECK(std::fabs(logged[i].at("grad_norm").get<double>() - norms[i]) <= 1e-12 * norms[i]);
      CHECK(std::fabs(logged[i].at("loss").get<double>() - losses[i]) <= 1e-12 * losses[i]);
    }
  }
  // Negative control: the clip changes the result (a clip that did
  // nothing would make the by-hand comparisons above vacuous).
  Config clipped = tiny_config(tmp.path() / "data", tmp.path() / "ctl-clip");
  Config unclipped = tiny_config(tmp.path() / "data", tmp.path() / "ctl-none");
  for (Config* c : {&clipped, &unclipped}) {
    c->train.steps = 2;
    c->train.seed = seed;
    c->data.val.clear();
  }
  clipped.optimizer.grad_clip = 1e-4;
  unclipped.optimizer.grad_clip = 0;
  Trainer a(clipped, single_quiet()), b(unclipped, single_quiet());
  a.run();
  b.run();
  CHECK(state_of(a).weights != state_of(b).weights);
  CHECK(state_of(a).optimizer != state_of(b).optimizer);
}

TEST_CASE("a clip above the gradient norm gives the bits of grad_clip 0", "[trainer][clip]") {
  const uint32_t seed = fresh_seed();
  INFO("init and data-order seed " << seed);
  TempDir tmp("clip-above");
  write_markov_shards(tmp.path() / "data", 64, 20000, 2000);
  std::vector<State> states;
  // 1e6 exceeds any gradient norm of a tiny model at init (~1); the metrics
  // of the first run confirm the norms stayed below it.
  for (double clip : {0.0, 1e6}) {
    Config c = tiny_config(tmp.path() / "data", tmp.path() / ("c" + std::to_string(clip)));
    c.train.steps = 4;
    c.train.seed = seed;
    c.optimizer.grad_clip = clip;
    c.data.val.clear();
    Trainer t(c, single_quiet());
    t.run();
    states.push_back(state_of(t));
  }
  CHECK(states[0] == states[1]);
}

TEST_CASE("on_nonfinite = skip leaves weights and optimizer state unchanged, counts the step and trains on",
          "[trainer][nonfinite]") {
  const uint32_t seed = fresh_seed();
  INFO("init and data-order seed " << seed);
  TempDir tmp("skip");
  write_markov_shards(tmp.path() / "data", 64, 20000, 2000);
  Config c = tiny_config(tmp.path() / "data", tmp.path() / "run");
  c.train.steps = 4;
  c.train.seed = seed;
  c.train.on_nonfinite = NonFinitePolicy::skip;
  c.checkpoint.every = 2;  // not after step 1, whose weights the test poisons
  c.checkpoint.keep = 10;
  c.data.val.clear();

  // Step 1 trains normally; after it a NaN goes into wte[0][0] (the tied
  // LM head makes every logit's softmax NaN), so step 2 is non-finite.
  // After step 2 the weight is restored so step 3 is finite again (and
  // the step-2 checkpoint, which refuses NaN weights, can be written:
  // on_step runs before the step's checkpoint).
  Trainer* trainer = nullptr;
  State after_step1, after_step2, after_step3;
  std::vector<char> clean_weight;
  size_t wte0 = 0, es = 0;
  auto weight_at = [&](size_t i) { return static_cast<char*>(trainer->params().weights()) + i * es; };
  TrainOptions o = single_quiet();
  o.on_step = [&](int64_t step) {
    if (step == 1) {
      after_step1 = state_of(*trainer);
      clean_weight.assign(weight_at(wte0), weight_at(wte0) + es);
      if (es == 2) {
        const uint16_t nan = 0x7fc0;
        std::memcpy(weight_at(wte0), &nan, 2);
      } else {
        const float nan = std::nanf("");
        std::memcpy(weight_at(wte0), &nan, 4);
      }
      after_step1.weights = trainer->params().full_weights_on_host();  // the poisoned weights
    } else if (step == 2) {
      after_step2 = state_of(*trainer);
      std::memcpy(weight_at(wte0), clean_weight.data(), clean_weight.size());
    } else if (step == 3) {
      after_step3 = state_of(*trainer);
    }
  };
  Trainer t(c, o);
  trainer = &t;
  REQUIRE(t.params().backend().memory_on_host());  // weights() is host memory
  wte0 = t.params().layout().at("wte").offset;
  es = dtype_size(t.params().backend().dtype());
  const TrainResult r = t.run();

  REQUIRE(r.losses.size() == 4);
  CHECK(std::isfinite(r.losses[0]));
  CHECK(std::isnan(r.losses[1]));
  CHECK(std::isfinite(r.losses[2]));
  CHECK(std::isfinite(r.losses[3]));
  CHECK(r.skipped_steps == 1);
  CHECK(r.last_step == 4);
  // The skipped step wrote nothing: weights (NaN included) and every
  // optimizer state buffer keep their bits.
  REQUIRE(after_step1.optimizer.size() == t.optimizer().state_buffers().size());
  CHECK(after_step2.weights == after_step1.weights);
  for (size_t i = 0; i < after_step1.optimizer.size(); ++i) {
    INFO("state buffer " << t.optimizer().state_buffers()[i].name);
    CHECK(after_step2.optimizer[i] == after_step1.optimizer[i]);
    // ...and the next finite step updates them again.
    CHECK(after_step3.optimizer[i] != after_step2.optimizer[i]);
  }
  CHECK(after_step3.weights != after_step2.weights);
  CHECK(state_of(t).weights != after_step3.weights);

  // Each checkpoint's state counts the skipped steps so far.
  std::map<int64_t, int64_t> skipped_at;
  for (const auto& entry : fs::directory_iterator(fs::path(c.out_dir) / "checkpoints")) {
    if (!entry.is_directory()) continue;
    CheckpointReader reader(entry.path());
    skipped_at[reader.step()] = reader.state().at("skipped_steps").get<int64_t>();
  }
  CHECK(skipped_at == std::map<int64_t, int64_t>{{2, 1}, {4, 1}});

  // metrics.jsonl's step lines carry the running count; the skipped step's
  // NaN loss is written as null.
  std::vector<int64_t> skipped_per_line;
  for (const nlohmann::json& line : step_lines_in(fs::path(c.out_dir) / "metrics.jsonl")) {
    skipped_per_line.push_back(line.at("skipped_steps").get<int64_t>());
    CHECK(line.at("loss").is_null() == (line.at("step").get<int64_t>() == 2));
  }
  CHECK(skipped_per_line == std::vector<int64_t>{0, 1, 1, 1});

  // A resume from step 2 carries the count into its TrainResult.
  Config resumed_config = c;
  TrainOptions resume = single_quiet();
  for (const auto& entry : fs::directory_iterator(fs::path(c.out_dir) / "checkpoints"))
    if (entry.is_directory() && CheckpointReader(entry.path()).step() == 2) resume.resume_from = entry.path();
  resumed_config.out_dir = (tmp.path() / "resumed").string();
  Trainer resumed(resumed_config, resume);
  const TrainResult rr = resumed.run();
  CHECK(rr.first_step == 3);
  CHECK(rr.skipped_steps == 1);
  CHECK(state_of(resumed) == state_of(t));
}

TEST_CASE("evaluate is the mean token loss over every sequence of the val shards in file order, whatever the batch",
          "[trainer][evaluate]") {
  const uint32_t seed = fresh_seed();
  INFO("init seed and token-budget seed " << seed);
  TempDir tmp("evaluate");
  const fs::path data = tmp.path() / "data";
  write_markov_shards(data, 64, 8000, 3000);
  // A second val shard of 5 sequences and a bit, and a third too short for
  // any (16 + 1 tokens make one).
  srgpt::write_token_shard((data / "val_000001.bin").string(), markov_tokens(5 * 16 + 7, 64, seed));
  srgpt::write_token_shard((data / "val_000002.bin").string(), markov_tokens(16, 64, seed + 1));
  Config c = tiny_config(data, tmp.path() / "run");
  c.train.seed = seed;
  Trainer t(c, single_quiet());
  GPT& model = t.model();
  const int B = c.batch.micro_batch, T = c.batch.seq_len;
  const TokenLoader samples = val_loader_like_trainer(c);

  // The reference: each sequence alone in row 0 of a batch (rows are
  // computed independently), in file order.
  std::vector<double> sequence_loss;
  std::vector<int32_t> in(size_t(B) * size_t(T), 0), tg(in.size(), 0);
  for (size_t shard = 0; shard < 3; ++shard)
    for (int64_t i = 0; i < samples.shard_samples(shard); ++i) {
      samples.read_sample(shard, i, in.data(), tg.data());
      sequence_loss.push_back(model.loss_sum(in.data(), tg.data(), 1));
    }
  const int64_t all = int64_t(sequence_loss.size());
  REQUIRE(all == (3000 - 1) / 16 + 5);
  auto mean_of_first = [&](int64_t n) {
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += sequence_loss[size_t(i)];
    return sum / double(n * T);
  };

  ActivationOptions forward_only;
  forward_only.for_backward = false;
  GPT batch_of_3(c.model, t.params(), 3, T, forward_only);
  std::mt19937 rng(seed);
  const int64_t random_budget = 1 + int64_t(rng() % uint64_t(all * T));
  // max_tokens -> whole sequences: 0 means all, less than one sequence
  // still evaluates one, a partial one is dropped, more than the split is all.
  const std::vector<std::pair<int64_t, int64_t>> cases{{0, all},
                                                       {1, 1},
                                                       {T - 1, 1},
                                                       {T, 1},
                                                       {3 * T + T / 2, 3},
                                                       {(all + 5) * T, all},
                                                       {random_budget, std::max<int64_t>(1, random_budget / T)}};
  for (const auto& [max_tokens, sequences] : cases)
    for (GPT* evaluated : {&model, &batch_of_3}) {
      INFO("max_tokens " << max_tokens << ", expecting " << sequences << " sequences, batch " << evaluated->batch());
      const EvalResult r = evaluate(*evaluated, samples, max_tokens);
      CHECK(r.tokens == sequences * T);
      // The same token losses, summed in another grouping.
      const double want = mean_of_first(sequences);
      INFO("evaluate " << r.loss << " by hand " << want);
      CHECK(std::fabs(r.loss - want) <= 1e-13 * want);
      CHECK(r.perplexity() == std::exp(r.loss));
    }
  // The sequences differ, so a mean over the wrong ones would show.
  CHECK(sequence_loss[0] != sequence_loss[1]);
  CHECK(std::fabs(mean_of_first(all - 1) - mean_of_first(all)) > 1e-6);
}

TEST_CASE("a resume keeps metrics.jsonl's whole step lines up to its checkpoint and drops damaged ones",
          "[trainer][resume]") {
  TempDir tmp("metrics-resume");
  write_markov_shards(tmp.path() / "data", 64, 8000, 1000, fresh_seed());
  Config c = tiny_config(tmp.path() / "data", tmp.path() / "run");
  c.train.steps = 4;
  const fs::path metrics = fs::path(c.out_dir) / "metrics.jsonl";

  Config reference_config = c;
  reference_config.out_dir = (tmp.path() / "reference").string();
  Trainer(reference_config, single_quiet()).run();
  const std::vector<double> reference = losses_in(fs::path(reference_config.out_dir) / "metrics.jsonl");
  REQUIRE(reference.size() == 4);

  TrainOptions first = single_quiet();
  first.stop_after_step = 2;
  Trainer(c, first).run();
  // What a run killed after its checkpoint, or a damaged file, leaves: a
  // later step's line, a line cut short, bytes that are not UTF-8, a step
  // written as a string, JSON nested far deeper than any line srgpt writes.
  std::ofstream(metrics, std::ios::app) << R"({"step": 3, "loss": 9.5})" << "\n"
                                        << R"({"step": 4, "lo)" << "\n"
                                        << "\xff\xfe\x01garbage\n"
                                        << R"({"step": "1", "loss": 1.0})" << "\n"
                                        << std::string(100000, '[') << std::string(100000, ']') << "\n";
  // Kept elsewhere through a symlink, which the rewrite used to replace.
  const fs::path kept = tmp.path() / "kept-metrics.jsonl";
  fs::rename(metrics, kept);
  fs::create_symlink(kept, metrics);
  TrainOptions resume = single_quiet();
  resume.resume = true;
  const TrainResult r = Trainer(c, resume).run();
  CHECK(r.first_step == 3);
  // Only whole lines remain, each step once, and the run reads as the
  // uninterrupted one.
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) CHECK_NOTHROW(nlohmann::json::parse(line));
  CHECK(losses_in(metrics) == reference);
  CHECK(fs::is_symlink(metrics));
  CHECK(losses_in(kept) == reference);

  // Resumed once finished, it only evaluates: its final evaluation's line
  // replaces the one there (each resume used to add another).
  const std::string finished = read_file(metrics);
  REQUIRE(std::count(finished.begin(), finished.end(), '\n') == 5);  // 4 steps and the final evaluation
  for (int again = 0; again < 2; ++again) CHECK(Trainer(c, resume).run().losses.empty());
  CHECK(read_file(metrics) == finished);
}

TEST_CASE("the cpu backend logs an MFU only against train.mfu_peak_tflops, and of that rate", "[trainer]") {
  TempDir tmp("mfu");
  write_markov_shards(tmp.path() / "data", 64, 8000, 1000, fresh_seed());
  Config c = tiny_config(tmp.path() / "data", tmp.path() / "unset");
  c.train.steps = 3;
  c.data.val.clear();
  Trainer unset(c, single_quiet());
  unset.run();
  const size_t params = unset.params().layout().num_params();
  CHECK(check_logged_mfu(fs::path(c.out_dir) / "metrics.jsonl", c, params, 0) == 3);

  // A rate of the order of a cpu core's, drawn afresh: each line's MFU is of it.
  std::mt19937_64 rng(fresh_seed());
  c.train.mfu_peak_tflops = std::uniform_real_distribution<double>(0.01, 1.0)(rng);
  c.out_dir = (tmp.path() / "set").string();
  Trainer(c, single_quiet()).run();
  CHECK(check_logged_mfu(fs::path(c.out_dir) / "metrics.jsonl", c, params, c.train.mfu_peak_tflops * 1e12) == 3);
}

TEST_CASE("validation every few steps is logged at those steps, evaluates that step's weights, leaves training "
          "bit-identical and resumes bit-exactly",
          "[trainer][evaluate][resume]") {
  const uint32_t seed = fresh_seed();
  INFO("data and init seed " << seed);
  TempDir tmp("eval-every");
  write_markov_shards(tmp.path() / "data", 64, 8000, 3000, seed);
  Config c = tiny_config(tmp.path() / "data", tmp.path() / "straight");
  c.train.seed = seed;
  c.train.steps = 6;
  c.train.eval_every = 2;
  c.train.eval_tokens = 2 * int64_t(c.batch.micro_batch) * c.batch.seq_len;
  c.checkpoint.every = 2;
  c.checkpoint.keep = 3;

  Config without_val = c;
  without_val.data.val.clear();
  without_val.out_dir = (tmp.path() / "without-val").string();
  Trainer reference(without_val, single_quiet());
  const std::vector<double> reference_losses = reference.run().losses;

  Trainer straight(c, single_quiet());
  const TrainResult r = straight.run();
  const fs::path metrics = fs::path(c.out_dir) / "metrics.jsonl";
  // Validation reads only the validation split and writes only activations:
  // the training losses, weights and optimizer state keep every bit.
  REQUIRE(r.losses.size() == reference_losses.size());
  CHECK(std::memcmp(r.losses.data(), reference_losses.data(), r.losses.size() * sizeof(double)) == 0);
  CHECK(losses_in(metrics) == r.losses);
  CHECK(state_of(straight) == state_of(reference));

  // Steps 2 and 4 (eval_every) and the final evaluation after step 6, once each.
  const auto val = val_losses_in(metrics);
  REQUIRE(val.size() == 3);
  CHECK(val[0].first == 2);
  CHECK(val[1].first == 4);
  CHECK(val[2].first == 6);
  REQUIRE(r.val_loss.has_value());
  CHECK(val[2].second == *r.val_loss);
  CHECK(val[0].second != val[1].second);

  // Each line is the loss of the weights after its step: evaluating that
  // step's checkpoint gives the same bits.
  for (const auto& entry : fs::directory_iterator(fs::path(c.out_dir) / "checkpoints")) {
    if (!entry.is_directory()) continue;
    CheckpointReader reader(entry.path());
    const int64_t step = reader.step();
    INFO("checkpoint of step " << step);
    LoadedModel loaded = load_model_for_inference(reader, c.batch.micro_batch, c.batch.seq_len);
    TokenLoader loader = val_loader_like_trainer(c);
    const double loss = evaluate(*loaded.model, loader, c.train.eval_tokens).loss;
    const auto line = std::find_if(val.begin(), val.end(), [&](const auto& v) { return v.first == step; });
    REQUIRE(line != val.end());
    CHECK(std::memcmp(&loss, &line->second, sizeof(double)) == 0);
  }

  // Stopped after step 3 (between two validations) and resumed: the same
  // step and validation lines, bit for bit.
  Config split = c;
  split.out_dir = (tmp.path() / "split").string();
  TrainOptions first = single_quiet();
  first.stop_after_step = 3;
  Trainer(split, first).run();
  TrainOptions resume = single_quiet();
  resume.resume = true;
  Trainer resumed(split, resume);
  CHECK(resumed.run().first_step == 4);
  const fs::path split_metrics = fs::path(split.out_dir) / "metrics.jsonl";
  CHECK(losses_in(split_metrics) == r.losses);
  CHECK(val_losses_in(split_metrics) == val);
  CHECK(state_of(resumed) == state_of(straight));
}

TEST_CASE("a run whose update overflows the weights refuses to write its checkpoint and leaves none",
          "[trainer][checkpoint]") {
  TempDir tmp("overflowing-update");
  write_markov_shards(tmp.path() / "data", 64, 8000, 1000, fresh_seed());
  for (Precision p : {Precision::bf16_sr, Precision::fp32}) {
    INFO(precision_name(p));
    Config c = tiny_config(tmp.path() / "data", tmp.path() / precision_name(p));
    c.precision = p;
    // Adam's normalised step is about lr per element: 1e39 (held at the
    // peak: no warmup, no decay) is past the largest finite bf16 and fp32,
    // 3.4e38, while step 1's loss and gradient norm are finite, so the
    // non-finite check before the update does not stop it.
    c.optimizer.lr = 1e39;
    c.optimizer.warmup_steps = 0;
    c.optimizer.min_lr_ratio = 1.0;
    c.train.steps = 1;
    const std::string message = error_message([&] { Trainer(c, single_quiet()).run(); });
    CHECK(message == "refusing to write a checkpoint at step 1: the weights contain NaN or Inf");
    const fs::path checkpoints = fs::path(c.out_dir) / "checkpoints";
    CHECK((!fs::exists(checkpoints) || fs::is_empty(checkpoints)));
    // Control: a step of 1e37, huge but finite, is saved.
    c.optimizer.lr = 1e37;
    c.out_dir += "-finite";
    CHECK(error_message([&] { Trainer(c, single_quiet()).run(); }).empty());
    CHECK(fs::exists(fs::path(c.out_dir) / "checkpoints" / "step_00000001"));
  }
}

TEST_CASE("a non-finite step says whether the learning rate can be its cause", "[trainer]") {
  TempDir tmp("nonfinite-remedy");
  write_markov_shards(tmp.path() / "data", 64, 8000, 1000, fresh_seed());
  Config c = tiny_config(tmp.path() / "data", tmp.path() / "run");
  c.train.steps = 3;
  c.data.val.clear();
  const std::string before_any_update = "No update has been applied to the starting weights yet";
  // A NaN in wte[0][0] (the tied LM head makes every logit's softmax NaN)
  // before step `poisoned_before`: the starting weights for step 1, which
  // no learning rate touched, an updated weight for step 2.
  for (int64_t poisoned_before : {1, 2}) {
    INFO("NaN put into the weights before step " << poisoned_before);
    c.out_dir = (tmp.path() / ("run" + std::to_string(poisoned_before))).string();
    TrainOptions o = single_quiet();
    Trainer* trainer = nullptr;
    auto poison = [&] {
      REQUIRE(trainer->params().backend().dtype() == DType::bf16);
      const uint16_t nan = 0x7fc0;
      std::memcpy(static_cast<char*>(trainer->params().weights()) + 2 * trainer->params().layout().at("wte").offset,
                  &nan, 2);
    };
    o.on_step = [&](int64_t step) {
      if (step + 1 == poisoned_before) poison();
    };
    Trainer t(c, o);
    trainer = &t;
    REQUIRE(t.params().backend().memory_on_host());
    if (poisoned_before == 1) poison();
    const std::string message = error_message([&] { t.run(); });
    CHECK(contains(message, "step " + std::to_string(poisoned_before) + ": non-finite loss"));
    CHECK(contains(message, before_any_update) == (poisoned_before == 1));
    CHECK(contains(message, "Lower optimizer.lr") == (poisoned_before == 2));
  }
}

TEST_CASE("a second run in an out_dir in use is refused naming the holder, and a killed holder leaves no lock",
          "[trainer]") {
  TempDir tmp("out-dir-lock");
  write_markov_shards(tmp.path() / "data", 64, 8000, 1000, fresh_seed());
  Config c = tiny_config(tmp.path() / "data", tmp.path() / "run");
  c.train.steps = 2;
  c.data.val.clear();
  {
    // Two trainers in one process hold two open files: flock sets them apart
    // as it does two processes.
    Trainer first(c, single_quiet());
    const std::string message = error_message([&] { Trainer second(c, single_quiet()); });
    CHECK(contains(message, "out_dir '" + c.out_dir + "' is in use by another process: pid " +
                                std::to_string(::getpid())));
    CHECK(contains(message, "use another out_dir"));
    first.run();
  }
  // A holder killed mid-run: the kernel drops its lock with it.
  TrainOptions resume = single_quiet();
  resume.resume = true;
  const pid_t holder = ::fork();
  REQUIRE(holder >= 0);
  if (holder == 0) {
    try {
      Trainer t(c, resume);
      ::kill(::getpid(), SIGKILL);
    } catch (...) {
    }
    ::_exit(1);
  }
  int status = 0;
  REQUIRE(::waitpid(holder, &status, 0) == holder);
  REQUIRE(WIFSIGNALED(status));
  c.train.steps = 3;
  CHECK(Trainer(c, resume).run().last_step == 3);
}
