#pragma once
// A stand-in for a GPU backend in communicator tests. Its buffers are host
// memory behind scrambled pointers (an address bit flipped, so the pointer
// is not canonical), so code that dereferences a "device" pointer instead of
// going through upload/download crashes the test. Its name does not start
// with "cpu", so communicators treat its buffers as device memory. It has no
// GPT ops: calling one throws.
#include <cstdint>
#include <cstring>
#include <string>

#include "srgpt/backend.h"
#include "srgpt/error.h"

namespace srgpt::test {

class ScrambledMemoryBackend final : public Backend {
 public:
  ScrambledMemoryBackend() : Backend(DType::f32) {}
  std::string name() const override { return "scrambled-test-memory"; }
  bool memory_on_host() const override { return false; }
  double tensor_peak_flops() const override { return 0.0; }

  void* allocate(size_t bytes, const char*) override { return scramble(new char[bytes ? bytes : 1]); }
  void release(void* p) noexcept override { delete[] unscramble(p); }
  size_t peak_allocated_bytes() const override { return 0; }
  void upload(void* dst, const void* host_src, size_t bytes) override {
    if (bytes) std::memcpy(unscramble(dst), host_src, bytes);
  }
  void download(void* host_dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(host_dst, unscramble(src), bytes);
  }
  void fill_zero(void* dst, size_t bytes) override {
    if (bytes) std::memset(unscramble(dst), 0, bytes);
  }
  void synchronize() override {}

  void embedding_forward(void*, const int32_t*, const void*, const void*, int, int, int) override {
    no_op("embedding_forward");
  }
  void embedding_backward(void*, void*, const void*, const int32_t*, int, int, int) override {
    no_op("embedding_backward");
  }
  void residual_layernorm_forward(void*, void*, void*, void*, const void*, const void*, const void*, const void*, int,
                                  int) override {
    no_op("residual_layernorm_forward");
  }
  void layernorm_backward(void*, void*, void*, const void*, LayerNormBackwardFrom, const void*, const void*,
                          const void*, const void*, const void*, int, int) override {
    no_op("layernorm_backward");
  }
  void matmul_forward(void*, void*, const void*, const void*, const void*, int, int, int) override {
    no_op("matmul_forward");
  }
  void matmul_backward(void*, void*, void*, const void*, const void*, const void*, const void*, int, int,
                       int) override {
    no_op("matmul_backward");
  }
  void gelu_forward(void*, const void*, size_t) override { no_op("gelu_forward"); }
  void attention_forward(void*, void*, const void*, int, int, int, int) override { no_op("attention_forward"); }
  void attention_backward(void*, const void*, const void*, const void*, const void*, int, int, int, int) override {
    no_op("attention_backward");
  }
  void cross_entropy_forward_backward(void*, void*, const int32_t*, int, int, int, float) override {
    no_op("cross_entropy_forward_backward");
  }
  void accumulate(void*, DType, const void*, DType, size_t) override { no_op("accumulate"); }
  double sum_accum(const void*, size_t) override { no_op("sum_accum"); }
  double sum_squares(const void*, DType, const std::vector<ElementRange>&) override { no_op("sum_squares"); }
  bool all_finite(const void*, size_t) override { no_op("all_finite"); }
  void adamw_update(Precision, const OptimizerBuffers&, const std::vector<AdamWRange>&, const AdamWStep&) override {
    no_op("adamw_update");
  }

 private:
  static constexpr uintptr_t kScrambleBit = uintptr_t(1) << 62;
  static void* scramble(char* p) { return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) ^ kScrambleBit); }
  static char* unscramble(const void* p) {
    return reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(p) ^ kScrambleBit);
  }
  [[noreturn]] static void no_op(const char* op) { fail("the scrambled-memory test backend has no {} op", op); }
};

}  // namespace srgpt::test
