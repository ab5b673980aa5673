#pragma once
// Causal multi-head self-attention (backend.h: attention_forward/_backward).
// bf16 with head size 64 or 128 runs flash-style tiled kernels on the tensor
// cores (mma.sync m16n8k16, or Hopper's wgmma, fp32
// accumulation, online softmax, only the log-sum-exp saved); other shapes
// and f32 storage run a simple fp32 kernel with one warp per row. All are
// deterministic (no atomic adds of data).
#include <cuda_runtime.h>

#include <string>

#include "memory.cuh"
#include "srgpt/dtype.h"

namespace srgpt::gpu {

// How the tensor-core forward multiplies:
// - mma (the default): mma.sync m16n8k16 on any GPU from sm_80;
// - wgmma: Hopper's warpgroup multiply-accumulate, a warpgroup per 64
//   queries; needs a build with sm_90a code on a compute-capability 9.0
//   GPU. Not yet the default: it has only run on the CPU device emulator.
// Both match the cpu backend within the same bound; they round the sums
// differently, so a run keeps one for bit-exact resumes.
enum class AttentionForward { mma, wgmma };
constexpr AttentionForward kAttentionForwards[] = {AttentionForward::mma, AttentionForward::wgmma};  // default first
const char* attention_forward_name(AttentionForward how);  // "mma", "wgmma"
constexpr const char* kAttentionForwardEnv = "SRGPT_ATTENTION_FORWARD";
// kAttentionForwardEnv's choice (mma when unset); another value fails,
// naming the variable, the value and what is allowed.
AttentionForward attention_forward_from_environment();
void attention_forward(DType dtype, cudaStream_t stream, AttentionForward how, void* out, float* lse, const void* qkv,
                       int B, int T, int C, int H);
// How the tensor-core backward computes dQ (the simple kernels always run
// two passes):
// - one_pass (the default): a block per key tile computes dK and dV and
//   adds its share of dQ to an fp32 accumulator in key-tile order (a flag
//   per query tile; blocks wait on each other), the last adder writing dQ.
//   Five matmuls of the score matrix's size.
// - two_pass: the key-tile pass computes dK and dV only; a second pass per
//   query tile recomputes the scores and sums dQ in registers. Seven
//   matmuls of that size, no waiting between blocks: the fallback should
//   the one-pass kernel misbehave on some GPU, and its speed reference.
// - wgmma: two passes as two_pass, on Hopper's wgmma (the same conditions
//   as AttentionForward::wgmma; not the default either).
// - wgmma_one_pass: one pass as one_pass, on wgmma (the same conditions).
// All are deterministic; they round dQ's sum differently.
enum class AttentionBackward { one_pass, two_pass, wgmma, wgmma_one_pass };
constexpr AttentionBackward kAttentionBackwards[] = {AttentionBackward::one_pass, AttentionBackward::two_pass,
                                                     AttentionBackward::wgmma,
                                                     AttentionBackward::wgmma_one_pass};  // default first
// "one-pass", "two-pass", "wgmma", "wgmma-one-pass"
const char* attention_backward_name(AttentionBackward how);
constexpr bool attention_backward_uses_wgmma(AttentionBackward how) {
  return how == AttentionBackward::wgmma || how == AttentionBackward::wgmma_one_pass;
}
constexpr bool attention_backward_adds_dq(AttentionBackward how) {
  return how == AttentionBackward::one_pass || how == AttentionBackward::wgmma_one_pass;
}
// The variable that chooses it for a process, read by the cuda backend.
constexpr const char* kAttentionBackwardEnv = "SRGPT_ATTENTION_BACKWARD";
// kAttentionBackwardEnv's choice (one_pass when unset); another value than
// the names above fails, naming the variable, the value and what is allowed.
AttentionBackward attention_backward_from_environment();

// Whether this build and the current device run a strategy: the mma ones
// always; the wgmma ones on a compute-capability 9.0 GPU, with code built
// for sm_90a, where a self-check of wgmma's products in each way that
// strategy's kernels use it (exact, against the host's) passes, so that a
// misreading of one operand layout leaves only the strategies that use it
// off. If not, *why says what is missing or which products differ.
enum class AttentionSupport { available, other_gpu, no_sm90a_code, wrong_products };
AttentionSupport attention_support(AttentionForward how, std::string* why);
AttentionSupport attention_support(AttentionBackward how, std::string* why);
template <typename Strategy>
bool attention_runs_here(Strategy how, std::string* why) {
  return attention_support(how, why) == AttentionSupport::available;
}

void attention_backward(DType dtype, cudaStream_t stream, Scratch& scratch, AttentionBackward how, void* dqkv,
                        const void* dout, const void* qkv, const void* out, const float* lse, int B, int T, int C,
                        int H);

// Which implementation attention_* uses for these arguments (for tests).
bool attention_uses_tensor_cores(DType dtype, int C, int H, const void* a, const void* b, const void* c);

}  // namespace srgpt::gpu
