// Every cuda-backend op against the cpu backend on fresh random inputs, at
// several shapes including odd ones, with outputs poisoned before the op.
// [schedules]: kernels with shared memory and barriers, and ops on more
// than one stream, which the CPU device emulator (tests/emulation) also
// runs under every schedule.
#include <spdlog/fmt/fmt.h>

#include <algorithm>
#include <cstdlib>
#include <optional>

#include "backend.cuh"
#include "gpu_test_util.h"

using namespace srgpt;
using namespace srgpt::gpu_test;

namespace {

const DType kDtypes[] = {DType::bf16, DType::f32};

std::string label(const char* op, DType dtype, const std::string& shape) {
  return fmt::format("{} {} {}", op, dtype_name(dtype), shape);
}

}  // namespace

TEST_CASE("gpu embedding forward and backward match the cpu backend", "[gpu]") {
  if (!have_gpu()) return;
  struct Shape {
    int B, T, C, V;
  };
  // C not a multiple of the vector width (8 bf16, 4 f32: C = 100, 30) takes
  // the scalar path; a tiny vocabulary repeats tokens often.
  const Shape shapes[] = {{1, 1, 8, 50}, {2, 17, 100, 97}, {3, 257, 768, 1000}, {4, 64, 256, 7}, {2, 9, 30, 11}};
  uint64_t seed = 100;
  for (DType dtype : kDtypes) {
    for (const Shape& s : shapes) {
      Backends be(dtype);
      const size_t N = size_t(s.B) * s.T;
      const std::string shape = fmt::format("B={} T={} C={} V={}", s.B, s.T, s.C, s.V);
      Pair wte(be, dtype, size_t(s.V) * s.C), wpe(be, dtype, size_t(s.T) * s.C), out(be, dtype, N * s.C);
      Pair tokens(be, DType::f32, N);  // raw int32 bytes
      const auto token_values = random_tokens(N, s.V, ++seed);
      std::vector<uint8_t> token_bytes(N * 4);
      std::memcpy(token_bytes.data(), token_values.data(), token_bytes.size());
      tokens.cpu.set_bytes(token_bytes);
      tokens.gpu.set_bytes(token_bytes);
      wte.set(random_normal(wte.cpu.count(), ++seed));
      wpe.set(random_normal(wpe.cpu.count(), ++seed));
      out.poison();
      auto* cpu_tokens = static_cast<const int32_t*>(tokens.cpu.get());
      auto* gpu_tokens = static_cast<const int32_t*>(tokens.gpu.get());
      be.cpu->embedding_forward(out.cpu.get(), cpu_tokens, wte.cpu.get(), wpe.cpu.get(), s.B, s.T, s.C);
      be.gpu->embedding_forward(out.gpu.get(), gpu_tokens, wte.gpu.get(), wpe.gpu.get(), s.B, s.T, s.C);
      check_close(label("embedding_forward", dtype, shape), out.gpu, out.cpu, bound_for(dtype, 1e-6, 1e-7));

      // Backward accumulates into random existing gradients.
      Pair dwte(be, dtype, wte.cpu.count()), dwpe(be, dtype, wpe.cpu.count()), dout(be, dtype, N * s.C);
      dwte.set(random_normal(dwte.cpu.count(), ++seed));
      dwpe.set(random_normal(dwpe.cpu.count(), ++seed));
      dout.set(random_normal(dout.cpu.count(), ++seed));
      be.cpu->embedding_backward(dwte.cpu.get(), dwpe.cpu.get(), dout.cpu.get(), cpu_tokens, s.B, s.T, s.C);
      be.gpu->embedding_backward(dwte.gpu.get(), dwpe.gpu.get(), dout.gpu.get(), gpu_tokens, s.B, s.T, s.C);
      check_close(label("embedding_backward dwte", dtype, shape), dwte.gpu, dwte.cpu, bound_for(dtype, 4e-3, 1e-6));
      check_close(label("embedding_backward dwpe", dtype, shape), dwpe.gpu, dwpe.cpu, bound_for(dtype, 4e-3, 1e-6));
    }
  }
}

