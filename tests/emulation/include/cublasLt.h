#pragma once
// The part of cuBLASLt that cuda/matmul.cu uses, for the CPU device
// emulator (tests/emulation): descriptors, layouts and preferences hold
// their attributes, and cublasLtMatmul computes what the cuBLASLt
// documentation specifies for them, over host memory and column-major
// layouts: D = alpha op(A) op(B) + beta C, accumulated in double and
// rounded once to D's type, then the epilogue (bias per row of D; GELU_AUX
// writes the pre-activation to the aux matrix, rounded to D's type, and
// GELU of the unrounded value to D; DGELU multiplies by GELU's derivative
// at the aux matrix; BGRADB writes the sums of op(B) over k, one per column
// of D, to the bias pointer). The bias and bias-gradient vectors have D's
// type, the documented rule outside IMMA and fp8 kernels (the heuristic
// offers no algorithm for another BIAS_DATA_TYPE). GELU is the tanh form
// (cuBLASLt's), as the cpu backend computes it.
// SRGPT_EMULATED_CUBLASLT_EPILOGUES chooses which epilogues it fuses:
// "all" (the default), "refused_by_heuristic" (no algorithm for any but the
// default epilogue) or "refused_at_launch" (an algorithm, then
// CUBLAS_STATUS_NOT_SUPPORTED from cublasLtMatmul). The real library's
// support differs by version, type, layout and shape, and cuda/matmul.cu
// must then take its unfused paths: ctest runs its tests under both.
// A stand-in for testing srgpt's use of the library, not for its speed or
// its exact fp32 rounding.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_runtime.h"

#include "cpu/cpu_ops.h"
#include "srgpt/bf16.h"
#include "srgpt/error.h"
#include "srgpt/gelu_math.h"

enum cublasStatus_t {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasLtEpilogue_t {
  CUBLASLT_EPILOGUE_DEFAULT = 1,
  CUBLASLT_EPILOGUE_BIAS = 4,
  CUBLASLT_EPILOGUE_GELU_AUX = 160,
  CUBLASLT_EPILOGUE_GELU_AUX_BIAS = 164,
  CUBLASLT_EPILOGUE_DGELU = 192,
  CUBLASLT_EPILOGUE_BGRADB = 512,
};
enum cublasLtMatmulDescAttributes_t {
  CUBLASLT_MATMUL_DESC_TRANSA = 3,
  CUBLASLT_MATMUL_DESC_TRANSB = 4,
  CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
  CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,
  CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER = 10,
  CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD = 11,
  CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26,
};
enum cublasLtMatmulPreferenceAttributes_t {
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
};

struct cublasLtContext {};
typedef cublasLtContext* cublasLtHandle_t;
struct cublasLtMatmulDescOpaque_t {
  cublasOperation_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  int32_t bias_type = -1;  // -1: D's type
  void* aux = nullptr;
  int64_t aux_ld = 0;
};
typedef cublasLtMatmulDescOpaque_t* cublasLtMatmulDesc_t;
struct cublasLtMatrixLayoutOpaque_t {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
};
typedef cublasLtMatrixLayoutOpaque_t* cublasLtMatrixLayout_t;
struct cublasLtMatmulPreferenceOpaque_t {};
typedef cublasLtMatmulPreferenceOpaque_t* cublasLtMatmulPreference_t;
struct cublasLtMatmulAlgo_t {
  uint64_t data[8];
};
struct cublasLtMatmulHeuristicResult_t {
  cublasLtMatmulAlgo_t algo;
  size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
};

inline const char* cublasLtGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
  }
  return "unknown cuBLAS status";
}
inline const char* cublasLtGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

