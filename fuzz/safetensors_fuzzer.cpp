// libFuzzer target: SafetensorsFile::parse on arbitrary bytes must either accept the file (and then every
// tensor's bytes lie inside it) or throw IoError; never crash, hang or trip ASan/UBSan.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "mpx/core/error.h"
#include "mpx/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> bytes(size);
  if (size) std::memcpy(bytes.data(), data, size);
  try {
    const auto file = mpx::io::SafetensorsFile::parse(std::move(bytes), "fuzz", true);
    std::size_t total = 0;
    for (const auto& e : file.tensors()) total += file.data(e).size();
    if (total > size) __builtin_trap();  // accepted tensors must lie inside the input
  } catch (const mpx::IoError&) {
  }
  return 0;
}