TEST_CASE("gpu residual layernorm forward and backward match the cpu backend", "[gpu][schedules]") {
  if (!have_gpu()) return;
  struct Shape {
    int N, C;
  };
  // C = 100, 30, 1030 are not multiples of the vector width (8 bf16, 4 f32:
  // scalar path); above 1024 the rows are not held in registers; 4096 makes
  // the backward use fewer warps per block.
  const Shape shapes[] = {{1, 8}, {37, 100}, {300, 768}, {65, 1600}, {129, 4096}, {9, 30}, {7, 1030}};
  uint64_t seed = 200;
  for (DType dtype : kDtypes) {
    for (const Shape& s : shapes) {
      // With delta into another buffer (the model's default), in place
      // (the model's residual stream with the LayerNorm backward from the
      // output), and without delta in place (its first layernorm).
      for (const auto& [with_delta, in_place] : {std::pair{true, false}, std::pair{true, true}, std::pair{false, true}}) {
        Backends be(dtype);
        const size_t NC = size_t(s.N) * s.C;
        const std::string shape = fmt::format("N={} C={} delta={} in place={}", s.N, s.C, with_delta, in_place);
        Pair res_in(be, dtype, NC), delta(be, dtype, NC), w(be, dtype, s.C), b(be, dtype, s.C);
        Pair res_out(be, dtype, NC), out(be, dtype, NC);
        Pair mean(be, DType::f32, s.N), rstd(be, DType::f32, s.N);
        res_in.set(random_normal(NC, ++seed, 2.0f));
        delta.set(random_normal(NC, ++seed));
        auto weight = random_normal(s.C, ++seed, 0.2f);
        for (float& x : weight) x += 1.0f;
        // A zero weight: a backward from the output cannot read that
        // column's normalised input back and takes it as 0 (layernorm_math.h).
        weight[s.C / 2] = 0.0f;
        w.set(weight);
        b.set(random_normal(s.C, ++seed, 0.1f));
        out.poison();
        mean.poison();
        rstd.poison();
        void* cpu_res_out = in_place ? res_in.cpu.get() : res_out.cpu.get();
        void* gpu_res_out = in_place ? res_in.gpu.get() : res_out.gpu.get();
        if (!in_place) res_out.poison();
        be.cpu->residual_layernorm_forward(cpu_res_out, out.cpu.get(), mean.cpu.get(), rstd.cpu.get(),
                                           res_in.cpu.get(), with_delta ? delta.cpu.get() : nullptr, w.cpu.get(),
                                           b.cpu.get(), s.N, s.C);
        be.gpu->residual_layernorm_forward(gpu_res_out, out.gpu.get(), mean.gpu.get(), rstd.gpu.get(),
                                           res_in.gpu.get(), with_delta ? delta.gpu.get() : nullptr, w.gpu.get(),
                                           b.gpu.get(), s.N, s.C);
        const Pair& residual = in_place ? res_in : res_out;
        check_close(label("layernorm_forward res_out", dtype, shape), residual.gpu, residual.cpu,
                    bound_for(dtype, 1e-6, 1e-7));
        check_close(label("layernorm_forward out", dtype, shape), out.gpu, out.cpu, bound_for(dtype, 4e-3, 1e-5));
        // The mean is a sum with cancellation: its relative error is larger.
        check_close(label("layernorm_forward mean", dtype, shape), mean.gpu, mean.cpu, 1e-4);
        check_close(label("layernorm_forward rstd", dtype, shape), rstd.gpu, rstd.cpu, 1e-5);

        // Backward from the cpu's statistics and output, from the input and
        // from the output, accumulating into random existing gradients.
        mean.gpu.set(mean.cpu.values());
        rstd.gpu.set(rstd.cpu.values());
        out.gpu.set(out.cpu.values());
        for (LayerNormBackwardFrom from : {LayerNormBackwardFrom::input, LayerNormBackwardFrom::output}) {
          const std::string how = shape + (from == LayerNormBackwardFrom::input ? " from input" : " from output");
          const Pair& x = from == LayerNormBackwardFrom::input ? residual : out;
          Pair din(be, dtype, NC), dw(be, dtype, s.C), db(be, dtype, s.C), dout(be, dtype, NC);
          din.set(random_normal(NC, ++seed));
          dw.set(random_normal(s.C, ++seed));
          db.set(random_normal(s.C, ++seed));
          dout.set(random_normal(NC, ++seed));
          be.cpu->layernorm_backward(din.cpu.get(), dw.cpu.get(), db.cpu.get(), dout.cpu.get(), from, x.cpu.get(),
                                     w.cpu.get(), b.cpu.get(), mean.cpu.get(), rstd.cpu.get(), s.N, s.C);
          be.gpu->layernorm_backward(din.gpu.get(), dw.gpu.get(), db.gpu.get(), dout.gpu.get(), from, x.gpu.get(),
                                     w.gpu.get(), b.gpu.get(), mean.gpu.get(), rstd.gpu.get(), s.N, s.C);
          check_close(label("layernorm_backward din", dtype, how), din.gpu, din.cpu, bound_for(dtype, 4e-3, 1e-5));
          check_close(label("layernorm_backward dw", dtype, how), dw.gpu, dw.cpu, bound_for(dtype, 4e-3, 1e-5));
          check_close(label("layernorm_backward db", dtype, how), db.gpu, db.cpu, bound_for(dtype, 4e-3, 1e-5));
        }
      }
    }
  }
}

