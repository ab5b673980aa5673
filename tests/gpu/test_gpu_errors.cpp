// The cuda backend's errors: unsupported dtype, missing device, and an
// out-of-memory message that says what, how much and which knob to turn.
#include <cstdlib>

#include "backend.cuh"
#include "gpu_test_util.h"
#include "srgpt/error.h"

using namespace srgpt;
using namespace srgpt::gpu_test;

TEST_CASE("gpu backend refuses f64 and devices that do not exist", "[gpu]") {
  if (!have_gpu()) return;
  try {
    make_cuda_backend(DType::f64, 0);
    FAIL("make_cuda_backend(f64) did not throw");
  } catch (const Error& e) {
    const std::string message = e.what();
    INFO(message);
    CHECK(message.find("f64") != std::string::npos);
  }
  const int missing = cuda_device_count();
  REQUIRE_THROWS_AS(make_cuda_backend(DType::bf16, missing), Error);
  REQUIRE_THROWS_AS(make_cuda_backend(DType::bf16, -1), Error);
}

TEST_CASE("SRGPT_ATTENTION_BACKWARD chooses the attention backward and refuses other values", "[gpu]") {
  if (!have_gpu()) return;
  const char* variable = gpu::kAttentionBackwardEnv;
  const char* before = std::getenv(variable);
  const std::string saved = before ? before : "";
  auto strategy_of = [](const Backend& be) {
    return dynamic_cast<const gpu::CudaBackend&>(be).attention_backward_strategy();
  };

  unsetenv(variable);
  auto plain = make_cuda_backend(DType::bf16, 0);
  CHECK(strategy_of(*plain) == gpu::AttentionBackward::one_pass);
  CHECK(plain->name().find("attention") == std::string::npos);
  setenv(variable, "two-pass", 1);
  auto two_pass = make_cuda_backend(DType::bf16, 0);
  CHECK(strategy_of(*two_pass) == gpu::AttentionBackward::two_pass);
  CHECK(two_pass->name().find("two-pass attention backward") != std::string::npos);
  setenv(variable, "one-pass", 1);
  CHECK(strategy_of(*make_cuda_backend(DType::bf16, 0)) == gpu::AttentionBackward::one_pass);
  for (const char* bad : {"", "two_pass", "Two-pass", "one-pass "}) {
    setenv(variable, bad, 1);
    try {
      make_cuda_backend(DType::bf16, 0);
      FAIL("SRGPT_ATTENTION_BACKWARD='" << bad << "' was accepted");
    } catch (const Error& e) {
      const std::string message = e.what();
      INFO(message);
      CHECK(message.find(std::string("SRGPT_ATTENTION_BACKWARD='") + bad + "'") != std::string::npos);
      CHECK(message.find("allowed: one-pass, two-pass") != std::string::npos);
    }
  }
  if (before)
    setenv(variable, saved.c_str(), 1);
  else
    unsetenv(variable);
}

TEST_CASE("gpu out-of-memory names the buffer, the size, the free memory and micro_batch", "[gpu]") {
  if (!have_gpu()) return;
  auto gpu = make_cuda_backend(DType::bf16, 0);
  try {
    void* p = gpu->allocate(size_t(1) << 50, "activations for the test");
    gpu->release(p);
    FAIL("allocating a petabyte did not throw");
  } catch (const Error& e) {
    const std::string message = e.what();
    INFO(message);
    CHECK(message.find("activations for the test") != std::string::npos);
    CHECK(message.find("MiB") != std::string::npos);
    CHECK(message.find("free") != std::string::npos);
    CHECK(message.find("batch.micro_batch") != std::string::npos);
    CHECK(message.find("train.recompute") != std::string::npos);
    CHECK(message.find("train.lm_head_chunks") != std::string::npos);
  }
  // The backend still works after the failed allocation.
  Tensor t(*gpu, DType::bf16, 1000);
  t.set(random_normal(1000, 900));
  CHECK(gpu->all_finite(t.get(), 1000));
}

TEST_CASE("gpu backend upload, download and fill_zero round-trip", "[gpu]") {
  if (!have_gpu()) return;
  auto gpu = make_cuda_backend(DType::f32, 0);
  const auto values = random_normal(4097, 901);
  Tensor t(*gpu, DType::f32, values.size());
  t.set(values);
  CHECK(t.values() == values);
  gpu->fill_zero(t.get(), values.size() * sizeof(float));
  CHECK(t.values() == std::vector<float>(values.size(), 0.0f));
  CHECK(gpu->name().find("cuda") != std::string::npos);
}
