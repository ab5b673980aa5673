// The cpu backend: host memory and the op templates of src/cpu/*.cpp behind
// the Backend interface, one class template over the storage type.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_map>

#include "cpu_ops.h"
#include "srgpt/backend.h"
#include "srgpt/error.h"
#include "srgpt/memory_advice.h"

namespace srgpt {
namespace {

template <typename S>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<bf16>() {
  return DType::bf16;
}
template <>
constexpr DType dtype_of<float>() {
  return DType::f32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::f64;
}

// Cache-line alignment, also enough for any vector load.
constexpr size_t kAlignment = 64;

template <typename S>
class CpuBackend final : public Backend {
 public:
  using M = cpu::Math<S>;

  CpuBackend() : Backend(dtype_of<S>()) {}

  std::string name() const override { return std::string("cpu-") + dtype_name(dtype()); }
  bool memory_on_host() const override { return true; }
  double tensor_peak_flops() const override { return 0.0; }

  void* allocate(size_t bytes, const char* what) override {
    // aligned_alloc wants a multiple of the alignment; a zero-byte request
    // still gets a distinct pointer so release() stays uniform.
    size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    if (rounded == 0) rounded = kAlignment;
    void* p = std::aligned_alloc(kAlignment, rounded);
    if (!p)
      fail("cpu backend: out of host memory allocating {} ({:.1f} MiB) for {}; srgpt already holds {:.1f} MiB. {}",
           bytes, double(bytes) / (1 << 20), what ? what : "a buffer", double(current_) / (1 << 20), kMemoryAdvice);
    sizes_[p] = bytes;
    current_ += bytes;
    peak_ = std::max(peak_, current_);
    return p;
  }
  void release(void* p) noexcept override {
    auto it = sizes_.find(p);
    if (it == sizes_.end()) return;  // not ours (or null): never free foreign pointers, as the cuda backend
    current_ -= it->second;
    sizes_.erase(it);
    std::free(p);
  }
  size_t peak_allocated_bytes() const override { return peak_; }
  void upload(void* dst, const void* host_src, size_t bytes) override {
    if (bytes) std::memcpy(dst, host_src, bytes);
  }
  void download(void* host_dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(host_dst, src, bytes);
  }
  void fill_zero(void* dst, size_t bytes) override {
    if (bytes) std::memset(dst, 0, bytes);
  }
  void synchronize() override {}

