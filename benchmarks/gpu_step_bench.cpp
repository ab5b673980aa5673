// GPU benchmark (run on the GPU host; prints tables, asserts nothing).
//
// 1. The device (its SMs, clock and memory bandwidth from its attributes)
//    and ceilings measured on it: device-to-device copy bandwidth and an
//    8192^3 bf16 cuBLASLt matmul. Every percentage below is of these
//    measured ceilings, so the tables read the same on an H100 or an H200.
// 2. Whole training steps (forward + backward + grad norm + AdamW) for d12
//    and d24 in bf16-sr, bf16-rn and mixed: median step time after warm-up,
//    tokens/s, MFU (6 N + 12 L C T FLOPs per token, of the measured matmul
//    ceiling) and peak memory. The attention is what SRGPT_ATTENTION_FORWARD
//    and _BACKWARD choose, and in extra bf16-sr rows on wgmma, with each
//    wgmma backward. First, because issue 4's targets need these rows.
// 3. Each cuda-backend op at GPT-2 d12 training shapes (micro batch 32,
//    sequence 1024): median time, achieved GB/s (memory-bound ops, counting
//    each input read and output written once) or TFLOP/s (matmuls,
//    attention; the attention with each of its strategies).
//
//   gpu_step_bench [--kernels] [--steps] [--model d12|d24]... [--batch 32] [--seq 1024]
//                  [--warmup 3] [--iters 10] [--json FILE] [--only TEXT] [--no-wgmma] [--no-wgmma-one-pass]
//                  [--smoke]
// With neither --kernels nor --steps both parts run. --only times just the
// kernel rows whose op name contains TEXT (e.g. "attention"). --no-wgmma
// leaves the wgmma attention kernels out, their self-check included (for a
// GPU on which their tests failed: a fault there would end the run);
// --no-wgmma-one-pass only the one-pass wgmma backward. --json also
// writes the step rows as JSON lines, each as soon as it is measured
// (scripts/bench_targets.py reads them beside PyTorch's). --smoke runs
// every row at tiny shapes (2-layer models, see model_config; 1 MiB and
// 256^3 ceilings), to check that the program runs: CI runs it on the
// device emulator (tests/emulation); its numbers mean nothing.
#include <cuda_runtime.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "backend.cuh"
#include "cuda_check.cuh"
#include "stream.cuh"
#include "srgpt/backend.h"
#include "srgpt/cli.h"
#include "srgpt/communicator.h"
#include "srgpt/config.h"
#include "srgpt/error.h"
#include "srgpt/model.h"
#include "srgpt/optimizer.h"
#include "srgpt/param_store.h"

using namespace srgpt;

