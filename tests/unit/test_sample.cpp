// `srgpt sample`: the incremental host decoder against the backend's full
// forward pass, the sampler's distribution and determinism, generation's
// stopping rules; and `srgpt eval`'s bits per byte on prepared shards.
#include <cmath>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "catch.h"
#include "srgpt/backend.h"
#include "srgpt/communicator.h"
#include "srgpt/config.h"
#include "srgpt/data.h"
#include "srgpt/error.h"
#include "srgpt/model.h"
#include "srgpt/param_store.h"
#include "srgpt/prepare.h"
#include "srgpt/sample.h"
#include "test_util.h"

using namespace srgpt_test;

namespace {

// A small model whose vocabulary is not a multiple of 128, so the padded
// rows of wte exist and must never be scored.
srgpt::ModelConfig small_model() {
  srgpt::ModelConfig m;
  m.vocab_size = 100;
  m.max_seq_len = 24;
  m.n_layer = 2;
  m.n_head = 4;
  m.d_model = 32;
  return m;
}

// Random values for every parameter, LayerNorm gains near 1 and non-zero
// biases included, so every term of the decoder is exercised; the padded
// vocabulary rows stay zero as in a real model.
std::vector<float> random_weights(const srgpt::ModelConfig& m, uint32_t seed) {
  const srgpt::Layout layout = srgpt::gpt2_param_layout(m, 1);
  std::vector<float> w(layout.total(), 0.0f);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const srgpt::TensorSpec& t : layout.tensors()) {
    const bool ln_gain = t.name.find("ln_") != std::string::npos && t.name.find("weight") != std::string::npos;
    const size_t n = t.name == "wte" ? size_t(m.vocab_size) * size_t(m.d_model) : t.numel;
    for (size_t i = 0; i < n; ++i) w[t.offset + i] = ln_gain ? 1.0f + 0.2f * normal(rng) : 0.3f * normal(rng);
  }
  return w;
}

std::vector<uint32_t> random_tokens(size_t n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> out(n);
  for (auto& t : out) t = rng() % uint32_t(vocab);
  return out;
}

double negative_log_softmax(const std::vector<float>& logits, uint32_t target) {
  double max = logits[0];
  for (float l : logits) max = std::max(max, double(l));
  double sum = 0;
  for (float l : logits) sum += std::exp(double(l) - max);
  return std::log(sum) + max - double(logits[target]);
}

// A model held by the cpu backend in `dtype`.
struct BackendModel {
  std::unique_ptr<srgpt::Backend> backend;
  std::unique_ptr<srgpt::Communicator> comm;
  std::unique_ptr<srgpt::ParameterStore> params;

  BackendModel(const srgpt::ModelConfig& m, srgpt::DType dtype, const std::vector<float>& weights)
      : backend(srgpt::make_cpu_backend(dtype)), comm(srgpt::make_single_process_communicator(*backend)) {
    params = std::make_unique<srgpt::ParameterStore>(*backend, *comm, srgpt::gpt2_param_layout(m, 1), 0);
    params->set_weights(weights);
  }

  // GPT::forward's mean loss over B sequences of T tokens.
  double mean_loss(const srgpt::ModelConfig& m, const std::vector<uint32_t>& inputs,
                   const std::vector<uint32_t>& targets, int B, int T) {
    srgpt::GPT gpt(m, *params, B, T);
    std::vector<int32_t> in(inputs.begin(), inputs.begin() + long(B) * T);
    std::vector<int32_t> tg(targets.begin(), targets.begin() + long(B) * T);
    return gpt.forward(in.data(), tg.data());
  }
};

// -log p(target) at each position of one sequence, from the decoder.
std::vector<double> decoder_losses(srgpt::Gpt2Decoder& decoder, const uint32_t* inputs, const uint32_t* targets,
                                   int T) {
  decoder.reset();
  std::vector<double> losses;
  for (int t = 0; t < T; ++t) losses.push_back(negative_log_softmax(decoder.step(inputs[t]), targets[t]));
  return losses;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / double(v.size());
}

}  // namespace

