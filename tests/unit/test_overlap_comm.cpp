// dist.overlap_comm on one process: a ParameterStore gives the same bits
// with the collectives overlapped (deferred or run at once) as completed
// at each call, at every ZeRO stage and gradient dtype; and zero_grads
// drops a reduction still pending from gradients it throws away.
// tests/mpi/test_overlap_mpi.cpp repeats the check across ranks, where the
// reductions add real sums.
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "catch.h"
#include "overlap_schedule.h"
#include "srgpt/backend.h"
#include "srgpt/communicator.h"
#include "srgpt/model.h"
#include "srgpt/optimizer.h"
#include "srgpt/param_store.h"

using namespace srgpt;
using namespace srgpt_test;

TEST_CASE("overlapped collectives give the same losses, gradients and weights at every ZeRO stage", "[overlap]") {
  for (DType grad_dtype : {DType::bf16, DType::f32}) {
    for (int stage = 0; stage <= 3; ++stage) {
      INFO("ZeRO stage " << stage << ", gradients in " << dtype_name(grad_dtype));
      auto backend = make_cpu_backend(DType::bf16);
      auto comm = make_single_process_communicator(*backend);
      const OverlapRun completed = run_overlap_steps(*backend, *comm, stage, grad_dtype, false);
      const OverlapRun deferred = run_overlap_steps(*backend, *comm, stage, grad_dtype, true);
      EagerCommunicator eager(make_single_process_communicator(*backend));
      const OverlapRun at_once = run_overlap_steps(*backend, eager, stage, grad_dtype, true);
      REQUIRE(completed.losses.size() == 8);
      check_same_bits({&deferred, &at_once}, completed);
      // The steps did something: the second step's gradients differ from the first's.
      const size_t half = completed.grads.size() / 2;
      CHECK(std::memcmp(completed.grads.data(), completed.grads.data() + half, half) != 0);
    }
  }
}

TEST_CASE("zero_grads drops a reduction still pending from thrown-away gradients", "[overlap]") {
  // After a micro-step the embeddings' reduce-scatter is still pending
  // (ZeRO-2/3); zeroing the gradients then must not let it be added into
  // the next step's shard.
  constexpr int kB = 2, kT = 16;
  const ModelConfig cfg = three_layer_model();
  const uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> tokens(4, std::vector<int32_t>(kB * kT));
  for (auto& t : tokens)
    for (int32_t& id : t) id = int32_t(rng() % uint64_t(cfg.vocab_size));
  for (int stage = 2; stage <= 3; ++stage) {
    INFO("ZeRO stage " << stage);
    auto gradients = [&](bool thrown_away_step_first) {
      auto backend = make_cpu_backend(DType::bf16);
      auto comm = make_single_process_communicator(*backend);
      ParameterStore params(*backend, *comm, gpt2_param_layout(cfg), stage, DType::bf16, true);
      params.set_weights(gpt2_initial_weights(cfg, params.layout(), 29, 0.2));
      GPT model(cfg, params, kB, kT);
      if (thrown_away_step_first) {
        params.zero_grads();
        params.begin_micro_step(true);
        model.forward_backward(tokens[0].data(), tokens[1].data(), 1.0f);
      }
      params.zero_grads();
      params.begin_micro_step(true);
      model.forward_backward(tokens[2].data(), tokens[3].data(), 1.0f);
      params.reduce_gradients();
      std::vector<char> out(params.grad_bytes());
      backend->download(out.data(), params.grads(), out.size());
      return out;
    };
    CHECK(gradients(true) == gradients(false));
  }
}

TEST_CASE("ZeRO-1/2 with overlap start each unit's gather of updated weights before updating the next unit",
          "[overlap]") {
  const ModelConfig cfg = three_layer_model();
  const uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1e-2f);
  for (int stage = 1; stage <= 2; ++stage) {
    for (bool overlap : {true, false}) {
      INFO("ZeRO stage " << stage << (overlap ? ", overlap" : ", no overlap"));
      auto backend = make_cpu_backend(DType::bf16);
      EagerCommunicator eager(make_single_process_communicator(*backend));
      ParameterStore params(*backend, eager, gpt2_param_layout(cfg), stage, DType::bf16, overlap);
      params.set_weights(gpt2_initial_weights(cfg, params.layout(), 31, 0.2));
      Optimizer optimizer(params, Precision::bf16_sr, OptimizerConfig(), 7);
      std::vector<bf16> grads(params.grad_bytes() / sizeof(bf16));
      for (bf16& g : grads) g = float_to_bf16_rn(normal(rng));
      backend->upload(params.grads(), grads.data(), params.grad_bytes());
      const size_t weight_bytes = params.layout().total() * sizeof(bf16);
      auto weights_now = [&] {
        std::vector<char> w(weight_bytes);
        backend->download(w.data(), params.weights(), weight_bytes);
        return w;
      };
      const std::vector<char> before = weights_now();
      std::vector<std::vector<char>> at_gather;
      eager.before_gather = [&] { at_gather.push_back(weights_now()); };
      optimizer.step(1, 1e-2, 1.0f);
      const std::vector<char> after = weights_now();
      const size_t units = params.plan().units().size();
      REQUIRE(at_gather.size() == units);
      // With overlap, when unit u's gather starts, units up to u are
      // updated and the later ones not yet; without, every unit is.
      auto unit_bytes = [&](const std::vector<char>& w, size_t v) {
        const ZeroUnit& unit = params.plan().unit(v);
        return std::vector<char>(w.begin() + long(unit.begin * sizeof(bf16)), w.begin() + long(unit.end * sizeof(bf16)));
      };
      for (size_t v = 0; v < units; ++v) {
        INFO("unit " << v);
        REQUIRE(unit_bytes(before, v) != unit_bytes(after, v));
      }
      for (size_t u = 0; u < units; ++u)
        for (size_t v = 0; v < units; ++v) {
          INFO("gather of unit " << u << ", unit " << v);
          CHECK(unit_bytes(at_gather[u], v) == unit_bytes(!overlap || v <= u ? after : before, v));
        }
    }
  }
}