namespace {

constexpr int kGpt2Vocab = 50257;

struct Options {
  bool kernels = false, steps = false;
  std::vector<std::string> models;
  int batch = 32, seq = 1024, warmup = 3, iters = 10;
  std::string json;  // step rows as JSON lines, if set
  std::string only;  // kernel rows whose op contains this, if set
  bool wgmma = true;           // the wgmma attention kernels too, where they run
  bool wgmma_one_pass = true;  // and among them the one-pass backward
  bool smoke = false;          // tiny shapes: does every row run?
};

// Whether an attention strategy is measured: the options do not leave it
// out (`left_out`: the option that does, or null), and this build and GPU
// run it (cuda/attention.cuh); if not, says why under `what`.
template <typename Strategy>
bool measured(Strategy how, const char* left_out, const char* name, const char* what) {
  std::string why;
  if (left_out != nullptr)
    why = left_out;
  else if (gpu::attention_runs_here(how, &why))
    return true;
  std::printf("%s %s: not measured: %s\n", what, name, why.c_str());
  return false;
}
bool measured(const Options& o, gpu::AttentionForward how, const char* what) {
  const char* left_out = how == gpu::AttentionForward::wgmma && !o.wgmma ? "--no-wgmma" : nullptr;
  return measured(how, left_out, gpu::attention_forward_name(how), what);
}
bool measured(const Options& o, gpu::AttentionBackward how, const char* what) {
  const char* left_out = gpu::attention_backward_uses_wgmma(how) && !o.wgmma                  ? "--no-wgmma"
                         : how == gpu::AttentionBackward::wgmma_one_pass && !o.wgmma_one_pass ? "--no-wgmma-one-pass"
                                                                                               : nullptr;
  return measured(how, left_out, gpu::attention_backward_name(how), what);
}

// GPT-2 d12 and d24; with --smoke, 2-layer stand-ins whose heads have the
// same sizes (64; d24's 128 too, a size the attention kernels also serve)
// and whose vocabulary (1000) pads as GPT-2's does.
ModelConfig model_config(const Options& o, const std::string& name) {
  ModelConfig cfg;
  cfg.vocab_size = kGpt2Vocab;
  cfg.max_seq_len = std::max(o.seq, 1024);
  if (o.smoke && (name == "d12" || name == "d24")) {
    cfg.vocab_size = 1000;
    cfg.max_seq_len = o.seq;
    cfg.n_layer = 2;
    cfg.d_model = 128;
    cfg.n_head = name == "d12" ? 2 : 1;
  } else if (name == "d12") {
    cfg.n_layer = 12;
    cfg.n_head = 12;
    cfg.d_model = 768;
  } else if (name == "d24") {
    cfg.n_layer = 24;
    cfg.n_head = 16;
    cfg.d_model = 1024;
  } else {
    fail("unknown model '{}' (allowed: d12, d24)", name);
  }
  return cfg;
}

// Fills `o` from the command line; false for --help (printed).
bool parse(int argc, char** argv, Options& o) {
  CLI::App app{"GPU benchmark: measured ceilings, whole training steps and each cuda-backend op (prints tables; "
               "with neither --kernels nor --steps both parts run)"};
  app.add_flag("--kernels", o.kernels, "Time each cuda-backend op at GPT-2 d12 training shapes");
  app.add_flag("--steps", o.steps, "Time whole training steps in bf16-sr, bf16-rn and mixed");
  app.add_option("--model", o.models, "d12 or d24, repeatable (default: both)");
  app.add_option("--batch", o.batch, "Micro batch")->check(integer_at_least<int>(1))->capture_default_str();
  app.add_option("--seq", o.seq, "Sequence length")->check(integer_at_least<int>(1))->capture_default_str();
  app.add_option("--warmup", o.warmup, "Untimed runs first")->check(integer_at_least<int>(0))->capture_default_str();
  app.add_option("--iters", o.iters, "Timed runs; the median is shown")
      ->check(integer_at_least<int>(1))
      ->capture_default_str();
  app.add_option("--json", o.json, "Also write the step rows to this file as JSON lines");
  app.add_option("--only", o.only, "Time just the kernel rows whose op name contains this text");
  app.add_flag("!--no-wgmma", o.wgmma, "Leave out the wgmma attention kernels, their self-check included");
  app.add_flag("!--no-wgmma-one-pass", o.wgmma_one_pass, "Leave out the one-pass wgmma attention backward");
  app.add_flag("--smoke", o.smoke, "Tiny shapes, to check that every row runs; the numbers mean nothing");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    app.exit(e);
    return false;
  } catch (const CLI::ParseError& e) {
    fail("{}; see --help", e.what());
  }
  if (!o.kernels && !o.steps) o.kernels = o.steps = true;
  if (o.models.empty()) o.models = {"d12", "d24"};
  for (const std::string& m : o.models) model_config(o, m);  // a bad name fails before any measuring
  return true;
}

gpu::CudaBackend& cuda_of(Backend& be) {
  auto* cuda = dynamic_cast<gpu::CudaBackend*>(&be);
  if (!cuda) fail("internal: the benchmark needs the cuda backend");
  return *cuda;
}

// Device events around a region of the backend's stream.
class EventPair {
 public:
  template <typename F>
  double time_ms(cudaStream_t stream, F&& f) {
    CUDA_CHECK(cudaEventRecord(start_.get(), stream));
    f();
    CUDA_CHECK(cudaEventRecord(stop_.get(), stream));
    CUDA_CHECK(cudaEventSynchronize(stop_.get()));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start_.get(), stop_.get()));
    return ms;
  }

 private:
  gpu::EventHandle start_ = gpu::make_event(gpu::EventUse::timing), stop_ = gpu::make_event(gpu::EventUse::timing);
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Median device time of f over `iters` runs after `warmup` runs.
template <typename F>
double median_ms(gpu::CudaBackend& be, int warmup, int iters, F&& f) {
  EventPair events;
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> times;
  for (int i = 0; i < iters; ++i) times.push_back(events.time_ms(be.stream(), f));
  return median(times);
}

