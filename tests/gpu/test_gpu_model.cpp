// The whole GPT on the GPU: loss and every parameter gradient match the cpu
// backend from identical weights, and training is bit-reproducible.
// [schedules]: as in test_gpu_ops.cpp, the CPU device emulator also runs it
// under every schedule, so stream waits missing anywhere in a whole
// forward and backward (buffers reused across layers) show.
#include <spdlog/fmt/fmt.h>

#include <cmath>

#include "gpu_test_util.h"
#include "srgpt/communicator.h"
#include "srgpt/config.h"
#include "srgpt/model.h"
#include "srgpt/optimizer.h"
#include "srgpt/param_store.h"

using namespace srgpt;
using namespace srgpt::gpu_test;

namespace {

// Small, but with head size 64 so bf16 attention takes the tensor-core
// kernels, and a vocabulary that needs padding.
ModelConfig small_model() {
  ModelConfig cfg;
  cfg.vocab_size = 500;
  cfg.max_seq_len = 256;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.d_model = 128;
  return cfg;
}

// One model with its parameters and optimizer on one backend.
struct Run {
  Run(std::unique_ptr<Backend> backend_in, const ModelConfig& cfg, Precision precision, int B, int T,
      ActivationOptions activations = {})
      : backend(std::move(backend_in)),
        comm(make_single_process_communicator(*backend)),
        params(*backend, *comm, gpt2_param_layout(cfg), 0),
        model(cfg, params, B, T, activations),
        optimizer(params, precision, OptimizerConfig{}, 77) {
    optimizer.set_weights(gpt2_initial_weights(cfg, params.layout(), 2024, 0.02));
  }
  // Forward + backward from zeroed gradients; returns the mean loss.
  double gradients(const std::vector<int32_t>& inputs, const std::vector<int32_t>& targets) {
    params.zero_grads();
    const double loss =
        model.forward_backward(inputs.data(), targets.data(), 1.0f / float(model.batch() * model.seq_len()));
    params.reduce_gradients();
    return loss;
  }
  std::vector<float> grads() {
    const Layout& layout = params.layout();
    std::vector<uint8_t> bytes(layout.total() * dtype_size(backend->dtype()));
    backend->download(bytes.data(), params.grads(), bytes.size());
    return from_bytes(backend->dtype(), bytes);
  }

  std::unique_ptr<Backend> backend;
  std::unique_ptr<Communicator> comm;
  ParameterStore params;
  GPT model;
  Optimizer optimizer;
};

}  // namespace

TEST_CASE("gpu GPT loss and gradients match the cpu backend", "[gpu][schedules]") {
  if (!have_gpu()) return;
  const ModelConfig cfg = small_model();
  const int B = 4;
  for (Precision precision : {Precision::bf16_sr, Precision::fp32}) {
    const DType dtype = compute_dtype(precision);
    // T not a multiple of the tensor-core attention's tiles. fp32 takes the
    // simple attention kernel, the same at any T, and a shorter T keeps it
    // from being 80% of this test's time on the CPU device emulator.
    const int T = dtype == DType::bf16 ? 193 : 67;
    const auto inputs = random_tokens(size_t(B) * T, cfg.vocab_size, 1001);
    const auto targets = random_tokens(size_t(B) * T, cfg.vocab_size, 1002);
    Run cpu(make_cpu_backend(dtype), cfg, precision, B, T);
    Run gpu(make_cuda_backend(dtype, 0), cfg, precision, B, T);
    const double cpu_loss = cpu.gradients(inputs, targets), gpu_loss = gpu.gradients(inputs, targets);
    std::printf("[gpu] model %s loss cpu %.6f gpu %.6f\n", dtype_name(dtype), cpu_loss, gpu_loss);
    CHECK(std::isfinite(gpu_loss));
    CHECK(std::fabs(gpu_loss - cpu_loss) <= (dtype == DType::bf16 ? 5e-3 : 1e-5) * std::fabs(cpu_loss));

    const auto cpu_grads = cpu.grads(), gpu_grads = gpu.grads();
    REQUIRE(count_non_finite(gpu_grads) == 0);
    // Per tensor, so a failure names the op whose gradient is off.
    for (const TensorSpec& t : cpu.params.layout().tensors()) {
      const std::vector<float> c(cpu_grads.begin() + t.offset, cpu_grads.begin() + t.offset + t.numel);
      const std::vector<float> g(gpu_grads.begin() + t.offset, gpu_grads.begin() + t.offset + t.numel);
      const double error = relative_error(g, c);
      const double bound = dtype == DType::bf16 ? 5e-2 : 1e-4;
      std::printf("[gpu] model %s grad %-28s rel.err %.3e (bound %.0e)\n", dtype_name(dtype), t.name.c_str(), error,
                  bound);
      INFO(t.name << " relative error " << error);
      CHECK(error <= bound);
    }
  }
}

