#pragma once
// Matmuls through cuBLASLt with fp32 accumulation: bias and, in bf16, GELU
// (GELU_AUX) and its derivative (DGELU) fused as epilogues where cuBLASLt
// supports the shape; otherwise GELU applied to the stored pre-activation by
// gelu_forward, and a plain product into fp32 scratch with an epilogue
// kernel where no algorithm fits.
// Bias gradients come from cuBLASLt's BGRADB epilogue on the weight-gradient
// product where it supports the shape, else from the deterministic column
// reduction of reduce.cuh.
// In backward the weight gradient runs on a second stream, beside the input
// gradient: its output (C x OC) has few tiles, so alone it leaves SMs idle
// in its last wave, which the input-gradient product fills. The caller's
// stream waits for both before backward's work counts as done. (Whether
// that overlap pays is for the GPU benchmark to show: it can switch it
// off.)
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "memory.cuh"
#include "stream.cuh"
#include "srgpt/dtype.h"

namespace srgpt::gpu {

class Matmul {
 public:
  // Creates the cuBLASLt handle, the weight-gradient stream and a workspace
  // per stream (from `memory`).
  explicit Matmul(DeviceMemory& memory);
  Matmul(const Matmul&) = delete;
  Matmul& operator=(const Matmul&) = delete;
  ~Matmul();

  void forward(DType dtype, cudaStream_t stream, Scratch& scratch, void* out, void* gelu_pre, const void* in,
               const void* w, const void* bias, int N, int C, int OC);
  void backward(DType dtype, cudaStream_t stream, Scratch& scratch, void* din, void* dw, void* db, const void* dout,
                const void* in, const void* w, const void* gelu_pre, int N, int C, int OC);

  // The weight gradient on its own stream (true, the default) or on the
  // caller's: the same products in the same order, so the same bits.
  void set_weight_gradient_overlap(bool overlap) { overlap_weight_gradient_ = overlap; }

  // What cuBLASLt made of each fused epilogue asked for so far: on how many
  // of the products (distinct shapes, types and alignments) it was tried,
  // and how many of them cuBLASLt runs fused; the rest took the unfused
  // path. Which it fuses depends on its version and the operands.
  struct EpilogueUse {
    std::string epilogue;  // "BIAS", "GELU_AUX_BIAS", "DGELU", "BGRADB", ...
    int products = 0, fused = 0;
  };
  std::vector<EpilogueUse> epilogue_uses() const;

 private:
  // One column-major product D = op(A) op(B) + beta * D, with an optional
  // epilogue (bias pointer, GELU aux matrix).
  struct Gemm {
    DType dtype = DType::bf16;  // of A, B, D (unless d_is_float) and bias
    bool d_is_float = false;  // D in fp32 (fallback path) instead of dtype
    bool transa = false, transb = false;
    int m = 0, n = 0, k = 0;
    const void* a = nullptr;
    int lda = 0;
    const void* b = nullptr;
    int ldb = 0;
    void* d = nullptr;
    int ldd = 0;
    float beta = 0.0f;
    cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    const void* bias = nullptr;  // of D's type; BGRADB writes the bias gradient here
    void* aux = nullptr;
    int ld_aux = 0;
  };
  // A stream with the cuBLASLt workspace that only work on it uses.
  struct Lane {
    cudaStream_t stream;
    void* workspace;
  };
  // False when cuBLASLt has no algorithm for the configuration (only
  // possible with an epilogue); throws on any other failure.
  bool run(const Gemm& g, Lane lane);
  // The fallback when cuBLASLt cannot fuse g's epilogue: g's product alone,
  // in fp32, into scratch (m x n, column-major); the caller applies the
  // epilogue with its own kernel and rounds once.
  float* run_fp32_product(const Gemm& g, Scratch& scratch, Lane lane);
  // dw += dout^T in and db += column sums of dout, on `lane`.
  void weight_gradient(DType dtype, Lane lane, void* dw, void* db, const void* dout, const void* in, int N, int C,
                       int OC);

  struct Plan;
  using PlanKey = std::array<int64_t, 11>;
  // The cached plan for g's shape, dtypes, epilogue and pointer alignments.
  Plan& plan_for(const Gemm& g);

  struct HandleDeleter {
    void operator()(cublasLtHandle_t handle) const { CUDA_RELEASE_CHECK(cublasLtDestroy(handle)); }
  };
  std::unique_ptr<cublasLtContext, HandleDeleter> handle_;
  Scratch workspace_;  // of the caller's stream
  // The weight gradient's stream, its workspace and its own scratch (the
  // caller's scratch serves the caller's stream); the events fork it from
  // and join it back to the caller's stream.
  StreamHandle weight_stream_;
  Scratch weight_workspace_;
  Scratch weight_scratch_;
  EventHandle dout_ready_, weight_done_;
  bool overlap_weight_gradient_ = true;
  std::map<PlanKey, std::unique_ptr<Plan>> plans_;
};

}  // namespace srgpt::gpu
