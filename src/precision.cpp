#include "srgpt/precision.h"

#include "srgpt/dtype.h"

namespace srgpt {

namespace {
struct PrecisionName {
  Precision p;
  const char* name;
};
constexpr PrecisionName kPrecisionNames[] = {{Precision::bf16_sr, "bf16-sr"},
                                             {Precision::bf16_rn, "bf16-rn"},
                                             {Precision::mixed, "mixed"},
                                             {Precision::fp32, "fp32"},
                                             {Precision::bf16_kahan, "bf16-kahan"}};
}  // namespace

const char* precision_name(Precision p) {
  for (const auto& e : kPrecisionNames)
    if (e.p == p) return e.name;
  return "?";
}

bool parse_dtype(const std::string& s, DType* out) {
  for (DType t : {DType::bf16, DType::f32, DType::f64})
    if (s == dtype_name(t)) {
      *out = t;
      return true;
    }
  return false;
}

}  // namespace srgpt
