#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "catch.h"
#include "test_util.h"
#include "srgpt/config.h"
#include "srgpt/error.h"

using nlohmann::json;
using srgpt::Config;
using srgpt_test::contains;
using srgpt_test::error_message;

namespace {

template <typename T>
T pick(std::mt19937_64& rng, std::initializer_list<T> values) {
  return *(values.begin() + std::uniform_int_distribution<size_t>(0, values.size() - 1)(rng));
}

// A random config that satisfies every constraint, with values that stress
// round-tripping (17-digit doubles, seeds above 2^63).
Config random_valid_config(std::mt19937_64& rng) {
  auto integer = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  auto real = [&](double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); };
  Config c;
  c.model.vocab_size = int(integer(1, 200000));
  c.model.max_seq_len = int(integer(1, 4096));
  c.model.n_layer = int(integer(1, 96));
  c.model.n_head = int(integer(1, 32));
  c.model.d_model = c.model.n_head * int(integer(1, 128));
  c.precision = pick(rng, {srgpt::Precision::bf16_sr, srgpt::Precision::bf16_rn, srgpt::Precision::mixed,
                           srgpt::Precision::fp32, srgpt::Precision::bf16_kahan});
  c.device = pick(rng, {srgpt::DeviceChoice::auto_select, srgpt::DeviceChoice::cpu, srgpt::DeviceChoice::cuda});
  c.optimizer.lr = std::exp(real(std::log(1e-6), std::log(1.0)));
  c.optimizer.beta1 = real(0, 1);
  c.optimizer.beta2 = real(0, 1);
  c.optimizer.eps = std::exp(real(std::log(1e-12), std::log(1e-3)));
  c.optimizer.weight_decay = real(0, 1);
  c.optimizer.grad_clip = real(0, 10);
  c.optimizer.decay = pick(rng, {srgpt::LrDecay::cosine, srgpt::LrDecay::linear, srgpt::LrDecay::constant});
  c.optimizer.min_lr_ratio = real(0, 1);
  c.batch.micro_batch = int(integer(1, 64));
  c.batch.seq_len = int(integer(1, c.model.max_seq_len));
  c.batch.total_tokens = int64_t(c.batch.micro_batch) * c.batch.seq_len * integer(1, 64);
  c.data.train = "data/shard_" + std::to_string(integer(0, 99)) + "_*.bin";
  c.data.val = pick(rng, {std::string(), std::string("data/val_*.bin")});
  c.train.steps = integer(1, 1000000);
  c.optimizer.warmup_steps = integer(0, c.train.steps);
  c.train.eval_every = integer(0, 10000);
  c.train.eval_tokens = integer(0, int64_t(1) << 40);
  c.train.log_every = integer(1, 1000);
  c.train.seed = rng();
  c.train.on_nonfinite = pick(rng, {srgpt::NonFinitePolicy::stop, srgpt::NonFinitePolicy::skip});
  c.train.init_std = real(1e-4, 1);
  c.train.mfu_peak_tflops = pick(rng, {0.0, real(1, 5000)});
  c.train.lm_head_chunks = int(integer(1, int64_t(c.batch.micro_batch) * c.batch.seq_len));
  c.train.recompute = pick(rng, {srgpt::Recompute::none, srgpt::Recompute::gelu, srgpt::Recompute::layernorm,
                                 srgpt::Recompute::all});
  // From the output only where the LayerNorm outputs are kept.
  if (c.train.recompute == srgpt::Recompute::none || c.train.recompute == srgpt::Recompute::gelu)
    c.train.layernorm_backward_from =
        pick(rng, {srgpt::LayerNormBackwardFrom::input, srgpt::LayerNormBackwardFrom::output});
  c.checkpoint.every = integer(0, 100000);
  c.checkpoint.keep = int(integer(1, 100));
  c.dist.zero_stage = int(integer(0, 3));
  c.dist.communicator = pick(rng, {srgpt::CommunicatorChoice::auto_select, srgpt::CommunicatorChoice::nccl,
                                   srgpt::CommunicatorChoice::mpi});
  c.dist.grad_reduce_dtype =
      c.precision == srgpt::Precision::fp32
          ? pick(rng, {srgpt::GradReduceChoice::auto_select, srgpt::GradReduceChoice::fp32})
          : pick(rng, {srgpt::GradReduceChoice::auto_select, srgpt::GradReduceChoice::bf16,
                       srgpt::GradReduceChoice::fp32});
  c.dist.overlap_comm = rng() % 2 == 0;
  c.out_dir = "runs/r" + std::to_string(integer(0, 1000000));
  return c;
}

