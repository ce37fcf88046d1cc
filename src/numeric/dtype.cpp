#include "mpx/numeric/dtype.h"

#include <algorithm>
#include <cctype>
#include <utility>

#include "mpx/core/error.h"

namespace mpx {

namespace {

static_assert([] {
  for (std::size_t i = 0; i < kDTypeTraits.size(); ++i) {
    if (static_cast<std::size_t>(kDTypeTraits[i].dtype) != i) return false;
  }
  return true;
}(), "kDTypeTraits must be indexed by DType");

constexpr std::pair<std::string_view, DType> kAliases[] = {
    {"float32", DType::f32},  {"fp32", DType::f32},       {"float", DType::f32},
    {"float16", DType::f16},  {"fp16", DType::f16},       {"half", DType::f16},
    {"bfloat16", DType::bf16}, {"e4m3", DType::f8_e4m3},  {"fp8_e4m3", DType::f8_e4m3},
    {"f8e4m3", DType::f8_e4m3}, {"float8_e4m3fn", DType::f8_e4m3}, {"e5m2", DType::f8_e5m2},
    {"fp8_e5m2", DType::f8_e5m2}, {"f8e5m2", DType::f8_e5m2}, {"float8_e5m2", DType::f8_e5m2},
    {"float64", DType::f64},  {"fp64", DType::f64},       {"double", DType::f64},
    {"int64", DType::i64},    {"int32", DType::i32},      {"uint8", DType::u8},
};

}  // namespace

DType parse_dtype(std::string_view text) {
  std::string key(text);
  std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) {
    return c == '-' ? '_' : static_cast<char>(std::tolower(c));
  });
  for (const auto& t : kDTypeTraits) {
    if (key == t.name) return t.dtype;
    std::string upper(t.safetensors_name);
    std::transform(upper.begin(), upper.end(), upper.begin(), [](unsigned char c) { return std::tolower(c); });
    if (key == upper) return t.dtype;
  }
  for (const auto& [alias, dtype] : kAliases) {
    if (key == alias) return dtype;
  }
  std::string known;
  for (const auto& t : kDTypeTraits) known += (known.empty() ? "" : ", ") + std::string(t.name);
  throw InvalidArgument("unknown dtype '" + std::string(text) + "'; expected one of: " + known +
                        " (aliases such as fp16, bfloat16, fp8-e4m3 are accepted too)");
}

}  // namespace mpx