TEST_CASE("gpu matmul forward and backward match the cpu backend", "[gpu][schedules]") {
  if (!have_gpu()) return;
  struct Shape {
    int N, C, OC;
    bool bias, gelu;
    size_t offset;  // elements the GPU operands are shifted by (alignment)
  };
  // OC (forward) or C (backward with GELU) not a multiple of 8 takes the
  // unfused epilogue fallback; the shifted operands exercise cuBLASLt's
  // alignment handling.
  const Shape shapes[] = {{1, 8, 8, true, false, 0},       {64, 768, 2304, true, false, 0},
                          {37, 100, 75, true, false, 0},   {128, 768, 3072, true, true, 0},
                          {33, 96, 100, true, true, 0},    {256, 3072, 768, true, false, 0},
                          {64, 768, 1024, false, false, 0}, {40, 64, 200, false, true, 0},
                          {48, 128, 256, true, true, 1},   {31, 72, 88, true, false, 3},
                          {29, 60, 72, true, true, 0}};
  uint64_t seed = 300;
  for (DType dtype : kDtypes) {
    for (const Shape& s : shapes) {
      Backends be(dtype);
      const size_t NC = size_t(s.N) * s.C, NO = size_t(s.N) * s.OC;
      const std::string shape = fmt::format("N={} C={} OC={} bias={} gelu={} offset={}", s.N, s.C, s.OC, s.bias,
                                            s.gelu, s.offset);
      Pair in(be, dtype, NC, s.offset), w(be, dtype, size_t(s.OC) * s.C, s.offset), bias(be, dtype, s.OC, s.offset);
      Pair out(be, dtype, NO, s.offset), pre(be, dtype, NO, s.offset);
      in.set(random_normal(NC, ++seed));
      w.set(random_normal(w.cpu.count(), ++seed, 1.0f / std::sqrt(float(s.C))));
      bias.set(random_normal(s.OC, ++seed, 0.5f));
      out.poison();
      pre.poison();
      auto bias_of = [&](const Tensor& t) { return s.bias ? t.get() : nullptr; };
      auto pre_of = [&](const Tensor& t) { return s.gelu ? t.get() : nullptr; };
      be.cpu->matmul_forward(out.cpu.get(), pre_of(pre.cpu), in.cpu.get(), w.cpu.get(), bias_of(bias.cpu), s.N, s.C,
                             s.OC);
      be.gpu->matmul_forward(out.gpu.get(), pre_of(pre.gpu), in.gpu.get(), w.gpu.get(), bias_of(bias.gpu), s.N, s.C,
                             s.OC);
      check_close(label("matmul_forward out", dtype, shape), out.gpu, out.cpu, bound_for(dtype, 5e-3, 1e-5));
      if (s.gelu)
        check_close(label("matmul_forward gelu_pre", dtype, shape), pre.gpu, pre.cpu, bound_for(dtype, 5e-3, 1e-5));

      Pair din(be, dtype, NC, s.offset), dw(be, dtype, w.cpu.count(), s.offset), db(be, dtype, s.OC, s.offset);
      Pair dout(be, dtype, NO, s.offset);
      din.poison();
      dw.set(random_normal(dw.cpu.count(), ++seed));
      db.set(random_normal(s.OC, ++seed));
      dout.set(random_normal(NO, ++seed));
      // The GELU backward needs a pre-activation for din's forward value:
      // any random tensor of din's shape serves.
      Pair din_pre(be, dtype, NC, s.offset);
      din_pre.set(random_normal(NC, ++seed, 2.0f));
      const auto dw_start = dw.gpu.bytes(), db_start = db.gpu.bytes();
      be.cpu->matmul_backward(din.cpu.get(), dw.cpu.get(), bias_of(db.cpu), dout.cpu.get(), in.cpu.get(),
                              w.cpu.get(), pre_of(din_pre.cpu), s.N, s.C, s.OC);
      auto gpu_backward = [&] {
        be.gpu->matmul_backward(din.gpu.get(), dw.gpu.get(), bias_of(db.gpu), dout.gpu.get(), in.gpu.get(),
                                w.gpu.get(), pre_of(din_pre.gpu), s.N, s.C, s.OC);
      };
      gpu_backward();
      check_close(label("matmul_backward din", dtype, shape), din.gpu, din.cpu, bound_for(dtype, 5e-3, 1e-5));
      check_close(label("matmul_backward dw", dtype, shape), dw.gpu, dw.cpu, bound_for(dtype, 5e-3, 1e-5));
      if (s.bias)
        check_close(label("matmul_backward db", dtype, shape), db.gpu, db.cpu, bound_for(dtype, 4e-3, 1e-5));

      // The weight gradient on the caller's stream instead of its own: the
      // same products, so the same bits.
      const auto din_overlapped = din.gpu.bytes(), dw_overlapped = dw.gpu.bytes(), db_overlapped = db.gpu.bytes();
      din.gpu.poison();
      dw.gpu.set_bytes(dw_start);
      db.gpu.set_bytes(db_start);
      gpu::Matmul& matmul = dynamic_cast<gpu::CudaBackend&>(*be.gpu).matmul();
      matmul.set_weight_gradient_overlap(false);
      gpu_backward();
      check_same_bytes(label("matmul_backward din on one stream", dtype, shape), din.gpu.bytes(), din_overlapped);
      check_same_bytes(label("matmul_backward dw on one stream", dtype, shape), dw.gpu.bytes(), dw_overlapped);
      check_same_bytes(label("matmul_backward db on one stream", dtype, shape), db.gpu.bytes(), db_overlapped);

      // Every product with a fused epilogue was counted, the bias gradient's
      // among them; where the emulated cuBLASLt is told to refuse every
      // epilogue, none counts as fused.
      const auto uses = matmul.epilogue_uses();
      const bool refused = std::getenv("SRGPT_EMULATED_CUBLASLT_EPILOGUES") != nullptr;
      for (const auto& use : uses) {
        INFO(label("matmul epilogue", dtype, shape) << " " << use.epilogue);
        CHECK(use.products >= 1);
        CHECK(use.fused <= use.products);
        if (refused) CHECK(use.fused == 0);
      }
      if (s.bias)
        CHECK(std::any_of(uses.begin(), uses.end(), [](const auto& use) { return use.epilogue == "BGRADB"; }));
    }
  }
}

