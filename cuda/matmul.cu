#include "accumulate.cuh"
#include "common.cuh"
#include "cuda_check.cuh"
#include "gelu.cuh"
#include "matmul.cuh"
#include "reduce.cuh"
#include "srgpt/gelu_math.h"
#include "srgpt/error.h"

namespace srgpt::gpu {
namespace {

// cuBLAS's recommended workspace on Hopper.
constexpr size_t kWorkspaceBytes = size_t(32) << 20;

template <typename T, cublasStatus_t (*Destroy)(T*)>
struct LtDeleter {
  void operator()(T* p) const { report_release_error(Destroy(p), "a cublasLt*Destroy", __FILE__, __LINE__); }
};
using DescPtr = std::unique_ptr<cublasLtMatmulDescOpaque_t,
                                LtDeleter<cublasLtMatmulDescOpaque_t, cublasLtMatmulDescDestroy>>;
using LayoutPtr = std::unique_ptr<cublasLtMatrixLayoutOpaque_t,
                                  LtDeleter<cublasLtMatrixLayoutOpaque_t, cublasLtMatrixLayoutDestroy>>;
using PreferencePtr = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t,
                                      LtDeleter<cublasLtMatmulPreferenceOpaque_t, cublasLtMatmulPreferenceDestroy>>;

cudaDataType_t cuda_type(DType dtype) { return dtype == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F; }

// The alignment cuBLASLt may assume of a pointer: its largest power-of-two
// divisor, capped at 256 (the library's default assumption).
uint32_t pointer_alignment(const void* p) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  uint32_t alignment = 256;
  while (alignment > 1 && (address % alignment) != 0) alignment /= 2;
  return alignment;
}

LayoutPtr make_layout(cudaDataType_t type, bool transposed, int rows, int cols, int ld) {
  cublasLtMatrixLayout_t layout = nullptr;
  // A stored matrix transposed by the op is held as cols x rows.
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, transposed ? cols : rows, transposed ? rows : cols, ld));
  return LayoutPtr(layout);
}

template <typename T>
void set_attribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute, const T& value) {
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attribute, &value, sizeof(value)));
}

// ---- epilogues of the fallback path: from the fp32 product in scratch,
// rounded once into storage (as the fused epilogue and the cpu backend).
template <typename S>
__global__ void bias_epilogue_kernel(S* out, const float* product, const S* bias, int OC, size_t count) {
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  out[i] = store_f<S>(bias ? product[i] + load_f(bias + i % OC) : product[i]);
}

template <typename S>
__global__ void dgelu_epilogue_kernel(S* din, const float* product, const S* gelu_pre, size_t count) {
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  din[i] = store_f<S>(product[i] * gelu_tanh_derivative(load_f(gelu_pre + i)));
}

constexpr int kEpilogueThreads = 256;

// Where a plan's key holds its epilogue (Matmul::plan_for).
constexpr size_t kPlanKeyEpilogue = 9;

}  // namespace

struct Matmul::Plan {
  DescPtr desc;
  LayoutPtr a, b, d;
  cublasLtMatmulAlgo_t algo{};
  bool supported = false;
};

namespace {
cublasLtHandle_t create_handle() {
  cublasLtHandle_t handle = nullptr;
  CUBLAS_CHECK(cublasLtCreate(&handle));
  return handle;
}
}  // namespace

Matmul::Matmul(DeviceMemory& memory)
    : handle_(create_handle()),
      workspace_(memory, "cuBLASLt workspace"),
      weight_stream_(make_stream()),
      weight_workspace_(memory, "cuBLASLt workspace of the weight-gradient stream"),
      weight_scratch_(memory, "scratch of the weight-gradient stream"),
      dout_ready_(make_event()),
      weight_done_(make_event()) {
  // Allocated up front, so they count from the start.
  workspace_.get(kWorkspaceBytes);
  weight_workspace_.get(kWorkspaceBytes);
}

Matmul::~Matmul() {
  // Work queued on the weight stream may still use its scratch and workspace.
  CUDA_RELEASE_CHECK(cudaStreamSynchronize(weight_stream_.get()));
}

