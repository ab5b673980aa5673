#pragma once
// The CUDA backend: the Backend interface over the kernels of this
// directory. Everything runs in order on one stream owned by the backend
// (the matmul backward forks onto a stream of its own and joins back);
// memory is plain cudaMalloc, counted so peak usage can be reported.
#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "attention.cuh"
#include "host_staging.cuh"
#include "matmul.cuh"
#include "memory.cuh"
#include "stream.cuh"
#include "srgpt/backend.h"

namespace srgpt::gpu {

class CudaBackend final : public Backend {
 public:
  CudaBackend(DType dtype, int device);
  ~CudaBackend() override;

  std::string name() const override;
  bool memory_on_host() const override { return false; }
  double tensor_peak_flops() const override { return tensor_peak_flops_; }

  void* allocate(size_t bytes, const char* what) override;
  void release(void* p) noexcept override;
  void upload(void* dst, const void* host_src, size_t bytes) override;
  void download(void* host_dst, const void* src, size_t bytes) override;
  void fill_zero(void* dst, size_t bytes) override;
  void synchronize() override;

  void embedding_forward(void* out, const int32_t* tokens, const void* wte, const void* wpe, int B, int T,
                         int C) override;
  void embedding_backward(void* dwte, void* dwpe, const void* dout, const int32_t* tokens, int B, int T,
                          int C) override;
  void residual_layernorm_forward(void* res_out, void* out, void* mean, void* rstd, const void* res_in,
                                  const void* delta, const void* w, const void* b, int N, int C) override;
  void layernorm_backward(void* din, void* dw, void* db, const void* dout, LayerNormBackwardFrom from, const void* x,
                          const void* w, const void* b, const void* mean, const void* rstd, int N, int C) override;
  void matmul_forward(void* out, void* gelu_pre, const void* in, const void* w, const void* bias, int N, int C,
                      int OC) override;
  void matmul_backward(void* din, void* dw, void* db, const void* dout, const void* in, const void* w,
                       const void* gelu_pre, int N, int C, int OC) override;
  void gelu_forward(void* out, const void* pre, size_t n) override;
  void attention_forward(void* out, void* lse, const void* qkv, int B, int T, int C, int H) override;
  void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out, const void* lse, int B,
                          int T, int C, int H) override;
  void cross_entropy_forward_backward(void* losses, void* logits, const int32_t* targets, int N, int V, int Vp,
                                      float dloss) override;
  void accumulate(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t n) override;
  double sum_accum(const void* x, size_t n) override;
  double sum_squares(const void* x, DType x_dtype, const std::vector<ElementRange>& ranges) override;
  bool all_finite(const void* x, size_t n) override;
  void adamw_update(Precision mode, const OptimizerBuffers& buffers, const std::vector<AdamWRange>& ranges,
                    const AdamWStep& step) override;

  // The tensor-core attention's strategies (attention.cuh);
  // SRGPT_ATTENTION_FORWARD and SRGPT_ATTENTION_BACKWARD choose them at
  // construction. Choosing wgmma where this build or GPU cannot run it
  // fails, saying why.
  AttentionForward attention_forward_strategy() const { return attention_forward_; }
  void set_attention_forward_strategy(AttentionForward how);
  AttentionBackward attention_backward_strategy() const { return attention_backward_; }
  void set_attention_backward_strategy(AttentionBackward how);

  // The matmuls' cuBLASLt state: which epilogues it fused, and the
  // weight-gradient stream switch (for measuring).
  Matmul& matmul() { return *matmul_; }

  cudaStream_t stream() const { return stream_.get(); }
  // The most bytes of device memory this backend held.
  size_t peak_allocated_bytes() const override { return memory_.peak_bytes(); }

 private:
  int device_;
  std::string device_name_;
  double tensor_peak_flops_ = 0;
  AttentionForward attention_forward_;
  AttentionBackward attention_backward_;
  // Declaration order is destruction order reversed: the stream outlives
  // the scratch and matmul state that enqueue work on it.
  StreamHandle stream_;
  PinnedUploadStaging staging_;
  DeviceMemory memory_;
  Scratch scratch_;
  std::unique_ptr<Matmul> matmul_;
};

}  // namespace srgpt::gpu
