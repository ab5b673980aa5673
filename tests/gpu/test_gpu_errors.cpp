// The cuda backend's errors: unsupported dtype, missing device, and an
// out-of-memory message that says what, how much and which knob to turn.
#include <cstdlib>
#include <string>
#include <vector>

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
  CHECK_THROWS_WITH(make_cuda_backend(DType::bf16, missing),
                    contains_substring("cuda backend: device " + std::to_string(missing) + " does not exist"));
  CHECK_THROWS_WITH(make_cuda_backend(DType::bf16, -1), contains_substring("cuda backend: device -1 does not exist"));
}

namespace {

// An attention strategy variable (cuda/attention.cuh): unset gives the
// default, unnamed in the backend's name; each allowed value gives its
// strategy, named there as "<value> attention <pass>"; anything else fails
// naming the variable, the value and the allowed values. One this build
// and GPU do not run (attention_support) fails at construction, saying
// "cannot run here".
template <typename Strategy, size_t N>
void check_strategy_variable(const char* variable, const char* pass, const Strategy (&choices)[N],
                             const char* (*name)(Strategy), Strategy (*strategy_of)(const Backend&)) {
  const char* before = std::getenv(variable);
  const std::string saved = before ? before : "";
  std::string allowed;
  for (Strategy how : choices) allowed += (allowed.empty() ? "" : ", ") + std::string(name(how));

  unsetenv(variable);
  auto plain = make_cuda_backend(DType::bf16, 0);
  CHECK(strategy_of(*plain) == choices[0]);
  CHECK(plain->name().find(std::string("attention ") + pass) == std::string::npos);
  for (Strategy how : choices) {
    setenv(variable, name(how), 1);
    INFO(variable << "=" << name(how));
    std::string why;
    if (!gpu::attention_runs_here(how, &why)) {
      try {
        make_cuda_backend(DType::bf16, 0);
        FAIL("a strategy this GPU cannot run was accepted");
      } catch (const Error& e) {
        CHECK(std::string(e.what()).find("cannot run here") != std::string::npos);
      }
      continue;
    }
    auto chosen = make_cuda_backend(DType::bf16, 0);
    CHECK(strategy_of(*chosen) == how);
    if (how != choices[0])
      CHECK(chosen->name().find(std::string(name(how)) + " attention " + pass) != std::string::npos);
  }
  const std::string misspelt = std::string(name(choices[N - 1])) + " ";
  for (const std::string& bad : {std::string(), misspelt, std::string("Two_pass")}) {
    setenv(variable, bad.c_str(), 1);
    try {
      make_cuda_backend(DType::bf16, 0);
      FAIL(variable << "='" << bad << "' was accepted");
    } catch (const Error& e) {
      const std::string message = e.what();
      INFO(message);
      CHECK(message.find(std::string(variable) + "='" + bad + "'") != std::string::npos);
      CHECK(message.find("allowed: " + allowed) != std::string::npos);
    }
  }
  if (before)
    setenv(variable, saved.c_str(), 1);
  else
    unsetenv(variable);
}

}  // namespace

TEST_CASE("SRGPT_ATTENTION_BACKWARD chooses the attention backward and refuses other values", "[gpu]") {
  if (!have_gpu()) return;
  check_strategy_variable<gpu::AttentionBackward>(
      gpu::kAttentionBackwardEnv, "backward", gpu::kAttentionBackwards, gpu::attention_backward_name,
      [](const Backend& be) { return dynamic_cast<const gpu::CudaBackend&>(be).attention_backward_strategy(); });
}

TEST_CASE("SRGPT_ATTENTION_FORWARD chooses the attention forward and refuses other values", "[gpu]") {
  if (!have_gpu()) return;
  check_strategy_variable<gpu::AttentionForward>(
      gpu::kAttentionForwardEnv, "forward", gpu::kAttentionForwards, gpu::attention_forward_name,
      [](const Backend& be) { return dynamic_cast<const gpu::CudaBackend&>(be).attention_forward_strategy(); });
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
    CHECK(message.find("train.layernorm_backward_from") != std::string::npos);
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
