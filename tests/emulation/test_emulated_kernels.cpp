// Every hand-written CUDA kernel (all but the cuBLASLt matmuls), run by the
// CPU device emulator against the cpu backend on fresh random inputs with
// outputs poisoned first; kernels with shared memory or barriers under
// every emulator schedule. This is how CI, which has no GPU, checks their
// tiling, masking, indexing and synchronisation, and the optimizer bit for
// bit; speed and the real tensor cores are checked by the GPU tests
// (tests/gpu) on the GPU host. Shapes and bounds follow
// tests/gpu/test_gpu_ops.cpp, smaller where the emulation would be slow;
// the emulated mma accumulates in double, so results are if anything closer.
#include <spdlog/fmt/fmt.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "accumulate.cuh"
#include "adamw.cuh"
#include "attention.cuh"
#include "catch.h"
#include "cross_entropy.cuh"
#include "device_emulator.h"
#include "embedding.cuh"
#include "gelu.cuh"
#include "layernorm.cuh"
#include "memory.cuh"
#include "reduce.cuh"
#include "srgpt/backend.h"
#include "srgpt/bf16.h"
#include "srgpt/error.h"
#include "srgpt/precision.h"

using namespace srgpt;
using emulation::Schedule;

namespace {


// Host memory, 256-byte aligned like cudaMalloc, holding `count` elements
// of a dtype; both the cpu backend and the emulated kernels use it.
class Buffer {
 public:
  // `offset` elements of padding first: an unaligned start when nonzero.
  Buffer(DType dtype, size_t count, size_t offset = 0)
      : dtype_(dtype),
        count_(count),
        offset_(offset),
        data_(static_cast<uint8_t*>(
                  std::aligned_alloc(256, ((count + offset) * dtype_size(dtype) + 255) / 256 * 256 + 256)),
              std::free) {}
  void* get() const { return data_.get() + offset_ * dtype_size(dtype_); }
  size_t bytes() const { return count_ * dtype_size(dtype_); }
  void set(const std::vector<float>& values) {
    REQUIRE(values.size() == count_);
    for (size_t i = 0; i < count_; ++i) {
      if (dtype_ == DType::bf16) {
        const bf16 b = float_to_bf16_rn(values[i]);
        std::memcpy(bytes_at(i), &b, 2);
      } else {
        std::memcpy(bytes_at(i), &values[i], 4);
      }
    }
  }
  void copy_from(const Buffer& other) {
    REQUIRE(other.bytes() == bytes());
    std::memcpy(get(), other.get(), bytes());
  }
  // NaN in every element, so an element a kernel should write but does
  // not shows up.
  void poison() { std::memset(get(), 0xFF, bytes()); }
  std::vector<float> values() const {
    std::vector<float> v(count_);
    for (size_t i = 0; i < count_; ++i) {
      if (dtype_ == DType::bf16) {
        bf16 b;
        std::memcpy(&b, bytes_at(i), 2);
        v[i] = bf16_to_float(b);
      } else {
        std::memcpy(&v[i], bytes_at(i), 4);
      }
    }
    return v;
  }
  std::vector<uint8_t> bytes_copy() const {
    const auto* p = static_cast<const uint8_t*>(get());
    return std::vector<uint8_t>(p, p + bytes());
  }

 private:
  uint8_t* bytes_at(size_t i) const { return static_cast<uint8_t*>(get()) + i * dtype_size(dtype_); }