TEST_CASE("the KV-cache decoder matches the backend's full forward pass at every position", "[sample]") {
  const srgpt::ModelConfig m = small_model();
  const int T = m.max_seq_len;
  const std::vector<float> weights = random_weights(m, 11);
  const std::vector<uint32_t> inputs = random_tokens(2 * size_t(T), m.vocab_size, 12);
  const std::vector<uint32_t> targets = random_tokens(2 * size_t(T), m.vocab_size, 13);

  SECTION("fp32: each position to 2e-6 relative per prefix token, the mean to 1e-5 relative") {
    BackendModel backend(m, srgpt::DType::f32, weights);
    srgpt::Gpt2Decoder decoder(m, srgpt::weights_as_float(*backend.params));
    const std::vector<double> ours = decoder_losses(decoder, inputs.data(), targets.data(), T);
    // The loss at position t is the difference of the prefix sums of the
    // mean losses of models with sequence lengths t+1 and t; the rounding
    // error of those sums grows with t. (Measured: below 4e-6 absolute.)
    double previous_sum = 0;
    for (int t = 0; t < T; ++t) {
      const double sum = backend.mean_loss(m, inputs, targets, 1, t + 1) * (t + 1);
      INFO("position " << t);
      CHECK(std::abs((sum - previous_sum) - ours[size_t(t)]) <= 2e-6 * (t + 1) * std::max(1.0, ours[size_t(t)]));
      previous_sum = sum;
    }
    // Both sequences through one batched forward pass.
    const std::vector<double> second = decoder_losses(decoder, inputs.data() + T, targets.data() + T, T);
    const double decoded = (mean(ours) + mean(second)) / 2;
    const double full = backend.mean_loss(m, inputs, targets, 2, T);
    CHECK(std::abs(decoded - full) <= 1e-5 * std::abs(full));
    // Random weights this large give a loss well away from uniform guessing.
    CHECK(std::abs(full - std::log(double(m.vocab_size))) > 0.5);
  }

  SECTION("bf16: the backend rounds activations to bf16, the decoder does not; means within 2e-3 relative") {
    BackendModel backend(m, srgpt::DType::bf16, weights);
    srgpt::Gpt2Decoder decoder(m, srgpt::weights_as_float(*backend.params));
    const double decoded = (mean(decoder_losses(decoder, inputs.data(), targets.data(), T)) +
                            mean(decoder_losses(decoder, inputs.data() + T, targets.data() + T, T))) /
                           2;
    const double full = backend.mean_loss(m, inputs, targets, 2, T);
    // Measured: 1.8e-4.
    CHECK(std::abs(decoded - full) <= 2e-3 * std::abs(full));
  }
}

TEST_CASE("choose_token draws from softmax(logits / temperature), restricted to the top k", "[sample]") {
  const std::vector<float> logits{2.0f, 1.0f, 0.5f, -1.0f, 0.0f, 1.0f};
  const double temperature = 0.7;
  const int draws = 40000;
  auto frequencies = [&](int top_k, uint64_t seed) {
    std::vector<double> f(logits.size(), 0.0);
    for (int i = 0; i < draws; ++i) f[srgpt::choose_token(logits, temperature, top_k, seed, uint64_t(i))] += 1.0 / draws;
    return f;
  };
  auto softmax_over = [&](const std::vector<size_t>& ids) {
    std::vector<double> p(logits.size(), 0.0);
    double total = 0;
    for (size_t i : ids) total += p[i] = std::exp(logits[i] / temperature);
    for (double& x : p) x /= total;
    return p;
  };

  SECTION("all tokens") {
    const auto f = frequencies(0, 5);
    const auto p = softmax_over({0, 1, 2, 3, 4, 5});
    // The standard deviation of each frequency is below 0.0025.
    for (size_t i = 0; i < logits.size(); ++i) CHECK(std::abs(f[i] - p[i]) < 0.01);
  }
  SECTION("top 3: ids 0, 1 and 5 (the tie at 1.0 is kept whole), nothing else") {
    const auto f = frequencies(3, 6);
    const auto p = softmax_over({0, 1, 5});
    for (size_t i = 0; i < logits.size(); ++i) CHECK(std::abs(f[i] - p[i]) < 0.01);
  }
  SECTION("top 2 breaks the tie at 1.0 toward the lower id") {
    const auto f = frequencies(2, 7);
    CHECK(f[5] == 0.0);
    CHECK(f[1] > 0.0);
  }
  SECTION("temperature 0 is the argmax, lowest id on ties") {
    CHECK(srgpt::choose_token(logits, 0.0, 0, 1, 0) == 0);
    CHECK(srgpt::choose_token({1.0f, 3.0f, 3.0f}, 0.0, 0, 1, 0) == 1);
  }
  SECTION("negative or non-finite temperatures and non-finite logits are errors") {
    for (double t : {-0.5, double(INFINITY), double(NAN)})
      CHECK(error_message([&] { srgpt::choose_token(logits, t, 0, 1, 0); }).find("temperature") != std::string::npos);
    CHECK(error_message([&] { srgpt::choose_token({0.0f, NAN}, 1.0, 0, 1, 0); }).find("logit of nan") !=
          std::string::npos);
    CHECK(error_message([&] { srgpt::choose_token({INFINITY, 0.0f}, 1.0, 0, 1, 0); }).find("logit of inf") !=
          std::string::npos);
  }
}

