// Reader for the IDX format (LeCun's MNIST files; Fashion-MNIST uses it too), plain or gzip-compressed.
// Validates everything: magic, element type, dimension count, sizes against the actual data, no trailing
// bytes. Errors are mpx::IoError naming the file and what is wrong.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpx::io {

struct IdxArray {
  std::vector<std::uint32_t> dims;   // e.g. {60000, 28, 28}
  std::vector<std::uint8_t> data;    // row-major, dims' product bytes
};

// Reads an IDX file of unsigned bytes (type code 0x08). `.gz` files are decompressed through zlib; other
// files are read as they are (zlib passes uncompressed data through).
IdxArray read_idx(const std::string& path);

}  // namespace mpx::io