  void embedding_forward(void* out, const int32_t* tokens, const void* wte, const void* wpe, int B, int T,
                         int C) override {
    cpu::embedding_forward(st(out), tokens, st(wte), st(wpe), B, T, C);
  }
  void embedding_backward(void* dwte, void* dwpe, const void* dout, const int32_t* tokens, int B, int T,
                          int C) override {
    cpu::embedding_backward(st(dwte), st(dwpe), st(dout), tokens, B, T, C);
  }
  void residual_layernorm_forward(void* res_out, void* out, void* mean, void* rstd, const void* res_in,
                                  const void* delta, const void* w, const void* b, int N, int C) override {
    cpu::residual_layernorm_forward(st(res_out), st(out), acc(mean), acc(rstd), st(res_in), st(delta), st(w), st(b), N,
                                    C);
  }
  void layernorm_backward(void* din, void* dw, void* db, const void* dout, LayerNormBackwardFrom from, const void* x,
                          const void* w, const void* b, const void* mean, const void* rstd, int N, int C) override {
    cpu::layernorm_backward(st(din), st(dw), st(db), st(dout), from, st(x), st(w), st(b), acc(mean), acc(rstd), N, C);
  }
  void matmul_forward(void* out, void* gelu_pre, const void* in, const void* w, const void* bias, int N, int C,
                      int OC) override {
    cpu::matmul_forward(st(out), st(gelu_pre), st(in), st(w), st(bias), N, C, OC);
  }
  void matmul_backward(void* din, void* dw, void* db, const void* dout, const void* in, const void* w,
                       const void* gelu_pre, int N, int C, int OC) override {
    cpu::matmul_backward(st(din), st(dw), st(db), st(dout), st(in), st(w), st(gelu_pre), N, C, OC);
  }
  void gelu_forward(void* out, const void* pre, size_t n) override { cpu::gelu_forward(st(out), st(pre), n); }
  void attention_forward(void* out, void* lse, const void* qkv, int B, int T, int C, int H) override {
    cpu::attention_forward(st(out), acc(lse), st(qkv), B, T, C, H);
  }
  void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out, const void* lse, int B,
                          int T, int C, int H) override {
    cpu::attention_backward(st(dqkv), st(dout), st(qkv), st(out), acc(lse), B, T, C, H);
  }
  void cross_entropy_forward_backward(void* losses, void* logits, const int32_t* targets, int N, int V, int Vp,
                                      float dloss) override {
    cpu::cross_entropy_forward_backward(acc(losses), st(logits), targets, N, V, Vp, dloss);
  }
  void accumulate(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t n) override {
    if (dst_dtype == dtype() && src_dtype == dtype()) return cpu::accumulate_into(st(dst), st(src), n);
    // f32 gradients exist on bf16 backends only (param_store.h).
    if constexpr (std::is_same_v<S, bf16>) {
      if (dst_dtype == DType::f32 && src_dtype == DType::bf16)
        return cpu::accumulate_into(static_cast<float*>(dst), st(src), n);
      if (dst_dtype == DType::f32 && src_dtype == DType::f32)
        return cpu::accumulate_into(static_cast<float*>(dst), static_cast<const float*>(src), n);
    }
    fail("cpu backend ({}): accumulate of {} into {} is not supported (allowed: into {} or f32)",
         dtype_name(dtype()), dtype_name(src_dtype), dtype_name(dst_dtype), dtype_name(dtype()));
  }
  double sum_accum(const void* x, size_t n) override { return cpu::sum_accum(acc(x), n); }
  double sum_squares(const void* x, DType x_dtype, const std::vector<ElementRange>& ranges) override {
    check_ranges("sum_squares", "cpu", ranges);
    auto sum = [&](const auto* data) {
      double total = 0;
      for (const ElementRange& r : ranges) total += cpu::sum_squares(data + r.begin, r.end - r.begin);
      return total;
    };
    if (x_dtype == dtype()) return sum(st(x));
    if (x_dtype == DType::f32 && dtype() == DType::bf16) return sum(static_cast<const float*>(x));
    fail("cpu backend ({}): sum_squares of {} data is not supported (allowed: {} or f32)", dtype_name(dtype()),
         dtype_name(x_dtype), dtype_name(dtype()));
  }
  bool all_finite(const void* x, size_t n) override { return cpu::all_finite(st(x), n); }

  void adamw_update(Precision mode, const OptimizerBuffers& buffers, const std::vector<AdamWRange>& ranges,
                    const AdamWStep& step) override {
    cpu::adamw_update(dtype(), mode, buffers, ranges, step);
  }

 private:
  // Typed views of backend memory: storage (st) and statistics (acc).
  static S* st(void* p) { return static_cast<S*>(p); }
  static const S* st(const void* p) { return static_cast<const S*>(p); }
  std::unordered_map<void*, size_t> sizes_;  // for the memory report
  size_t current_ = 0, peak_ = 0;
  static M* acc(void* p) { return static_cast<M*>(p); }
  static const M* acc(const void* p) { return static_cast<const M*>(p); }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(DType dtype) {
  switch (dtype) {
    case DType::bf16: return std::make_unique<CpuBackend<bf16>>();
    case DType::f32: return std::make_unique<CpuBackend<float>>();
    case DType::f64: return std::make_unique<CpuBackend<double>>();
  }
  fail("cpu backend: unknown dtype {} (allowed: bf16, f32, f64)", int(dtype));
}

}  // namespace srgpt
