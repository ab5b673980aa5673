#pragma once
// The small set of ops the GPT is written over. A backend stores every
// weight, gradient and activation in one dtype() (bf16, f32, or f64 for
// checks); statistics (layernorm mean/rstd, attention log-sum-exp, per-token
// losses) in accum_dtype(dtype()). Pointers are backend memory from
// allocate(). Shapes are row-major; N = B*T rows. "+=" marks outputs that
// accumulate into what is already there; all other outputs are overwritten.
// Gradients reduced across ranks may also be kept in f32 on a bf16 backend
// (dist.grad_reduce_dtype): the ops that handle them take explicit dtypes.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <string>
#include <vector>

#include "srgpt/adamw_math.h"
#include "srgpt/dtype.h"
#include "srgpt/error.h"
#include "srgpt/layernorm_math.h"
#include "srgpt/precision.h"

namespace srgpt {

// The flat optimizer buffers for one precision mode; a pointer is null when
// the mode does not have that buffer. All share the parameter layout.
struct OptimizerBuffers {
  void* weights = nullptr;      // compute dtype
  const void* grads = nullptr;  // compute dtype, or f32 when f32_grads
  bool f32_grads = false;       // f32 gradients with a bf16 compute dtype (dist.grad_reduce_dtype)
  void* m = nullptr;            // adam_state_dtype
  void* v = nullptr;            // adam_state_dtype
  float* master = nullptr;      // mixed only
  void* compensation = nullptr; // bf16-kahan only, bf16
};

// Elements [begin, end) of a flat buffer.
struct ElementRange {
  size_t begin = 0;
  size_t end = 0;
};

// Elements [begin, end) of the optimizer buffers, and whether
// AdamWStep::weight_decay applies to them (matrices and embeddings do,
// biases and layernorm parameters do not).
struct AdamWRange {
  size_t begin = 0;
  size_t end = 0;
  bool decay = false;
};

// Fails, naming the op and the backend, unless the ranges are ascending,
// disjoint and not reversed: each element is used once, so a backend may
// take the ranges in any order or all at once.
template <typename Range>
void check_ranges(const char* op, const char* backend, const std::vector<Range>& ranges) {
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (ranges[i].begin > ranges[i].end)
      fail("{} ({} backend): element range {} [{}, {}) is reversed", op, backend, i, ranges[i].begin, ranges[i].end);
    if (i > 0 && ranges[i].begin < ranges[i - 1].end)
      fail("{} ({} backend): element range {} [{}, {}) starts before range {} ends at {} (ranges must be "
           "ascending and disjoint)",
           op, backend, i, ranges[i].begin, ranges[i].end, i - 1, ranges[i - 1].end);
  }
}

