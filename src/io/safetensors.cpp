#include "mpx/io/safetensors.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <set>
#include <string_view>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "mpx/core/error.h"
#include "mpx/io/atomic_file.h"
#include "mpx/io/regular_file.h"

namespace mpx::io {

using nlohmann::json;

namespace {

// Hands whole pages of a read-only file mapping back (they are read from the file again if used). Never
// for heap memory: MADV_DONTNEED would zero it.
void release_mapped_pages(std::span<const std::byte> bytes) {
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = (reinterpret_cast<std::uintptr_t>(bytes.data()) + page - 1) / page * page;
  const auto end = (reinterpret_cast<std::uintptr_t>(bytes.data()) + bytes.size()) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

// SHA-256 over several pieces, as if they were one buffer (OpenSSL's incremental digest). With
// `release_pages` (a file mapping), each piece's pages are handed back once hashed.
std::string sha256_hex_of(std::span<const std::span<const std::byte>> pieces, bool release_pages = false) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  bool ok = ctx != nullptr && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1;
  for (std::size_t i = 0; ok && i < pieces.size(); ++i) {
    ok = EVP_DigestUpdate(ctx.get(), pieces[i].data(), pieces[i].size()) == 1;
    if (ok && release_pages) release_mapped_pages(pieces[i]);
  }
  if (!ok || EVP_DigestFinal_ex(ctx.get(), digest, &length) != 1) throw Error("SHA-256 failed (OpenSSL)");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < length; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 15];
  }
  return out;
}

}  // namespace

std::string sha256_hex(std::span<const std::byte> bytes) {
  const std::span<const std::byte> pieces[] = {bytes};
  return sha256_hex_of(pieces);
}

namespace {
// SHA-256 of bytes, 64 MB at a time: for a file mapping (`release_pages`), verifying a 2 GB file does not
// keep 2 GB resident.
std::string sha256_hex_in_pieces(std::span<const std::byte> bytes, bool release_pages) {
  constexpr std::size_t kPiece = std::size_t{64} << 20;
  std::vector<std::span<const std::byte>> pieces;
  for (std::size_t at = 0; at < bytes.size(); at += kPiece) pieces.push_back(bytes.subspan(at, std::min(kPiece, bytes.size() - at)));
  return sha256_hex_of(pieces, release_pages);
}
}  // namespace

namespace {

DType dtype_from_safetensors(const std::string& name, const std::string& fail_prefix) {
  for (const DTypeTraits& t : kDTypeTraits) {
    if (t.safetensors_name == name) return t.dtype;
  }
  throw IoError(fail_prefix + "unknown dtype '" + name + "' (mpx reads F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, "
                "I32, U8, BOOL)");
}

// A safetensors header nests three levels (the header object, an entry, its shape/offsets arrays) and its
// arrays are short. Checked on the raw text before parsing, so that a hostile header cannot make the parsed
// JSON much larger than its text (deep nesting, or millions of numbers in one "shape").
constexpr std::size_t kMaxRank = 64;
// Far beyond any model (GPT-2 has 150 tensors, a 70B-parameter model under 1000); a header that lists more
// is refused before it is parsed, so that reading it stays well under a second.
constexpr std::size_t kMaxTensors = 100'000;
void check_header_shape(std::string_view text, const std::string& fail_prefix) {
  std::vector<std::pair<bool, std::size_t>> open;  // (is array, elements so far)
  std::size_t entries = 0;  // objects directly inside the header object
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (open.size() == 3) throw IoError(fail_prefix + "the header nests deeper than a safetensors header can");
      if (c == '{' && open.size() == 1 && ++entries > kMaxTensors + 1) {  // + 1: __metadata__
        throw IoError(fail_prefix + "the header lists more than " + std::to_string(kMaxTensors) +
                      " tensors (mpx reads at most that many)");
      }
      open.emplace_back(c == '[', 1);
    } else if (c == '}' || c == ']') {
      if (!open.empty()) open.pop_back();
    } else if (c == ',' && !open.empty() && open.back().first && ++open.back().second > kMaxRank) {
      throw IoError(fail_prefix + "an array in the header has more than " + std::to_string(kMaxRank) +
                    " entries (shapes have at most " + std::to_string(kMaxRank) + " dimensions)");
    }
  }
}

// Finds a duplicate key at any depth (nlohmann keeps the last one silently). A SAX pass: nlohmann's
// callback parser re-scans the enclosing object at the end of every nested one (quadratic in the tensors).
class DuplicateKeyFinder : public json::json_sax_t {
 public:
  std::string duplicate;
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    keys_.emplace_back();
    return true;
  }
  bool key(string_t& k) override {
    if (keys_.back().insert(k).second) return true;
    duplicate = k;
    return false;  // stops the parse
  }
  bool end_object() override {
    keys_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    error = e.what();
    return false;
  }
  std::string error;

 private:
  std::vector<std::unordered_set<std::string>> keys_;  // one per object being parsed, innermost last
};