// Every leaf key of a document as a dotted path.
void collect_keys(const json& doc, const std::string& prefix, std::vector<std::string>& out) {
  for (const auto& item : doc.items()) {
    std::string path = prefix.empty() ? item.key() : prefix + "." + item.key();
    if (item.value().is_object())
      collect_keys(item.value(), path, out);
    else
      out.push_back(path);
  }
}

}  // namespace

TEST_CASE("config defaults: an empty document gives the documented defaults", "[config]") {
  Config parsed = srgpt::config_from_json(json::object(), "empty.json");
  CHECK(srgpt::config_to_json(parsed) == srgpt::config_to_json(Config{}));
  CHECK(parsed.precision == srgpt::Precision::bf16_sr);
  CHECK(parsed.device == srgpt::DeviceChoice::auto_select);
  CHECK(parsed.optimizer.decay == srgpt::LrDecay::cosine);
  CHECK(parsed.dist.communicator == srgpt::CommunicatorChoice::auto_select);
  CHECK(parsed.dist.overlap_comm);
  CHECK(parsed.out_dir == "runs/default");
  // The defaults themselves are a valid, consistent config.
  CHECK_NOTHROW(parsed.validate_for_world(1));
  // A comment is accepted and ignored.
  json annotated = {{"comment", "a note"}};
  CHECK(srgpt::config_to_json(srgpt::config_from_json(annotated, "c.json")) == srgpt::config_to_json(Config{}));
}

TEST_CASE("config round trip: to_json, text, from_json gives an identical config", "[config]") {
  std::mt19937_64 rng(20240520);
  std::vector<std::string> default_keys;
  collect_keys(srgpt::config_to_json(Config{}), "", default_keys);
  CHECK(default_keys.size() == 39);  // every key of the schema, comment excluded
  for (int trial = 0; trial < 200; ++trial) {
    Config original = random_valid_config(rng);
    json doc = srgpt::config_to_json(original);
    std::vector<std::string> keys;
    collect_keys(doc, "", keys);
    REQUIRE(keys == default_keys);  // complete: every key is written
    Config parsed = srgpt::config_from_json(json::parse(doc.dump()), "roundtrip.json");
    REQUIRE(srgpt::config_to_json(parsed) == doc);
    CHECK(parsed.optimizer.lr == original.optimizer.lr);
    CHECK(parsed.train.seed == original.train.seed);
    CHECK(parsed.precision == original.precision);
    CHECK(parsed.batch.grad_accum(1) * parsed.batch.micro_batch * parsed.batch.seq_len ==
          parsed.batch.total_tokens);
  }
}