// Fills device memory with random normal values of the backend's dtype (or
// f32), tiling one random host block: never time on zeros.
void fill_random(Backend& be, void* dst, size_t count, DType dtype, float stddev = 1.0f) {
  static std::vector<float> block;
  if (block.empty()) {
    std::mt19937_64 rng(42);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    block.resize(size_t(1) << 22);
    for (float& x : block) x = dist(rng);
  }
  const size_t es = dtype_size(dtype);
  std::vector<uint8_t> bytes(block.size() * es);
  for (size_t i = 0; i < block.size(); ++i) {
    const float x = block[i] * stddev;
    if (dtype == DType::bf16) {
      const bf16 b = float_to_bf16_rn(x);
      std::memcpy(bytes.data() + 2 * i, &b, 2);
    } else {
      std::memcpy(bytes.data() + 4 * i, &x, 4);
    }
  }
  for (size_t done = 0; done < count; done += block.size()) {
    const size_t n = std::min(block.size(), count - done);
    be.upload(static_cast<uint8_t*>(dst) + done * es, bytes.data(), n * es);
  }
  be.synchronize();
}

std::vector<int32_t> random_tokens(size_t n, uint64_t seed, int vocab) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> v(n);
  for (int32_t& t : v) t = dist(rng);
  return v;
}

// Measured on this device: what its memory and tensor cores reach at best.
struct Ceilings {
  double bandwidth = 0;  // bytes/s, a device-to-device copy
  double flops = 0;      // FLOP/s, a large bf16 matmul
};

Ceilings measure_ceilings(const Options& o) {
  auto backend = make_cuda_backend(DType::bf16, 0);
  auto& be = cuda_of(*backend);
  // Which GPU this is (an H100 and an H200 differ mostly in memory), and
  // its memory's bandwidth by specification: 2 transfers a clock.
  const double memory_spec = 2.0 * gpu::current_device_attribute(cudaDevAttrMemoryClockRate) * 1e3 *
                             gpu::current_device_attribute(cudaDevAttrGlobalMemoryBusWidth) / 8;
  std::printf("device: %s, %d SMs at up to %d MHz (dense bf16 %.0f TFLOP/s), memory %.2f TB/s by specification\n",
              be.name().c_str(), gpu::current_device_attribute(cudaDevAttrMultiProcessorCount),
              gpu::current_device_attribute(cudaDevAttrClockRate) / 1000, be.tensor_peak_flops() / 1e12,
              memory_spec / 1e12);

  Ceilings c;
  const size_t copy_bytes = o.smoke ? size_t(1) << 20 : size_t(2) << 30;
  DeviceBuffer a(be, copy_bytes, "copy source"), b(be, copy_bytes, "copy destination");
  fill_random(be, a.get(), copy_bytes / 2, DType::bf16);
  const double copy_ms = median_ms(be, o.warmup, o.iters, [&] {
    CUDA_CHECK(cudaMemcpyAsync(b.get(), a.get(), copy_bytes, cudaMemcpyDeviceToDevice, be.stream()));
  });
  c.bandwidth = 2.0 * copy_bytes / (copy_ms * 1e-3);

  const int n = o.smoke ? 256 : 8192;
  DeviceBuffer x(be, size_t(n) * n * 2, "matmul in"), w(be, size_t(n) * n * 2, "matmul w"),
      y(be, size_t(n) * n * 2, "matmul out");
  fill_random(be, x.get(), size_t(n) * n, DType::bf16);
  fill_random(be, w.get(), size_t(n) * n, DType::bf16, 0.01f);
  const double mm_ms = median_ms(be, o.warmup, o.iters, [&] {
    be.matmul_forward(y.get(), nullptr, x.get(), w.get(), nullptr, n, n, n);
  });
  c.flops = 2.0 * n * n * double(n) / (mm_ms * 1e-3);
  std::printf("measured ceilings: device copy %.0f GB/s (%.0f%% of the specification), bf16 matmul %d^3 %.0f "
              "TFLOP/s\n\n",
              c.bandwidth / 1e9, 100 * c.bandwidth / memory_spec, n, c.flops / 1e12);
  return c;
}

// ---------------------------------------------------------------- kernels
struct KernelRow {
  std::string op, shape;
  double ms;
  double amount;  // bytes or FLOPs per call
  bool flops;
};

void print_kernel_table(const std::vector<KernelRow>& rows, const Ceilings& c) {
  std::printf("| op | shape | ms | achieved | of measured ceiling |\n|---|---|---|---|---|\n");
  for (const auto& r : rows) {
    const double rate = r.amount / (r.ms * 1e-3);
    if (r.flops)
      std::printf("| %s | %s | %.3f | %.0f TFLOP/s | %.0f%% |\n", r.op.c_str(), r.shape.c_str(), r.ms, rate / 1e12,
                  100 * rate / c.flops);
    else
      std::printf("| %s | %s | %.3f | %.0f GB/s | %.0f%% |\n", r.op.c_str(), r.shape.c_str(), r.ms, rate / 1e9,
                  100 * rate / c.bandwidth);
  }
  std::printf("\n");
}

