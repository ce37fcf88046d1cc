// The safetensors format: an 8-byte little-endian header length N, N bytes of JSON (tensor name ->
// {dtype, shape, data_offsets}, plus an optional "__metadata__" map of strings), then the tensors' bytes.
// Reading validates as strictly as the reference implementation and more: header at most 100 MB and inside
// the file, JSON starting with '{', no duplicate keys, known dtypes, offsets contiguous from 0 to the end of
// the data with no gap or overlap, shape x element size computed with overflow checks and equal to the byte
// range, metadata values strings. It never allocates more than the file's size. Writing is atomic
// (temporary file, fsync, rename, fsync of the directory) and records the data's SHA-256 in the metadata
// ("mpx.data_sha256"), which reading verifies when present.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <unordered_map>
#include <span>
#include <string>
#include <vector>

#include "mpx/numeric/dtype.h"
#include "mpx/tensor/tensor.h"

namespace mpx::io {

inline constexpr std::uint64_t kMaxSafetensorsHeader = 100'000'000;
inline constexpr const char* kDataSha256Key = "mpx.data_sha256";

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  std::uint64_t begin = 0, end = 0;  // byte range within the data section
};

class SafetensorsFile {
 public:
  // Reads and validates `path`; throws IoError naming the file and what is wrong. Verifies the data's
  // SHA-256 against the metadata when the file records one. The file is mapped, not loaded: its header is
  // checked before any data is read, and the data's pages are read as they are used.
  // With verify_checksum false a recorded checksum is compared but a mismatch only sets checksum_status().
  static SafetensorsFile read(const std::string& path, bool verify_checksum = true);
  // The same checks on bytes already in memory (`origin` names them in errors).
  static SafetensorsFile parse(std::vector<std::byte> bytes, const std::string& origin, bool verify_checksum = true);

  const std::vector<SafetensorsEntry>& tensors() const { return entries_; }  // in data order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry* find(const std::string& name) const;  // nullptr when absent
  std::span<const std::byte> data(const SafetensorsEntry& entry) const;
  // Hands a read tensor's pages back (a mapped file reads them again if the tensor is used once more), so
  // that going through a large file keeps about one tensor resident.
  void release(const SafetensorsEntry& entry) const;
  std::span<const std::byte> data_section() const;
  std::string file_sha256() const;  // of the whole file as read
  // "verified", "mismatch" or "not recorded"
  const std::string& checksum_status() const { return checksum_status_; }

 private:
  static SafetensorsFile parse_view(std::shared_ptr<const void> owner, std::span<const std::byte> bytes,
                                    const std::string& origin, bool verify_checksum, bool mapped);
  std::shared_ptr<const void> owner_;  // keeps bytes_ alive: a file mapping or a buffer
  std::span<const std::byte> bytes_;
  bool mapped_ = false;  // bytes_ is a read-only file mapping
  std::uint64_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
  std::unordered_map<std::string, std::size_t> index_;  // name -> entries_ position
  std::string checksum_status_ = "not recorded";
};

struct TensorToWrite {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  const void* data = nullptr;  // numel(shape) * size_bytes(dtype) bytes
};

// Writes the tensors in the given order (names must be unique) with `metadata` (plus the data checksum),
// atomically: a crash or a full disk leaves any previous file at `path` intact. Throws IoError.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       std::map<std::string, std::string> metadata = {});

std::string sha256_hex(std::span<const std::byte> bytes);

}  // namespace mpx::io
