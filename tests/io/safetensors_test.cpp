// safetensors: every dtype round-trips bit for bit; each class of malformed file is rejected with its own
// message (never a crash, never an allocation beyond the file); writes replace files atomically.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "mpx/core/error.h"
#include "mpx/io/safetensors.h"

namespace mpx::io {
namespace {

std::vector<std::byte> file_of(const std::string& header, std::size_t data_bytes) {
  std::vector<std::byte> out(8 + header.size() + data_bytes, std::byte{0});
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<std::byte>((header.size() >> (8 * i)) & 0xFF);
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}

void expect_rejected(const std::vector<std::byte>& bytes, const std::string& message) {
  try {
    SafetensorsFile::parse(bytes, "bad.safetensors");
    FAIL() << "accepted a file that should fail with: " << message;
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bad.safetensors"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, EveryDtypeRoundTripsBitForBit) {
  const std::string path = testing::TempDir() + "/roundtrip.safetensors";
  std::vector<TensorToWrite> tensors;
  std::vector<std::vector<std::uint8_t>> buffers;
  for (const DTypeTraits& t : kDTypeTraits) {
    const Shape shape = {2, 3};
    buffers.emplace_back(6 * t.size_bytes);
    for (std::size_t i = 0; i < buffers.back().size(); ++i) buffers.back()[i] = static_cast<std::uint8_t>(i * 37 + 1);
    tensors.push_back({"layer." + std::string(t.name), t.dtype, shape, buffers.back().data()});
  }
  tensors.push_back({"empty", DType::f32, {0, 4}, nullptr});
  write_safetensors(path, tensors, {{"format", "pt"}});
  const SafetensorsFile f = SafetensorsFile::read(path);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.checksum_status(), "verified");
  ASSERT_EQ(f.tensors().size(), tensors.size());
  for (std::size_t i = 0; i + 1 < tensors.size(); ++i) {
    const SafetensorsEntry* e = f.find(tensors[i].name);
    ASSERT_NE(e, nullptr) << tensors[i].name;
    EXPECT_EQ(e->dtype, tensors[i].dtype);
    EXPECT_EQ(e->shape, tensors[i].shape);
    const auto data = f.data(*e);
    ASSERT_EQ(data.size(), buffers[i].size());
    EXPECT_EQ(std::memcmp(data.data(), buffers[i].data(), data.size()), 0) << tensors[i].name;
  }
  EXPECT_EQ(f.find("empty")->shape, (Shape{0, 4}));
}

TEST(Safetensors, RejectsEachClassOfMalformedFile) {
  const std::string one = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_NO_THROW(SafetensorsFile::parse(file_of(one, 8), "ok"));
  expect_rejected({std::byte{1}, std::byte{2}}, "shorter than the 8-byte header length");
  auto huge = file_of(one, 8);
  huge[5] = std::byte{0x7F};  // header length about 2^46
  expect_rejected(huge, "exceeds the 100 MB limit");
  auto past = file_of(one, 8);
  past[0] = static_cast<std::byte>(one.size() + 9);
  expect_rejected(past, "runs past the end of the file");
  expect_rejected(file_of(" " + one, 8), "does not start with '{'");
  expect_rejected(file_of("{\"a\":", 0), "not valid JSON");
  expect_rejected(file_of(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
                  "duplicate key 'a'");
  expect_rejected(file_of(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8), "unknown dtype 'F33'");
  expect_rejected(file_of(R"({"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8),
                  "metadata value of 'k' is not a string");
  expect_rejected(file_of(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
                  "overlapping");
  expect_rejected(file_of(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 12),
                  "a gap between");
  expect_rejected(file_of(R"({"a":{"dtype":"F32","shape":[2,9223372036854775807],"data_offsets":[0,8]}})", 8),
                  "overflows 64 bits");
  expect_rejected(file_of(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "needs 12 bytes");
  expect_rejected(file_of(one, 12), "trailing bytes");
  expect_rejected(file_of(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8), "truncated?");
  expect_rejected(file_of(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "non-negative integers");
  expect_rejected(file_of(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8), "unknown field 'x'");
  expect_rejected(file_of(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "begin after they end");
  expect_rejected(file_of(R"({"a":{"dtype":"F32","shape":[[[2]]],"data_offsets":[0,8]}})", 8), "nests deeper");
  std::string long_shape = R"({"a":{"dtype":"F32","shape":[)";
  for (int i = 0; i < 100; ++i) long_shape += "1,";
  long_shape += R"(2],"data_offsets":[0,8]}})";
  expect_rejected(file_of(long_shape, 8), "more than 64 entries");
  // Brackets, commas and escaped quotes inside strings do not count.
  const auto quoted = SafetensorsFile::parse(
      file_of(R"({"__metadata__":{"k":"[[[,,,\"]]{"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8), "ok");
  EXPECT_EQ(quoted.metadata().at("k"), "[[[,,,\"]]{");
}

TEST(Safetensors, TheRecordedChecksumIsTheSha256OfAllTensorBytesInOrder) {
  // FIPS 180-2's test vector: SHA-256("abc"), here spread over two tensors written piece by piece.
  const std::string path = testing::TempDir() + "/abc.safetensors";
  const std::vector<std::uint8_t> ab = {'a', 'b'}, c = {'c'};
  write_safetensors(path, {{"ab", DType::u8, {2}, ab.data()}, {"c", DType::u8, {1}, c.data()}});
  const SafetensorsFile file = SafetensorsFile::read(path);
  EXPECT_EQ(file.metadata().at("mpx.data_sha256"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Safetensors, DamagedDataFailsTheChecksum) {
  const std::string path = testing::TempDir() + "/damaged.safetensors";
  const std::vector<float> v = {1, 2, 3, 4};
  write_safetensors(path, {{"w", DType::f32, {4}, v.data()}});
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(-1, std::ios::end);
  f.put('\x7f');
  f.close();
  try {
    SafetensorsFile::read(path);
    FAIL() << "a damaged file passed its checksum";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("checksum mismatch"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(Safetensors, AFailedWriteLeavesThePreviousFileIntact) {
  const std::string path = testing::TempDir() + "/keep.safetensors";
  const std::vector<float> v = {1, 2};
  write_safetensors(path, {{"w", DType::f32, {2}, v.data()}});
  EXPECT_THROW(write_safetensors(path, {{"w", DType::f32, {2}, v.data()}, {"w", DType::f32, {2}, v.data()}}),
               InvalidArgument);
  EXPECT_THROW(write_safetensors("/proc/no-such-dir/x.safetensors", {{"w", DType::f32, {2}, v.data()}}), IoError);
  const SafetensorsFile f = SafetensorsFile::read(path);
  EXPECT_EQ(f.tensors().size(), 1u);
  for (const auto& entry : std::filesystem::directory_iterator(testing::TempDir())) {
    EXPECT_EQ(entry.path().string().find("keep.safetensors.tmp"), std::string::npos) << "temporary left behind";
  }
}

// The format pads its JSON with spaces only.
TEST(Safetensors, AHeaderPaddedWithNulBytesIsRefused) {
  expect_rejected(file_of(std::string(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})") + std::string(3, '\0'), 4),
                  "only spaces may pad it");
  const std::string spaced = std::string(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})") + "   ";
  EXPECT_NO_THROW(SafetensorsFile::parse(file_of(spaced, 4), "ok"));
}

TEST(Safetensors, AFifoOrADirectoryIsRefusedNamingItWithoutWaiting) {
  const std::filesystem::path dir = std::filesystem::path(testing::TempDir()) / "mpx-fifo-test";
  std::filesystem::create_directories(dir);
  const std::string fifo = (dir / "pipe.safetensors").string();
  std::filesystem::remove(fifo);
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  for (const std::string& path : {fifo, dir.string()}) {
    try {
      SafetensorsFile::read(path);
      FAIL() << "read " << path;
    } catch (const IoError& e) {
      EXPECT_NE(std::string(e.what()).find(path + ": is a "), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
    }
  }
  std::filesystem::remove_all(dir);
}

// Finding tensors by name is a hash lookup and the header is parsed in linear time: the most tensors a
// file may hold (100k) read and are all found (quadratic code took minutes here); one more is refused.
TEST(Safetensors, AHeaderWithManyTensorsIsReadAndSearchedInLinearTime) {
  const std::string path = testing::TempDir() + "/many.safetensors";
  constexpr int kTensors = 100000;
  std::vector<TensorToWrite> tensors;
  std::vector<std::string> names;
  for (int i = 0; i < kTensors; ++i) names.push_back("t" + std::to_string(i));
  const float one = 1.0f;
  for (int i = 0; i < kTensors; ++i) tensors.push_back({names[static_cast<std::size_t>(i)], DType::f32, i % 2 ? Shape{0} : Shape{1}, &one});
  write_safetensors(path, tensors);
  const SafetensorsFile f = SafetensorsFile::read(path);
  ASSERT_EQ(f.tensors().size(), static_cast<std::size_t>(kTensors));
  for (const std::string& n : names) ASSERT_NE(f.find(n), nullptr) << n;
  EXPECT_EQ(f.checksum_status(), "verified");
  tensors.push_back({"one_too_many", DType::f32, Shape{0}, &one});
  write_safetensors(path, tensors);
  try {
    SafetensorsFile::read(path);
    FAIL() << "read a header of " << tensors.size() << " tensors";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("more than 100000 tensors"), std::string::npos) << e.what();
  }
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace mpx::io