void bench_kernels(const Options& o, const Ceilings& ceilings) {
  const ModelConfig cfg = model_config(o, "d12");
  const int B = o.batch, T = o.seq, C = cfg.d_model, H = cfg.n_head, Vp = cfg.padded_vocab();
  const int N = B * T;
  const size_t NC = size_t(N) * C;
  auto backend = make_cuda_backend(DType::bf16, 0);
  auto& be = cuda_of(*backend);
  const size_t s = 2;  // bf16 bytes
  std::vector<KernelRow> rows;
  const std::string shape_nc = fmt::format("N={} C={}", N, C);
  auto run = [&](const std::string& op, const std::string& shape, double amount, bool flops, auto&& f) {
    if (op.find(o.only) == std::string::npos) return;
    rows.push_back({op, shape, median_ms(be, o.warmup, o.iters, f), amount, flops});
    std::printf("  %-28s %-28s %8.3f ms\n", op.c_str(), shape.c_str(), rows.back().ms);
    std::fflush(stdout);
  };

  DeviceBuffer tokens(be, size_t(N) * 4, "tokens"), targets(be, size_t(N) * 4, "targets");
  const auto token_values = random_tokens(N, 1, cfg.vocab_size), target_values = random_tokens(N, 2, cfg.vocab_size);
  be.upload(tokens.get(), token_values.data(), size_t(N) * 4);
  be.upload(targets.get(), target_values.data(), size_t(N) * 4);
  auto buffer = [&](size_t count, DType dtype, const char* what, float stddev = 1.0f) {
    DeviceBuffer b(be, count * dtype_size(dtype), what);
    fill_random(be, b.get(), count, dtype, stddev);
    return b;
  };
  DeviceBuffer wte = buffer(size_t(Vp) * C, DType::bf16, "wte", 0.02f), wpe = buffer(size_t(T) * C, DType::bf16, "wpe");
  DeviceBuffer x = buffer(NC, DType::bf16, "x"), delta = buffer(NC, DType::bf16, "delta"),
               y = buffer(NC, DType::bf16, "y"), dy = buffer(NC, DType::bf16, "dy");
  DeviceBuffer lw = buffer(C, DType::bf16, "ln w"), lb = buffer(C, DType::bf16, "ln b"),
               ldw = buffer(C, DType::bf16, "ln dw"), ldb = buffer(C, DType::bf16, "ln db");
  DeviceBuffer mean = buffer(N, DType::f32, "mean"), rstd = buffer(N, DType::f32, "rstd");

  run("embedding_forward", shape_nc, 3.0 * NC * s, false,
      [&] { be.embedding_forward(y.get(), tokens.as<int32_t>(), wte.get(), wpe.get(), B, T, C); });
  run("embedding_backward", shape_nc, 3.0 * NC * s, false,
      [&] { be.embedding_backward(wte.get(), wpe.get(), dy.get(), tokens.as<int32_t>(), B, T, C); });
  run("residual_layernorm_forward", shape_nc, 4.0 * NC * s, false, [&] {
    be.residual_layernorm_forward(x.get(), y.get(), mean.get(), rstd.get(), x.get(), delta.get(), lw.get(), lb.get(),
                                  N, C);
  });
  for (LayerNormBackwardFrom from : {LayerNormBackwardFrom::input, LayerNormBackwardFrom::output}) {
    run(from == LayerNormBackwardFrom::input ? "layernorm_backward" : "layernorm_backward from output", shape_nc,
        4.0 * NC * s, false, [&] {
          be.layernorm_backward(delta.get(), ldw.get(), ldb.get(), dy.get(), from,
                                from == LayerNormBackwardFrom::input ? x.get() : y.get(), lw.get(), lb.get(),
                                mean.get(), rstd.get(), N, C);
        });
  }

  // The four matmuls of a block and the LM head, forward and backward.
  struct Mm {
    const char* name;
    int in, out;
    bool bias, gelu;
  };
  const Mm matmuls[] = {{"qkv", C, 3 * C, true, false},
                        {"attn proj", C, C, true, false},
                        {"fc + gelu", C, 4 * C, true, true},
                        {"mlp proj (dgelu)", 4 * C, C, true, false},
                        {"lm head", C, Vp, false, false}};
  for (const Mm& m : matmuls) {
    DeviceBuffer in = buffer(size_t(N) * m.in, DType::bf16, "mm in"),
                 w = buffer(size_t(m.out) * m.in, DType::bf16, "mm w", 0.02f),
                 bias = buffer(m.out, DType::bf16, "mm bias"), out = buffer(size_t(N) * m.out, DType::bf16, "mm out"),
                 pre = buffer(size_t(N) * m.out, DType::bf16, "mm pre"),
                 din = buffer(size_t(N) * m.in, DType::bf16, "mm din"),
                 dw = buffer(size_t(m.out) * m.in, DType::bf16, "mm dw"),
                 db = buffer(m.out, DType::bf16, "mm db");
    const std::string shape = fmt::format("{}x{}x{}", N, m.in, m.out);
    const double flops = 2.0 * N * double(m.in) * m.out;
    run(std::string("matmul_forward ") + m.name, shape, flops, true, [&] {
      be.matmul_forward(out.get(), m.gelu ? pre.get() : nullptr, in.get(), w.get(), m.bias ? bias.get() : nullptr, N,
                        m.in, m.out);
    });
    // The MLP projection's backward applies the GELU derivative to din.
    const bool dgelu = std::string(m.name).find("dgelu") != std::string::npos;
    DeviceBuffer din_pre = dgelu ? buffer(size_t(N) * m.in, DType::bf16, "mm din pre") : DeviceBuffer();
    auto backward = [&] {
      be.matmul_backward(din.get(), dw.get(), m.bias ? db.get() : nullptr, out.get(), in.get(), w.get(),
                         dgelu ? din_pre.get() : nullptr, N, m.in, m.out);
    };
    run(std::string("matmul_backward ") + m.name, shape, 2 * flops, true, backward);
    // What the weight gradient's own stream gains: the same products on one.
    be.matmul().set_weight_gradient_overlap(false);
    run(std::string("matmul_backward ") + m.name + ", one stream", shape, 2 * flops, true, backward);
    be.matmul().set_weight_gradient_overlap(true);
  }

  {
    DeviceBuffer qkv = buffer(3 * NC, DType::bf16, "qkv"), att = buffer(NC, DType::bf16, "att out"),
                 lse = buffer(size_t(B) * H * T, DType::f32, "lse"), dqkv = buffer(3 * NC, DType::bf16, "dqkv");
    const std::string shape = fmt::format("B={} T={} H={} hd={}", B, T, H, C / H);
    // Causal: half of the T x T score matrix. Backward counted as 2.5x the
    // forward (the usual convention: five matmuls of the score matrix's
    // size against the forward's two).
    const double forward_flops = 2.0 * B * double(T) * T * C;
    // Every strategy (cuda/attention.cuh) this build and GPU run, whichever
    // the steps use.
    const gpu::AttentionForward chosen_forward = be.attention_forward_strategy();
    for (gpu::AttentionForward how : gpu::kAttentionForwards) {
      if (!measured(o, how, "  attention forward")) continue;
      be.set_attention_forward_strategy(how);
      run(std::string("attention_forward ") + gpu::attention_forward_name(how), shape, forward_flops, true,
          [&] { be.attention_forward(att.get(), lse.get(), qkv.get(), B, T, C, H); });
    }
    be.set_attention_forward_strategy(chosen_forward);
    const gpu::AttentionBackward chosen = be.attention_backward_strategy();
    for (gpu::AttentionBackward how : gpu::kAttentionBackwards) {
      if (!measured(o, how, "  attention backward")) continue;
      be.set_attention_backward_strategy(how);
      run(std::string("attention_backward ") + gpu::attention_backward_name(how), shape, 2.5 * forward_flops, true,
          [&] { be.attention_backward(dqkv.get(), dy.get(), qkv.get(), att.get(), lse.get(), B, T, C, H); });
    }
    be.set_attention_backward_strategy(chosen);
  }
  {
    DeviceBuffer logits = buffer(size_t(N) * Vp, DType::bf16, "logits", 3.0f),
                 losses = buffer(N, DType::f32, "losses");
    run("cross_entropy_forward_backward", fmt::format("N={} Vp={}", N, Vp), 2.0 * N * double(Vp) * s, false, [&] {
      be.cross_entropy_forward_backward(losses.get(), logits.get(), targets.as<int32_t>(), N, cfg.vocab_size, Vp,
                                        1.0f / N);
    });
  }

  // Whole-parameter ops over the d12 parameter count.
  const size_t P = gpt2_param_layout(cfg).total();
  {
    DeviceBuffer g = buffer(P, DType::bf16, "grads", 1e-3f);
    run("sum_squares (grad norm)", fmt::format("n={}", P), double(P) * s, false,
        [&] { be.sum_squares(g.get(), DType::bf16, {{0, P}}); });
    DeviceBuffer acc = buffer(P, DType::bf16, "accumulate dst");
    run("accumulate", fmt::format("n={}", P), 3.0 * P * s, false,
        [&] { be.accumulate(acc.get(), DType::bf16, g.get(), DType::bf16, P); });
  }
  for (Precision mode : {Precision::bf16_sr, Precision::bf16_rn, Precision::mixed, Precision::bf16_kahan}) {
    const DType sd = adam_state_dtype(mode);
    DeviceBuffer w = buffer(P, DType::bf16, "w", 0.02f), g = buffer(P, DType::bf16, "g", 1e-3f),
                 m = buffer(P, sd, "m", 1e-3f), v = buffer(P, sd, "v", 1e-3f);
    DeviceBuffer master = has_master_weights(mode) ? buffer(P, DType::f32, "master", 0.02f) : DeviceBuffer();
    DeviceBuffer comp = has_kahan_compensation(mode) ? buffer(P, DType::bf16, "comp", 1e-6f) : DeviceBuffer();
    OptimizerBuffers bufs;
    bufs.weights = w.get();
    bufs.grads = g.get();
    bufs.m = m.get();
    bufs.v = v.get();
    bufs.master = master.as<float>();
    bufs.compensation = comp.get();
    AdamWStep step{};
    step.lr = 3e-4f;
    step.beta1 = 0.9f;
    step.beta2 = 0.95f;
    step.eps = 1e-8f;
    step.weight_decay = 0.1f;
    step.grad_scale = 1.0f;
    step.bias_correction1 = 0.1f;
    step.bias_correction2 = 0.05f;
    step.seed = 1234;
    // Minimal traffic: read w (unless mixed), g, m, v (+ master, comp);
    // write w, m, v (+ master, comp).
    const double per_param = has_master_weights(mode) ? 2 + 4 + 4 + 4 + 4 + 4 + 4 + 2
                                                      : 2 * 4 + 2 * 3 + (has_kahan_compensation(mode) ? 4 : 0);
    uint64_t t = 0;
    run(std::string("adamw_update ") + precision_name(mode), fmt::format("n={}", P), per_param * P, false, [&] {
      step.step = ++t;
      be.adamw_update(mode, bufs, {{0, P, true}}, step);
    });
    if (mode != Precision::bf16_sr) continue;
    // The optimizer's calls over d12's tensors: one per ZeRO unit (one
    // launch for its tensors), against one launch per tensor.
    const Layout layout = gpt2_param_layout(cfg);
    const ZeroShardPlan plan(layout, 1);
    std::vector<std::vector<AdamWRange>> per_unit(plan.units().size()), per_tensor;
    for (const TensorSpec& tensor : layout.tensors()) {
      per_tensor.push_back({{tensor.offset, tensor.offset + tensor.numel, tensor.decay}});
      for (size_t u = 0; u < plan.units().size(); ++u)
        if (tensor.offset >= plan.unit(u).begin && tensor.offset < plan.unit(u).end)
          per_unit[u].push_back(per_tensor.back()[0]);
    }
    const std::string shape = fmt::format("n={} (d12 tensors)", layout.num_params());
    const std::pair<const char*, const std::vector<std::vector<AdamWRange>>*> schedules[] = {
        {"a launch per tensor", &per_tensor}, {"a launch per unit", &per_unit}};
    for (const auto& [what, calls] : schedules)
      run(fmt::format("adamw_update bf16-sr, {}", what), shape, per_param * layout.num_params(), false, [&] {
        step.step = ++t;
        for (const auto& ranges : *calls) be.adamw_update(mode, bufs, ranges, step);
      });
  }
  std::printf("\nper-kernel results, GPT-2 d12 shapes (bf16):\n");
  print_kernel_table(rows, ceilings);
  std::printf("cuBLASLt epilogues of these matmuls, fused on how many of the products they were asked for:");
  for (const auto& use : be.matmul().epilogue_uses())
    std::printf(" %s %d of %d;", use.epilogue.c_str(), use.fused, use.products);
  std::printf("\n\n");
}