json parse_header(std::string_view text, const std::string& fail_prefix) {
  DuplicateKeyFinder finder;
  json::sax_parse(text, &finder);
  if (!finder.duplicate.empty()) throw IoError(fail_prefix + "duplicate key '" + finder.duplicate + "' in the header");
  if (!finder.error.empty()) throw IoError(fail_prefix + "the header is not valid JSON (" + finder.error + ")");
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw IoError(fail_prefix + "the header is not valid JSON (" + e.what() + ")");
  }
}

std::uint64_t checked_product(const Shape& shape, std::size_t element_bytes, const std::string& fail_prefix) {
  std::uint64_t n = element_bytes;
  for (std::int64_t d : shape) {
    const auto dim = static_cast<std::uint64_t>(d);
    if (dim != 0 && n > std::numeric_limits<std::uint64_t>::max() / dim) {
      throw IoError(fail_prefix + "shape " + to_string(shape) + " overflows 64 bits");
    }
    n *= dim;
  }
  return n;
}

}  // namespace

SafetensorsFile SafetensorsFile::read(const std::string& path, bool verify_checksum) {
  require_regular_file(path, "safetensors file");
  // O_NONBLOCK: should the path have become a FIFO since the check, open() does not wait for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw IoError("cannot open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IoError(path + ": is not a regular file; mpx reads regular files only");
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return parse(std::vector<std::byte>{}, path, verify_checksum);
  }
  void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_error = errno;
  ::close(fd);
  if (mapped == MAP_FAILED) throw IoError("cannot read " + path + ": " + std::strerror(map_error));
  std::shared_ptr<const void> owner(mapped, [size](const void* p) { ::munmap(const_cast<void*>(p), size); });
  ::madvise(mapped, size, MADV_SEQUENTIAL);
  return parse_view(std::move(owner), {static_cast<const std::byte*>(mapped), size}, path, verify_checksum, true);
}

SafetensorsFile SafetensorsFile::parse(std::vector<std::byte> bytes, const std::string& origin, bool verify_checksum) {
  auto owner = std::make_shared<const std::vector<std::byte>>(std::move(bytes));
  const std::span<const std::byte> view(*owner);
  return parse_view(std::move(owner), view, origin, verify_checksum, false);
}