Matmul::Plan& Matmul::plan_for(const Gemm& g) {
  const uint32_t align_a = pointer_alignment(g.a), align_b = pointer_alignment(g.b), align_d = pointer_alignment(g.d);
  const uint32_t align_bias = g.bias ? pointer_alignment(g.bias) : 0, align_aux = g.aux ? pointer_alignment(g.aux) : 0;
  const int64_t flags =
      int64_t(g.d_is_float) | int64_t(g.transa) << 1 | int64_t(g.transb) << 2 | int64_t(g.beta != 0.0f) << 3;
  const int64_t alignments = int64_t(align_a) | int64_t(align_b) << 9 | int64_t(align_d) << 18 |
                             int64_t(align_bias) << 27 | int64_t(align_aux) << 36;
  PlanKey key{int64_t(g.dtype), flags, alignments, g.m, g.n, g.k, g.lda, g.ldb, g.ldd, 0, g.ld_aux};
  key[kPlanKeyEpilogue] = int64_t(g.epilogue);
  auto found = plans_.find(key);
  if (found != plans_.end()) return *found->second;

  auto plan = std::make_unique<Plan>();
  const cudaDataType_t type = cuda_type(g.dtype);
  const cudaDataType_t d_type = g.d_is_float ? CUDA_R_32F : type;
  cublasLtMatmulDesc_t desc = nullptr;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  plan->desc.reset(desc);
  const cublasOperation_t op_a = g.transa ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = g.transb ? CUBLAS_OP_T : CUBLAS_OP_N;
  set_attribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, op_a);
  set_attribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, op_b);
  set_attribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, g.epilogue);
  // The bias (or bias gradient) vector has D's type, cuBLASLt's rule
  // outside IMMA and fp8 kernels (BIAS_DATA_TYPE's default).
  if (g.bias) set_attribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  if (g.aux) {
    set_attribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
    set_attribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, int64_t(g.ld_aux));
  }
  plan->a = make_layout(type, g.transa, g.m, g.k, g.lda);
  plan->b = make_layout(type, g.transb, g.k, g.n, g.ldb);
  plan->d = make_layout(d_type, false, g.m, g.n, g.ldd);

  cublasLtMatmulPreference_t preference = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  PreferencePtr preference_owner(preference);
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &kWorkspaceBytes, sizeof(kWorkspaceBytes)));
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> alignment_prefs[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_d},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_d}};
  for (const auto& pref : alignment_prefs)
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, pref.first, &pref.second, sizeof(pref.second)));

  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle_.get(), desc, plan->a.get(), plan->b.get(),
                                                         plan->d.get(), plan->d.get(), preference, 1, &result,
                                                         &returned);
  if (status == CUBLAS_STATUS_SUCCESS && returned > 0) {
    plan->algo = result.algo;
    plan->supported = true;
  } else if (g.epilogue == CUBLASLT_EPILOGUE_DEFAULT) {
    fail("cuBLASLt has no algorithm for a {}x{}x{} {} matmul (transa {}, transb {}, ld {} {} {}): {}", g.m, g.n, g.k,
         dtype_name(g.dtype), g.transa, g.transb, g.lda, g.ldb, g.ldd,
         status == CUBLAS_STATUS_SUCCESS ? "no result" : cublasLtGetStatusString(status));
  }
  auto& stored = plans_[key];
  stored = std::move(plan);
  return *stored;
}