TEST_CASE("gpu training is bit-reproducible over 20 steps", "[gpu][determinism]") {
  if (!have_gpu()) return;
  const ModelConfig cfg = small_model();
  const int B = 4, T = 256, steps = 20;
  for (Precision precision : {Precision::bf16_sr, Precision::mixed}) {
    std::vector<std::vector<double>> losses(2);
    std::vector<std::vector<uint8_t>> weights(2);
    for (int run = 0; run < 2; ++run) {
      Run r(make_cuda_backend(compute_dtype(precision), 0), cfg, precision, B, T);
      for (int step = 1; step <= steps; ++step) {
        const auto inputs = random_tokens(size_t(B) * T, cfg.vocab_size, 5000 + step);
        const auto targets = random_tokens(size_t(B) * T, cfg.vocab_size, 6000 + step);
        losses[run].push_back(r.gradients(inputs, targets));
        const double norm = std::sqrt(r.params.grad_norm_squared());
        r.optimizer.step(step, 1e-3, norm > 1.0 ? float(1.0 / norm) : 1.0f);
      }
      weights[run].resize(r.params.weight_bytes());
      r.backend->download(weights[run].data(), r.params.weights(), weights[run].size());
    }
    INFO(precision_name(precision));
    CHECK(losses[0] == losses[1]);
    check_same_bytes(std::string("weights after 20 steps, ") + precision_name(precision), weights[1], weights[0]);
    for (double loss : losses[0]) CHECK(std::isfinite(loss));
  }
}

TEST_CASE("gpu recompute keeps the loss and gradients and saves activation memory", "[gpu]") {
  if (!have_gpu()) return;
  const ModelConfig cfg = small_model();
  const int B = 4, T = 256;
  const auto inputs = random_tokens(size_t(B) * T, cfg.vocab_size, 7001);
  const auto targets = random_tokens(size_t(B) * T, cfg.vocab_size, 7002);
  Run kept(make_cuda_backend(DType::bf16, 0), cfg, Precision::bf16_sr, B, T);
  const double kept_loss = kept.gradients(inputs, targets);
  const auto kept_grads = kept.grads();
  const ActivationOptions options[] = {{Recompute::layernorm},
                                       {Recompute::gelu},
                                       {Recompute::all},
                                       {Recompute::none, 1, LayerNormBackwardFrom::output},
                                       {Recompute::gelu, 1, LayerNormBackwardFrom::output}};
  for (const ActivationOptions& option : options) {
    Run again(make_cuda_backend(DType::bf16, 0), cfg, Precision::bf16_sr, B, T, option);
    const double loss = again.gradients(inputs, targets);
    const auto grads = again.grads();
    const double error = relative_error(grads, kept_grads);
    const std::string name = fmt::format("recompute {}, LayerNorm backward from {}", recompute_name(option.recompute),
                                         layernorm_backward_from_name(option.layernorm_backward_from));
    std::printf("[gpu] %-50s activations %.1f -> %.1f MiB, loss %.6f vs %.6f, gradient rel.err %.3e\n",
                name.c_str(), kept.model.activation_bytes() / 1048576.0, again.model.activation_bytes() / 1048576.0,
                loss, kept_loss, error);
    INFO(name << ": gradient relative error " << error);
    CHECK(again.model.activation_bytes() < kept.model.activation_bytes());
    // Forward is the same either way. LayerNorm recompute gives forward's
    // bits; GELU recompute takes GELU of the rounded pre-activation, where
    // forward's matmul epilogue took it of the unrounded one: only the MLP
    // projection's weight gradient sees it; the LayerNorm backward from the
    // output reads its normalised input back from bf16. Both within bf16
    // rounding.
    CHECK(loss == kept_loss);
    if (option.recompute == Recompute::layernorm)
      CHECK(error == 0.0);
    else
      CHECK(error <= 1e-2);
  }
}

TEST_CASE("gpu LM head in chunks keeps the loss and gradients and shrinks the logits buffer", "[gpu]") {
  if (!have_gpu()) return;
  const ModelConfig cfg = small_model();
  const int B = 4, T = 256;
  const auto inputs = random_tokens(size_t(B) * T, cfg.vocab_size, 7101);
  const auto targets = random_tokens(size_t(B) * T, cfg.vocab_size, 7102);
  Run whole(make_cuda_backend(DType::bf16, 0), cfg, Precision::bf16_sr, B, T);
  const double whole_loss = whole.gradients(inputs, targets);
  const auto whole_grads = whole.grads();
  Run chunked(make_cuda_backend(DType::bf16, 0), cfg, Precision::bf16_sr, B, T, {Recompute::none, 3});
  const double loss = chunked.gradients(inputs, targets);
  const auto grads = chunked.grads();
  const double error = relative_error(grads, whole_grads);
  std::printf("[gpu] 3 LM-head chunks: loss %.6f vs %.6f, gradient rel.err %.3e (bound 1e-2), activations %.1f -> "
              "%.1f MiB\n",
              loss, whole_loss, error, whole.model.activation_bytes() / 1048576.0,
              chunked.model.activation_bytes() / 1048576.0);
  // cuBLASLt may pick another algorithm for fewer rows, so the logits (and
  // with them the loss) need not be the same bits; wte's gradient adds the
  // chunks with their own roundings.
  CHECK(std::fabs(loss - whole_loss) <= 1e-3 * std::fabs(whole_loss));
  CHECK(error <= 1e-2);
  CHECK(chunked.model.activation_bytes() < whole.model.activation_bytes());
}