TEST_CASE("config errors name the origin, the key, the value and what is allowed", "[config]") {
  struct BadDocument {
    const char* text;
    std::vector<std::string> expected;
  };
  const std::vector<BadDocument> cases = {
      // unknown keys, nested and top level
      {R"({"optimizer": {"betas": [0.9, 0.95]}})",
       {"unknown key 'optimizer.betas'", "allowed keys in 'optimizer'", "lr, beta1, beta2, eps", "min_lr_ratio",
        "did you mean 'optimizer.beta1'"}},
      {R"({"modle": {"n_layer": 2}})", {"unknown key 'modle'", "did you mean 'model'", "out_dir", "comment"}},
      // wrong JSON types
      {R"({"model": {"n_layer": 2.5}})", {"model.n_layer = 2.5", "an integer in [1, 4096]", "fractional"}},
      {R"({"optimizer": {"lr": "3e-4"}})", {"optimizer.lr = \"3e-4\"", "a number > 0", "without quotes"}},
      {R"({"train": {"steps": true}})", {"train.steps = true", "an integer in [1, 2^63 - 1]", "a boolean"}},
      {R"({"dist": {"overlap_comm": "false"}})", {"dist.overlap_comm = \"false\"", "expected true or false", "a string"}},
      {R"({"dist": {"overlap_comm": 0}})", {"dist.overlap_comm = 0", "expected true or false", "a number"}},
      {R"({"model": 12})", {"model = 12", "an object with keys vocab_size, max_seq_len", "a number"}},
      {R"({"data": {"train": ["a.bin", "b.bin"]}})", {"data.train", "a string", "an array"}},
      {R"({"comment": 7})", {"comment = 7", "a string"}},
      // out of range
      {R"({"optimizer": {"lr": 0}})", {"optimizer.lr = 0", "out of range", "a number > 0"}},
      {R"({"optimizer": {"beta1": 1.0}})", {"optimizer.beta1 = 1.0", "a number in [0, 1)"}},
      {R"({"optimizer": {"beta2": -0.5}})", {"optimizer.beta2 = -0.5", "a number in [0, 1)"}},
      {R"({"optimizer": {"eps": 0.0}})", {"optimizer.eps", "a number in [1e-30, 1]"}},
      // eps would be 0 in the fp32 update; init_std 1e39 overflowed step 1.
      {R"({"optimizer": {"eps": 1e-46}})", {"optimizer.eps = 1e-46", "a number in [1e-30, 1]"}},
      {R"({"train": {"init_std": 1e39}})", {"train.init_std = 1e+39", "a number in (0, 1]"}},
      {R"({"train": {"steps": 9223372036854775808}})", {"train.steps = 9223372036854775808", "[1, 2^63 - 1]"}},
      {R"({"optimizer": {"weight_decay": -0.1}})", {"optimizer.weight_decay = -0.1", "a number >= 0"}},
      {R"({"optimizer": {"grad_clip": -1}})", {"optimizer.grad_clip = -1", "a number >= 0"}},
      {R"({"train": {"mfu_peak_tflops": -989}})", {"train.mfu_peak_tflops = -989", "a number in [0, 1000000]"}},
      {R"({"train": {"mfu_peak_tflops": "989"}})", {"train.mfu_peak_tflops = \"989\"", "a number in [0, 1000000]"}},
      {R"({"optimizer": {"min_lr_ratio": 1.5}})", {"optimizer.min_lr_ratio = 1.5", "a number in [0, 1]"}},
      {R"({"model": {"vocab_size": 2147483648}})", {"model.vocab_size = 2147483648", "[1, 1073741824]"}},
      {R"({"batch": {"micro_batch": 0}})", {"batch.micro_batch = 0", "[1, 2147483647]"}},
      {R"({"checkpoint": {"keep": 0}})", {"checkpoint.keep = 0", "[1, 2147483647]"}},
      {R"({"dist": {"zero_stage": 4}})", {"dist.zero_stage = 4", "an integer in [0, 3]"}},
      {R"({"train": {"seed": -1}})", {"train.seed = -1", "[0, 18446744073709551615]"}},
      {R"({"out_dir": ""})", {"out_dir = \"\"", "a non-empty string"}},
      {R"({"out_dir": 1e3})", {"out_dir = 1000.0", "found a number in floating-point notation"}},
      {R"({"out_dir": 2.5})", {"out_dir = 2.5", "found a fractional number"}},
      // unknown enumeration values
      {R"({"precision": "bf16"})", {"precision = \"bf16\"", "bf16-sr, bf16-rn, mixed, fp32, bf16-kahan"}},
      {R"({"device": "gpu"})", {"device = \"gpu\"", "auto, cpu, cuda"}},
      {R"({"optimizer": {"decay": "exponential"}})", {"optimizer.decay", "cosine, linear, constant"}},
      {R"({"train": {"on_nonfinite": "ignore"}})", {"train.on_nonfinite", "stop, skip"}},
      {R"({"batch": {"micro_batch": 2, "seq_len": 8, "total_tokens": 16}, "train": {"lm_head_chunks": 17}})",
       {"train.lm_head_chunks = 17 exceeds the 16 rows of a micro-batch", "allowed: 1..16"}},
      {R"({"train": {"recompute": "attention"}})", {"train.recompute = \"attention\"", "none, gelu, layernorm, all"}},
      {R"({"train": {"layernorm_backward_from": "residual"}})",
       {"train.layernorm_backward_from = \"residual\"", "input, output"}},
      {R"({"train": {"recompute": "all", "layernorm_backward_from": "output"}})",
       {"train.layernorm_backward_from = \"output\" reads the LayerNorm outputs",
        "train.recompute = \"all\" does not keep", "allowed with it: recompute \"none\" or \"gelu\""}},
      {R"({"dist": {"communicator": "gloo"}})", {"dist.communicator = \"gloo\"", "auto, nccl, mpi"}},
      {R"({"dist": {"grad_reduce_dtype": "fp16"}})", {"dist.grad_reduce_dtype = \"fp16\"", "auto, bf16, fp32"}},
      {R"({"precision": "fp32", "dist": {"grad_reduce_dtype": "bf16"}})",
       {"dist.grad_reduce_dtype = \"bf16\" needs a bf16 precision mode", "allowed: auto or fp32"}},
      // inconsistent values
      {R"({"model": {"d_model": 100, "n_head": 3}})",
       {"model.d_model = 100", "model.n_head = 3", "not divisible", "99 or 102"}},
      {R"({"model": {"max_seq_len": 128}, "batch": {"seq_len": 256}})",
       {"batch.seq_len = 256", "model.max_seq_len = 128", "1..128"}},
      {R"({"batch": {"micro_batch": 4, "seq_len": 64, "total_tokens": 1000}})",
       {"batch.total_tokens = 1000", "4 * 64 * 1", "a multiple of 256", "768 or 1024"}},
      {R"({"batch": {"micro_batch": 4, "seq_len": 64, "total_tokens": 100}})",
       {"batch.total_tokens = 100", "smaller than", "4 * 64 * 1"}},
      // counts that would overflow an int (before: a negative grad_accum ran
      // zero micro-steps and logged loss 0)
      {R"({"batch": {"micro_batch": 1, "seq_len": 1, "total_tokens": 4294967296}})",
       {"batch.total_tokens = 4294967296 is 4294967296 micro-batches", "at most 2147483647 micro-batches"}},
      {R"({"model": {"max_seq_len": 65536}, "batch": {"micro_batch": 65536, "seq_len": 65536, "total_tokens": 4294967296}})",
       {"batch.micro_batch * batch.seq_len = 65536 * 65536 = 4294967296 tokens per micro-batch", "at most 2147483647"}},
      {R"({"optimizer": {"warmup_steps": 500}, "train": {"steps": 300}})",
       {"optimizer.warmup_steps = 500", "train.steps = 300", "0..300"}},
  };
  for (const BadDocument& bad : cases) {
    std::string message = error_message([&] { srgpt::config_from_json(json::parse(bad.text), "bad.json"); });
    INFO("document: " << bad.text << "\nmessage: " << message);
    REQUIRE(!message.empty());
    CHECK(contains(message, "bad.json: "));
    for (const std::string& part : bad.expected) CHECK(contains(message, part));
  }
}

