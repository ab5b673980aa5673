// The activation options: recomputing GELU and LayerNorm outputs in
// backward gives the same loss and gradient bits as keeping them, the LM
// head in row chunks the same loss and the same gradients but wte's (whose
// chunks are rounded in one by one), and the LayerNorm backward from the
// output the same loss and gradients within rounding; the activation buffer
// shrinks by exactly what is no longer kept.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "catch.h"
#include "srgpt/backend.h"
#include "srgpt/bf16.h"
#include "srgpt/communicator.h"
#include "srgpt/config.h"
#include "srgpt/model.h"
#include "unit/test_util.h"

using namespace srgpt;
using srgpt_test::three_layer_model;

namespace {

struct RunResult {
  std::vector<double> losses;
  std::vector<char> grads;
  size_t activation_bytes = 0;
};

// Two micro-steps of forward+backward (gradients accumulate) at the given
// ZeRO stage on one process, from fixed random weights and tokens.
RunResult run(const ModelConfig& cfg, DType dtype, ActivationOptions options, int zero_stage, int B, int T) {
  auto backend = make_cpu_backend(dtype);
  auto comm = make_single_process_communicator(*backend);
  ParameterStore params(*backend, *comm, gpt2_param_layout(cfg), zero_stage);
  GPT model(cfg, params, B, T, options);

  // Weights well away from init so every path carries signal.
  std::vector<float> w = gpt2_initial_weights(cfg, params.layout(), 4242, 0.3);
  std::mt19937_64 rng(99);
  std::normal_distribution<float> noise(0.0f, 0.2f);
  for (const TensorSpec& t : params.layout().tensors())
    if (t.name != "wte")
      for (size_t i = 0; i < t.numel; ++i) w[t.offset + i] += noise(rng);
  params.set_weights(w);
  params.zero_grads();

  RunResult r;
  std::vector<int32_t> in(size_t(B) * T), tg(in.size());
  for (int micro = 0; micro < 2; ++micro) {
    for (size_t i = 0; i < in.size(); ++i) {
      in[i] = int32_t(rng() % cfg.vocab_size);
      tg[i] = int32_t(rng() % cfg.vocab_size);
    }
    r.losses.push_back(model.forward_backward(in.data(), tg.data(), 0.5f / float(in.size())));
  }
  params.reduce_gradients();
  r.grads.resize(params.grad_bytes());
  backend->download(r.grads.data(), params.grads(), r.grads.size());
  r.activation_bytes = model.activation_bytes();
  return r;
}

// Element i of a gradient buffer in dtype, as a double.
double element(const std::vector<char>& bytes, DType dtype, size_t i) {
  if (dtype == DType::f64) return reinterpret_cast<const double*>(bytes.data())[i];
  if (dtype == DType::f32) return reinterpret_cast<const float*>(bytes.data())[i];
  return bf16_to_float(reinterpret_cast<const bf16*>(bytes.data())[i]);
}

// ||a - b|| / ||b|| over two gradient buffers of one layout, in elements
// [begin, end) (all of them by default).
double relative_difference(const std::vector<char>& a, const std::vector<char>& b, DType a_dtype, DType b_dtype,
                           size_t begin = 0, size_t end = SIZE_MAX) {
  const size_t n = b.size() / dtype_size(b_dtype);
  REQUIRE(a.size() / dtype_size(a_dtype) == n);
  end = std::min(end, n);
  double diff = 0, norm = 0;
  for (size_t i = begin; i < end; ++i) {
    const double x = element(a, a_dtype, i), y = element(b, b_dtype, i);
    diff += (x - y) * (x - y);
    norm += y * y;
  }
  REQUIRE(norm > 0);
  return std::sqrt(diff / norm);
}

}  // namespace

TEST_CASE("recompute: gradients are bit-identical and activation memory shrinks by the kept tensors",
          "[recompute]") {
  const ModelConfig cfg = three_layer_model();
  const int B = 2, T = 16;  // N * C = 1024: a multiple of the layout alignment, so savings are exact
  const size_t NC = size_t(B) * T * cfg.d_model, L = size_t(cfg.n_layer);

  for (DType dtype : {DType::bf16, DType::f32}) {
    for (int zero_stage : {0, 3}) {
      const RunResult kept = run(cfg, dtype, {}, zero_stage, B, T);
      for (Recompute recompute : {Recompute::gelu, Recompute::layernorm, Recompute::all}) {
        INFO("dtype " << dtype_name(dtype) << ", ZeRO " << zero_stage << ", recompute " << recompute_name(recompute));
        const RunResult again = run(cfg, dtype, {recompute}, zero_stage, B, T);
        REQUIRE(again.losses.size() == kept.losses.size());
        for (size_t i = 0; i < kept.losses.size(); ++i) CHECK(std::memcmp(&again.losses[i], &kept.losses[i], 8) == 0);
        REQUIRE(again.grads.size() == kept.grads.size());
        CHECK(std::memcmp(again.grads.data(), kept.grads.data(), kept.grads.size()) == 0);

        // GELU: L per-layer [N, 4C] outputs become one shared buffer;
        // LayerNorm: 2L per-layer [N, C] outputs become one.
        size_t saved = 0;
        if (recompute == Recompute::gelu || recompute == Recompute::all) saved += (L - 1) * 4 * NC;
        if (recompute == Recompute::layernorm || recompute == Recompute::all) saved += (2 * L - 1) * NC;
        CHECK(kept.activation_bytes - again.activation_bytes == saved * dtype_size(dtype));
      }
    }
  }
}

