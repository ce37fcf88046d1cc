// mpx convert: counts of overflow, underflow to zero and subnormal results against hand-counted inputs;
// the three overflow policies; the default keep list; metadata naming the source.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <vector>

#include "mpx/artifacts/convert.h"
#include "mpx/core/error.h"
#include "mpx/io/safetensors.h"
#include "mpx/io/tensor_values.h"

namespace mpx::artifacts {
namespace {

std::string source_file() {
  const std::string path = testing::TempDir() + "/convert_source.safetensors";
  // 1e6 overflows FP16; 1e-9 rounds to zero; 1e-6 is an FP16 subnormal; 0 stays 0 and counts as nothing.
  static const std::vector<float> w = {1.0f, 1e6f, -1e6f, 1e-9f, 1e-6f, 0.0f, 3.14159f};
  static const std::vector<float> norm = {1e6f, 2.0f};
  static const std::vector<std::int64_t> ids = {1, 2, 3};
  io::write_safetensors(path, {{"fc.weight", DType::f32, {7}, w.data()},
                               {"bn1.weight", DType::f32, {2}, norm.data()},
                               {"tokens", DType::i64, {3}, ids.data()}},
                        {{"format", "pt"}});
  return path;
}

TEST(Convert, CountsWhatEachTensorLosesAndKeepsNormalisation) {
  const std::string in = source_file(), out = testing::TempDir() + "/convert_clamped.safetensors";
  const ConvertReport r = convert_checkpoint(in, out, {DType::f16, {}, OnOverflow::clamp});
  ASSERT_TRUE(r.written);
  ASSERT_EQ(r.tensors.size(), 3u);
  const TensorConversion& w = r.tensors[0];
  EXPECT_TRUE(w.converted);
  EXPECT_EQ(w.overflowed, 2u);
  EXPECT_EQ(w.underflowed, 1u);
  EXPECT_EQ(w.subnormal, 1u);
  EXPECT_GT(w.max_relative_error, 0.0);
  EXPECT_FALSE(r.tensors[1].converted);  // bn1.weight: normalisation, kept in FP32
  EXPECT_FALSE(r.tensors[2].converted);  // integers are copied
  const io::SafetensorsFile f = io::SafetensorsFile::read(out);
  EXPECT_EQ(f.find("fc.weight")->dtype, DType::f16);
  EXPECT_EQ(f.find("bn1.weight")->dtype, DType::f32);
  EXPECT_EQ(f.metadata().at("mpx.source_dtype.fc.weight"), "f32");
  EXPECT_EQ(f.metadata().at("mpx.source_sha256"), io::SafetensorsFile::read(in).file_sha256());
  const auto values = io::widen_to_double(f.data(*f.find("fc.weight")), DType::f16);
  EXPECT_EQ(values[1], 65504.0);  // clamped to FP16's largest finite value
  EXPECT_EQ(values[2], -65504.0);
  EXPECT_EQ(values[3], 0.0);
}

TEST(Convert, OverflowPoliciesErrorWritesNothingInfBecomesInfinite) {
  const std::string in = source_file(), out = testing::TempDir() + "/convert_policy.safetensors";
  std::filesystem::remove(out);
  const ConvertReport refused = convert_checkpoint(in, out, {DType::f16, {}, OnOverflow::error});
  EXPECT_FALSE(refused.written);
  EXPECT_EQ(refused.total.overflowed, 2u);
  EXPECT_FALSE(std::filesystem::exists(out));
  ASSERT_TRUE(convert_checkpoint(in, out, {DType::f16, {}, OnOverflow::inf}).written);
  const io::SafetensorsFile f = io::SafetensorsFile::read(out);
  EXPECT_EQ(io::widen_to_double(f.data(*f.find("fc.weight")), DType::f16)[1], std::numeric_limits<double>::infinity());
  // E4M3 has no infinity: "inf" gives NaN there; clamp gives 448.
  ASSERT_TRUE(convert_checkpoint(in, out, {DType::f8_e4m3, {}, OnOverflow::clamp}).written);
  const io::SafetensorsFile e = io::SafetensorsFile::read(out);
  EXPECT_EQ(io::widen_to_double(e.data(*e.find("fc.weight")), DType::f8_e4m3)[1], 448.0);
}

TEST(Convert, KeepPatternsAndBadArguments) {
  const std::string in = source_file(), out = testing::TempDir() + "/convert_keep.safetensors";
  const ConvertReport r = convert_checkpoint(in, out, {DType::bf16, {"fc\\..*"}, OnOverflow::error});
  ASSERT_TRUE(r.written);                 // fc.weight kept; bn1.weight (1e6 fits BF16) converted
  EXPECT_FALSE(r.tensors[0].converted);
  EXPECT_TRUE(r.tensors[1].converted);
  EXPECT_THROW(convert_checkpoint(in, out, {DType::f16, {"("}, OnOverflow::clamp}), InvalidArgument);
  EXPECT_THROW(parse_target_dtype("f32"), InvalidArgument);
  EXPECT_EQ(parse_target_dtype("fp8-e5m2"), DType::f8_e5m2);
  EXPECT_THROW(convert_checkpoint("/nonexistent.safetensors", out, {}), IoError);
}

}  // namespace
}  // namespace mpx::artifacts
