// rank_memory (the formulas behind benchmarks/zero_memory_table and
// docs/distributed.md) against the buffers ParameterStore and Optimizer
// really allocate, for every ZeRO stage, precision and several world sizes.
// Allocation needs no collectives, so one process stands in for rank r of
// N with a communicator that only knows its place.
#include <random>
#include <string>

#include "catch.h"
#include "srgpt/error.h"
#include "srgpt/model.h"
#include "srgpt/optimizer.h"
#include "srgpt/zero.h"

using namespace srgpt;

namespace {

// Rank r of a world of n, for constructing per-rank state; any collective
// is an error (none may run while buffers are allocated).
class PlaceOnlyCommunicator final : public Communicator {
 public:
  PlaceOnlyCommunicator(int rank, int size) : Communicator(rank, size) {}
  std::string name() const override { return "place-only"; }
  void reduce_scatter_sum(const void*, void*, size_t, DType) override { unused("reduce_scatter_sum"); }
  void all_gather(const void*, void*, size_t, DType) override { unused("all_gather"); }
  void all_reduce_sum(void*, size_t, DType) override { unused("all_reduce_sum"); }
  void broadcast(void*, size_t, int) override { unused("broadcast"); }
  void barrier() override { unused("barrier"); }
  double all_reduce_sum(double) override { unused("all_reduce_sum"); }
  double all_reduce_max(double) override { unused("all_reduce_max"); }

 private:
  [[noreturn]] static void unused(const char* what) { fail("place-only communicator: {} called", what); }
};

const Precision kAllModes[] = {Precision::bf16_sr, Precision::bf16_rn, Precision::mixed, Precision::fp32,
                               Precision::bf16_kahan};

}  // namespace

TEST_CASE("rank_memory equals the bytes ParameterStore and Optimizer allocate", "[zero][memory]") {
  // A shape whose units do not divide evenly, so padding shows up.
  std::mt19937 rng(20240607);
  ModelConfig m;
  m.vocab_size = 300 + int(rng() % 200);
  m.max_seq_len = 24 + int(rng() % 16);
  m.n_layer = 3;
  m.n_head = 3;
  m.d_model = 48;
  for (Precision p : kAllModes) {
    auto backend = make_cpu_backend(compute_dtype(p));
    for (DType grad_dtype : {compute_dtype(p), DType::f32}) {
      for (int world : {1, 2, 3, 4, 8}) {
        const Layout layout = gpt2_param_layout(m, world);
        for (int stage = 0; stage <= 3; ++stage) {
          INFO(precision_name(p) << ", gradients " << dtype_name(grad_dtype) << ", ZeRO stage " << stage << ", world "
                                 << world);
          PlaceOnlyCommunicator comm(world - 1, world);
          ParameterStore params(*backend, comm, layout, stage, grad_dtype);
          Optimizer opt(params, p, OptimizerConfig{}, 1);
          const RankMemory expected = rank_memory(layout, p, stage, world, grad_dtype);
          CHECK(params.weight_bytes() == expected.weights);
          CHECK(params.grad_bytes() == expected.grads);
          CHECK(opt.state_bytes() == expected.optimizer_state);
          CHECK(params.working_bytes() == expected.working);
        }
      }
    }
  }
}

TEST_CASE("rank_memory gives the per-parameter byte counts of each ZeRO stage", "[zero][memory]") {
  ModelConfig m;
  m.vocab_size = 1000;
  m.max_seq_len = 64;
  m.n_layer = 4;
  m.n_head = 4;
  m.d_model = 128;
  for (int world : {1, 2, 4, 8}) {
    const Layout layout = gpt2_param_layout(m, world);
    const double P = double(layout.total()), N = world;  // P includes padding, a multiple of N
    INFO("world " << world);
    // bf16-sr: 2 bytes each of weights, grads, m, v.
    const double bf16_sr[4] = {8 * P, 4 * P + 4 * P / N, 2 * P + 6 * P / N, 8 * P / N};
    // mixed: bf16 weights and grads, fp32 m, v and master weights.
    const double mixed[4] = {16 * P, 4 * P + 12 * P / N, 2 * P + 14 * P / N, 16 * P / N};
    // bf16-sr with fp32 gradients: 4 gradient bytes instead of 2.
    const double bf16_sr_fp32_grads[4] = {10 * P, 6 * P + 4 * P / N, 2 * P + 8 * P / N, 10 * P / N};
    for (int stage = 0; stage <= 3; ++stage) {
      CHECK(double(rank_memory(layout, Precision::bf16_sr, stage, world, DType::bf16).persistent()) == bf16_sr[stage]);
      CHECK(double(rank_memory(layout, Precision::mixed, stage, world, DType::bf16).persistent()) == mixed[stage]);
      CHECK(double(rank_memory(layout, Precision::bf16_sr, stage, world, DType::f32).persistent()) ==
            bf16_sr_fp32_grads[stage]);
    }
  }
  CHECK_THROWS_WITH(rank_memory(gpt2_param_layout(m, 1), Precision::bf16_sr, 4, 1, DType::bf16),
                    contains_substring("dist.zero_stage = 4 is not allowed; use 0, 1, 2 or 3"));
}