TEST_CASE("layernorm_backward_from output: the same loss, gradients as accurate, no residual stream kept",
          "[recompute]") {
  const ModelConfig cfg = three_layer_model();
  const int B = 2, T = 16;  // as above: savings are exact
  const size_t NC = size_t(B) * T * cfg.d_model, L = size_t(cfg.n_layer);
  for (int zero_stage : {0, 3}) {
    for (Recompute recompute : {Recompute::none, Recompute::gelu}) {
      const RunResult exact = run(cfg, DType::f64, {recompute}, zero_stage, B, T);
      for (DType dtype : {DType::f64, DType::f32, DType::bf16}) {
        const RunResult kept = run(cfg, dtype, {recompute}, zero_stage, B, T);
        const RunResult again = run(cfg, dtype, {recompute, 1, LayerNormBackwardFrom::output}, zero_stage, B, T);
        INFO("dtype " << dtype_name(dtype) << ", ZeRO " << zero_stage << ", recompute " << recompute_name(recompute));
        // Forward is unchanged: the same losses (the second micro-step's
        // too, so the first's gradients did not reach its weights).
        REQUIRE(again.losses.size() == kept.losses.size());
        for (size_t i = 0; i < kept.losses.size(); ++i) CHECK(std::memcmp(&again.losses[i], &kept.losses[i], 8) == 0);
        // The gradients differ (another tensor is read), by f64's rounding
        // in f64; in f32 and bf16 they are as close to f64's as the
        // backward from the input is (measured: 1.7e-6 / 1.8e-6 in f32,
        // 4.1e-2 either way in bf16, whose weights are rounded too).
        const double difference = relative_difference(again.grads, kept.grads, dtype, dtype);
        INFO("relative difference to the backward from the input " << difference);
        CHECK(difference > 0);
        if (dtype == DType::f64) {
          CHECK(difference < 1e-12);
        } else {
          const double from_output = relative_difference(again.grads, exact.grads, dtype, DType::f64);
          const double from_input = relative_difference(kept.grads, exact.grads, dtype, DType::f64);
          INFO("relative difference to f64: from the output " << from_output << ", from the input " << from_input);
          CHECK(from_output <= 1.25 * from_input);
        }
        // Each layer's two [N, C] residual-stream tensors are not kept; the
        // embedding output's buffer carries the stream.
        CHECK(kept.activation_bytes - again.activation_bytes == 2 * L * NC * dtype_size(dtype));
      }
    }
  }
}

TEST_CASE("layernorm_backward_from output cannot go with LayerNorm recompute", "[recompute]") {
  ModelConfig cfg;
  auto backend = make_cpu_backend(DType::f32);
  auto comm = make_single_process_communicator(*backend);
  ParameterStore params(*backend, *comm, gpt2_param_layout(cfg), 0);
  for (Recompute recompute : {Recompute::layernorm, Recompute::all}) {
    INFO("recompute " << recompute_name(recompute));
    CHECK_THROWS_WITH(GPT(cfg, params, 2, 8, {recompute, 1, LayerNormBackwardFrom::output}),
                      contains_substring("train.layernorm_backward_from = \"output\" reads the LayerNorm outputs") &&
                          contains_substring("allowed with it: recompute \"none\" or \"gelu\""));
  }
}

TEST_CASE("a model for forward only gives the same loss from one layer's activations", "[recompute]") {
  ModelConfig cfg = three_layer_model();
  cfg.max_seq_len = 32;
  const int B = 2, T = 32, N = B * T;  // N, N * C and B * H * T multiples of the layout alignment
  const size_t L = size_t(cfg.n_layer), NC = size_t(N) * cfg.d_model, BHT = size_t(B) * cfg.n_head * T;
  for (DType dtype : {DType::bf16, DType::f32}) {
    INFO("dtype " << dtype_name(dtype));
    auto backend = make_cpu_backend(dtype);
    auto comm = make_single_process_communicator(*backend);
    ParameterStore params(*backend, *comm, gpt2_param_layout(cfg), 0);
    params.set_weights(gpt2_initial_weights(cfg, params.layout(), 77, 0.3));
    ActivationOptions forward_only;
    forward_only.lm_head_chunks = 3;
    forward_only.for_backward = false;
    GPT trained(cfg, params, B, T, {Recompute::none, 3});
    GPT evaluated(cfg, params, B, T, forward_only);
    std::mt19937_64 rng(8);
    std::vector<int32_t> in(static_cast<size_t>(N)), tg(in.size());
    for (size_t i = 0; i < in.size(); ++i) {
      in[i] = int32_t(rng() % cfg.vocab_size);
      tg[i] = int32_t(rng() % cfg.vocab_size);
    }
    const double expected = trained.forward(in.data(), tg.data()), loss = evaluated.forward(in.data(), tg.data());
    CHECK(std::memcmp(&loss, &expected, sizeof loss) == 0);
    // Per layer, training keeps 16 [N, C] values and 4 [N] + [B, H, T]
    // statistics; forward only keeps 13 (LayerNorm output, q/k/v, attention
    // output, MLP pre-activation and GELU) and one layer's statistics, and
    // no backward scratch (7 [N, C]).
    const size_t es = dtype_size(dtype), as = dtype_size(accum_dtype(dtype));
    const size_t saved = (16 * L - 13 + 7) * NC * es + (L - 1) * (4 * size_t(N) + BHT) * as;
    CHECK(trained.activation_bytes() - evaluated.activation_bytes() == saved);
    CHECK_THROWS_WITH(evaluated.forward_backward(in.data(), tg.data(), 1.0f),
                      contains_substring("forward_backward on a model built for forward only"));
  }
}

