#pragma once
// Functions marked SRGPT_HD compile for both host and device so that the cpu
// reference and the CUDA kernels share one definition of the numerics.
#ifdef __CUDACC__
#define SRGPT_HD __host__ __device__ __forceinline__
#else
#define SRGPT_HD inline
#endif