namespace {

// Attention forward, backward or both (those given), with the given
// strategies of the tensor-core kernels. The simple kernels ignore the
// strategies: they are checked with the defaults only.
void check_attention(std::optional<gpu::AttentionForward> forward, std::optional<gpu::AttentionBackward> backward) {
  struct Shape {
    int B, T, C, H;
  };
  // Head sizes 64 and 128 take the tensor-core kernels in bf16; T = 1 and T
  // not a multiple of any tile (32, 64, 128 rows) are included, so partial
  // tiles, warps wholly past T and skipped diagonal tiles are exercised.
  // Head sizes 32, 60 and 15 take the simple kernel, as does every f32
  // shape; 15 also takes the scalar row-dot path.
  const Shape shapes[] = {{1, 1, 128, 2},  {2, 257, 256, 2}, {2, 64, 768, 12},  {1, 300, 192, 3}, {2, 100, 96, 3},
                          {1, 130, 120, 2}, {1, 1000, 128, 1}, {2, 200, 256, 4}, {1, 33, 128, 2}, {2, 20, 30, 2}};
  uint64_t seed = 400;
  for (DType dtype : kDtypes) {
    for (const Shape& s : shapes) {
      const bool defaults = forward.value_or(gpu::AttentionForward::mma) == gpu::AttentionForward::mma &&
                            backward.value_or(gpu::AttentionBackward::one_pass) == gpu::AttentionBackward::one_pass;
      const bool tensor_cores = gpu::attention_uses_tensor_cores(dtype, s.C, s.H, nullptr, nullptr, nullptr);
      if (!defaults && !tensor_cores) continue;
      // The simple kernel (a warp per row, no shared memory or barriers) has
      // no path that T = 1000 adds to T = 300, and there it was half of this
      // test's time on the CPU device emulator.
      if (!tensor_cores && s.T > 512) continue;
      Backends be(dtype);
      auto& cuda = dynamic_cast<gpu::CudaBackend&>(*be.gpu);
      if (forward) cuda.set_attention_forward_strategy(*forward);
      if (backward) cuda.set_attention_backward_strategy(*backward);
      const size_t rows = size_t(s.B) * s.T;
      const std::string shape =
          fmt::format("B={} T={} C={} H={} (hd {}), {} forward, {} backward", s.B, s.T, s.C, s.H, s.C / s.H,
                      forward ? gpu::attention_forward_name(*forward) : "no",
                      backward ? gpu::attention_backward_name(*backward) : "no");
      Pair qkv(be, dtype, rows * 3 * s.C), out(be, dtype, rows * s.C), lse(be, DType::f32, size_t(s.B) * s.H * s.T);
      qkv.set(random_normal(qkv.cpu.count(), ++seed));
      out.poison();
      lse.poison();
      be.cpu->attention_forward(out.cpu.get(), lse.cpu.get(), qkv.cpu.get(), s.B, s.T, s.C, s.H);
      if (forward) {
        be.gpu->attention_forward(out.gpu.get(), lse.gpu.get(), qkv.gpu.get(), s.B, s.T, s.C, s.H);
        check_close(label("attention_forward out", dtype, shape), out.gpu, out.cpu, bound_for(dtype, 1e-2, 2e-5));
        check_close(label("attention_forward lse", dtype, shape), lse.gpu, lse.cpu, 1e-5);
      }
      if (!backward) continue;

      // Backward from the cpu's out and lse, so both see the same inputs.
      Pair dqkv(be, dtype, qkv.cpu.count()), dout(be, dtype, out.cpu.count());
      dqkv.poison();
      dout.set(random_normal(dout.cpu.count(), ++seed));
      out.gpu.set_bytes(out.cpu.bytes());
      lse.gpu.set_bytes(lse.cpu.bytes());
      be.cpu->attention_backward(dqkv.cpu.get(), dout.cpu.get(), qkv.cpu.get(), out.cpu.get(), lse.cpu.get(), s.B,
                                 s.T, s.C, s.H);
      be.gpu->attention_backward(dqkv.gpu.get(), dout.gpu.get(), qkv.gpu.get(), out.gpu.get(), lse.gpu.get(), s.B,
                                 s.T, s.C, s.H);
      check_close(label("attention_backward dqkv", dtype, shape), dqkv.gpu, dqkv.cpu, bound_for(dtype, 2e-2, 2e-5));
    }
  }
}

}  // namespace

