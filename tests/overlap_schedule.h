#pragma once
// Checks for dist.overlap_comm, shared by the one-process and the mpirun
// tests: two optimizer steps of a small GPT through a ParameterStore, whose
// losses, reduced gradients and final weights must be the same bits with
// the collectives started and waited for later (overlap) as with each one
// completed at once. Two communicators make the check bite:
//  - the base Communicator defers a started collective until it is waited
//    for, so a ParameterStore that reads a result, or reuses a buffer,
//    before waiting sees a stale or clobbered value;
//  - EagerCommunicator runs it at once, so one that starts a collective
//    into a buffer the model still reads (a prefetch too early) is caught.
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "srgpt/backend.h"
#include "srgpt/communicator.h"
#include "srgpt/model.h"
#include "srgpt/optimizer.h"
#include "srgpt/param_store.h"
#include "unit/test_util.h"

namespace srgpt_test {

// Runs every started collective at its start; waiting does nothing.
class EagerCommunicator final : public srgpt::Communicator {
 public:
  explicit EagerCommunicator(std::unique_ptr<srgpt::Communicator> inner)
      : Communicator(inner->rank(), inner->size()), inner_(std::move(inner)) {}
  std::string name() const override { return "eager " + inner_->name(); }
  void reduce_scatter_sum(const void* send, void* recv, size_t count, srgpt::DType dtype) override {
    inner_->reduce_scatter_sum(send, recv, count, dtype);
  }
  void all_gather(const void* send, void* recv, size_t count, srgpt::DType dtype) override {
    inner_->all_gather(send, recv, count, dtype);
  }
  void all_reduce_sum(void* data, size_t count, srgpt::DType dtype) override {
    inner_->all_reduce_sum(data, count, dtype);
  }
  void broadcast(void* data, size_t bytes, int root) override { inner_->broadcast(data, bytes, root); }
  void barrier() override { inner_->barrier(); }
  double all_reduce_sum(double x) override { return inner_->all_reduce_sum(x); }
  double all_reduce_max(double x) override { return inner_->all_reduce_max(x); }

  srgpt::CollectiveTicket start_reduce_scatter_sum(const void* send, void* recv, size_t count,
                                                   srgpt::DType dtype) override {
    reduce_scatter_sum(send, recv, count, dtype);
    return ++started_;
  }
  srgpt::CollectiveTicket start_all_gather(const void* send, void* recv, size_t count, srgpt::DType dtype) override {
    if (before_gather) before_gather();
    all_gather(send, recv, count, dtype);
    return ++started_;
  }
  srgpt::CollectiveTicket start_all_reduce_sum(void* data, size_t count, srgpt::DType dtype) override {
    all_reduce_sum(data, count, dtype);
    return ++started_;
  }
  void wait(srgpt::CollectiveTicket) override {}
  void wait_all() override {}

  // Called as each started all-gather begins: when, among the caller's other work, gathers start.
  std::function<void()> before_gather;

 private:
  std::unique_ptr<srgpt::Communicator> inner_;
  srgpt::CollectiveTicket started_ = 0;
};

struct OverlapRun {
  std::vector<double> losses;     // every micro-step's, then an evaluation pass's, per step
  std::vector<char> grads;        // the reduced gradients the optimizer read, per step, back to back
  std::vector<char> weights;      // the whole model's at the end
};

// Each run gave the reference's losses, reduced gradients and final
// weights, bit for bit (Catch2 checks).
inline void check_same_bits(std::initializer_list<const OverlapRun*> runs, const OverlapRun& reference) {
  for (const OverlapRun* run : runs) {
    CHECK(run->losses == reference.losses);
    CHECK(run->grads == reference.grads);
    CHECK(run->weights == reference.weights);
  }
}

// Two steps of three micro-steps each on this rank's own tokens, bf16-sr.
inline OverlapRun run_overlap_steps(srgpt::Backend& backend, srgpt::Communicator& comm, int zero_stage,
                                    srgpt::DType grad_dtype, bool overlap) {
  using namespace srgpt;
  constexpr int kB = 2, kT = 16, kMicroSteps = 3;
  const ModelConfig cfg = three_layer_model();
  ParameterStore params(backend, comm, gpt2_param_layout(cfg, comm.size()), zero_stage, grad_dtype, overlap);
  params.set_weights(gpt2_initial_weights(cfg, params.layout(), 23, 0.2));
  GPT model(cfg, params, kB, kT);
  OptimizerConfig oc;
  oc.lr = 1e-2;
  Optimizer optimizer(params, Precision::bf16_sr, oc, 5);
  std::mt19937_64 rng(1000 + 17 * uint64_t(comm.rank()));
  std::vector<int32_t> in(kB * kT), tg(kB * kT);
  auto draw = [&] {
    for (size_t i = 0; i < in.size(); ++i) {
      in[i] = int32_t(rng() % uint64_t(cfg.vocab_size));
      tg[i] = int32_t(rng() % uint64_t(cfg.vocab_size));
    }
  };
  OverlapRun run;
  for (int step = 1; step <= 2; ++step) {
    params.zero_grads();
    for (int m = 0; m < kMicroSteps; ++m) {
      draw();
      params.begin_micro_step(m + 1 == kMicroSteps);
      run.losses.push_back(model.forward_backward(in.data(), tg.data(), 1.0f / float(kB * kT * kMicroSteps)));
    }
    params.reduce_gradients();
    const size_t at = run.grads.size();
    run.grads.resize(at + params.grad_bytes());
    backend.download(run.grads.data() + at, params.grads(), params.grad_bytes());
    optimizer.step(step, oc.lr, 1.0f);
    draw();
    run.losses.push_back(model.forward(in.data(), tg.data()));
  }
  run.weights = params.full_weights_on_host();
  return run;
}

}  // namespace srgpt_test