TEST_CASE("gelu_forward recomputes matmul_forward's GELU output bit for bit", "[recompute]") {
  for (DType dtype : {DType::bf16, DType::f32}) {
    auto backend = make_cpu_backend(dtype);
    const int N = 7, C = 13, OC = 29;  // odd sizes
    const size_t es = dtype_size(dtype);
    std::mt19937_64 rng(5);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    auto random_buffer = [&](size_t n) {
      std::vector<float> v(n);
      for (float& x : v) x = nd(rng);
      DeviceBuffer b(*backend, n * es, "test");
      std::vector<char> bytes(n * es);
      for (size_t i = 0; i < n; ++i) {
        if (dtype == DType::bf16) reinterpret_cast<bf16*>(bytes.data())[i] = float_to_bf16_rn(v[i]);
        else reinterpret_cast<float*>(bytes.data())[i] = v[i];
      }
      backend->upload(b.get(), bytes.data(), bytes.size());
      return b;
    };
    DeviceBuffer in = random_buffer(size_t(N) * C), w = random_buffer(size_t(OC) * C), bias = random_buffer(OC);
    DeviceBuffer out(*backend, size_t(N) * OC * es, "out"), pre(*backend, size_t(N) * OC * es, "pre"),
        again(*backend, size_t(N) * OC * es, "again");
    backend->matmul_forward(out.get(), pre.get(), in.get(), w.get(), bias.get(), N, C, OC);
    backend->gelu_forward(again.get(), pre.get(), size_t(N) * OC);
    std::vector<char> a(out.bytes()), b(again.bytes());
    backend->download(a.data(), out.get(), a.size());
    backend->download(b.data(), again.get(), b.size());
    INFO("dtype " << dtype_name(dtype));
    CHECK(std::memcmp(a.data(), b.data(), a.size()) == 0);
  }
}

TEST_CASE("lm_head_chunks: the same loss and gradients, wte's within rounding, and a chunk-sized logits buffer",
          "[recompute]") {
  ModelConfig cfg;
  cfg.vocab_size = 300;  // padded to 384: logits dominate this model's activations
  cfg.max_seq_len = 16;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.d_model = 32;
  const int B = 2, T = 16, N = B * T;
  const Layout layout = gpt2_param_layout(cfg);
  const TensorSpec& wte = layout.at("wte");
  for (DType dtype : {DType::bf16, DType::f32}) {
    for (int zero_stage : {0, 2}) {
      const RunResult whole = run(cfg, dtype, {}, zero_stage, B, T);
      // 4 chunks of 8 rows, and 5 chunks of 7 rows with a short last one.
      for (int chunks : {4, 5}) {
        INFO("dtype " << dtype_name(dtype) << ", ZeRO " << zero_stage << ", " << chunks << " chunks");
        const RunResult chunked = run(cfg, dtype, {Recompute::none, chunks}, zero_stage, B, T);
        for (size_t i = 0; i < whole.losses.size(); ++i)
          CHECK(std::memcmp(&chunked.losses[i], &whole.losses[i], 8) == 0);
        // Everything after wte in the layout is the same bits (one rank: the
        // gradient shard is the whole layout).
        const size_t es = dtype_size(dtype), after_wte = (wte.offset + wte.numel) * es;
        REQUIRE(chunked.grads.size() == whole.grads.size());
        CHECK(std::memcmp(chunked.grads.data() + after_wte, whole.grads.data() + after_wte,
                          whole.grads.size() - after_wte) == 0);
        // wte: every chunk's part rounded into it separately (its norm is
        // required to be nonzero).
        const double wte_difference =
            relative_difference(chunked.grads, whole.grads, dtype, dtype, wte.offset, wte.offset + wte.numel);
        INFO("wte gradient relative difference " << wte_difference);
        CHECK(wte_difference < (dtype == DType::bf16 ? 1e-2 : 1e-6));
        const size_t rows = size_t((N + chunks - 1) / chunks);
        CHECK(whole.activation_bytes - chunked.activation_bytes == (size_t(N) - rows) * cfg.padded_vocab() * es);
      }
    }
  }
}
