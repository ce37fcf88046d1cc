// TensorBoard event files: CRC-32C against its published check value, and a written file read back
// record by record (lengths and masked CRCs verified, the version event first).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "mpx/core/error.h"
#include "mpx/telemetry/tensorboard_writer.h"

namespace mpx::telemetry {
namespace {

TEST(TensorBoard, Crc32cMatchesItsCheckValue) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);  // the CRC-32C catalogue's check value
  EXPECT_EQ(crc32c(""), 0u);
}

std::uint64_t le(const std::string& s, std::size_t at, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(s[at + static_cast<std::size_t>(i)]);
  return v;
}

TEST(TensorBoard, EventFileIsWellFramedTfRecords) {
  const std::string dir = testing::TempDir() + "/mpx_tb_test";
  std::filesystem::remove_all(dir);
  std::string path;
  {
    TensorBoardWriter w(dir);
    path = w.path();
    w.scalar("train/loss", 0.5, 1);
    const std::vector<float> v = {0.0f, 1.0f, 3.0f, 1e-3f};
    w.exponent_histogram("log2_abs/x", compute_stats(v.data(), DType::f32, v.size()), 1);
  }
  EXPECT_EQ(std::filesystem::path(path).filename().string().rfind("events.out.tfevents.", 0), 0u);
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> records;
  for (std::size_t at = 0; at < bytes.size();) {
    ASSERT_LE(at + 12, bytes.size());
    const std::uint64_t length = le(bytes, at, 8);
    EXPECT_EQ(le(bytes, at + 8, 4), masked_crc32c(bytes.substr(at, 8)));
    ASSERT_LE(at + 12 + length + 4, bytes.size());
    const std::string data = bytes.substr(at + 12, length);
    EXPECT_EQ(le(bytes, at + 12 + length, 4), masked_crc32c(data));
    records.push_back(data);
    at += 12 + length + 4;
  }
  ASSERT_EQ(records.size(), 3u);
  EXPECT_NE(records[0].find("brain.Event:2"), std::string::npos);
  EXPECT_NE(records[1].find("train/loss"), std::string::npos);
  EXPECT_NE(records[2].find("log2_abs/x"), std::string::npos);
}

TEST(TensorBoard, UnwritableDirectoryIsAClearError) {
  EXPECT_THROW(TensorBoardWriter("/proc/mpx-no-such-dir"), IoError);
}

}  // namespace
}  // namespace mpx::telemetry
