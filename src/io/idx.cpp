#include "mpx/io/idx.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <memory>

#include "mpx/core/error.h"
#include "mpx/io/regular_file.h"

namespace mpx::io {

namespace {

constexpr std::uint64_t kMaxElements = std::uint64_t{1} << 32;  // 4 GiB of bytes: far beyond any IDX set

struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw IoError("IDX file " + path + ": " + what);
}

// Reads exactly `size` bytes or reports how many were there.
void read_exactly(gzFile file, const std::string& path, void* out, std::size_t size, const char* what) {
  std::size_t done = 0;
  auto* bytes = static_cast<unsigned char*>(out);
  while (done < size) {
    const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(size - done, 1u << 30));
    const int got = gzread(file, bytes + done, chunk);
    if (got < 0) {
      int code = 0;
      const char* message = gzerror(file, &code);
      fail(path, std::string("corrupt or unreadable (") + (message ? message : "zlib error") + ") while reading " + what);
    }
    if (got == 0) {
      fail(path, "truncated: " + std::string(what) + " needs " + std::to_string(size) + " bytes, file has " +
                     std::to_string(done));
    }
    done += static_cast<std::size_t>(got);
  }
}

}  // namespace

IdxArray read_idx(const std::string& path) {
  require_regular_file(path, "IDX file");
  std::unique_ptr<gzFile_s, GzCloser> file(gzopen(path.c_str(), "rb"));
  if (!file) fail(path, "cannot open (does it exist and is it readable?)");

  unsigned char magic[4];
  read_exactly(file.get(), path, magic, 4, "the header");
  if (magic[0] != 0 || magic[1] != 0) fail(path, "not an IDX file (the first two bytes must be zero)");
  if (magic[2] != 0x08) {
    char code[8];
    std::snprintf(code, sizeof(code), "0x%02X", magic[2]);
    fail(path, "element type code " + std::string(code) + " is not supported; mpx reads unsigned bytes (0x08)");
  }
  const unsigned rank = magic[3];
  if (rank < 1 || rank > 4) fail(path, "has " + std::to_string(rank) + " dimensions; expected 1 to 4");

  IdxArray array;
  std::uint64_t elements = 1;
  for (unsigned d = 0; d < rank; ++d) {
    unsigned char be[4];
    read_exactly(file.get(), path, be, 4, "the dimensions");
    const std::uint32_t size = (std::uint32_t{be[0]} << 24) | (std::uint32_t{be[1]} << 16) |
                               (std::uint32_t{be[2]} << 8) | std::uint32_t{be[3]};
    if (size == 0) fail(path, "dimension " + std::to_string(d) + " is zero");
    elements *= size;
    if (elements > kMaxElements) fail(path, "dimensions multiply to more than 2^32 elements");
    array.dims.push_back(size);
  }
  // Grown as the data arrives, so that a header announcing more than the file holds fails at the end of
  // the file instead of allocating what it announces.
  constexpr std::uint64_t kChunk = std::uint64_t{1} << 20;
  while (array.data.size() < elements) {
    const std::size_t have = array.data.size();
    const auto chunk = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, elements - have));
    array.data.resize(have + chunk);
    const int got = gzread(file.get(), array.data.data() + have, static_cast<unsigned>(chunk));
    if (got < 0) fail(path, "corrupt or unreadable compressed data while reading the data");
    if (static_cast<std::size_t>(got) < chunk) {
      fail(path, "truncated: the data needs " + std::to_string(elements) + " bytes, file has " +
                     std::to_string(have + static_cast<std::size_t>(got)));
    }
  }
  unsigned char extra;
  const int trailing = gzread(file.get(), &extra, 1);
  if (trailing < 0) fail(path, "corrupt compressed data after the array");
  if (trailing > 0) fail(path, "has bytes after the " + std::to_string(elements) + " the header announces");
  return array;
}

}  // namespace mpx::io