TEST_CASE("config errors: several problems are reported together, non-objects and infinities", "[config]") {
  std::string several = error_message([] {
    srgpt::config_from_json(json::parse(R"({"optimizer": {"lr": -1, "bogus": 1}, "train": {"steps": 0}})"), "x.json");
  });
  CHECK(contains(several, "x.json: 3 problems"));
  CHECK(contains(several, "optimizer.lr = -1"));
  CHECK(contains(several, "optimizer.bogus"));
  CHECK(contains(several, "train.steps = 0"));

  CHECK(contains(error_message([] { srgpt::config_from_json(json::array(), "arr.json"); }),
                 "arr.json: the config must be a JSON object"));

  json infinite = {{"optimizer", {{"lr", std::numeric_limits<double>::infinity()}}}};
  std::string message = error_message([&] { srgpt::config_from_json(infinite, "inf.json"); });
  CHECK(contains(message, "optimizer.lr = inf"));
  CHECK(contains(message, "a number > 0"));

  // Integral values written as floats are integers; this one is too large.
  CHECK(srgpt::config_from_json(json::parse(R"({"batch": {"total_tokens": 5.12e2}})"), "f.json").batch.total_tokens ==
        512);
  CHECK(contains(error_message([] { srgpt::config_from_json(json::parse(R"({"train": {"seed": 1e30}})"), "s.json"); }),
                 "train.seed = 1e+30 is out of range"));
}