// ---------------------------------------------------------------- steps
struct StepRow {
  std::string model, precision, activations, attention;
  double step_ms, tokens_per_s, mfu;  // mfu: of the measured matmul ceiling
  double peak_gib, device_used_gib;
  size_t params;
};

// One JSON line per row, written as soon as the row is measured: a run
// stopped part-way (a time limit) keeps the rows it finished.
void write_json_line(std::ofstream& out, const StepRow& r, const Options& o, const Ceilings& c) {
  out << nlohmann::json{{"model", r.model},
                        {"precision", r.precision},
                        {"activations", r.activations},
                        {"attention", r.attention},
                        {"batch", o.batch},
                        {"seq", o.seq},
                        {"params", r.params},
                        {"step_ms", r.step_ms},
                        {"tokens_per_s", r.tokens_per_s},
                        {"mfu", r.mfu},
                        {"matmul_ceiling_tflops", c.flops / 1e12},
                        {"peak_gib", r.peak_gib}}
             .dump()
      << "\n";
  if (!out.flush()) fail("--json: writing '{}' failed", o.json);
}

// `weights`: the model's initial weights (gpt2_initial_weights), computed
// once per model for all its rows: on the host that takes seconds.
// wgmma_backward: both attention passes on wgmma (cuda/attention.cuh), the
// backward being this one; if not given, the strategies the environment
// chooses.
StepRow bench_steps(const Options& o, const std::string& model_name, const std::vector<float>& weights,
                    Precision precision, ActivationOptions activations,
                    std::optional<gpu::AttentionBackward> wgmma_backward, const Ceilings& c) {
  const ModelConfig cfg = model_config(o, model_name);
  const int B = o.batch, T = o.seq;
  size_t free0 = 0, total = 0;
  CUDA_CHECK(cudaMemGetInfo(&free0, &total));
  auto backend = make_cuda_backend(compute_dtype(precision), 0);
  auto& be = cuda_of(*backend);
  if (wgmma_backward) {
    be.set_attention_forward_strategy(gpu::AttentionForward::wgmma);
    be.set_attention_backward_strategy(*wgmma_backward);
  }
  auto comm = make_single_process_communicator(be);
  ParameterStore params(be, *comm, gpt2_param_layout(cfg), 0);
  GPT model(cfg, params, B, T, activations);
  OptimizerConfig oc;
  Optimizer optimizer(params, precision, oc, 1234);
  optimizer.set_weights(weights);
  const auto inputs = random_tokens(size_t(B) * T, 3, cfg.vocab_size),
             targets = random_tokens(size_t(B) * T, 4, cfg.vocab_size);
  const float dloss = 1.0f / float(B * T);

  int64_t t = 0;
  auto step = [&] {
    params.zero_grads();
    model.forward_backward(inputs.data(), targets.data(), dloss);
    params.reduce_gradients();
    optimizer.step(++t, oc.lr, clip_scale(std::sqrt(params.grad_norm_squared()), oc.grad_clip));
  };
  EventPair events;
  for (int i = 0; i < o.warmup; ++i) step();
  std::vector<double> times;
  for (int i = 0; i < o.iters; ++i) times.push_back(events.time_ms(be.stream(), step));
  size_t free1 = 0;
  CUDA_CHECK(cudaMemGetInfo(&free1, &total));

  StepRow r;
  r.model = model_name;
  r.precision = precision_name(precision);
  const bool ln_from_output = activations.layernorm_backward_from == LayerNormBackwardFrom::output;
  r.activations = activations.recompute == Recompute::none && activations.lm_head_chunks == 1 && !ln_from_output
                      ? "none"
                      : fmt::format("recompute {}, {} head chunks{}", recompute_name(activations.recompute),
                                    activations.lm_head_chunks, ln_from_output ? ", LayerNorm backward from output" : "");
  r.attention = fmt::format("{} forward, {} backward", gpu::attention_forward_name(be.attention_forward_strategy()),
                            gpu::attention_backward_name(be.attention_backward_strategy()));
  r.params = params.layout().num_params();
  r.step_ms = median(times);
  const double tokens = double(B) * T;
  const double flops = training_flops_per_token(cfg, r.params, T) * tokens;
  r.tokens_per_s = tokens / (r.step_ms * 1e-3);
  r.mfu = flops / (r.step_ms * 1e-3) / c.flops;
  r.peak_gib = be.peak_allocated_bytes() / double(1 << 30);
  r.device_used_gib = double(free0 - free1) / double(1 << 30);
  std::printf(
      "  %s %-8s activations: %s, attention: %s, step %.1f ms, %.0f tokens/s, MFU %.1f%%, peak %.2f "
      "GiB\n",
      r.model.c_str(), r.precision.c_str(), r.activations.c_str(), r.attention.c_str(), r.step_ms, r.tokens_per_s,
      100 * r.mfu, r.peak_gib);
  std::fflush(stdout);
  return r;
}