bool Matmul::run(const Gemm& g, Lane lane) {
  Plan& plan = plan_for(g);
  if (!plan.supported) return false;
  // The plan is shared by calls with equally aligned pointers: set this
  // call's epilogue pointers.
  if (g.bias) set_attribute(plan.desc.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  if (g.aux) set_attribute(plan.desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
  const float alpha = 1.0f;
  const cublasStatus_t status =
      cublasLtMatmul(handle_.get(), plan.desc.get(), &alpha, g.a, plan.a.get(), g.b, plan.b.get(), &g.beta, g.d,
                     plan.d.get(), g.d, plan.d.get(), &plan.algo, lane.workspace, kWorkspaceBytes, lane.stream);
  // An epilogue the heuristic offered but the launch refuses: remember it
  // and let the caller take the unfused path.
  if (status == CUBLAS_STATUS_NOT_SUPPORTED && g.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    plan.supported = false;
    return false;
  }
  if (status != CUBLAS_STATUS_SUCCESS) throw_cublas_error(status, "cublasLtMatmul", __FILE__, __LINE__);
  return true;
}

void Matmul::forward(DType dtype, cudaStream_t stream, Scratch& scratch, void* out, void* gelu_pre, const void* in,
                     const void* w, const void* bias, int N, int C, int OC) {
  if (N <= 0 || OC <= 0) return;
  const Lane lane{stream, workspace_.get(kWorkspaceBytes)};
  // Row-major out[N,OC] = in[N,C] w[OC,C]^T is column-major
  // out^T[OC,N] = (w^T)^T[OC,C] in^T[C,N].
  Gemm g;
  g.dtype = dtype;
  g.transa = true;
  g.m = OC;
  g.n = N;
  g.k = C;
  g.a = w;
  g.lda = C;
  g.b = in;
  g.ldb = C;
  g.ldd = OC;
  g.bias = bias;
  // bf16 with GELU: cuBLASLt's fused GELU_AUX epilogue (the aux leading
  // dimension must be a multiple of 8) saves a pass over the activation; it
  // takes GELU of the fp32 value before rounding, within bf16 tolerance of
  // the stored-value GELU (backend.h). f32 is checked tightly and takes the
  // exact path below.
  if (gelu_pre && dtype == DType::bf16 && OC % 8 == 0) {
    Gemm fused = g;
    fused.d = out;
    fused.epilogue = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    fused.aux = gelu_pre;
    fused.ld_aux = OC;
    if (run(fused, lane)) return;
  }
  // Otherwise the product goes to gelu_pre and out = gelu(gelu_pre) follows:
  // GELU of the pre-activation as stored, the bits gelu_forward recomputes.
  void* pre = gelu_pre ? gelu_pre : out;
  g.d = pre;
  if (bias) g.epilogue = CUBLASLT_EPILOGUE_BIAS;
  if (!run(g, lane)) {
    // Fallback: fp32 product into scratch, then the bias and one rounding.
    const float* product = run_fp32_product(g, scratch, lane);
    const size_t count = size_t(N) * OC;
    dispatch_storage(dtype, [&](auto tag) {
      using S = decltype(tag);
      bias_epilogue_kernel<S><<<ceil_div(count, kEpilogueThreads), kEpilogueThreads, 0, stream>>>(
          static_cast<S*>(pre), product, static_cast<const S*>(bias), OC, count);
      CUDA_CHECK_LAUNCH("bias_epilogue_kernel");
    });
  }
  if (gelu_pre) gelu_forward(dtype, stream, out, gelu_pre, size_t(N) * OC);
}

float* Matmul::run_fp32_product(const Gemm& g, Scratch& scratch, Lane lane) {
  float* product = static_cast<float*>(scratch.get(sizeof(float) * size_t(g.m) * size_t(g.n)));
  Gemm plain = g;
  plain.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  plain.bias = nullptr;
  plain.aux = nullptr;
  plain.ld_aux = 0;
  plain.d = product;
  plain.ldd = g.m;
  plain.d_is_float = true;
  run(plain, lane);
  return product;
}

void Matmul::backward(DType dtype, cudaStream_t stream, Scratch& scratch, void* din, void* dw, void* db,
                      const void* dout, const void* in, const void* w, const void* gelu_pre, int N, int C, int OC) {
  if (N <= 0 || C <= 0 || OC <= 0) return;
  // Everything queued on `stream` so far (dout, in) happens before the
  // weight gradient; `stream` goes on only once it is done.
  const Lane lane{stream, workspace_.get(kWorkspaceBytes)};
  const Lane weight_lane =
      overlap_weight_gradient_ ? Lane{weight_stream_.get(), weight_workspace_.get(kWorkspaceBytes)} : lane;
  CUDA_CHECK(cudaEventRecord(dout_ready_.get(), stream));
  CUDA_CHECK(cudaStreamWaitEvent(weight_lane.stream, dout_ready_.get(), 0));
  weight_gradient(dtype, weight_lane, dw, db, dout, in, N, C, OC);

  // din[N,C] = dout[N,OC] w[OC,C]: column-major din^T[C,N] = w^T[C,OC] dout^T[OC,N].
  Gemm g;
  g.dtype = dtype;
  g.m = C;
  g.n = N;
  g.k = OC;
  g.a = w;
  g.lda = C;
  g.b = dout;
  g.ldb = OC;
  g.d = din;
  g.ldd = C;
  bool din_done = false;
  if (gelu_pre) {
    // cuBLASLt's fused DGELU (aux leading dimension a multiple of 8) has its
    // own derivative expression, close to ours at bf16 precision; f32 runs,
    // which are checked tightly, take the exact fallback.
    g.epilogue = CUBLASLT_EPILOGUE_DGELU;
    g.aux = const_cast<void*>(gelu_pre);  // read-only for DGELU
    g.ld_aux = C;
    if (dtype == DType::bf16 && C % 8 == 0) din_done = run(g, lane);
  } else {
    din_done = run(g, lane);
  }
  if (!din_done) {
    const float* product = run_fp32_product(g, scratch, lane);
    const size_t count = size_t(N) * C;
    dispatch_storage(dtype, [&](auto tag) {
      using S = decltype(tag);
      dgelu_epilogue_kernel<S><<<ceil_div(count, kEpilogueThreads), kEpilogueThreads, 0, stream>>>(
          static_cast<S*>(din), product, static_cast<const S*>(gelu_pre), count);
      CUDA_CHECK_LAUNCH("dgelu_epilogue_kernel");
    });
  }

  CUDA_CHECK(cudaEventRecord(weight_done_.get(), weight_lane.stream));
  CUDA_CHECK(cudaStreamWaitEvent(stream, weight_done_.get(), 0));
}

std::vector<Matmul::EpilogueUse> Matmul::epilogue_uses() const {
  const std::pair<cublasLtEpilogue_t, const char*> names[] = {
      {CUBLASLT_EPILOGUE_BIAS, "BIAS"},       {CUBLASLT_EPILOGUE_GELU_AUX, "GELU_AUX"},
      {CUBLASLT_EPILOGUE_GELU_AUX_BIAS, "GELU_AUX_BIAS"}, {CUBLASLT_EPILOGUE_DGELU, "DGELU"},
      {CUBLASLT_EPILOGUE_BGRADB, "BGRADB"}};
  std::vector<EpilogueUse> uses;
  for (const auto& [epilogue, name] : names) {
    EpilogueUse use{name};
    for (const auto& [key, plan] : plans_) {
      if (key[kPlanKeyEpilogue] != int64_t(epilogue)) continue;
      ++use.products;
      if (plan->supported) ++use.fused;
    }
    if (use.products > 0) uses.push_back(use);
  }
  return uses;
}

void Matmul::weight_gradient(DType dtype, Lane lane, void* dw, void* db, const void* dout, const void* in, int N,
                             int C, int OC) {
  // dw[OC,C] += dout^T[OC,N] in[N,C]: column-major dw^T[C,OC] += in^T[C,N] dout[N,OC].
  Gemm weight;
  weight.dtype = dtype;
  weight.transb = true;
  weight.m = C;
  weight.n = OC;
  weight.k = N;
  weight.a = in;
  weight.lda = C;
  weight.b = dout;
  weight.ldb = OC;
  weight.d = dw;
  weight.ldd = C;
  weight.beta = 1.0f;
  if (db) {
    // db += sum over rows of dout: the sum of B over k, which the BGRADB
    // epilogue computes during this product, saving a pass over dout. It
    // writes rather than adds, in D's type (scratch), and db gets it
    // added. In bf16 that rounds twice where the column reduction below
    // rounds once, but only when db already holds an earlier micro-step's
    // gradient: with one micro-step db is zero and the second rounding is
    // exact.
    void* bias_grad = weight_scratch_.get(dtype_size(dtype) * size_t(OC));
    Gemm fused = weight;
    fused.epilogue = CUBLASLT_EPILOGUE_BGRADB;
    fused.bias = bias_grad;
    if (run(fused, lane)) {
      accumulate(dtype, lane.stream, db, dtype, bias_grad, dtype, size_t(OC));
      return;
    }
  }
  run(weight, lane);

  if (db) {
    const int chunks = column_chunks(N);
    float* partials = static_cast<float*>(weight_scratch_.get(sizeof(float) * size_t(chunks) * OC));
    column_partials(dtype, lane.stream, partials, dout, N, OC);
    add_column_partials(dtype, lane.stream, db, partials, chunks, OC);
  }
}

}  // namespace srgpt::gpu