TEST_CASE("config validate_for_world: total_tokens must divide over the ranks", "[config]") {
  Config c;
  c.batch.micro_batch = 8;
  c.batch.seq_len = 128;
  c.batch.total_tokens = 8 * 128 * 6;
  for (int world : {1, 2, 3, 6}) CHECK_NOTHROW(c.validate_for_world(world));
  for (int world : {1, 2, 3, 6}) CHECK(c.batch.grad_accum(world) == 6 / world);
  std::string message = error_message([&] { c.validate_for_world(4); });
  CHECK(contains(message, "batch.total_tokens = 6144"));
  CHECK(contains(message, "8 * 128 * 4 = 4096"));
  CHECK(contains(message, "4096 or 8192"));
  CHECK(contains(error_message([&] { c.validate_for_world(7); }), "smaller than"));
  CHECK(contains(error_message([&] { c.validate_for_world(0); }), "world size 0"));
}

TEST_CASE("config overrides: dotted keys, JSON or plain-string values, clear errors", "[config]") {
  json doc = json::parse(R"({"model": {"n_layer": 2}, "optimizer": {"lr": 0.001}})");
  srgpt::apply_override(doc, "optimizer.lr=3e-4");
  srgpt::apply_override(doc, "model.n_layer=6");
  srgpt::apply_override(doc, "data.train=data/x_*.bin");  // creates the section
  srgpt::apply_override(doc, "data.val=\"quoted.bin\"");
  srgpt::apply_override(doc, "precision=mixed");
  srgpt::apply_override(doc, "out_dir=runs/a=b");  // only the first '=' splits
  srgpt::apply_override(doc, "checkpoint={\"every\": 50, \"keep\": 9}");
  srgpt::apply_override(doc, "data.val=");  // empty string disables validation
  srgpt::apply_override(doc, "dist.overlap_comm=false");
  CHECK(doc["optimizer"]["lr"].is_number_float());
  CHECK(doc["model"]["n_layer"].is_number_integer());
  Config c = srgpt::config_from_json(doc, "o.json");
  CHECK(c.optimizer.lr == 3e-4);
  CHECK(c.model.n_layer == 6);
  CHECK(c.data.train == "data/x_*.bin");
  CHECK(c.data.val.empty());
  CHECK(c.precision == srgpt::Precision::mixed);
  CHECK(c.out_dir == "runs/a=b");
  CHECK(c.checkpoint.every == 50);
  CHECK(c.checkpoint.keep == 9);
  CHECK_FALSE(c.dist.overlap_comm);

  json quoted = json::object();
  srgpt::apply_override(quoted, "data.val=\"quoted.bin\"");
  CHECK(quoted["data"]["val"] == "quoted.bin");

  std::string unknown = error_message([&] { srgpt::apply_override(doc, "optimizer.betas=0.9"); });
  CHECK(contains(unknown, "--set 'optimizer.betas=0.9'"));
  CHECK(contains(unknown, "unknown key 'optimizer.betas'"));
  CHECK(contains(unknown, "lr, beta1, beta2"));
  std::string unknown_top = error_message([&] { srgpt::apply_override(doc, "lr=1"); });
  CHECK(contains(unknown_top, "unknown key 'lr'"));
  CHECK(contains(unknown_top, "model, precision, device, optimizer"));
  const json before = doc;
  CHECK(contains(error_message([&] { srgpt::apply_override(doc, "precision.mode=x"); }), "is a value, not a section"));
  CHECK(contains(error_message([&] { srgpt::apply_override(doc, "dist.bogus=1"); }), "unknown key 'dist.bogus'"));
  CHECK(doc == before);  // a rejected override changes nothing
  for (const char* malformed : {"optimizer.lr", "=3", ""}) {
    std::string message = error_message([&] { srgpt::apply_override(doc, malformed); });
    CHECK(contains(message, "expected KEY=VALUE"));
    CHECK(contains(message, "optimizer.lr=3e-4"));
  }
  // A value that is not UTF-8 (found by test_input_fuzz.cpp: it made the
  // error message's dump() throw nlohmann's type_error instead).
  for (const char* not_utf8 : {"optimizer=\x94", "out_dir=runs/\xED\xED"}) {
    std::string message = error_message([&] { srgpt::apply_override(doc, not_utf8); });
    CHECK(contains(message, "is not valid UTF-8"));
  }
  // A value nested as deeply as a config file may not be (found by
  // test_input_fuzz.cpp: an error message dumping it overflowed the stack).
  const std::string deep_value = std::string(100000, '[') + "1" + std::string(100000, ']');
  CHECK(contains(error_message([&] { srgpt::apply_override(doc, "model.n_layer=" + deep_value); }),
                 "--set model.n_layer=...: JSON nested deeper than 64 levels"));
  // The limit counts levels: 64 are set (a value of the wrong type, for
  // config_from_json to refuse), 65 are not.
  for (size_t levels : {size_t(64), size_t(65)}) {
    json copy = doc;
    const std::string nested = std::string(levels, '[') + "1" + std::string(levels, ']');
    const std::string message = error_message([&] { srgpt::apply_override(copy, "model.n_layer=" + nested); });
    CHECK(contains(message, "nested deeper than 64 levels") == (levels == 65));
  }
  CHECK(doc == before);
  // A value spelled as JSON is parsed as a file is: its syntax errors and
  // duplicate keys are errors (they used to make it a string, or drop a copy).
  CHECK(contains(error_message([&] { srgpt::apply_override(doc, R"(model={"n_layer": 1, "n_layer": 3})"); }),
                 "--set model=...: duplicate key 'model.n_layer'"));
  CHECK(contains(error_message([&] { srgpt::apply_override(doc, R"(model={"n_layer": 1,})"); }),
                 "--set model=...: not valid JSON"));
  CHECK(contains(error_message([&] { srgpt::apply_override(doc, "optimizer.lr=1e400"); }),
                 "number overflow parsing '1e400'"));
  CHECK(doc == before);
  // Anything else is the string as typed, digits first or not.
  srgpt::apply_override(doc, "out_dir=2024-run");
  CHECK(doc["out_dir"] == "2024-run");
  srgpt::apply_override(doc, "data.train=[ab]*.bin");
  CHECK(doc["data"]["train"] == "[ab]*.bin");
  // null is no object to set keys in, as in the file itself.
  json null_section = json::parse(R"({"optimizer": null})");
  CHECK(contains(error_message([&] { srgpt::apply_override(null_section, "optimizer.lr=1e-3"); }),
                 "'optimizer' is null in the config, not an object"));
  json null_doc;
  CHECK(contains(error_message([&] { srgpt::apply_override(null_doc, "optimizer.lr=1e-3"); }),
                 "the config is null, not a JSON object"));
  json scalar_section = json::parse(R"({"model": 5})");
  CHECK(contains(error_message([&] { srgpt::apply_override(scalar_section, "model.n_layer=3"); }),
                 "'model' is a number in the config, not an object"));
}

