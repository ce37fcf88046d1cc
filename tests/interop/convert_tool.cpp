// Test helper for the interop tests: converts a file of little-endian f32 values to a narrow dtype with
// mpx's bulk conversion (best CPU path) and writes the raw result. Usage: convert_tool IN OUT DTYPE [nan]
#include <cstdio>
#include <fstream>
#include <iterator>
#include <vector>

#include "mpx/core/error.h"
#include "mpx/numeric/convert.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: convert_tool IN.f32 OUT DTYPE [nan]\n");
    return 2;
  }
  try {
    std::ifstream in(argv[1], std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) throw mpx::IoError(std::string("cannot read ") + argv[1]);
    const std::size_t n = bytes.size() / 4;
    const mpx::DType to = mpx::parse_dtype(argv[3]);
    mpx::numeric::ConvertOptions options;
    if (argc > 4 && std::string(argv[4]) == "nan") options.fp8_overflow = mpx::numeric::Fp8Overflow::nan;
    std::vector<char> out(n * mpx::size_bytes(to));
    mpx::numeric::convert(bytes.data(), mpx::DType::f32, out.data(), to, n, options);
    std::ofstream(argv[2], std::ios::binary).write(out.data(), static_cast<std::streamsize>(out.size()));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "convert_tool: %s\n", e.what());
    return 2;
  }
  return 0;
}