TEST_CASE("generation is deterministic, greedy follows the argmax, and stops where it should", "[sample]") {
  const srgpt::ModelConfig m = small_model();
  srgpt::Gpt2Decoder decoder(m, random_weights(m, 21));
  const std::vector<uint32_t> prompt = random_tokens(4, m.vocab_size, 22);
  srgpt::SampleOptions options;
  options.max_new_tokens = 12;

  SECTION("greedy: the same tokens every time, each the argmax given the tokens before it") {
    options.temperature = 0;
    const auto first = srgpt::generate(decoder, prompt, options).tokens;
    CHECK(srgpt::generate(decoder, prompt, options).tokens == first);
    REQUIRE(first.size() == 12);
    std::vector<uint32_t> sequence = prompt;
    for (uint32_t token : first) {
      srgpt::Gpt2Decoder fresh(m, random_weights(m, 21));
      const std::vector<float>* logits = nullptr;
      for (uint32_t t : sequence) logits = &fresh.step(t);
      CHECK(token == srgpt::choose_token(*logits, 0.0, 0, 0, 0));
      sequence.push_back(token);
    }
  }
  SECTION("temperature 1: the same seed gives the same tokens, another seed other tokens") {
    options.seed = 100;
    const auto a = srgpt::generate(decoder, prompt, options).tokens;
    CHECK(srgpt::generate(decoder, prompt, options).tokens == a);
    options.seed = 101;
    CHECK(srgpt::generate(decoder, prompt, options).tokens != a);
  }
  SECTION("the streamed tokens are the returned ones") {
    std::vector<uint32_t> streamed;
    const auto result = srgpt::generate(decoder, prompt, options, [&](uint32_t t) { streamed.push_back(t); });
    CHECK(streamed == result.tokens);
    CHECK(result.reason == srgpt::StopReason::token_budget);
  }
  SECTION("a full context stops generation: prompt + continuation never exceed max_seq_len") {
    const auto long_prompt = random_tokens(size_t(m.max_seq_len) - 3, m.vocab_size, 23);
    const auto result = srgpt::generate(decoder, long_prompt, options);
    CHECK(result.tokens.size() == 3);
    CHECK(result.reason == srgpt::StopReason::context_full);
  }
  SECTION("the stop token ends generation and is not emitted") {
    options.temperature = 0;
    const auto greedy = srgpt::generate(decoder, prompt, options).tokens;
    options.stop_token = greedy[2];
    const auto result = srgpt::generate(decoder, prompt, options);
    CHECK(result.reason == srgpt::StopReason::stop_token);
    // Greedy tokens before the first occurrence of the stop token.
    size_t first = 0;
    while (greedy[first] != greedy[2]) ++first;
    CHECK(result.tokens == std::vector<uint32_t>(greedy.begin(), greedy.begin() + long(first)));
  }
  SECTION("vocabulary_size keeps generation to a tokenizer's ids when the model pads its vocabulary") {
    // The model's last 40 ids play the padded rows; their logits are raised
    // so that an unrestricted sampler would choose them.
    const int tokenizer_vocab = 60;
    std::vector<float> weights = random_weights(m, 21);
    const srgpt::Layout layout = srgpt::gpt2_param_layout(m, 1);
    const size_t ln_f = layout.at("ln_f.bias").offset, wte = layout.at("wte").offset;
    for (int c = 0; c < m.d_model; ++c) weights[ln_f + size_t(c)] = 1.0f;
    for (int v = tokenizer_vocab; v < m.vocab_size; ++v)
      for (int c = 0; c < m.d_model; ++c) weights[wte + size_t(v) * size_t(m.d_model) + size_t(c)] = 3.0f;
    srgpt::Gpt2Decoder padded(m, weights);
    options.temperature = 0;
    const auto unrestricted = srgpt::generate(padded, prompt, options).tokens;
    REQUIRE(!unrestricted.empty());
    CHECK(unrestricted[0] >= uint32_t(tokenizer_vocab));

    options.vocabulary_size = tokenizer_vocab;
    const auto greedy = srgpt::generate(padded, prompt, options).tokens;
    std::vector<uint32_t> sequence = prompt;
    for (uint32_t token : greedy) {
      srgpt::Gpt2Decoder fresh(m, weights);
      const std::vector<float>* logits = nullptr;
      for (uint32_t t : sequence) logits = &fresh.step(t);
      CHECK(token == srgpt::choose_token({logits->begin(), logits->begin() + tokenizer_vocab}, 0.0, 0, 0, 0));
      sequence.push_back(token);
    }
    options.temperature = 1;
    options.max_new_tokens = m.max_seq_len - int(prompt.size());
    for (uint64_t seed = 0; seed < 10; ++seed) {
      options.seed = seed;
      for (uint32_t token : srgpt::generate(padded, prompt, options).tokens) CHECK(token < uint32_t(tokenizer_vocab));
    }
    options.vocabulary_size = m.vocab_size + 1;
    CHECK(error_message([&] { srgpt::generate(padded, prompt, options); }).find("ids of a model that scores") !=
          std::string::npos);
  }
  SECTION("bad requests are errors") {
    const auto too_long = random_tokens(size_t(m.max_seq_len) + 1, m.vocab_size, 24);
    CHECK(error_message([&] { srgpt::generate(decoder, too_long, options); }).find("max_seq_len") != std::string::npos);
    options.temperature = -1;
    CHECK(error_message([&] { srgpt::generate(decoder, prompt, options); }).find("temperature") != std::string::npos);
    CHECK(error_message([&] { decoder.reset(); decoder.step(uint32_t(m.vocab_size)); }).find("vocabulary") !=
          std::string::npos);
  }
}

