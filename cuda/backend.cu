#include "accumulate.cuh"
#include "adamw.cuh"
#include "attention.cuh"
#include "backend.cuh"
#include "cross_entropy.cuh"
#include "cuda_check.cuh"
#include "embedding.cuh"
#include "gelu.cuh"
#include "layernorm.cuh"
#include "reduce.cuh"
#include "srgpt/error.h"

namespace srgpt {
namespace gpu {
namespace {

StreamHandle open_device_stream(DType dtype, int device) {
  if (dtype != DType::bf16 && dtype != DType::f32)
    fail("cuda backend: dtype {} is not supported on the GPU (allowed: bf16, f32)", dtype_name(dtype));
  int count = 0;
  CUDA_CHECK(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count)
    fail("cuda backend: device {} does not exist ({} CUDA device(s) visible)", device, count);
  CUDA_CHECK(cudaSetDevice(device));
  return make_stream();
}

// Fails, naming `choice` and saying why, where this build and GPU cannot run
// the attention strategy `how` (the wgmma ones need Hopper and sm_90a code).
template <typename Strategy>
void require_attention(Strategy how, const std::string& choice) {
  std::string why;
  if (!attention_runs_here(how, &why)) fail("{} cannot run here: {}", choice, why);
}

// The current device's dense bf16 tensor-core FLOPs per SM per clock (fp32
// accumulation) for the compute capabilities whose rate is known: A100
// (8.0), H100 and H200 (9.0); 0 for others (GeForce parts of one capability
// differ among themselves). Times the SMs and their highest clock: on an
// H100 SXM, 132 x 1980 MHz x 4096 = 1071 TFLOP/s (the datasheet's 989
// assumes a 1830 MHz clock; an 8192^3 cuBLAS matmul reaches about 790).
double dense_bf16_peak_flops() {
  const int major = current_device_attribute(cudaDevAttrComputeCapabilityMajor),
            minor = current_device_attribute(cudaDevAttrComputeCapabilityMinor);
  const double per_sm_clock = major == 8 && minor == 0 ? 2048 : major == 9 && minor == 0 ? 4096 : 0;
  return per_sm_clock * current_device_attribute(cudaDevAttrMultiProcessorCount) *
         current_device_attribute(cudaDevAttrClockRate) * 1e3;
}

}  // namespace

CudaBackend::CudaBackend(DType dtype, int device)
    : Backend(dtype),
      device_(device),
      attention_forward_(attention_forward_from_environment()),
      attention_backward_(attention_backward_from_environment()),
      stream_(open_device_stream(dtype, device)),
      scratch_(memory_) {
  cudaDeviceProp properties{};
  CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  device_name_ = properties.name;
  tensor_peak_flops_ = dense_bf16_peak_flops();  // open_device_stream made `device` current
  matmul_ = std::make_unique<Matmul>(memory_);
  require_attention(attention_forward_,
                    fmt::format("{}={}", kAttentionForwardEnv, attention_forward_name(attention_forward_)));
  require_attention(attention_backward_,
                    fmt::format("{}={}", kAttentionBackwardEnv, attention_backward_name(attention_backward_)));
}

void CudaBackend::set_attention_forward_strategy(AttentionForward how) {
  require_attention(how, fmt::format("the {} attention forward", attention_forward_name(how)));
  attention_forward_ = how;
}

void CudaBackend::set_attention_backward_strategy(AttentionBackward how) {
  require_attention(how, fmt::format("the {} attention backward", attention_backward_name(how)));
  attention_backward_ = how;
}

CudaBackend::~CudaBackend() {
  // Let queued work finish before its buffers go away.
  CUDA_RELEASE_CHECK(cudaStreamSynchronize(stream_.get()));
}

std::string CudaBackend::name() const {
  // The default attention strategies go unnamed; others show in logs.
  std::string attention;
  if (attention_forward_ != AttentionForward::mma)
    attention += std::string(", ") + attention_forward_name(attention_forward_) + " attention forward";
  if (attention_backward_ != AttentionBackward::one_pass)
    attention += std::string(", ") + attention_backward_name(attention_backward_) + " attention backward";
  return std::string("cuda-") + dtype_name(dtype()) + " (" + device_name_ + ", device " + std::to_string(device_) +
         attention + ")";
}

void* CudaBackend::allocate(size_t bytes, const char* what) { return memory_.allocate(bytes, what); }

void CudaBackend::release(void* p) noexcept {
  // cudaFree waits for the device, so no queued kernel still uses p.
  memory_.release(p);
}

void CudaBackend::upload(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  // Ordered with the kernels on our stream; returns once host_src has been
  // read (host_staging.cuh).
  staging_.upload(stream_.get(), dst, host_src, bytes);
}

void CudaBackend::download(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_.get()));
  CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
}

void CudaBackend::fill_zero(void* dst, size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream_.get()));
}

void CudaBackend::synchronize() { CUDA_CHECK(cudaStreamSynchronize(stream_.get())); }

