#include "mpx/io/safetensors.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <set>
#include <string_view>

#include <nlohmann/json.hpp>

#include "mpx/core/error.h"
#include "mpx/io/atomic_file.h"

namespace mpx::io {

using nlohmann::json;

namespace {

// SHA-256 over several pieces, as if they were one buffer (OpenSSL's incremental digest).
std::string sha256_hex_of(std::span<const std::span<const std::byte>> pieces) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  bool ok = ctx != nullptr && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1;
  for (std::size_t i = 0; ok && i < pieces.size(); ++i) {
    ok = EVP_DigestUpdate(ctx.get(), pieces[i].data(), pieces[i].size()) == 1;
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
void check_header_shape(std::string_view text, const std::string& fail_prefix) {
  std::vector<std::pair<bool, std::size_t>> open;  // (is array, elements so far)
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
      open.emplace_back(c == '[', 1);
    } else if (c == '}' || c == ']') {
      if (!open.empty()) open.pop_back();
    } else if (c == ',' && !open.empty() && open.back().first && ++open.back().second > kMaxRank) {
      throw IoError(fail_prefix + "an array in the header has more than " + std::to_string(kMaxRank) +
                    " entries (shapes have at most " + std::to_string(kMaxRank) + " dimensions)");
    }
  }
}

// JSON with duplicate keys at any depth rejected (nlohmann keeps the last one silently).
json parse_header(std::string_view text, const std::string& fail_prefix) {
  std::vector<std::set<std::string>> keys;  // one set per object being parsed, innermost last
  const json::parser_callback_t check = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == json::parse_event_t::key && !keys.empty()) {
      if (!keys.back().insert(parsed.get<std::string>()).second) {
        throw IoError(fail_prefix + "duplicate key '" + parsed.get<std::string>() + "' in the header");
      }
    }
    return true;
  };
  try {
    return json::parse(text, check);
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
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw IoError("cannot open " + path + ": missing or unreadable");
  const std::streamoff size = in.tellg();
  if (size < 0) throw IoError("cannot read " + path);
  std::vector<std::byte> bytes(static_cast<std::size_t>(size));
  in.seekg(0);
  if (!in.read(reinterpret_cast<char*>(bytes.data()), size)) throw IoError("cannot read " + path);
  return parse(std::move(bytes), path, verify_checksum);
}

SafetensorsFile SafetensorsFile::parse(std::vector<std::byte> bytes, const std::string& origin, bool verify_checksum) {
  const std::string fail = origin + ": not a valid safetensors file: ";
  SafetensorsFile f;
  f.bytes_ = std::move(bytes);
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
  if (const auto it = f.metadata_.find(kDataSha256Key); it != f.metadata_.end()) {
    f.checksum_status_ = sha256_hex(f.data_section()) == it->second ? "verified" : "mismatch";
    if (f.checksum_status_ == "mismatch" && verify_checksum) {
      throw IoError(origin + ": checksum mismatch: the data's SHA-256 differs from the one recorded when it was "
                    "written (the file is damaged)");
    }
  }
  return f;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& tensor_name) const {
  for (const SafetensorsEntry& e : entries_) {
    if (e.name == tensor_name) return &e;
  }
  return nullptr;
}

std::span<const std::byte> SafetensorsFile::data_section() const {
  return std::span<const std::byte>(bytes_).subspan(static_cast<std::size_t>(data_start_));
}

std::string SafetensorsFile::file_sha256() const { return sha256_hex(bytes_); }

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
