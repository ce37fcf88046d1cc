// The IDX reader on files it writes itself: plain and gzip, and every kind of damage a clear error.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "mpx/core/error.h"
#include "mpx/io/idx.h"

namespace mpx::io {
namespace {

namespace fs = std::filesystem;

std::vector<unsigned char> idx_bytes(std::vector<std::uint32_t> dims, unsigned char type = 0x08) {
  std::vector<unsigned char> out = {0, 0, type, static_cast<unsigned char>(dims.size())};
  std::size_t n = 1;
  for (auto d : dims) {
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<unsigned char>(d >> s));
    n *= d;
  }
  for (std::size_t i = 0; i < n; ++i) out.push_back(static_cast<unsigned char>(i * 7));
  return out;
}

class IdxFiles : public ::testing::Test {
 protected:
  fs::path dir = fs::temp_directory_path() / ("mpx_idx_test_" + std::to_string(::getpid()));
  void SetUp() override { fs::create_directories(dir); }
  void TearDown() override { fs::remove_all(dir); }
  std::string write_plain(const std::string& name, const std::vector<unsigned char>& bytes) {
    const auto path = (dir / name).string();
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return path;
  }
  std::string write_gz(const std::string& name, const std::vector<unsigned char>& bytes) {
    const auto path = (dir / name).string();
    gzFile f = gzopen(path.c_str(), "wb");
    gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(f);
    return path;
  }
  void expect_error(const std::string& path, const std::string& fragment) {
    try {
      read_idx(path);
      FAIL() << "expected an error mentioning '" << fragment << "'";
    } catch (const IoError& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << "the error names the file";
    }
  }
};

TEST_F(IdxFiles, ReadsPlainAndGzipFiles) {
  const auto bytes = idx_bytes({3, 4, 5});
  for (const auto& path : {write_plain("a.idx", bytes), write_gz("a.idx.gz", bytes)}) {
    const IdxArray a = read_idx(path);
    ASSERT_EQ(a.dims, (std::vector<std::uint32_t>{3, 4, 5}));
    ASSERT_EQ(a.data.size(), 60u);
    EXPECT_EQ(a.data[59], static_cast<unsigned char>(59 * 7));
  }
}

TEST_F(IdxFiles, DamagedFilesAreClearErrors) {
  auto bytes = idx_bytes({10, 2});
  expect_error((dir / "missing.idx").string(), "no such IDX file");
  expect_error(write_plain("empty.idx", {}), "truncated");
  auto truncated = bytes;
  truncated.resize(truncated.size() - 3);
  expect_error(write_gz("truncated.gz", truncated), "truncated");
  auto trailing = bytes;
  trailing.push_back(1);
  expect_error(write_plain("trailing.idx", trailing), "bytes after");
  expect_error(write_plain("type.idx", idx_bytes({2}, 0x0D)), "type code 0x0D is not supported");
  auto magic = bytes;
  magic[0] = 1;
  expect_error(write_plain("magic.idx", magic), "not an IDX file");
  auto rank = bytes;
  rank[3] = 9;
  expect_error(write_plain("rank.idx", rank), "dimensions");
  expect_error(write_plain("huge.idx", {0, 0, 8, 3, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 2}),
               "more than 2^32");
  expect_error(write_plain("zero.idx", {0, 0, 8, 1, 0, 0, 0, 0}), "is zero");
  auto gz = write_gz("corrupt.gz", bytes);
  {
    std::fstream f(gz, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(12);
    f.write("garbage!", 8);
  }
  EXPECT_THROW(read_idx(gz), IoError);
}

// A FIFO would block the open forever, a directory reads as nonsense: both are refused by name at once.
TEST_F(IdxFiles, AFifoOrADirectoryIsRefusedNamingIt) {
  const std::string fifo = (dir / "pipe.idx").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_error(fifo, "is a FIFO (named pipe), not a regular file (IDX file expected)");
  expect_error(dir.string(), "is a directory");
}

}  // namespace
}  // namespace mpx::io