TEST_CASE("config load_config: files, overrides, parse errors and duplicates", "[config]") {
  std::mt19937_64 rng(77);
  srgpt_test::TempDir dir("config");
  std::string good = dir.write("good.json", R"({"comment": "x", "optimizer": {"lr": 0.01}})");
  Config c = srgpt::load_config(good, {"optimizer.lr=0.02", "train.steps=50"});
  CHECK(c.optimizer.lr == 0.02);
  CHECK(c.train.steps == 50);

  std::string bad_value = error_message([&] { srgpt::load_config(good, {"optimizer.lr=abc"}); });
  CHECK(contains(bad_value, good + " --set optimizer.lr=abc: optimizer.lr = \"abc\""));

  std::string missing = error_message([&] { srgpt::load_config((dir.path() / "nope.json").string(), {}); });
  CHECK(contains(missing, "nope.json' does not exist"));
  CHECK(contains(error_message([&] { srgpt::load_config(dir.str(), {}); }), "is a directory"));

  std::string broken = dir.write("broken.json", "{\n  \"model\": {\n    \"n_layer\": 4,\n  }\n}\n");
  std::string parse = error_message([&] { srgpt::load_config(broken, {}); });
  CHECK(contains(parse, broken + ": not valid JSON"));
  CHECK(contains(parse, "line 4, column 3"));
  // A number beyond double's range is nlohmann's out_of_range, not a parse_error: reported the same way.
  std::string overflow = dir.write("overflow.json", R"({"train": {"steps": 1e400}})");
  std::string too_big = error_message([&] { srgpt::load_config(overflow, {}); });
  CHECK(contains(too_big, overflow + ": not valid JSON: number overflow parsing '1e400'"));
  CHECK(!contains(too_big, "json.exception"));
  // Model sizes beyond the bounds fail before any layout is built.
  CHECK(contains(error_message([&] { srgpt::load_config(good, {"model.n_layer=1000000000"}); }),
                 "model.n_layer = 1000000000 is out of range; allowed: an integer in [1, 4096]"));
  CHECK(contains(error_message([&] { srgpt::load_config(good, {"model.d_model=1000000", "model.n_head=1"}); }),
                 "allowed: at most 1.1e+12 (2^40)"));
  // Deep nesting is refused while parsing (dumping it for a message would overflow the stack).
  std::string deep_text;
  for (int i = 0; i < 100000; ++i) deep_text += "{\"a\":";
  deep_text += "1" + std::string(100000, '}');
  std::string deep = dir.write("deep.json", deep_text);
  CHECK(contains(error_message([&] { srgpt::load_config(deep, {}); }), "nested deeper than 64 levels"));

  std::string twice = dir.write("twice.json", R"({"optimizer": {"lr": 0.1, "lr": 0.2}})");
  std::string duplicate = error_message([&] { srgpt::load_config(twice, {}); });
  CHECK(contains(duplicate, twice + ": duplicate key 'optimizer.lr'"));
}