namespace {

// Pseudo-English paragraphs: enough text for a byte-level model's batches.
std::string make_text(uint32_t seed) {
  const std::vector<std::string> words{"the", "cat", "sat",  "on",   "a",     "mat",  "and",   "then",
                                       "it",  "ran", "far",  "away", "from",  "dogs", "which", "bark",
                                       "at",  "all", "cats", "in",   "gardens"};
  std::mt19937 rng(seed);
  std::string text;
  for (int paragraph = 0; paragraph < 60; ++paragraph) {
    for (int w = 0; w < 25; ++w) text += words[rng() % words.size()] + (w == 24 ? ".\n" : " ");
    text += "\n";
  }
  return text;
}

// Prepares make_text(seed) with `--tokenizer tokenizer_args` into tmp/data
// and trains a tiny model of `vocab_size` on it for 2 steps into tmp/run,
// which must print no warning (the vocabulary fits the shards'). Returns the
// run's config.
srgpt::Config prepare_and_train(const TempDir& tmp, const std::string& tokenizer_args, int vocab_size, uint32_t seed) {
  std::ofstream(tmp.str("corpus.txt")) << make_text(seed);
  const std::string bin = srgpt_bin();
  auto prepared = run_command(bin + " prepare --input " + tmp.str("corpus.txt") + " --tokenizer " + tokenizer_args +
                              " --split paragraphs --val-fraction 0.25 --no-progress --out " + tmp.str("data"));
  INFO(prepared.output);
  REQUIRE(prepared.exit_code == 0);
  srgpt::Config c = tiny_config(tmp.path() / "data", tmp.path() / "run");
  c.model.vocab_size = vocab_size;
  c.train.steps = 2;
  std::ofstream(tmp.str("run.json")) << srgpt::config_to_json(c).dump(2);
  auto trained = run_command(bin + " train --config " + tmp.str("run.json"));
  INFO(trained.output);
  REQUIRE(trained.exit_code == 0);
  CHECK(trained.output.find("warning") == std::string::npos);
  return c;
}

}  // namespace

