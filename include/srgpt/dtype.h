#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace srgpt {

// Storage types of flat buffers. f64 exists for the cpu backend's
// finite-difference checks; it is never a training precision.
enum class DType : uint8_t { bf16, f32, f64 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::bf16: return 2;
    case DType::f32: return 4;
    case DType::f64: return 8;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::bf16: return "bf16";
    case DType::f32: return "f32";
    case DType::f64: return "f64";
  }
  return "?";
}

// Statistics (layernorm mean/rstd, attention log-sum-exp, per-token losses)
// are kept at accumulation precision: f32 for bf16/f32 storage, f64 for f64.
inline DType accum_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

bool parse_dtype(const std::string& s, DType* out);

}  // namespace srgpt
