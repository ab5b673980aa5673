#pragma once
// Helpers for the GPU tests: the same tensor on the cpu (reference) and
// cuda backends, random inputs, poisoned outputs and error measures.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "catch.h"
#include "srgpt/backend.h"
#include "srgpt/bf16.h"
#include "srgpt/error.h"

namespace srgpt::gpu_test {

// True when a CUDA device is visible. Without one the tests pass vacuously
// with a warning (CI builds them but has no GPU), unless SRGPT_REQUIRE_GPU is
// set, as scripts/gpu_check.sh does on the GPU host, where it is a failure.
inline bool have_gpu() {
  if (cuda_device_count() > 0) return true;
  if (std::getenv("SRGPT_REQUIRE_GPU")) FAIL("SRGPT_REQUIRE_GPU is set but no CUDA device is visible");
  WARN("no CUDA device visible: GPU test skipped");
  return false;
}

// True when this build has NCCL. Without it the NCCL tests pass vacuously
// with a warning, unless SRGPT_REQUIRE_GPU is set (the GPU host), where a
// build that missed NCCL is a failure.
inline bool have_nccl() {
#ifdef SRGPT_HAVE_NCCL
  return true;
#else
  if (std::getenv("SRGPT_REQUIRE_GPU")) FAIL("SRGPT_REQUIRE_GPU is set but this build has no NCCL");
  WARN("this build has no NCCL: test skipped");
  return false;
#endif
}

// Storage bytes of float values in a dtype (bf16 rounded to nearest).
inline std::vector<uint8_t> to_bytes(DType dtype, const std::vector<float>& values) {
  std::vector<uint8_t> bytes(values.size() * dtype_size(dtype));
  if (dtype == DType::bf16) {
    for (size_t i = 0; i < values.size(); ++i) {
      const bf16 b = float_to_bf16_rn(values[i]);
      std::memcpy(bytes.data() + 2 * i, &b, 2);
    }
  } else if (dtype == DType::f32) {
    std::memcpy(bytes.data(), values.data(), bytes.size());
  } else {
    for (size_t i = 0; i < values.size(); ++i) {
      const double d = values[i];
      std::memcpy(bytes.data() + 8 * i, &d, 8);
    }
  }
  return bytes;
}

inline std::vector<float> from_bytes(DType dtype, const std::vector<uint8_t>& bytes) {
  const size_t n = bytes.size() / dtype_size(dtype);
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i) {
    if (dtype == DType::bf16) {
      bf16 b;
      std::memcpy(&b, bytes.data() + 2 * i, 2);
      values[i] = bf16_to_float(b);
    } else if (dtype == DType::f32) {
      std::memcpy(&values[i], bytes.data() + 4 * i, 4);
    } else {
      double d;
      std::memcpy(&d, bytes.data() + 8 * i, 8);
      values[i] = float(d);
    }
  }
  return values;
}

// Values drawn from N(0, stddev^2) (fixed seed per call site).
inline std::vector<float> random_normal(size_t n, uint64_t seed, float stddev = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline std::vector<int32_t> random_tokens(size_t n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> v(n);
  for (int32_t& x : v) x = dist(rng);
  return v;
}

// One tensor on one backend: `count` elements of `dtype`, with optional
// leading padding so that the tensor starts `offset` elements into its
// allocation (to exercise unaligned pointers).
class Tensor {
 public:
  Tensor(Backend& backend, DType dtype, size_t count, size_t offset = 0)
      : backend_(&backend),
        dtype_(dtype),
        count_(count),
        offset_(offset),
        buffer_(backend, (count + offset) * dtype_size(dtype), "test tensor") {}

  void* get() const { return static_cast<uint8_t*>(buffer_.get()) + offset_ * dtype_size(dtype_); }
  size_t count() const { return count_; }
  DType dtype() const { return dtype_; }

  void set(const std::vector<float>& values) {
    REQUIRE(values.size() == count_);
    const auto bytes = to_bytes(dtype_, values);
    backend_->upload(get(), bytes.data(), bytes.size());
  }
  void set_bytes(const std::vector<uint8_t>& bytes) {
    REQUIRE(bytes.size() == count_ * dtype_size(dtype_));
    backend_->upload(get(), bytes.data(), bytes.size());
  }
  // Every byte 0xFF: NaN in bf16, f32 and f64, so an element the op should
  // have written but did not shows up as NaN.
  void poison() { set_bytes(std::vector<uint8_t>(count_ * dtype_size(dtype_), 0xFF)); }
  std::vector<float> values() const { return from_bytes(dtype_, bytes()); }
  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out(count_ * dtype_size(dtype_));
    backend_->download(out.data(), get(), out.size());
    return out;
  }

 private:
  Backend* backend_;
  DType dtype_;
  size_t count_, offset_;
  DeviceBuffer buffer_;
};