TEST_CASE("srgpt sample and eval through the binary: text, determinism, bits per byte, errors", "[sample][eval]") {
  TempDir tmp("sample");
  const std::string bin = srgpt_bin();
  const srgpt::Config c = prepare_and_train(tmp, "byte", 256, 31);
  const std::string checkpoint = " --checkpoint " + tmp.str("run");

  SECTION("eval reports bits per byte from the prepared split's bytes per token") {
    auto r = run_command(bin + " eval" + checkpoint + " --data '" + tmp.str("data") + "/val_*.bin'");
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    const auto json = nlohmann::json::parse(r.output.substr(r.output.find('{')));
    const srgpt::PrepareSummary summary = srgpt::read_prepare_summary(tmp.str("data/summary.json"));
    const double bytes_per_token = double(summary.val.bytes) / double(summary.val.tokens);
    REQUIRE(json.contains("bits_per_byte"));
    CHECK(std::abs(json["bits_per_byte"].get<double>() - json["loss"].get<double>() / std::log(2.0) / bytes_per_token) <
          1e-9);
    CHECK(r.output.find("bits/byte") != std::string::npos);
    // Shards without a summary.json get no bits per byte.
    std::filesystem::create_directories(tmp.path() / "bare");
    std::filesystem::copy_file(tmp.path() / "data" / "val_000000.bin", tmp.path() / "bare" / "val_000000.bin");
    auto bare = run_command(bin + " eval" + checkpoint + " --data " + tmp.str("bare/val_000000.bin"));
    REQUIRE(bare.exit_code == 0);
    CHECK(bare.output.find("bits_per_byte") == std::string::npos);
  }

  SECTION("sample stops with an error when its output cannot be written") {
    auto r = run_command("(" + bin + " sample" + checkpoint + " --tokens 40 --prompt 'the ' > /dev/full)");
    INFO(r.output);
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("srgpt: error: cannot write the output to standard output: No space left on device") !=
          std::string::npos);
    CHECK(r.output.find("stopped") == std::string::npos);  // no stop reason: it did not finish
  }

  SECTION("a model of another vocabulary than the shards' is warned about by train and eval") {
    srgpt::Config other = c;
    other.model.vocab_size = 300;
    other.out_dir = tmp.str("run-300");
    std::ofstream(tmp.str("run-300.json")) << srgpt::config_to_json(other).dump(2);
    auto r = run_command(bin + " train --config " + tmp.str("run-300.json"));
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    for (const char* what : {"data.train", "data.val"})
      CHECK(r.output.find("warning: " + std::string(what) + ": these shards hold tokens of the byte tokenizer (vocabulary 256, by "
                                              "their summary.json), but the model's vocabulary (model.vocab_size) "
                                              "has 300 tokens: the ids fit") != std::string::npos);
    CHECK(r.output.find("set model.vocab_size = 256") != std::string::npos);
    auto e = run_command(bin + " eval --checkpoint " + tmp.str("run-300") + " --data '" + tmp.str("data") +
                         "/val_*.bin'");
    INFO(e.output);
    REQUIRE(e.exit_code == 0);
    CHECK(e.output.find("srgpt: warning: --data: these shards hold tokens of the byte tokenizer") != std::string::npos);

    // Training does not need summary.json: a damaged one is a warning there.
    std::ofstream(tmp.str("data/summary.json")) << "{\"format\": ";
    other.out_dir = tmp.str("run-damaged-summary");
    std::ofstream(tmp.str("run-damaged-summary.json")) << srgpt::config_to_json(other).dump(2);
    auto d = run_command(bin + " train --config " + tmp.str("run-damaged-summary.json"));
    INFO(d.output);
    CHECK(d.exit_code == 0);
    CHECK(d.output.find("warning: data.train: " + tmp.str("data/summary.json")) != std::string::npos);
  }

  SECTION("the small last shard prepare writes is passed over by train and eval, with a warning") {
    const int64_t train_tokens = srgpt::read_prepare_summary(tmp.str("data/summary.json")).train.tokens;
    auto prepared = run_command(bin + " prepare --input " + tmp.str("corpus.txt") + " --tokenizer byte --split "
                                "paragraphs --val-fraction 0.25 --no-progress --shard-tokens " +
                                std::to_string(train_tokens - 3) + " --out " + tmp.str("data-small"));
    INFO(prepared.output);
    REQUIRE(prepared.exit_code == 0);
    REQUIRE(srgpt::TokenShard(tmp.str("data-small/train_000001.bin")).size() == 3);
    srgpt::Config small = tiny_config(tmp.path() / "data-small", tmp.path() / "run-small");
    small.model.vocab_size = 256;
    small.train.steps = 2;
    std::ofstream(tmp.str("run-small.json")) << srgpt::config_to_json(small).dump(2);
    auto trained = run_command(bin + " train --config " + tmp.str("run-small.json"));
    INFO(trained.output);
    REQUIRE(trained.exit_code == 0);
    const std::string passed_over = " and is passed over: " + tmp.str("data-small/train_000001.bin") + " with 3 tokens";
    CHECK(trained.output.find("warning: data.train: 1 of its 2 shards holds less than one global batch, 65 tokens "
                              "(world_size 1 x batch 4 x seq_len 16 + 1)" + passed_over) != std::string::npos);
    auto evaluated = run_command(bin + " eval" + checkpoint + " --data '" + tmp.str("data-small") + "/train_*.bin'");
    INFO(evaluated.output);
    REQUIRE(evaluated.exit_code == 0);
    CHECK(evaluated.output.find("srgpt: warning: --data: 1 of its 2 shards holds less than one sequence, 17 tokens "
                                "(seq_len 16 + 1)" + passed_over) != std::string::npos);
    // With that shard alone: an error naming the option or key it came from.
    const std::string none = "no token shard holds one sequence, 17 tokens (seq_len 16 + 1)";
    auto no_sequence = run_command(bin + " eval" + checkpoint + " --data " + tmp.str("data-small/train_000001.bin"));
    CHECK(no_sequence.exit_code == 1);
    CHECK(no_sequence.output.find("srgpt: error: --data: " + none) != std::string::npos);
    small.data.val = tmp.str("data-small/train_000001.bin");
    small.out_dir = tmp.str("run-small-val");
    std::ofstream(tmp.str("run-small-val.json")) << srgpt::config_to_json(small).dump(2);
    auto no_val = run_command(bin + " train --config " + tmp.str("run-small-val.json"));
    CHECK(no_val.exit_code == 1);
    CHECK(no_val.output.find("data.val: " + none) != std::string::npos);
  }

  SECTION("train warns when it drops metrics.jsonl lines of an earlier run or damaged ones") {
    srgpt::Config fresh = c;
    fresh.out_dir = tmp.str("run-fresh");
    std::filesystem::create_directories(fresh.out_dir);
    std::ofstream(tmp.str("run-fresh/metrics.jsonl")) << R"({"step": 1, "loss": 9.5})" << "\n"
                                                       << R"({"step": 2, "loss": 9.0})" << "\n";
    std::ofstream(tmp.str("run-fresh.json")) << srgpt::config_to_json(fresh).dump(2);
    auto trained = run_command(bin + " train --config " + tmp.str("run-fresh.json"));
    INFO(trained.output);
    REQUIRE(trained.exit_code == 0);
    CHECK(trained.output.find("warning: " + tmp.str("run-fresh/metrics.jsonl") + ": this run starts at step 0, so "
                              "it replaces the 2 line(s) an earlier run in this out_dir logged") != std::string::npos);
    CHECK(read_file(tmp.path() / "run-fresh" / "metrics.jsonl").find("9.5") == std::string::npos);

    std::ofstream(tmp.str("run-fresh/metrics.jsonl"), std::ios::app) << "garbage\n";
    auto resumed = run_command(bin + " train --config " + tmp.str("run-fresh.json") + " --resume");
    INFO(resumed.output);
    REQUIRE(resumed.exit_code == 0);
    CHECK(resumed.output.find("warning: " + tmp.str("run-fresh/metrics.jsonl") + ": dropped 1 line(s) that are not "
                              "JSON objects") != std::string::npos);
    CHECK(resumed.output.find("replaces the") == std::string::npos);
  }

  SECTION("--tokenizer-dir where no GPT-2 tokenizer is used is warned about") {
    const std::string dir = " --tokenizer-dir " + shell_quoted(std::string(SRGPT_SOURCE_DIR) + "/data/tokenizer/gpt2");
    const std::string unused = "srgpt: warning: --tokenizer-dir is not used: ";
    auto prepared = run_command(bin + " prepare --input " + tmp.str("corpus.txt") + " --tokenizer byte --no-progress "
                                "--out " + tmp.str("data-dir") + dir);
    CHECK(prepared.exit_code == 0);
    CHECK(prepared.output.find(unused + "the byte tokenizer reads no files") != std::string::npos);
    auto sampled = run_command(bin + " sample" + checkpoint + " --tokens 0" + dir);
    CHECK(sampled.exit_code == 0);
    CHECK(sampled.output.find(unused + "the byte tokenizer reads no files") != std::string::npos);
    auto exported = run_command(bin + " export" + checkpoint + " --out " + tmp.str("hf") + dir);
    CHECK(exported.exit_code == 0);
    CHECK(exported.output.find(unused + "a 256-token model gets no GPT-2 tokenizer files") != std::string::npos);
    // Without the option: no warning.
    CHECK(run_command(bin + " sample" + checkpoint + " --tokens 0").output.find("warning") == std::string::npos);
  }

  SECTION("sample prints the prompt and a continuation, reproducibly") {
    const std::string cmd = bin + " sample" + checkpoint + " --prompt 'the cat' --tokens 10 --seed 4";
    auto a = run_command(cmd);
    INFO(a.output);
    REQUIRE(a.exit_code == 0);
    CHECK(a.output.rfind("the cat", 0) == 0);
    CHECK(run_command(cmd).output == a.output);
    auto greedy = run_command(bin + " sample" + checkpoint + " --prompt 'the cat' --tokens 10 --temperature 0");
    REQUIRE(greedy.exit_code == 0);
    CHECK(run_command(bin + " sample" + checkpoint + " --prompt 'the cat' --tokens 10 --temperature 0 --seed 9")
              .output == greedy.output);
    auto empty = run_command(bin + " sample" + checkpoint + " --tokens 5 --top-k 3");
    CHECK(empty.exit_code == 0);
    // Why generation stopped goes to stderr, for the token budget too.
    auto none = run_command(bin + " sample" + checkpoint + " --prompt 'the cat' --tokens 0");
    CHECK(none.exit_code == 0);
    CHECK(none.output == "the cat\nstopped after 0 tokens (--tokens 0)\n");
  }

  SECTION("bad requests exit non-zero with a message") {
    auto negative = run_command(bin + " sample" + checkpoint + " --prompt x --temperature -1");
    CHECK(negative.exit_code == 1);
    CHECK(negative.output.find("--temperature") != std::string::npos);
    auto too_long = run_command(bin + " sample" + checkpoint + " --prompt '" + std::string(40, 'a') + "'");
    CHECK(too_long.exit_code == 1);
    CHECK(too_long.output.find("max_seq_len") != std::string::npos);
    auto mismatch = run_command(bin + " sample" + checkpoint + " --prompt x --tokenizer gpt2 --tokenizer-dir " +
                                shell_quoted(std::string(SRGPT_SOURCE_DIR) + "/data/tokenizer/gpt2"));
    CHECK(mismatch.exit_code == 1);
    CHECK(mismatch.output.find("vocab") != std::string::npos);
  }
}