// The tests run separately (scripts/gpu_check.sh runs each under a time
// limit): the one-pass backward orders its blocks through flags, and the
// wgmma kernels run only on sm_90a builds on compute-capability 9.0 GPUs.
TEST_CASE("gpu attention forward and backward match the cpu backend", "[gpu][schedules]") {
  if (!have_gpu()) return;
  check_attention(gpu::AttentionForward::mma, gpu::AttentionBackward::one_pass);
}

TEST_CASE("gpu attention with the two-pass backward matches the cpu backend", "[gpu][schedules]") {
  if (!have_gpu()) return;
  check_attention(std::nullopt, gpu::AttentionBackward::two_pass);
}

// The wgmma kernels where this build and GPU run them, each strategy
// apart, so that a failure on hardware says which. A GPU and build that
// should run them but whose wgmma fails the backend's self-check is a
// failure, not a reason to skip (the emulated device is such a GPU).
template <typename Strategy>
bool runs_here(Strategy how) {
  std::string why;
  const gpu::AttentionSupport support = gpu::attention_support(how, &why);
  INFO(why);
  REQUIRE(support != gpu::AttentionSupport::wrong_products);
  if (support == gpu::AttentionSupport::available) return true;
  WARN("the wgmma attention kernels are not checked: " << why);
  return false;
}