inline cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  *handle = new cublasLtContext;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                               cudaDataType_t scale) {
  if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  *desc = new cublasLtMatmulDescOpaque_t;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                                     cublasLtMatmulDescAttributes_t attribute, const void* buffer,
                                                     size_t bytes) {
  auto set = [&](auto& field) {
    if (bytes != sizeof(field)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(&field, buffer, bytes);
    return CUBLAS_STATUS_SUCCESS;
  };
  switch (attribute) {
    case CUBLASLT_MATMUL_DESC_TRANSA: return set(desc->transa);
    case CUBLASLT_MATMUL_DESC_TRANSB: return set(desc->transb);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return set(desc->epilogue);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return set(desc->bias);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return set(desc->bias_type);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: return set(desc->aux);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: return set(desc->aux_ld);
  }
  return CUBLAS_STATUS_INVALID_VALUE;
}
inline cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType_t type, uint64_t rows,
                                                 uint64_t cols, int64_t ld) {
  if (ld < int64_t(rows) || ld <= 0) return CUBLAS_STATUS_INVALID_VALUE;
  *layout = new cublasLtMatrixLayoutOpaque_t{type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* preference) {
  *preference = new cublasLtMatmulPreferenceOpaque_t;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t preference) {
  delete preference;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t,
                                                           cublasLtMatmulPreferenceAttributes_t, const void*, size_t) {
  return CUBLAS_STATUS_SUCCESS;
}

namespace srgpt::emulation::cublaslt {

inline bool shapes_agree(cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                         cublasLtMatrixLayout_t d) {
  const uint64_t m = d->rows, n = d->cols;
  const uint64_t a_rows = desc->transa == CUBLAS_OP_T ? a->cols : a->rows;
  const uint64_t k = desc->transa == CUBLAS_OP_T ? a->rows : a->cols;
  const uint64_t b_rows = desc->transb == CUBLAS_OP_T ? b->cols : b->rows;
  const uint64_t b_cols = desc->transb == CUBLAS_OP_T ? b->rows : b->cols;
  return a_rows == m && b_rows == k && b_cols == n && a->type == b->type;
}

inline double load(const void* base, cudaDataType_t type, size_t i) {
  if (type == CUDA_R_16BF) return bf16_to_float(static_cast<const bf16*>(base)[i]);
  return static_cast<const float*>(base)[i];
}
inline void store(void* base, cudaDataType_t type, size_t i, float x) {
  if (type == CUDA_R_16BF)
    static_cast<bf16*>(base)[i] = float_to_bf16_rn(x);
  else
    static_cast<float*>(base)[i] = x;
}

enum class EpilogueSupport { all, refused_by_heuristic, refused_at_launch };

inline EpilogueSupport parse_epilogue_support(const std::string& value) {
  if (value == "all") return EpilogueSupport::all;
  if (value == "refused_by_heuristic") return EpilogueSupport::refused_by_heuristic;
  if (value == "refused_at_launch") return EpilogueSupport::refused_at_launch;
  srgpt::fail("emulated cuBLASLt: SRGPT_EMULATED_CUBLASLT_EPILOGUES='{}' is not one of all, refused_by_heuristic, "
              "refused_at_launch",
              value);
}

// SRGPT_EMULATED_CUBLASLT_EPILOGUES's value, read once.
inline EpilogueSupport epilogue_support() {
  static const EpilogueSupport support = [] {
    const char* text = std::getenv("SRGPT_EMULATED_CUBLASLT_EPILOGUES");
    return parse_epilogue_support(text ? text : "all");
  }();
  return support;
}

inline bool refused(const cublasLtMatmulDescOpaque_t& desc, EpilogueSupport where) {
  return desc.epilogue != CUBLASLT_EPILOGUE_DEFAULT && epilogue_support() == where;
}

}  // namespace srgpt::emulation::cublaslt

inline cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t desc,
                                                     cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                                     cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                                     cublasLtMatmulPreference_t, int requested,
                                                     cublasLtMatmulHeuristicResult_t* results, int* returned) {
  *returned = 0;
  if (requested < 1 || c->rows != d->rows || c->cols != d->cols) return CUBLAS_STATUS_INVALID_VALUE;
  namespace lt = srgpt::emulation::cublaslt;
  if (!lt::shapes_agree(desc, a, b, d)) return CUBLAS_STATUS_INVALID_VALUE;
  if (lt::refused(*desc, lt::EpilogueSupport::refused_by_heuristic)) return CUBLAS_STATUS_NOT_SUPPORTED;
  const bool gelu = desc->epilogue == CUBLASLT_EPILOGUE_GELU_AUX || desc->epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS ||
                    desc->epilogue == CUBLASLT_EPILOGUE_DGELU;
  // The documented constraint on the aux matrix: leading dimension a
  // multiple of 8.
  if (gelu && (desc->aux_ld % 8 != 0 || desc->aux_ld < int64_t(d->rows))) return CUBLAS_STATUS_NOT_SUPPORTED;
  // The bias (or its gradient) has D's type.
  if (desc->bias_type != -1 && desc->bias_type != d->type) return CUBLAS_STATUS_NOT_SUPPORTED;
  std::memset(results, 0, sizeof(*results));
  results->state = CUBLAS_STATUS_SUCCESS;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

namespace srgpt::emulation::cublaslt {
// D = alpha op(A) op(B) + beta C with the epilogue, in double, rounded once.
inline void matmul(const cublasLtMatmulDescOpaque_t& desc, float alpha_value, const void* A,
                   const cublasLtMatrixLayoutOpaque_t& a, const void* B, const cublasLtMatrixLayoutOpaque_t& b,
                   float beta_value, const void* C, const cublasLtMatrixLayoutOpaque_t& c, void* D,
                   const cublasLtMatrixLayoutOpaque_t& d) {
  const uint64_t m = d.rows, n = d.cols, k = desc.transa == CUBLAS_OP_T ? a.rows : a.cols;
  const bool bias = desc.epilogue == CUBLASLT_EPILOGUE_BIAS || desc.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  // op(A) by rows and op(B) by columns, each contiguous over k.
  std::vector<double> a_rows(m * k), b_cols(n * k);
  for (uint64_t i = 0; i < m; ++i)
    for (uint64_t l = 0; l < k; ++l)
      a_rows[i * k + l] = load(A, a.type, desc.transa == CUBLAS_OP_T ? l + i * a.ld : i + l * a.ld);
  for (uint64_t j = 0; j < n; ++j)
    for (uint64_t l = 0; l < k; ++l)
      b_cols[j * k + l] = load(B, b.type, desc.transb == CUBLAS_OP_T ? j + l * b.ld : l + j * b.ld);
  for (uint64_t j = 0; j < n; ++j) {
    if (desc.epilogue == CUBLASLT_EPILOGUE_BGRADB) {
      double sum = 0;
      for (uint64_t l = 0; l < k; ++l) sum += b_cols[j * k + l];
      store(const_cast<void*>(desc.bias), d.type, j, float(sum));
    }
    for (uint64_t i = 0; i < m; ++i) {
      double sum = 0;
      const double* x = &a_rows[i * k];
      const double* y = &b_cols[j * k];
      for (uint64_t l = 0; l < k; ++l) sum += x[l] * y[l];
      double value = alpha_value * sum;
      if (beta_value != 0.0f) value += beta_value * load(C, c.type, i + j * c.ld);
      if (bias) value += load(desc.bias, d.type, i);
      float result = float(value);
      const size_t aux_index = i + j * size_t(desc.aux_ld);
      switch (desc.epilogue) {
        case CUBLASLT_EPILOGUE_GELU_AUX:
        case CUBLASLT_EPILOGUE_GELU_AUX_BIAS:
          store(desc.aux, d.type, aux_index, result);
          result = srgpt::gelu_tanh(result);
          break;
        case CUBLASLT_EPILOGUE_DGELU:
          result *= srgpt::gelu_tanh_derivative(float(load(desc.aux, d.type, aux_index)));
          break;
        default: break;
      }
      store(D, d.type, i + j * d.ld, result);
    }
  }
}
}  // namespace srgpt::emulation::cublaslt

// Checks the call, then queues the product on the stream with the
// descriptor and layouts as they are now (as cuBLASLt reads them at the call).
inline cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t desc, const void* alpha, const void* A,
                                     cublasLtMatrixLayout_t a, const void* B, cublasLtMatrixLayout_t b,
                                     const void* beta, const void* C, cublasLtMatrixLayout_t c, void* D,
                                     cublasLtMatrixLayout_t d, const cublasLtMatmulAlgo_t*, void*, size_t,
                                     cudaStream_t stream) {
  namespace lt = srgpt::emulation::cublaslt;
  if (!lt::shapes_agree(desc, a, b, d)) return CUBLAS_STATUS_INVALID_VALUE;
  if (lt::refused(*desc, lt::EpilogueSupport::refused_at_launch)) return CUBLAS_STATUS_NOT_SUPPORTED;
  const bool bias = desc->epilogue == CUBLASLT_EPILOGUE_BIAS || desc->epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS ||
                    desc->epilogue == CUBLASLT_EPILOGUE_BGRADB;
  if (bias && !desc->bias) return CUBLAS_STATUS_INVALID_VALUE;
  const float alpha_value = *static_cast<const float*>(alpha), beta_value = *static_cast<const float*>(beta);
  srgpt::emulation::enqueue(stream,
                            [desc = *desc, alpha_value, A, a = *a, B, b = *b, beta_value, C, c = *c, D, d = *d] {
                              lt::matmul(desc, alpha_value, A, a, B, b, beta_value, C, c, D, d);
                            },
                            "cublasLtMatmul");
  return CUBLAS_STATUS_SUCCESS;
}
