// dist.grad_reduce_dtype = fp32 on one process: the gradients the
// optimizer reads are exactly the fp32 sum, in micro-step order, of each
// micro-step's bf16 gradients, at every ZeRO stage; the optimizer reads them
// bit-exactly; and they are far closer to the exact sum than bf16
// accumulation.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "catch.h"
#include "srgpt/backend.h"
#include "srgpt/bf16.h"
#include "srgpt/communicator.h"
#include "srgpt/model.h"
#include "srgpt/optimizer.h"

using namespace srgpt;

namespace {

ModelConfig small_model() {
  ModelConfig cfg;
  cfg.vocab_size = 70;
  cfg.max_seq_len = 16;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.d_model = 32;
  return cfg;
}

constexpr int kB = 2, kT = 16;

// One process on the bf16 cpu backend with gradients in grad_dtype.
struct Run {
  Run(int zero_stage, DType grad_dtype)
      : backend(make_cpu_backend(DType::bf16)),
        comm(make_single_process_communicator(*backend)),
        params(*backend, *comm, gpt2_param_layout(small_model()), zero_stage, grad_dtype),
        model(small_model(), params, kB, kT) {
    params.set_weights(gpt2_initial_weights(small_model(), params.layout(), 17, 0.2));
  }
  // Forward and backward of micro-step m (its own random tokens).
  void micro_step(int m) {
    std::mt19937_64 rng(1000 + m);
    std::vector<int32_t> in(kB * kT), tg(kB * kT);
    for (size_t i = 0; i < in.size(); ++i) {
      in[i] = int32_t(rng() % 70);
      tg[i] = int32_t(rng() % 70);
    }
    model.forward_backward(in.data(), tg.data(), 1.0f / float(kB * kT));
  }
  // The reduced gradients as floats (layout order).
  std::vector<float> grads() {
    const size_t n = params.layout().total();
    std::vector<float> out(n);
    if (params.grad_dtype() == DType::f32) {
      backend->download(out.data(), params.grads(), n * sizeof(float));
    } else {
      std::vector<bf16> raw(n);
      backend->download(raw.data(), params.grads(), n * sizeof(bf16));
      for (size_t i = 0; i < n; ++i) out[i] = bf16_to_float(raw[i]);
    }
    return out;
  }
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Communicator> comm;
  ParameterStore params;
  GPT model;
};

}  // namespace

TEST_CASE("fp32 gradient reduction: the exact fp32 sum of the micro-steps' bf16 gradients, at every ZeRO stage",
          "[grad_reduce]") {
  const int micro_steps = 12;
  // Each micro-step's bf16 gradients on their own.
  std::vector<std::vector<float>> each;
  for (int m = 0; m < micro_steps; ++m) {
    Run r(0, DType::bf16);
    r.params.zero_grads();
    r.micro_step(m);
    r.params.reduce_gradients();
    each.push_back(r.grads());
  }
  const size_t n = each[0].size();
  std::vector<float> fp32_sum(n, 0.0f);
  std::vector<double> exact(n, 0.0);
  for (const auto& g : each)
    for (size_t i = 0; i < n; ++i) {
      fp32_sum[i] += g[i];
      exact[i] += double(g[i]);
    }

  for (int stage = 0; stage <= 3; ++stage) {
    INFO("ZeRO stage " << stage);
    Run wide(stage, DType::f32);
    wide.params.zero_grads();
    for (int m = 0; m < micro_steps; ++m) wide.micro_step(m);
    wide.params.reduce_gradients();
    const std::vector<float> got = wide.grads();
    REQUIRE(got.size() == n);
    CHECK(std::memcmp(got.data(), fp32_sum.data(), n * sizeof(float)) == 0);
  }

  // bf16 accumulation rounds after every micro-step: far from the exact sum,
  // where fp32 is within fp32 rounding.
  Run narrow(0, DType::bf16);
  narrow.params.zero_grads();
  for (int m = 0; m < micro_steps; ++m) narrow.micro_step(m);
  narrow.params.reduce_gradients();
  const std::vector<float> bf16_sum = narrow.grads();
  double norm = 0, err_fp32 = 0, err_bf16 = 0;
  for (size_t i = 0; i < n; ++i) {
    norm += exact[i] * exact[i];
    err_fp32 += (fp32_sum[i] - exact[i]) * (fp32_sum[i] - exact[i]);
    err_bf16 += (bf16_sum[i] - exact[i]) * (bf16_sum[i] - exact[i]);
  }
  INFO("relative error: fp32 " << std::sqrt(err_fp32 / norm) << ", bf16 " << std::sqrt(err_bf16 / norm));
  CHECK(std::sqrt(err_fp32 / norm) < 1e-6);
  CHECK(std::sqrt(err_bf16 / norm) > 1e-3);
}

TEST_CASE("fp32 gradient reduction: the optimizer reads fp32 gradients bit-exactly", "[grad_reduce]") {
  // One micro-step: the fp32 gradients hold exactly the bf16 values, so an
  // update from either must give the same bits.
  for (Precision p : {Precision::bf16_sr, Precision::bf16_rn, Precision::mixed, Precision::bf16_kahan}) {
    for (int stage : {0, 2}) {
      INFO(precision_name(p) << ", ZeRO stage " << stage);
      std::vector<std::vector<char>> weights;
      std::vector<std::vector<std::vector<char>>> states;
      for (DType grad_dtype : {DType::bf16, DType::f32}) {
        Run r(stage, grad_dtype);
        Optimizer opt(r.params, p, OptimizerConfig{}, 5);
        opt.set_weights(gpt2_initial_weights(small_model(), r.params.layout(), 17, 0.2));
        r.params.zero_grads();
        r.micro_step(0);
        r.params.reduce_gradients();
        opt.step(1, 1e-2, 0.75f);
        weights.push_back(r.params.full_weights_on_host());
        states.push_back(opt.state_on_host());
      }
      CHECK(weights[0] == weights[1]);
      CHECK(states[0] == states[1]);
    }
  }
}