SafetensorsFile SafetensorsFile::parse_view(std::shared_ptr<const void> owner, std::span<const std::byte> bytes,
                                            const std::string& origin, bool verify_checksum, bool mapped) {
  const std::string fail = origin + ": not a valid safetensors file: ";
  SafetensorsFile f;
  f.owner_ = std::move(owner);
  f.bytes_ = bytes;
  f.mapped_ = mapped;
  const std::uint64_t size = f.bytes_.size();
  if (size < 8) throw IoError(fail + "shorter than the 8-byte header length (" + std::to_string(size) + " bytes)");
  std::uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = header << 8 | static_cast<std::uint8_t>(f.bytes_[static_cast<std::size_t>(i)]);
  if (header > kMaxSafetensorsHeader) {
    throw IoError(fail + "header length " + std::to_string(header) + " exceeds the 100 MB limit");
  }
  if (header > size - 8) {
    throw IoError(fail + "header length " + std::to_string(header) + " runs past the end of the file (" +
                  std::to_string(size) + " bytes): truncated?");
  }
  const std::string_view text(reinterpret_cast<const char*>(f.bytes_.data()) + 8, header);
  if (text.empty() || text.front() != '{') throw IoError(fail + "the header does not start with '{'");
  check_header_shape(text, fail);
  const json j = parse_header(text, fail);
  // The format pads the JSON with spaces only (to align the data): NUL or other bytes there are damage.
  if (const std::size_t last = text.find_last_not_of(' '); last != std::string_view::npos && text[last] != '}') {
    throw IoError(fail + "the header ends with byte " + std::to_string(static_cast<unsigned char>(text[last])) +
                  " after its JSON; only spaces may pad it");
  }
  if (!j.is_object()) throw IoError(fail + "the header is not a JSON object");
  f.data_start_ = 8 + header;
  const std::uint64_t data_size = size - f.data_start_;

  for (const auto& [key, value] : j.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) throw IoError(fail + "__metadata__ is not an object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) throw IoError(fail + "metadata value of '" + mk + "' is not a string");
        f.metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    const std::string where = fail + "tensor '" + key + "': ";
    if (!value.is_object()) throw IoError(where + "entry is not an object");
    for (const auto& [field, unused] : value.items()) {
      (void)unused;
      if (field != "dtype" && field != "shape" && field != "data_offsets") {
        throw IoError(where + "unknown field '" + field + "'");
      }
    }
    if (!value.contains("dtype") || !value["dtype"].is_string()) throw IoError(where + "missing or non-string dtype");
    if (!value.contains("shape") || !value["shape"].is_array()) throw IoError(where + "missing shape");
    if (!value.contains("data_offsets") || !value["data_offsets"].is_array() || value["data_offsets"].size() != 2) {
      throw IoError(where + "data_offsets must be [begin, end]");
    }
    SafetensorsEntry e;
    e.name = key;
    e.dtype = dtype_from_safetensors(value["dtype"].get<std::string>(), where);
    for (const json& d : value["shape"]) {
      if (!d.is_number_unsigned() || d.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        throw IoError(where + "shape entries must be non-negative integers, got " + value["shape"].dump());
      }
      e.shape.push_back(static_cast<std::int64_t>(d.get<std::uint64_t>()));
    }
    for (const json& o : value["data_offsets"]) {
      if (!o.is_number_unsigned()) throw IoError(where + "data_offsets must be non-negative integers");
    }
    e.begin = value["data_offsets"][0].get<std::uint64_t>();
    e.end = value["data_offsets"][1].get<std::uint64_t>();
    if (e.begin > e.end) throw IoError(where + "data_offsets begin after they end");
    const std::uint64_t expected = checked_product(e.shape, size_bytes(e.dtype), where);
    if (expected != e.end - e.begin) {
      throw IoError(where + "shape " + to_string(e.shape) + " of " + std::string(name(e.dtype)) + " needs " +
                    std::to_string(expected) + " bytes but data_offsets give " + std::to_string(e.end - e.begin));
    }
    f.entries_.push_back(std::move(e));
  }
  std::sort(f.entries_.begin(), f.entries_.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t next = 0;
  for (const SafetensorsEntry& e : f.entries_) {
    if (e.begin != next) {
      throw IoError(fail + "tensor '" + e.name + "' starts at byte " + std::to_string(e.begin) + " of the data where " +
                    std::to_string(next) + " was expected (" + (e.begin < next ? "overlapping" : "a gap between") +
                    " tensors)");
    }
    next = e.end;
  }
  if (next != data_size) {
    throw IoError(fail + "the tensors cover " + std::to_string(next) + " bytes of data but the file holds " +
                  std::to_string(data_size) + (next > data_size ? " (truncated?)" : " (trailing bytes)"));
  }
  for (std::size_t i = 0; i < f.entries_.size(); ++i) f.index_.emplace(f.entries_[i].name, i);
  if (const auto it = f.metadata_.find(kDataSha256Key); it != f.metadata_.end()) {
    f.checksum_status_ = sha256_hex_in_pieces(f.data_section(), f.mapped_) == it->second ? "verified" : "mismatch";
    if (f.checksum_status_ == "mismatch" && verify_checksum) {
      throw IoError(origin + ": checksum mismatch: the data's SHA-256 differs from the one recorded when it was "
                    "written (the file is damaged)");
    }
  }
  return f;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& tensor_name) const {
  const auto it = index_.find(tensor_name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

void SafetensorsFile::release(const SafetensorsEntry& e) const {
  if (mapped_) release_mapped_pages(data(e));
}

std::span<const std::byte> SafetensorsFile::data_section() const {
  return std::span<const std::byte>(bytes_).subspan(static_cast<std::size_t>(data_start_));
}

std::string SafetensorsFile::file_sha256() const { return sha256_hex_in_pieces(bytes_, mapped_); }

std::span<const std::byte> SafetensorsFile::data(const SafetensorsEntry& e) const {
  return data_section().subspan(static_cast<std::size_t>(e.begin), static_cast<std::size_t>(e.end - e.begin));
}

// The tensors are hashed and written where they lie in memory, one after the other: no copy of the whole
// file is built (a GPT-2 checkpoint with optimizer state is 1.5 GB).
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       std::map<std::string, std::string> metadata) {
  std::set<std::string> names;
  std::vector<std::span<const std::byte>> pieces;
  std::uint64_t offset = 0;
  json header = json::object();
  for (const TensorToWrite& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__" || !names.insert(t.name).second) {
      throw InvalidArgument("safetensors: tensor name '" + t.name + "' is empty, reserved or repeated");
    }
    const auto bytes = static_cast<std::size_t>(numel(t.shape)) * size_bytes(t.dtype);
    if (bytes > 0 && t.data == nullptr) throw InvalidArgument("safetensors: tensor '" + t.name + "' has no data");
    pieces.emplace_back(static_cast<const std::byte*>(t.data), bytes);
    header[t.name] = {{"dtype", std::string(traits(t.dtype).safetensors_name)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  metadata[kDataSha256Key] = sha256_hex_of(pieces);
  header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned, as the reference writes
  std::byte length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<std::byte>((text.size() >> (8 * i)) & 0xFF);
  AtomicFile file(path);
  file.write(length, 8);
  file.write(text.data(), text.size());
  for (const auto& piece : pieces) {
    if (!piece.empty()) file.write(piece.data(), piece.size());
  }
  file.commit();
}

}  // namespace mpx::io