TEST_CASE("gpu attention forward on wgmma matches the cpu backend", "[gpu][schedules]") {
  if (!have_gpu() || !runs_here(gpu::AttentionForward::wgmma)) return;
  check_attention(gpu::AttentionForward::wgmma, std::nullopt);
}

TEST_CASE("gpu attention backward on wgmma matches the cpu backend", "[gpu][schedules]") {
  if (!have_gpu() || !runs_here(gpu::AttentionBackward::wgmma)) return;
  check_attention(std::nullopt, gpu::AttentionBackward::wgmma);
}

TEST_CASE("gpu attention backward on wgmma in one pass matches the cpu backend", "[gpu][schedules]") {
  if (!have_gpu() || !runs_here(gpu::AttentionBackward::wgmma_one_pass)) return;
  check_attention(std::nullopt, gpu::AttentionBackward::wgmma_one_pass);
}

TEST_CASE("gpu fused cross-entropy matches the cpu backend", "[gpu][schedules]") {
  if (!have_gpu()) return;
  struct Shape {
    int N, V, Vp;
  };
  // Rows held in registers (bf16 up to 65536, f32 up to 32768 columns) and
  // rows read per phase (70016 columns; 50304 in f32); Vp = 101 is not a
  // multiple of the vector width (scalar path).
  const Shape shapes[] = {{1, 10, 128}, {37, 1000, 1024}, {16, 50257, 50304}, {3, 70000, 70016}, {5, 100, 101}};
  uint64_t seed = 500;
  for (DType dtype : kDtypes) {
    for (const Shape& s : shapes) {
      Backends be(dtype);
      const std::string shape = fmt::format("N={} V={} Vp={}", s.N, s.V, s.Vp);
      Pair logits(be, dtype, size_t(s.N) * s.Vp), losses(be, DType::f32, s.N), targets(be, DType::f32, s.N);
      logits.set(random_normal(logits.cpu.count(), ++seed, 3.0f));
      losses.poison();
      const auto target_values = random_tokens(s.N, s.V, ++seed);
      std::vector<uint8_t> target_bytes(size_t(s.N) * 4);
      std::memcpy(target_bytes.data(), target_values.data(), target_bytes.size());
      targets.cpu.set_bytes(target_bytes);
      targets.gpu.set_bytes(target_bytes);
      const float dloss = 1.0f / float(s.N);
      be.cpu->cross_entropy_forward_backward(losses.cpu.get(), logits.cpu.get(),
                                             static_cast<const int32_t*>(targets.cpu.get()), s.N, s.V, s.Vp, dloss);
      be.gpu->cross_entropy_forward_backward(losses.gpu.get(), logits.gpu.get(),
                                             static_cast<const int32_t*>(targets.gpu.get()), s.N, s.V, s.Vp, dloss);
      check_close(label("cross_entropy losses", dtype, shape), losses.gpu, losses.cpu, 1e-5);
      check_close(label("cross_entropy dlogits", dtype, shape), logits.gpu, logits.cpu, bound_for(dtype, 4e-3, 1e-5));
      // The padded columns are exactly zero.
      const auto grads = logits.gpu.values();
      size_t nonzero_padding = 0;
      for (int n = 0; n < s.N; ++n)
        for (int j = s.V; j < s.Vp; ++j) nonzero_padding += grads[size_t(n) * s.Vp + j] != 0.0f;
      CHECK(nonzero_padding == 0);
    }
  }
}