// Fails, naming the backend, unless `storage` is the mode's compute dtype,
// the mode's buffers are all there and check_ranges passes.
inline void check_adamw_update(const char* backend, DType storage, Precision mode, const OptimizerBuffers& buffers,
                               const std::vector<AdamWRange>& ranges) {
  if (storage != compute_dtype(mode))
    fail("adamw_update ({} backend): precision {} computes in {}, but this backend stores {}", backend,
         precision_name(mode), dtype_name(compute_dtype(mode)), dtype_name(storage));
  auto require = [&](const void* p, const char* name) {
    if (!p)
      fail("adamw_update ({} backend): precision {} needs the {} buffer, which is missing", backend,
           precision_name(mode), name);
  };
  require(buffers.weights, "weights");
  require(buffers.grads, "grads");
  require(buffers.m, "m");
  require(buffers.v, "v");
  if (has_master_weights(mode)) require(buffers.master, "master");
  if (has_kahan_compensation(mode)) require(buffers.compensation, "compensation");
  check_ranges("adamw_update", backend, ranges);
}

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  DType dtype() const { return dtype_; }
  // True when buffers from allocate() are ordinary host memory (the cpu
  // backend): communicators then use them directly instead of staging.
  virtual bool memory_on_host() const = 0;
  // The device's dense bf16 tensor-core rate at its highest clock, FLOP/s:
  // the default denominator of the MFU the trainer logs. 0 where unknown
  // (the cpu backend; GPUs whose per-SM rate srgpt does not know).
  virtual double tensor_peak_flops() const = 0;

  // ---- memory (RAII wrapper: DeviceBuffer below)
  virtual void* allocate(size_t bytes, const char* what) = 0;
  virtual void release(void* p) noexcept = 0;
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void fill_zero(void* dst, size_t bytes) = 0;
  virtual void synchronize() = 0;
  // The most bytes allocated through allocate() at any one time.
  virtual size_t peak_allocated_bytes() const = 0;

  // ---- GPT ops
  // out[B,T,C] = wte[tokens] + wpe[t]
  virtual void embedding_forward(void* out, const int32_t* tokens, const void* wte, const void* wpe, int B, int T,
                                 int C) = 0;
  // dwte[tokens] += dout, dwpe[t] += sum_b dout; deterministic order.
  virtual void embedding_backward(void* dwte, void* dwpe, const void* dout, const int32_t* tokens, int B, int T,
                                  int C) = 0;
  // res_out = res_in + delta (delta may be null: res_out = res_in); res_out
  // may alias res_in or delta. out = LayerNorm(res_out) * w + b.
  virtual void residual_layernorm_forward(void* res_out, void* out, void* mean, void* rstd, const void* res_in,
                                          const void* delta, const void* w, const void* b, int N, int C) = 0;
  // din +=, dw +=, db +=. x is what `from` says (layernorm_math.h): the
  // layernorm's input (read with mean; b unused) or its output (read with
  // b; mean unused).
  virtual void layernorm_backward(void* din, void* dw, void* db, const void* dout, LayerNormBackwardFrom from,
                                  const void* x, const void* w, const void* b, const void* mean, const void* rstd,
                                  int N, int C) = 0;
  // out[N,OC] = in[N,C] @ w[OC,C]^T + bias (bias may be null). With
  // gelu_pre non-null the pre-activation goes there and out = gelu(pre):
  // GELU of pre as stored (rounded to dtype()) on the cpu backend, as
  // PyTorch computes it after a bf16 linear layer; the cuda backend may fuse
  // it into the matmul in bf16, taking the fp32 value before rounding
  // (within bf16 tolerance). So gelu_forward of the stored pre gives out's
  // bits again on the cpu backend, and within one rounding on cuda.
  virtual void matmul_forward(void* out, void* gelu_pre, const void* in, const void* w, const void* bias, int N,
                              int C, int OC) = 0;
  // out = gelu(pre) elementwise over n elements: recomputes matmul_forward's
  // GELU output from the stored pre-activation (GPT's recompute option).
  virtual void gelu_forward(void* out, const void* pre, size_t n) = 0;
  // din = dout @ w (times gelu'(gelu_pre) when gelu_pre is non-null: the
  // backward of a GELU applied to din's forward value); dw += dout^T @ in;
  // db += sum_rows dout (db may be null).
  virtual void matmul_backward(void* din, void* dw, void* db, const void* dout, const void* in, const void* w,
                               const void* gelu_pre, int N, int C, int OC) = 0;
  // Causal self-attention. qkv[B,T,3C] holds q, k, v each [H, hd] per row;
  // out[B,T,C]; lse[B,H,T] the softmax log-sum-exp for backward.
  virtual void attention_forward(void* out, void* lse, const void* qkv, int B, int T, int C, int H) = 0;
  virtual void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out, const void* lse,
                                  int B, int T, int C, int H) = 0;
  // Softmax cross-entropy over the first V of Vp logits per row. losses[N]
  // get -log p(target); logits are overwritten in place with
  // dloss * (softmax - onehot), zero in the padded columns.
  virtual void cross_entropy_forward_backward(void* losses, void* logits, const int32_t* targets, int N, int V,
                                              int Vp, float dloss) = 0;
  // dst[i] += src[i] over n elements, rounded once to dst_dtype (gradient
  // accumulation). (dst_dtype, src_dtype) is (dtype(), dtype()), or on a
  // bf16 backend also (f32, bf16) or (f32, f32).
  virtual void accumulate(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t n) = 0;
  // Sum of an accum_dtype vector (losses), in double.
  virtual double sum_accum(const void* x, size_t n) = 0;
  // Sum of squares of the elements in the ranges (check_ranges) of a vector
  // of dtype() elements (or f32 on a bf16 backend), in double: each range
  // summed in the fixed order of a sum over it alone, the ranges' sums
  // added in order, with one wait for the device for all of them (the
  // gradient norm of a ZeRO shard is a range per unit).
  virtual double sum_squares(const void* x, DType x_dtype, const std::vector<ElementRange>& ranges) = 0;
  // True when every element of a dtype() vector is finite.
  virtual bool all_finite(const void* x, size_t n) = 0;

  // ---- optimizer: AdamW over the ranges of flat elements of the buffers
  // (check_adamw_update's rules), in one launch on a GPU: the optimizer
  // passes all the tensors of a ZeRO unit at once. The element's flat index
  // (plus step.index_offset) is the SR counter, so the same element gets the
  // same random bits whichever rank, thread or launch updates it.
  virtual void adamw_update(Precision mode, const OptimizerBuffers& buffers, const std::vector<AdamWRange>& ranges,
                            const AdamWStep& step) = 0;

 protected:
  explicit Backend(DType dtype) : dtype_(dtype) {}

 private:
  DType dtype_;
};

// Makes the cpu backend (OpenMP) for the given storage dtype.
std::unique_ptr<Backend> make_cpu_backend(DType dtype);
// Makes the CUDA backend on the given device (bf16 or f32 storage). Only
// defined when built with SRGPT_HAVE_CUDA.
std::unique_ptr<Backend> make_cuda_backend(DType dtype, int device);
// Number of usable CUDA devices; 0 without the CUDA backend, a driver or a
// GPU. When the runtime reports an error (no driver, a driver too old for
// the runtime, no device), `error` gets the call and its message.
int cuda_device_count(std::string* error = nullptr);

// Owning handle for backend memory.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend& backend, size_t bytes, const char* what)
      : backend_(&backend), ptr_(bytes ? backend.allocate(bytes, what) : nullptr), bytes_(bytes) {}
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept { swap(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    DeviceBuffer tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_) backend_->release(ptr_);
  }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void swap(DeviceBuffer& o) noexcept {
    std::swap(backend_, o.backend_);
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
  }
  Backend* backend_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace srgpt
