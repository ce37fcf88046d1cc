// libFuzzer target: read_idx on arbitrary bytes (written to a temporary file, plain or gzip as the bytes
// say) must either return an array whose size matches its dimensions or throw IoError.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "mpx/core/error.h"
#include "mpx/io/idx.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string path = "/tmp/mpx-idx-fuzz-" + std::to_string(::getpid());
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    const auto array = mpx::io::read_idx(path);
    std::uint64_t elements = 1;
    for (auto d : array.dims) elements *= d;
    if (elements != array.data.size()) __builtin_trap();
  } catch (const mpx::IoError&) {
  }
  return 0;
}
