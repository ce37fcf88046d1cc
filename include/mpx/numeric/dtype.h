// DType: the one append-only enum of element types, and the constexpr traits table that is the single
// source of truth for each type's name, size, kind and accumulation type.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mpx {

// Append only: values are stored in files and tables. Never reorder.
enum class DType : std::uint8_t {
  f32 = 0,
  f16 = 1,
  bf16 = 2,
  f8_e4m3 = 3,
  f8_e5m2 = 4,
  f64 = 5,
  i64 = 6,
  i32 = 7,
  u8 = 8,
  boolean = 9,
};

struct DTypeTraits {
  DType dtype;
  std::string_view name;              // mpx's name: "f32", "bf16", "f8_e4m3", ...
  std::string_view safetensors_name;  // "F32", "BF16", "F8_E4M3", ...
  std::size_t size_bytes;
  bool is_floating;
  DType accumulate_as;  // arithmetic type for reductions and products: float for every narrow float
};

inline constexpr std::array<DTypeTraits, 10> kDTypeTraits{{
    {DType::f32, "f32", "F32", 4, true, DType::f32},
    {DType::f16, "f16", "F16", 2, true, DType::f32},
    {DType::bf16, "bf16", "BF16", 2, true, DType::f32},
    {DType::f8_e4m3, "f8_e4m3", "F8_E4M3", 1, true, DType::f32},
    {DType::f8_e5m2, "f8_e5m2", "F8_E5M2", 1, true, DType::f32},
    {DType::f64, "f64", "F64", 8, true, DType::f64},
    {DType::i64, "i64", "I64", 8, false, DType::i64},
    {DType::i32, "i32", "I32", 4, false, DType::i64},
    {DType::u8, "u8", "U8", 1, false, DType::i64},
    {DType::boolean, "bool", "BOOL", 1, false, DType::i64},
}};

constexpr const DTypeTraits& traits(DType dtype) { return kDTypeTraits[static_cast<std::size_t>(dtype)]; }
constexpr std::string_view name(DType dtype) { return traits(dtype).name; }
constexpr std::size_t size_bytes(DType dtype) { return traits(dtype).size_bytes; }

// Parses a dtype name, accepting common aliases ("float32", "half", "bfloat16", "fp8-e4m3", "e5m2").
// Throws mpx::InvalidArgument listing the accepted names.
DType parse_dtype(std::string_view text);

}  // namespace mpx
