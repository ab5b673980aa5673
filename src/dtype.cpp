#include "srgpt/dtype.h"

namespace srgpt {

bool parse_dtype(const std::string& s, DType* out) {
  for (DType t : {DType::bf16, DType::f32, DType::f64})
    if (s == dtype_name(t)) {
      *out = t;
      return true;
    }
  return false;
}

}  // namespace srgpt
