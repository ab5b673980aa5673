// The kernels that use shared memory and barriers (attention, cross-entropy,
// layernorm, the reductions), run by the CPU device emulator against the
// cpu backend under every emulator schedule, on fresh random inputs with
// outputs poisoned first: a missing or misplaced barrier fails under at
// least one schedule. The whole GPU test suite (tests/gpu) also runs on the
// emulated backend, under the default schedule (srgpt_emulated_backend_tests);
// this file adds the other schedules, at shapes small enough to run four
// times. Bounds follow tests/gpu/test_gpu_ops.cpp; the emulated mma
// accumulates in double, so results are if anything closer.
#include <spdlog/fmt/fmt.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "attention.cuh"
#include "catch.h"
#include "cross_entropy.cuh"
#include "device_emulator.h"
#include "layernorm.cuh"
#include "memory.cuh"
#include "reduce.cuh"
#include "srgpt/backend.h"
#include "srgpt/bf16.h"
#include "srgpt/error.h"

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