TEST_CASE("config learning_rate: warmup, decay endpoints and monotonicity", "[config]") {
  std::mt19937_64 rng(4242);
  for (srgpt::LrDecay decay : {srgpt::LrDecay::cosine, srgpt::LrDecay::linear, srgpt::LrDecay::constant}) {
    for (int trial = 0; trial < 20; ++trial) {
      srgpt::OptimizerConfig o;
      o.decay = decay;
      o.lr = std::uniform_real_distribution<double>(1e-5, 1e-2)(rng);
      o.min_lr_ratio = std::uniform_real_distribution<double>(0.01, 0.5)(rng);
      int64_t total = std::uniform_int_distribution<int64_t>(2, 500)(rng);
      o.warmup_steps = std::uniform_int_distribution<int64_t>(0, total - 1)(rng);
      const double tolerance = 1e-12 * o.lr;
      const double final_lr = decay == srgpt::LrDecay::constant ? o.lr : o.lr * o.min_lr_ratio;
      INFO("decay " << srgpt::lr_decay_name(decay) << " warmup " << o.warmup_steps << " total " << total);
      if (o.warmup_steps > 0) {
        CHECK(std::fabs(srgpt::learning_rate(o, 1, total) - o.lr / double(o.warmup_steps)) <= tolerance);
        CHECK(std::fabs(srgpt::learning_rate(o, o.warmup_steps, total) - o.lr) <= tolerance);
      }
      CHECK(std::fabs(srgpt::learning_rate(o, total, total) - final_lr) <= tolerance);
      CHECK(std::fabs(srgpt::learning_rate(o, total + 10, total) - final_lr) <= tolerance);
      double previous = o.warmup_steps > 0 ? 0.0 : o.lr;
      for (int64_t t = 1; t <= total; ++t) {
        double lr = srgpt::learning_rate(o, t, total);
        REQUIRE(lr > 0);
        REQUIRE(lr <= o.lr + tolerance);
        if (t <= o.warmup_steps) {
          REQUIRE(lr > previous);
        } else {
          REQUIRE(lr <= previous + tolerance);
          REQUIRE(lr >= final_lr - tolerance);
        }
        previous = lr;
      }
    }
  }
  srgpt::OptimizerConfig o;
  o.lr = 1e-3;
  o.min_lr_ratio = 0.2;
  o.warmup_steps = 10;
  // Halfway through the decay, cosine and linear both sit at the mean.
  for (srgpt::LrDecay decay : {srgpt::LrDecay::cosine, srgpt::LrDecay::linear}) {
    o.decay = decay;
    CHECK(std::fabs(srgpt::learning_rate(o, 60, 110) - 0.6e-3) < 1e-15);
  }
  // Cosine stays above linear in the first half of the decay.
  o.decay = srgpt::LrDecay::cosine;
  double cosine = srgpt::learning_rate(o, 30, 110);
  o.decay = srgpt::LrDecay::linear;
  CHECK(cosine > srgpt::learning_rate(o, 30, 110));
}