TEST_CASE("gpu reductions match the cpu backend", "[gpu][schedules]") {
  if (!have_gpu()) return;
  uint64_t seed = 600;
  for (DType dtype : kDtypes) {
    Backends be(dtype);
    // Sizes around the vector width and block sizes; offset 1 makes the
    // GPU pointer unaligned (scalar path).
    for (size_t n : {size_t(1), size_t(7), size_t(1000), size_t(1) << 20, (size_t(1) << 22) + 3}) {
      for (size_t offset : {size_t(0), size_t(1)}) {
        INFO("dtype " << dtype_name(dtype) << " n " << n << " offset " << offset);
        Pair losses(be, DType::f32, n, offset), x(be, dtype, n, offset);
        auto values = random_normal(n, ++seed);
        for (float& v : values) v = std::fabs(v) + 0.5f;  // positive, like losses
        losses.set(values);
        x.set(random_normal(n, ++seed));
        const double cpu_sum = be.cpu->sum_accum(losses.cpu.get(), n);
        const double gpu_sum = be.gpu->sum_accum(losses.gpu.get(), n);
        CHECK(std::fabs(gpu_sum - cpu_sum) <= 1e-12 * std::fabs(cpu_sum));
        const double cpu_squares = be.cpu->sum_squares(x.cpu.get(), dtype, {{0, n}});
        const double gpu_squares = be.gpu->sum_squares(x.gpu.get(), dtype, {{0, n}});
        CHECK(std::fabs(gpu_squares - cpu_squares) <= 1e-12 * cpu_squares);
        // Several ranges, as a ZeRO shard's units, one empty and one
        // unaligned: each range's own sum, added in order.
        const std::vector<ElementRange> ranges = {{0, n / 3}, {n / 3, n / 3}, {n / 3 + 1, n}};
        double gpu_in_order = 0;
        for (const ElementRange& r : ranges) gpu_in_order += be.gpu->sum_squares(x.gpu.get(), dtype, {r});
        CHECK(be.gpu->sum_squares(x.gpu.get(), dtype, ranges) == gpu_in_order);
        const double cpu_ranges = be.cpu->sum_squares(x.cpu.get(), dtype, ranges);
        CHECK(std::fabs(gpu_in_order - cpu_ranges) <= 1e-12 * cpu_ranges);
        CHECK(be.gpu->all_finite(x.gpu.get(), n));

        // One non-finite element anywhere, first as infinity, then as NaN.
        auto spoiled = x.cpu.values();
        const size_t where = size_t(seed * 7919) % n;
        for (float bad : {INFINITY, -INFINITY, NAN}) {
          spoiled[where] = bad;
          x.gpu.set(spoiled);
          CHECK_FALSE(be.gpu->all_finite(x.gpu.get(), n));
        }
      }
    }
  }
}

