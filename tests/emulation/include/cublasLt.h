#pragma once
// The cuBLAS status type cuda_check.cuh names, for the CPU device emulator
// (tests/emulation), which builds no matmul code.
enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0 };
inline const char* cublasLtGetStatusString(cublasStatus_t) { return "emulated cuBLAS status"; }
inline const char* cublasLtGetStatusName(cublasStatus_t) { return "CUBLAS_STATUS_SUCCESS"; }