void CudaBackend::embedding_forward(void* out, const int32_t* tokens, const void* wte, const void* wpe, int B, int T,
                                    int C) {
  gpu::embedding_forward(dtype(), stream(), out, tokens, wte, wpe, B, T, C);
}

void CudaBackend::embedding_backward(void* dwte, void* dwpe, const void* dout, const int32_t* tokens, int B, int T,
                                     int C) {
  gpu::embedding_backward(dtype(), stream(), scratch_, dwte, dwpe, dout, tokens, B, T, C);
}

void CudaBackend::residual_layernorm_forward(void* res_out, void* out, void* mean, void* rstd, const void* res_in,
                                             const void* delta, const void* w, const void* b, int N, int C) {
  gpu::residual_layernorm_forward(dtype(), stream(), res_out, out, static_cast<float*>(mean),
                                  static_cast<float*>(rstd), res_in, delta, w, b, N, C);
}

void CudaBackend::layernorm_backward(void* din, void* dw, void* db, const void* dout, LayerNormBackwardFrom from,
                                     const void* x, const void* w, const void* b, const void* mean, const void* rstd,
                                     int N, int C) {
  gpu::layernorm_backward(dtype(), stream(), scratch_, din, dw, db, dout, from, x, w, b,
                          static_cast<const float*>(mean), static_cast<const float*>(rstd), N, C);
}

void CudaBackend::matmul_forward(void* out, void* gelu_pre, const void* in, const void* w, const void* bias, int N,
                                 int C, int OC) {
  matmul_->forward(dtype(), stream(), scratch_, out, gelu_pre, in, w, bias, N, C, OC);
}

void CudaBackend::matmul_backward(void* din, void* dw, void* db, const void* dout, const void* in, const void* w,
                                  const void* gelu_pre, int N, int C, int OC) {
  matmul_->backward(dtype(), stream(), scratch_, din, dw, db, dout, in, w, gelu_pre, N, C, OC);
}

void CudaBackend::gelu_forward(void* out, const void* pre, size_t n) {
  gpu::gelu_forward(dtype(), stream(), out, pre, n);
}

void CudaBackend::attention_forward(void* out, void* lse, const void* qkv, int B, int T, int C, int H) {
  gpu::attention_forward(dtype(), stream(), attention_forward_, out, static_cast<float*>(lse), qkv, B, T, C, H);
}

void CudaBackend::attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out, const void* lse,
                                     int B, int T, int C, int H) {
  gpu::attention_backward(dtype(), stream(), scratch_, attention_backward_, dqkv, dout, qkv, out,
                          static_cast<const float*>(lse), B, T, C, H);
}

void CudaBackend::cross_entropy_forward_backward(void* losses, void* logits, const int32_t* targets, int N, int V,
                                                 int Vp, float dloss) {
  gpu::cross_entropy_forward_backward(dtype(), stream(), static_cast<float*>(losses), logits, targets, N, V, Vp,
                                      dloss);
}

void CudaBackend::accumulate(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t n) {
  gpu::accumulate(dtype(), stream(), dst, dst_dtype, src, src_dtype, n);
}

double CudaBackend::sum_accum(const void* x, size_t n) {
  return gpu::sum_accum(stream(), scratch_, static_cast<const float*>(x), n);
}

double CudaBackend::sum_squares(const void* x, DType x_dtype, const std::vector<ElementRange>& ranges) {
  if (x_dtype != dtype() && x_dtype != DType::f32)
    fail("cuda backend ({}): sum_squares of {} data is not supported (allowed: {} or f32)", dtype_name(dtype()),
         dtype_name(x_dtype), dtype_name(dtype()));
  check_ranges("sum_squares", "cuda", ranges);
  return gpu::sum_squares(x_dtype, stream(), scratch_, x, ranges);
}

bool CudaBackend::all_finite(const void* x, size_t n) { return gpu::all_finite(dtype(), stream(), scratch_, x, n); }

void CudaBackend::adamw_update(Precision mode, const OptimizerBuffers& buffers, const std::vector<AdamWRange>& ranges,
                               const AdamWStep& step) {
  gpu::adamw_update(dtype(), stream(), mode, buffers, ranges, step);
}

}  // namespace gpu

std::unique_ptr<Backend> make_cuda_backend(DType dtype, int device) {
  return std::make_unique<gpu::CudaBackend>(dtype, device);
}

int cuda_device_count(std::string* error) {
  int count = 0;
  // No driver (reported as a driver too old for the runtime), or no device:
  // no GPU to use; the caller decides whether that is an error.
  if (const cudaError_t status = cudaGetDeviceCount(&count); status != cudaSuccess) {
    cudaGetLastError();
    if (error) *error = fmt::format("cudaGetDeviceCount: {}: {}", cudaGetErrorName(status), cudaGetErrorString(status));
    return 0;
  }
  return count;
}

}  // namespace srgpt