TEST_CASE("gpu accumulate matches the cpu backend", "[gpu]") {
  if (!have_gpu()) return;
  uint64_t seed = 650;
  for (DType dtype : kDtypes) {
    Backends be(dtype);
    // Partial last vector and an unaligned start (offset 1).
    for (size_t n : {size_t(1), size_t(13), (size_t(1) << 20) + 5}) {
      for (size_t offset : {size_t(0), size_t(1)}) {
        const std::string shape = fmt::format("n={} offset={}", n, offset);
        Pair dst(be, dtype, n, offset), src(be, dtype, n, offset);
        dst.set(random_normal(n, ++seed));
        src.set(random_normal(n, ++seed));
        be.cpu->accumulate(dst.cpu.get(), dtype, src.cpu.get(), dtype, n);
        be.gpu->accumulate(dst.gpu.get(), dtype, src.gpu.get(), dtype, n);
        // One fp32 add rounded once on both sides: the same bits.
        check_same_bytes(label("accumulate", dtype, shape), dst.gpu.bytes(), dst.cpu.bytes());
      }
    }
  }
  // f32 gradients on a bf16 backend: f32 += bf16, f32 += f32, and the sum
  // of squares of f32 data.
  Backends be(DType::bf16);
  for (size_t n : {size_t(13), (size_t(1) << 20) + 5}) {
    for (size_t offset : {size_t(0), size_t(1)}) {
      const std::string shape = fmt::format("n={} offset={}", n, offset);
      Pair dst(be, DType::f32, n, offset), narrow(be, DType::bf16, n, offset), wide(be, DType::f32, n, offset);
      dst.set(random_normal(n, ++seed));
      narrow.set(random_normal(n, ++seed));
      wide.set(random_normal(n, ++seed));
      for (Backend* b : {be.cpu.get(), be.gpu.get()}) {
        const bool on_gpu = b == be.gpu.get();
        void* d = on_gpu ? dst.gpu.get() : dst.cpu.get();
        b->accumulate(d, DType::f32, on_gpu ? narrow.gpu.get() : narrow.cpu.get(), DType::bf16, n);
        b->accumulate(d, DType::f32, on_gpu ? wide.gpu.get() : wide.cpu.get(), DType::f32, n);
      }
      check_same_bytes(label("accumulate f32 += bf16, f32 += f32", DType::bf16, shape), dst.gpu.bytes(),
                       dst.cpu.bytes());
      const double cpu_squares = be.cpu->sum_squares(dst.cpu.get(), DType::f32, {{0, n}});
      const double gpu_squares = be.gpu->sum_squares(dst.gpu.get(), DType::f32, {{0, n}});
      INFO(shape << ": sum of squares of f32 data, cpu " << cpu_squares << ", gpu " << gpu_squares);
      CHECK(std::fabs(gpu_squares - cpu_squares) <= 1e-12 * cpu_squares);
    }
  }
}

TEST_CASE("gpu gelu_forward matches the cpu backend", "[gpu]") {
  if (!have_gpu()) return;
  uint64_t seed = 700;
  for (DType dtype : kDtypes) {
    Backends be(dtype);
    for (size_t n : {size_t(3), size_t(1000), (size_t(1) << 20) + 7}) {
      for (size_t offset : {size_t(0), size_t(1)}) {
        const std::string shape = fmt::format("n={} offset={}", n, offset);
        Pair pre(be, dtype, n, offset), out(be, dtype, n, offset);
        pre.set(random_normal(n, ++seed, 2.0f));
        out.poison();
        be.cpu->gelu_forward(out.cpu.get(), pre.cpu.get(), n);
        be.gpu->gelu_forward(out.gpu.get(), pre.gpu.get(), n);
        // tanhf on the device and std::tanh on the host may differ in the
        // last fp32 bit, which can move a bf16 rounding by one ulp.
        check_close(label("gelu_forward", dtype, shape), out.gpu, out.cpu, bound_for(dtype, 4e-3, 1e-6));
      }
    }
  }
}

TEST_CASE("gpu uploads through the pinned slots land intact and free the host buffer at once", "[gpu]") {
  if (!have_gpu()) return;
  auto gpu = make_cuda_backend(DType::f32, 0);
  // More uploads than staging slots, of varied sizes (one larger than all
  // slots together, ending in a partial slot), each from one host buffer
  // overwritten right after the call.
  const std::vector<size_t> counts = {1, 17, 4096, 250000, (size_t(17) << 20) / 4 + 3, 3, 100000, 77, 65536, 5};
  std::vector<std::unique_ptr<Tensor>> tensors;
  std::vector<std::vector<float>> expected;
  std::vector<float> host;
  uint64_t seed = 800;
  for (size_t n : counts) {
    expected.push_back(random_normal(n, ++seed));
    host = expected.back();
    tensors.push_back(std::make_unique<Tensor>(*gpu, DType::f32, n));
    gpu->upload(tensors.back()->get(), host.data(), n * sizeof(float));
    std::fill(host.begin(), host.end(), -1.0f);
  }
  for (size_t i = 0; i < counts.size(); ++i) {
    INFO("upload " << i << " of " << counts[i] << " floats");
    CHECK(tensors[i]->values() == expected[i]);
  }
}