// The cpu reference backend and the cuda backend for one storage dtype.
struct Backends {
  explicit Backends(DType dtype) : dtype(dtype), cpu(make_cpu_backend(dtype)), gpu(make_cuda_backend(dtype, 0)) {}
  DType dtype;
  std::unique_ptr<Backend> cpu, gpu;
};

// A tensor on both backends with the same contents.
struct Pair {
  Pair(Backends& b, DType dtype, size_t count, size_t gpu_offset = 0)
      : cpu(*b.cpu, dtype, count), gpu(*b.gpu, dtype, count, gpu_offset) {}
  void set(const std::vector<float>& values) {
    cpu.set(values);
    gpu.set(values);
  }
  void poison() {
    cpu.poison();
    gpu.poison();
  }
  Tensor cpu, gpu;
};

inline size_t count_non_finite(const std::vector<float>& v) {
  size_t n = 0;
  for (float x : v)
    if (!std::isfinite(x)) ++n;
  return n;
}

// ||a - b|| / ||b||, or ||a - b|| when b is zero.
inline double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = double(a[i]) - double(b[i]);
    diff += d * d;
    norm += double(b[i]) * double(b[i]);
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

// Compares the GPU result of a tensor with the cpu reference: every GPU
// element written and finite (outputs are poisoned first), and the relative
// error within `bound`. Prints the measured error, so a GPU run's log
// records how close each op came.
inline void check_close(const std::string& what, const Tensor& gpu, const Tensor& cpu, double bound) {
  const auto g = gpu.values(), c = cpu.values();
  const size_t cpu_bad = count_non_finite(c), gpu_bad = count_non_finite(g);
  const double error = relative_error(g, c);
  std::printf("[gpu] %-60s rel.err %.3e (bound %.1e)%s\n", what.c_str(), error, bound,
              gpu_bad ? "  NON-FINITE OUTPUT" : "");
  INFO(what << ": relative error " << error << ", bound " << bound << ", non-finite gpu " << gpu_bad << " cpu "
            << cpu_bad);
  REQUIRE(cpu_bad == 0);
  CHECK(gpu_bad == 0);
  CHECK(error <= bound);
}

inline void check_same_bytes(const std::string& what, const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  INFO(what);
  REQUIRE(a.size() == b.size());
  size_t mismatches = 0, first = a.size();
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) {
      if (!mismatches) first = i;
      ++mismatches;
    }
  INFO("mismatching bytes: " << mismatches << " (first at byte " << first << ")");
  CHECK(mismatches == 0);
}

// Relative-error bounds per storage dtype. f32: fp32 arithmetic in another
// summation order. bf16: both sides round outputs to bf16 (one ulp is
// 2^-8 relative); the tensor-core attention also rounds the probabilities
// to bf16 before P V, hence its looser bound.
inline double bound_for(DType dtype, double bf16_bound, double f32_bound = 1e-5) {
  return dtype == DType::bf16 ? bf16_bound : f32_bound;
}

inline const char* name_of(DType dtype) { return dtype_name(dtype); }

}  // namespace srgpt::gpu_test