// Every step row of every model, then their table.
void bench_all_steps(const Options& o, const Ceilings& ceilings, std::ofstream& json_out) {
  std::vector<StepRow> rows;
  auto record = [&](StepRow row) {
    if (json_out.is_open()) write_json_line(json_out, row, o, ceilings);
    rows.push_back(std::move(row));
  };
  for (const std::string& m : o.models) {
    const ModelConfig cfg = model_config(o, m);
    const std::vector<float> weights = gpt2_initial_weights(cfg, gpt2_param_layout(cfg), 1234, 0.02);
    for (Precision p : {Precision::bf16_sr, Precision::bf16_rn, Precision::mixed})
      record(bench_steps(o, m, weights, p, ActivationOptions{}, std::nullopt, ceilings));
    // The attention on wgmma, with each wgmma backward, where this build
    // and GPU run them.
    if (measured(o, gpu::AttentionForward::wgmma, "steps: attention forward")) {
      for (gpu::AttentionBackward how : gpu::kAttentionBackwards) {
        if (gpu::attention_backward_uses_wgmma(how) && measured(o, how, "steps: attention backward"))
          record(bench_steps(o, m, weights, Precision::bf16_sr, ActivationOptions{}, how, ceilings));
      }
    }
    // The memory-saving options, by memory saved: the LM head in 8
    // chunks (4096 rows each at batch 32 x 1024), then also recompute
    // LayerNorm (2 d_model per token and layer) or instead run its
    // backward from its output (the same 2, without a pass), GELU (4),
    // or both.
    const ActivationOptions memory_options[] = {
        {Recompute::none, 8},
        {Recompute::layernorm, 8},
        {Recompute::none, 8, LayerNormBackwardFrom::output},
        {Recompute::gelu, 8},
        {Recompute::all, 8},
        {Recompute::gelu, 8, LayerNormBackwardFrom::output},
    };
    for (const ActivationOptions& activations : memory_options)
      record(bench_steps(o, m, weights, Precision::bf16_sr, activations, std::nullopt, ceilings));
  }
  std::printf("\ntraining steps: micro batch %d, seq %d, median of %d after %d warm-up\n", o.batch, o.seq, o.iters,
              o.warmup);
  std::printf("| model | precision | activation options | attention | params | step ms | tokens/s | MFU (of %.0f "
              "TFLOP/s) | peak GiB | device used GiB |\n|---|---|---|---|---|---|---|---|---|---|\n",
              ceilings.flops / 1e12);
  for (const auto& r : rows)
    std::printf("| %s | %s | %s | %s | %.1fM | %.1f | %.0f | %.1f%% | %.2f | %.2f |\n", r.model.c_str(),
                r.precision.c_str(), r.activations.c_str(), r.attention.c_str(), r.params / 1e6, r.step_ms,
                r.tokens_per_s, 100 * r.mfu, r.peak_gib, r.device_used_gib);
  // bf16-sr against mixed with the same attention and no memory options:
  // each model's first row of either precision (the wgmma rows come later).
  for (const std::string& m : o.models) {
    const StepRow *sr = nullptr, *mixed = nullptr;
    for (const auto& r : rows) {
      if (r.model != m || r.activations != "none") continue;
      if (r.precision == "bf16-sr" && !sr) sr = &r;
      if (r.precision == "mixed" && !mixed) mixed = &r;
    }
    if (sr && mixed)
      std::printf("%s: bf16-sr vs mixed: %.2fx throughput, %.2fx peak memory (paper: 1.54x, 0.70x)\n", m.c_str(),
                  sr->tokens_per_s / mixed->tokens_per_s, sr->peak_gib / mixed->peak_gib);
  }
  std::printf("\n");
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Options o;
    if (!parse(argc, argv, o)) return 0;
    // Opened before minutes of measuring, so a bad path fails at once.
    std::ofstream json_out;
    if (!o.json.empty()) {
      json_out.open(o.json);
      if (!json_out) fail("--json: cannot open '{}' for writing", o.json);
    }
    if (cuda_device_count() == 0) fail("no CUDA device visible: this benchmark runs on a GPU host");
    if (o.smoke) std::printf("smoke run: tiny shapes, to check that every row runs; the numbers mean nothing\n");
    const Ceilings ceilings = measure_ceilings(o);
    if (o.steps) bench_all_steps(o, ceilings, json_out);
    if (o.kernels) bench_kernels(o, ceilings);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu_step_bench: %s\n", e.what());
    return 1;
  }
}