  DType dtype_;
  size_t count_, offset_;
  std::unique_ptr<uint8_t, decltype(&std::free)> data_;
};

std::vector<float> random_normal(size_t n, uint64_t seed, float stddev = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Every emulated element finite and ||emulated - cpu|| / ||cpu|| <= bound.
void check_close(const std::string& what, const Buffer& emulated, const Buffer& cpu, double bound) {
  const auto e = emulated.values(), c = cpu.values();
  size_t non_finite = 0;
  double diff = 0, norm = 0;
  for (size_t i = 0; i < e.size(); ++i) {
    if (!std::isfinite(e[i])) ++non_finite;
    diff += (double(e[i]) - c[i]) * (double(e[i]) - c[i]);
    norm += double(c[i]) * c[i];
  }
  const double error = norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
  std::printf("[emulated] %-72s rel.err %.3e (bound %.1e)\n", what.c_str(), error, bound);
  INFO(what << ": relative error " << error << ", bound " << bound << ", non-finite " << non_finite);
  CHECK(non_finite == 0);
  CHECK(error <= bound);
}

void check_same_bytes(const std::string& what, const Buffer& emulated, const Buffer& cpu) {
  const auto e = emulated.bytes_copy(), c = cpu.bytes_copy();
  REQUIRE(e.size() == c.size());
  size_t mismatches = 0;
  for (size_t i = 0; i < e.size(); ++i) mismatches += e[i] != c[i];
  INFO(what << ": " << mismatches << " bytes differ");
  CHECK(mismatches == 0);
}

double bound_for(DType dtype, double bf16_bound, double f32_bound) {
  return dtype == DType::bf16 ? bf16_bound : f32_bound;
}

}  // namespace

TEST_CASE("emulated attention kernels match the cpu backend", "[emulated]") {
  struct Shape {
    int B, T, C, H;
  };
  // bf16 at head size 64 (two 16-row blocks per warp) and 128 (one) takes
  // the tensor-core kernels: T = 1, T not a multiple of any tile, warps
  // wholly past T, several query tiles, every schedule. Head size 60 and
  // f32 take the simple kernel, which uses no shared memory or barriers:
  // one schedule is enough.
  const Shape tensor_core[] = {{1, 1, 128, 2}, {1, 33, 128, 2}, {2, 200, 256, 4}, {1, 130, 256, 2}, {2, 64, 768, 12}};
  const Shape simple[] = {{1, 130, 120, 2}, {1, 33, 128, 2}};
  uint64_t seed = 4000;
  auto run = [&](DType dtype, const Shape& s, const Schedule& schedule) {
    const size_t rows = size_t(s.B) * s.T;
    const std::string shape = fmt::format("{} B={} T={} C={} H={} (hd {}) {}", dtype_name(dtype), s.B, s.T, s.C, s.H,
                                          s.C / s.H, schedule.name());
    auto cpu = make_cpu_backend(dtype);
    Buffer qkv(dtype, rows * 3 * s.C), out(dtype, rows * s.C), lse(DType::f32, size_t(s.B) * s.H * s.T);
    Buffer cpu_out(dtype, rows * s.C), cpu_lse(DType::f32, size_t(s.B) * s.H * s.T);
    qkv.set(random_normal(rows * 3 * s.C, ++seed));
    out.poison();
    lse.poison();
    emulation::set_schedule(schedule);
    cpu->attention_forward(cpu_out.get(), cpu_lse.get(), qkv.get(), s.B, s.T, s.C, s.H);
    gpu::attention_forward(dtype, nullptr, out.get(), static_cast<float*>(lse.get()), qkv.get(), s.B, s.T, s.C, s.H);
    check_close("attention_forward out " + shape, out, cpu_out, bound_for(dtype, 1e-2, 2e-5));
    check_close("attention_forward lse " + shape, lse, cpu_lse, 1e-5);

    // Backward from the cpu's out and lse.
    Buffer dout(dtype, rows * s.C), dqkv(dtype, rows * 3 * s.C), cpu_dqkv(dtype, rows * 3 * s.C);
    dout.set(random_normal(rows * s.C, ++seed));
    dqkv.poison();
    cpu->attention_backward(cpu_dqkv.get(), dout.get(), qkv.get(), cpu_out.get(), cpu_lse.get(), s.B, s.T, s.C, s.H);
    gpu::DeviceMemory memory;
    gpu::Scratch scratch(memory);
    gpu::attention_backward(dtype, nullptr, scratch, dqkv.get(), dout.get(), qkv.get(), cpu_out.get(),
                            static_cast<const float*>(cpu_lse.get()), s.B, s.T, s.C, s.H);
    check_close("attention_backward dqkv " + shape, dqkv, cpu_dqkv, bound_for(dtype, 2e-2, 2e-5));
  };
  for (const Schedule& schedule : emulation::kAllSchedules) {
    for (const Shape& s : tensor_core) {
      Buffer probe(DType::bf16, 8);
      REQUIRE(gpu::attention_uses_tensor_cores(DType::bf16, s.C, s.H, probe.get(), probe.get(), probe.get()));
      run(DType::bf16, s, schedule);
    }
  }
  for (const Shape& s : simple) {
    if (s.C / s.H != 64) run(DType::bf16, s, emulation::kAllSchedules[0]);
    run(DType::f32, s, emulation::kAllSchedules[0]);
  }
}

TEST_CASE("emulated cross-entropy kernel matches the cpu backend", "[emulated]") {
  struct Shape {
    int N, V, Vp;
  };
  // Rows held in registers (up to 65536 bf16 / 32768 f32 columns), rows
  // read per phase (70016 columns), and the scalar path (Vp = 101).
  const Shape shapes[] = {{37, 1000, 1024}, {2, 50257, 50304}, {2, 70000, 70016}, {5, 100, 101}};
  uint64_t seed = 5000;
  for (const Schedule& schedule : emulation::kAllSchedules) {
    emulation::set_schedule(schedule);
    for (DType dtype : {DType::bf16, DType::f32}) {
      for (const Shape& s : shapes) {
        const std::string shape =
            fmt::format("{} N={} V={} Vp={} {}", dtype_name(dtype), s.N, s.V, s.Vp, schedule.name());
        auto cpu = make_cpu_backend(dtype);
        Buffer logits(dtype, size_t(s.N) * s.Vp), cpu_logits(dtype, size_t(s.N) * s.Vp);
        Buffer losses(DType::f32, s.N), cpu_losses(DType::f32, s.N);
        logits.set(random_normal(size_t(s.N) * s.Vp, ++seed, 3.0f));
        cpu_logits.copy_from(logits);
        losses.poison();
        std::mt19937_64 rng(++seed);
        std::vector<int32_t> targets(s.N);
        for (int32_t& t : targets) t = int32_t(rng() % uint64_t(s.V));
        const float dloss = 1.0f / float(s.N);
        cpu->cross_entropy_forward_backward(cpu_losses.get(), cpu_logits.get(), targets.data(), s.N, s.V, s.Vp,
                                            dloss);
        gpu::cross_entropy_forward_backward(dtype, nullptr, static_cast<float*>(losses.get()), logits.get(),
                                            targets.data(), s.N, s.V, s.Vp, dloss);
        check_close("cross_entropy losses " + shape, losses, cpu_losses, 1e-5);
        // f32: the cpu reference sums up to 70000 exponentials one after
        // another in fp32, good to about 1e-5 itself.
        check_close("cross_entropy dlogits " + shape, logits, cpu_logits, bound_for(dtype, 4e-3, 3e-5));
        const auto grads = logits.values();
        size_t nonzero_padding = 0;
        for (int n = 0; n < s.N; ++n)
          for (int j = s.V; j < s.Vp; ++j) nonzero_padding += grads[size_t(n) * s.Vp + j] != 0.0f;
        CHECK(nonzero_padding == 0);
      }
    }
  }
}

TEST_CASE("emulated layernorm kernels match the cpu backend", "[emulated]") {
  struct Shape {
    int N, C;
  };
  // Rows held in registers (C <= 1024 bf16 / 512 f32), kept in shared
  // memory or read again (1600, 4096), and the scalar path (C = 100).
  const Shape shapes[] = {{1, 8}, {37, 100}, {67, 768}, {9, 1600}, {5, 4096}};
  uint64_t seed = 6000;
  for (const Schedule& schedule : emulation::kAllSchedules) {
    emulation::set_schedule(schedule);
    for (DType dtype : {DType::bf16, DType::f32}) {
      for (const Shape& s : shapes) {
        for (bool with_delta : {true, false}) {
          const std::string shape = fmt::format("{} N={} C={} delta={} {}", dtype_name(dtype), s.N, s.C, with_delta,
                                                schedule.name());
          auto cpu = make_cpu_backend(dtype);
          const size_t NC = size_t(s.N) * s.C;
          Buffer res_in(dtype, NC), delta(dtype, NC), w(dtype, s.C), b(dtype, s.C);
          Buffer res_out(dtype, NC), out(dtype, NC), mean(DType::f32, s.N), rstd(DType::f32, s.N);
          Buffer cpu_res_in(dtype, NC), cpu_res_out(dtype, NC), cpu_out(dtype, NC), cpu_mean(DType::f32, s.N),
              cpu_rstd(DType::f32, s.N);
          res_in.set(random_normal(NC, ++seed, 2.0f));
          cpu_res_in.copy_from(res_in);
          delta.set(random_normal(NC, ++seed));
          auto weight = random_normal(s.C, ++seed, 0.2f);
          for (float& x : weight) x += 1.0f;
          w.set(weight);
          b.set(random_normal(s.C, ++seed, 0.1f));
          for (Buffer* p : {&res_out, &out, &mean, &rstd}) p->poison();
          // Without delta the op runs in place, as the model's first
          // layernorm does.
          Buffer& residual = with_delta ? res_out : res_in;
          Buffer& cpu_residual = with_delta ? cpu_res_out : cpu_res_in;
          cpu->residual_layernorm_forward(cpu_residual.get(), cpu_out.get(), cpu_mean.get(), cpu_rstd.get(),
                                          cpu_res_in.get(), with_delta ? delta.get() : nullptr, w.get(), b.get(),
                                          s.N, s.C);
          gpu::residual_layernorm_forward(dtype, nullptr, residual.get(), out.get(), static_cast<float*>(mean.get()),
                                          static_cast<float*>(rstd.get()), res_in.get(),
                                          with_delta ? delta.get() : nullptr, w.get(), b.get(), s.N, s.C);
          check_close("layernorm_forward res_out " + shape, residual, cpu_residual, bound_for(dtype, 1e-6, 1e-7));
          check_close("layernorm_forward out " + shape, out, cpu_out, bound_for(dtype, 4e-3, 1e-5));
          check_close("layernorm_forward mean " + shape, mean, cpu_mean, 1e-4);
          check_close("layernorm_forward rstd " + shape, rstd, cpu_rstd, 1e-5);

          // Backward from the cpu's statistics into random existing
          // gradients.
          Buffer din(dtype, NC), dw(dtype, s.C), db(dtype, s.C), dout(dtype, NC);
          Buffer cpu_din(dtype, NC), cpu_dw(dtype, s.C), cpu_db(dtype, s.C);
          din.set(random_normal(NC, ++seed));
          dw.set(random_normal(s.C, ++seed));
          db.set(random_normal(s.C, ++seed));
          dout.set(random_normal(NC, ++seed));
          cpu_din.copy_from(din);
          cpu_dw.copy_from(dw);
          cpu_db.copy_from(db);
          cpu->layernorm_backward(cpu_din.get(), cpu_dw.get(), cpu_db.get(), dout.get(), cpu_residual.get(), w.get(),
                                  cpu_mean.get(), cpu_rstd.get(), s.N, s.C);
          gpu::DeviceMemory memory;
          gpu::Scratch scratch(memory);
          gpu::layernorm_backward(dtype, nullptr, scratch, din.get(), dw.get(), db.get(), dout.get(),
                                  cpu_residual.get(), w.get(), static_cast<const float*>(cpu_mean.get()),
                                  static_cast<const float*>(cpu_rstd.get()), s.N, s.C);
          check_close("layernorm_backward din " + shape, din, cpu_din, bound_for(dtype, 4e-3, 1e-5));
          check_close("layernorm_backward dw " + shape, dw, cpu_dw, bound_for(dtype, 4e-3, 1e-5));
          check_close("layernorm_backward db " + shape, db, cpu_db, bound_for(dtype, 4e-3, 1e-5));
        }
      }
    }
  }
}

TEST_CASE("emulated reductions match the cpu backend", "[emulated]") {
  uint64_t seed = 7000;
  for (const Schedule& schedule : emulation::kAllSchedules) {
    emulation::set_schedule(schedule);
    for (DType dtype : {DType::bf16, DType::f32}) {
      auto cpu = make_cpu_backend(dtype);
      gpu::DeviceMemory memory;
      gpu::Scratch scratch(memory);
      // Around the vector width and the block size; offset 1 is unaligned
      // (the scalar path).
      for (size_t n : {size_t(1), size_t(7), size_t(1000), size_t(70001)}) {
        for (size_t offset : {size_t(0), size_t(1)}) {
          INFO(dtype_name(dtype) << " n " << n << " offset " << offset << ", " << schedule.name());
          Buffer losses(DType::f32, n, offset), x(dtype, n, offset);
          auto values = random_normal(n, ++seed);
          for (float& v : values) v = std::fabs(v) + 0.5f;
          losses.set(values);
          x.set(random_normal(n, ++seed));
          const double cpu_sum = cpu->sum_accum(losses.get(), n);
          CHECK(std::fabs(gpu::sum_accum(nullptr, scratch, static_cast<const float*>(losses.get()), n) - cpu_sum) <=
                1e-12 * cpu_sum);
          const double cpu_squares = cpu->sum_squares(x.get(), dtype, n);
          CHECK(std::fabs(gpu::sum_squares(dtype, nullptr, scratch, x.get(), n) - cpu_squares) <= 1e-12 * cpu_squares);
          CHECK(gpu::all_finite(dtype, nullptr, scratch, x.get(), n));
          auto spoiled = x.values();
          spoiled[size_t(seed * 7919) % n] = NAN;
          x.set(spoiled);
          CHECK_FALSE(gpu::all_finite(dtype, nullptr, scratch, x.get(), n));
        }
      }
    }
  }
}

TEST_CASE("emulated embedding kernels match the cpu backend", "[emulated]") {
  struct Shape {
    int B, T, C, V;
  };
  // Odd C takes the scalar path; a tiny vocabulary repeats tokens often.
  const Shape shapes[] = {{1, 1, 8, 50}, {2, 17, 100, 97}, {3, 65, 256, 300}, {4, 64, 64, 7}};
  uint64_t seed = 8000;
  for (DType dtype : {DType::bf16, DType::f32}) {
    for (const Shape& s : shapes) {
      const std::string shape = fmt::format("{} B={} T={} C={} V={}", dtype_name(dtype), s.B, s.T, s.C, s.V);
      auto cpu = make_cpu_backend(dtype);
      const size_t N = size_t(s.B) * s.T;
      std::mt19937_64 rng(++seed);
      std::vector<int32_t> tokens(N);
      for (int32_t& t : tokens) t = int32_t(rng() % uint64_t(s.V));
      Buffer wte(dtype, size_t(s.V) * s.C), wpe(dtype, size_t(s.T) * s.C), out(dtype, N * s.C), cpu_out(dtype, N * s.C);
      wte.set(random_normal(size_t(s.V) * s.C, ++seed));
      wpe.set(random_normal(size_t(s.T) * s.C, ++seed));
      out.poison();
      cpu->embedding_forward(cpu_out.get(), tokens.data(), wte.get(), wpe.get(), s.B, s.T, s.C);
      gpu::embedding_forward(dtype, nullptr, out.get(), tokens.data(), wte.get(), wpe.get(), s.B, s.T, s.C);
      check_same_bytes("embedding_forward " + shape, out, cpu_out);

      // Backward accumulates into random existing gradients.
      Buffer dwte(dtype, size_t(s.V) * s.C), dwpe(dtype, size_t(s.T) * s.C), dout(dtype, N * s.C);
      Buffer cpu_dwte(dtype, size_t(s.V) * s.C), cpu_dwpe(dtype, size_t(s.T) * s.C);
      dwte.set(random_normal(size_t(s.V) * s.C, ++seed));
      dwpe.set(random_normal(size_t(s.T) * s.C, ++seed));
      dout.set(random_normal(N * s.C, ++seed));
      cpu_dwte.copy_from(dwte);
      cpu_dwpe.copy_from(dwpe);
      cpu->embedding_backward(cpu_dwte.get(), cpu_dwpe.get(), dout.get(), tokens.data(), s.B, s.T, s.C);
      gpu::DeviceMemory memory;
      gpu::Scratch scratch(memory);
      gpu::embedding_backward(dtype, nullptr, scratch, dwte.get(), dwpe.get(), dout.get(), tokens.data(), s.B, s.T,
                              s.C);
      check_close("embedding_backward dwte " + shape, dwte, cpu_dwte, bound_for(dtype, 4e-3, 1e-6));
      check_close("embedding_backward dwpe " + shape, dwpe, cpu_dwpe, bound_for(dtype, 4e-3, 1e-6));
    }
  }
}

TEST_CASE("emulated elementwise kernels match the cpu backend", "[emulated]") {
  uint64_t seed = 9000;
  for (DType dtype : {DType::bf16, DType::f32}) {
    auto cpu = make_cpu_backend(dtype);
    // A partial last vector, and an unaligned start (offset 1).
    for (size_t n : {size_t(3), size_t(1000), size_t(4099)}) {
      for (size_t offset : {size_t(0), size_t(1)}) {
        const std::string shape = fmt::format("{} n={} offset={}", dtype_name(dtype), n, offset);
        Buffer pre(dtype, n, offset), out(dtype, n, offset), cpu_out(dtype, n);
        pre.set(random_normal(n, ++seed, 2.0f));
        out.poison();
        cpu->gelu_forward(cpu_out.get(), pre.get(), n);
        gpu::gelu_forward(dtype, nullptr, out.get(), pre.get(), n);
        check_close("gelu_forward " + shape, out, cpu_out, bound_for(dtype, 4e-3, 1e-6));

        // One fp32 add rounded once on both sides: the same bits.
        Buffer dst(dtype, n, offset), src(dtype, n, offset), cpu_dst(dtype, n);
        dst.set(random_normal(n, ++seed));
        src.set(random_normal(n, ++seed));
        cpu_dst.copy_from(dst);
        cpu->accumulate(cpu_dst.get(), dtype, src.get(), dtype, n);
        gpu::accumulate(dtype, nullptr, dst.get(), dtype, src.get(), dtype, n);
        check_same_bytes("accumulate " + shape, dst, cpu_dst);
        if (dtype == DType::bf16) {  // f32 gradients on a bf16 backend
          Buffer wide_dst(DType::f32, n, offset), cpu_wide_dst(DType::f32, n), wide_src(DType::f32, n, offset);
          wide_dst.set(random_normal(n, ++seed));
          wide_src.set(random_normal(n, ++seed));
          cpu_wide_dst.copy_from(wide_dst);
          for (const Buffer* from : {&src, &wide_src}) {
            const DType from_dtype = from == &src ? DType::bf16 : DType::f32;
            cpu->accumulate(cpu_wide_dst.get(), DType::f32, from->get(), from_dtype, n);
            gpu::accumulate(dtype, nullptr, wide_dst.get(), DType::f32, from->get(), from_dtype, n);
          }
          check_same_bytes("accumulate f32 += bf16, f32 += f32 " + shape, wide_dst, cpu_wide_dst);
        }
      }
    }
  }
}

TEST_CASE("emulated adamw_update is bit-identical to the cpu backend in every precision mode", "[emulated]") {
  const Precision modes[] = {Precision::bf16_sr, Precision::bf16_rn, Precision::mixed, Precision::fp32,
                             Precision::bf16_kahan};
  const size_t n = 10007;
  uint64_t seed = 10000;
  for (Precision mode : modes) {
    for (bool f32_grads : {false, true}) {
      const DType dtype = compute_dtype(mode);
      if (f32_grads && dtype != DType::bf16) continue;
      auto cpu = make_cpu_backend(dtype);
      // The optimizer state of one side.
      struct State {
        State(Precision mode, size_t n, bool f32_grads)
            : weights(compute_dtype(mode), n),
              grads(f32_grads ? DType::f32 : compute_dtype(mode), n),
              m(adam_state_dtype(mode), n),
              v(adam_state_dtype(mode), n),
              master(DType::f32, has_master_weights(mode) ? n : 0),
              compensation(DType::bf16, has_kahan_compensation(mode) ? n : 0),
              f32_grads(f32_grads) {}
        OptimizerBuffers buffers() {
          OptimizerBuffers b;
          b.weights = weights.get();
          b.grads = grads.get();
          b.m = m.get();
          b.v = v.get();
          b.master = master.bytes() ? static_cast<float*>(master.get()) : nullptr;
          b.compensation = compensation.bytes() ? compensation.get() : nullptr;
          b.f32_grads = f32_grads;
          return b;
        }
        Buffer weights, grads, m, v, master, compensation;
        bool f32_grads;
      };
      State emulated(mode, n, f32_grads), reference(mode, n, f32_grads);
      const auto weights = random_normal(n, ++seed, 0.02f);
      auto m = random_normal(n, ++seed, 1e-3f), v = random_normal(n, ++seed, 1e-3f);
      for (float& x : v) x = x * x;
      const auto compensation = random_normal(n, ++seed, 1e-5f);
      for (State* s : {&emulated, &reference}) {
        s->weights.set(weights);
        s->m.set(m);
        s->v.set(v);
        if (s->master.bytes()) s->master.set(weights);
        if (s->compensation.bytes()) s->compensation.set(compensation);
      }
      // The whole range, then unaligned ranges as a ZeRO shard would give,
      // the last with its SR counters offset.
      const std::pair<size_t, size_t> ranges[] = {{0, n}, {3, n - 5}, {8, 8 * 101 + 1}};
      uint64_t t = 0;
      for (const auto& [begin, end] : ranges) {
        ++t;
        const auto grads = random_normal(n, ++seed, 1e-2f);
        emulated.grads.set(grads);
        reference.grads.set(grads);
        AdamWStep step{};
        step.lr = 3e-3f;
        step.beta1 = 0.9f;
        step.beta2 = 0.95f;
        step.eps = 1e-8f;
        step.weight_decay = t == 2 ? 0.0f : 0.1f;
        step.grad_scale = t == 3 ? 0.37f : 1.0f;
        step.bias_correction1 = float(1.0 - std::pow(0.9, double(t)));
        step.bias_correction2 = float(1.0 - std::pow(0.95, double(t)));
        step.seed = 0x5eed5eedull;
        step.step = t;
        step.index_offset = t == 3 ? 123457 : 0;
        cpu->adamw_update(mode, reference.buffers(), begin, end, step);
        gpu::adamw_update(dtype, nullptr, mode, emulated.buffers(), begin, end, step);
        const std::string what = fmt::format("{}{} step {}", precision_name(mode), f32_grads ? " (f32 gradients)" : "", t);
        check_same_bytes(what + " weights", emulated.weights, reference.weights);
        check_same_bytes(what + " m", emulated.m, reference.m);
        check_same_bytes(what + " v", emulated.v, reference.v);
        check_same_bytes(what + " master", emulated.master, reference.master);
        check_same_bytes(what + " compensation", emulated.compensation, reference.compensation);
      }
      Buffer initial(dtype, n);
      initial.set(weights);
      CHECK(emulated.weights.bytes_copy() != initial.bytes_copy());
    }
  }
}
