#include <gtest/gtest.h>

#include "mpx/core/error.h"
#include "mpx/numeric/dtype.h"

namespace mpx {
namespace {

TEST(DType, TraitsTableIsIndexedByEnumAndSizesAreRight) {
  for (std::size_t i = 0; i < kDTypeTraits.size(); ++i) EXPECT_EQ(static_cast<std::size_t>(kDTypeTraits[i].dtype), i);
  EXPECT_EQ(size_bytes(DType::f32), 4u);
  EXPECT_EQ(size_bytes(DType::bf16), 2u);
  EXPECT_EQ(size_bytes(DType::f8_e4m3), 1u);
  EXPECT_EQ(traits(DType::f16).accumulate_as, DType::f32);
  EXPECT_EQ(traits(DType::bf16).safetensors_name, "BF16");
}

TEST(DType, ParsesNamesAndAliases) {
  EXPECT_EQ(parse_dtype("bf16"), DType::bf16);
  EXPECT_EQ(parse_dtype("BFloat16"), DType::bf16);
  EXPECT_EQ(parse_dtype("fp8-e4m3"), DType::f8_e4m3);
  EXPECT_EQ(parse_dtype("F8_E5M2"), DType::f8_e5m2);
  EXPECT_EQ(parse_dtype("half"), DType::f16);
  EXPECT_EQ(parse_dtype("float32"), DType::f32);
}

TEST(DType, UnknownNameIsAClearError) {
  try {
    parse_dtype("f12");
    FAIL() << "expected an error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("unknown dtype 'f12'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos);
  }
}

}  // namespace
}  // namespace mpx