TEST_CASE("a padded GPT-2 vocabulary trains without a warning, samples GPT-2 text and exports its tokenizer",
          "[sample][export]") {
  TempDir tmp("sample-padded");
  const std::string bin = srgpt_bin();
  const std::string tokenizer_dir = shell_quoted(std::string(SRGPT_SOURCE_DIR) + "/data/tokenizer/gpt2");
  prepare_and_train(tmp, "gpt2 --tokenizer-dir " + tokenizer_dir, 50304, 32);

  // The gpt2 tokenizer is chosen for the model; the text after the prompt
  // is whole GPT-2 tokens, the padded ids are never drawn.
  const std::string sample = bin + " sample " + tmp.str("run") + " --tokenizer-dir " + tokenizer_dir +
                             " --prompt 'the cat' --tokens 40 --seed 5";
  auto sampled = run_command(sample);
  INFO(sampled.output);
  REQUIRE(sampled.exit_code == 0);
  CHECK(sampled.output.rfind("the cat", 0) == 0);
  CHECK(run_command(sample + " --tokenizer gpt2").output == sampled.output);
  auto byte = run_command(sample + " --tokenizer byte");
  CHECK(byte.exit_code == 1);
  CHECK(byte.output.find("--tokenizer byte has 256 tokens, but the model's vocabulary (model.vocab_size) has 50304")
        != std::string::npos);

  auto exported = run_command(bin + " export " + tmp.str("run") + " --out " + tmp.str("hf") + " --tokenizer-dir " +
                              tokenizer_dir);
  INFO(exported.output);
  REQUIRE(exported.exit_code == 0);
  CHECK(std::filesystem::exists(tmp.path() / "hf" / "vocab.json"));
  CHECK(std::filesystem::exists(tmp.path() / "hf" / "merges.txt"));
}