TEST_CASE("config names", "[config]") {
  CHECK(std::string(srgpt::lr_decay_name(srgpt::LrDecay::constant)) == "constant");
  CHECK(std::string(srgpt::device_choice_name(srgpt::DeviceChoice::auto_select)) == "auto");
  CHECK(std::string(srgpt::nonfinite_policy_name(srgpt::NonFinitePolicy::skip)) == "skip");
  CHECK(std::string(srgpt::recompute_name(srgpt::Recompute::layernorm)) == "layernorm");
  CHECK(std::string(srgpt::layernorm_backward_from_name(srgpt::LayerNormBackwardFrom::output)) == "output");
}

TEST_CASE("config shipped configs parse and have the documented shapes", "[config]") {
  struct Shape {
    int n_layer, n_head, d_model, micro_batch;
    double lr;
  };
  const std::map<std::string, Shape> expected = {
      {"demo.json", {4, 4, 128, 8, 3e-3}},        {"gpt2-d12.json", {12, 12, 768, 32, 6e-4}},
      {"gpt2-d24.json", {24, 16, 1024, 32, 3e-4}}, {"gpt2-d36.json", {36, 20, 1280, 16, 2.5e-4}},
      {"gpt2-d48.json", {48, 25, 1600, 16, 2e-4}},
  };
  size_t parsed = 0;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(SRGPT_SOURCE_DIR) + "/configs")) {
    if (entry.path().extension() != ".json") continue;
    INFO(entry.path().string());
    Config c = srgpt::load_config(entry.path().string(), {});
    CHECK_NOTHROW(c.validate_for_world(1));
    ++parsed;
    auto shape = expected.find(entry.path().filename().string());
    if (shape == expected.end()) continue;
    CHECK(c.model.n_layer == shape->second.n_layer);
    CHECK(c.model.n_head == shape->second.n_head);
    CHECK(c.model.d_model == shape->second.d_model);
    CHECK(c.batch.micro_batch == shape->second.micro_batch);
    CHECK(c.optimizer.lr == shape->second.lr);
  }
  CHECK(parsed >= expected.size());
  Config demo = srgpt::load_config(std::string(SRGPT_SOURCE_DIR) + "/configs/demo.json", {});
  CHECK(demo.model.vocab_size == 256);
  CHECK(demo.batch.total_tokens == 2048);
  CHECK(demo.optimizer.warmup_steps == 30);
  CHECK(demo.out_dir == "runs/demo");
}

TEST_CASE("config docs/config.md documents every key", "[config]") {
  std::ifstream in(std::string(SRGPT_SOURCE_DIR) + "/docs/config.md");
  REQUIRE(in);
  std::stringstream text;
  text << in.rdbuf();
  std::vector<std::string> keys;
  collect_keys(srgpt::config_to_json(Config{}), "", keys);
  keys.push_back("comment");
  for (const std::string& key : keys) {
    INFO(key);
    CHECK(contains(text.str(), "`" + key + "`"));
  }
}
