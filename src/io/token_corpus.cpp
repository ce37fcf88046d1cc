#include "mpx/io/token_corpus.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "mpx/core/error.h"
#include "mpx/io/regular_file.h"

namespace mpx::io {

namespace {

std::vector<char> read_all(const std::string& path, const std::string& what) {
  require_regular_file(path, what);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open the " + what + " for reading");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw IoError(path + ": read error in the " + what);
  return bytes;
}

// The offset of the first byte that breaks UTF-8 (or is NUL), or -1 when the text is valid.
std::int64_t first_invalid_utf8(const std::vector<char>& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const auto n = static_cast<std::int64_t>(text.size());
  for (std::int64_t i = 0; i < n;) {
    const unsigned char c = s[i];
    if (c == 0) return i;
    int extra = 0;
    if (c < 0x80) extra = 0;
    else if ((c & 0xE0) == 0xC0 && c >= 0xC2) extra = 1;
    else if ((c & 0xF0) == 0xE0) extra = 2;
    else if ((c & 0xF8) == 0xF0 && c <= 0xF4) extra = 3;
    else return i;
    if (i + extra >= n) return i;  // a sequence cut off by the end of the file
    for (int k = 1; k <= extra; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
    }
    i += 1 + extra;
  }
  return -1;
}

TokenCorpus split(std::vector<std::int32_t> tokens, double validation_fraction, std::int64_t vocabulary,
                  std::string source) {
  const auto total = static_cast<std::int64_t>(tokens.size());
  const auto held_out = static_cast<std::int64_t>(static_cast<double>(total) * validation_fraction);
  TokenCorpus corpus;
  corpus.vocabulary = vocabulary;
  corpus.source = std::move(source);
  corpus.validation = std::make_shared<const std::vector<std::int32_t>>(tokens.end() - held_out, tokens.end());
  tokens.resize(static_cast<std::size_t>(total - held_out));
  corpus.train = std::make_shared<const std::vector<std::int32_t>>(std::move(tokens));
  return corpus;
}

}  // namespace

TokenCorpus read_text_corpus(const std::string& path, double validation_fraction) {
  const std::vector<char> text = read_all(path, "text corpus");
  if (text.empty()) throw IoError(path + ": the text corpus is empty");
  if (const std::int64_t bad = first_invalid_utf8(text); bad >= 0) {
    throw IoError(path + ": not UTF-8 text (byte 0x" + [&] {
      static const char* hex = "0123456789abcdef";
      const auto b = static_cast<unsigned char>(text[static_cast<std::size_t>(bad)]);
      return std::string{hex[b >> 4], hex[b & 15]};
    }() + " at offset " + std::to_string(bad) + "); --text takes a UTF-8 text file, --tokens a directory of token shards");
  }
  std::vector<std::int32_t> tokens(text.size());
  std::transform(text.begin(), text.end(), tokens.begin(),
                 [](char c) { return static_cast<std::int32_t>(static_cast<unsigned char>(c)); });
  return split(std::move(tokens), validation_fraction, 256, path);
}

namespace {
constexpr std::int32_t kShardMagic = 20240520;

void append_shard(const std::string& path, std::int64_t vocabulary, std::vector<std::int32_t>& out) {
  const std::vector<char> bytes = read_all(path, "token shard");
  std::array<std::int32_t, 256> header{};
  if (bytes.size() < sizeof(header)) {
    throw IoError(path + ": " + std::to_string(bytes.size()) + " bytes, shorter than a token shard's 1024-byte header");
  }
  std::memcpy(header.data(), bytes.data(), sizeof(header));
  if (header[0] != kShardMagic) {
    throw IoError(path + ": not an llm.c token shard (magic " + std::to_string(header[0]) + ", expected " +
                  std::to_string(kShardMagic) + ")");
  }
  if (header[1] != 1) {
    throw IoError(path + ": token shard version " + std::to_string(header[1]) + "; this mpx reads version 1 (uint16 ids)");
  }
  const std::int64_t count = header[2];
  const auto payload = static_cast<std::int64_t>(bytes.size() - sizeof(header));
  if (count < 0 || payload != 2 * count) {
    throw IoError(path + ": header says " + std::to_string(count) + " tokens but the file holds " +
                  std::to_string(payload) + " bytes after it (" + std::to_string(2 * std::max<std::int64_t>(count, 0)) +
                  " expected): truncated or not a token shard");
  }
  const auto* ids = reinterpret_cast<const unsigned char*>(bytes.data() + sizeof(header));
  out.reserve(out.size() + static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) {
    const std::int32_t id = ids[2 * i] | (ids[2 * i + 1] << 8);  // little-endian uint16
    if (id >= vocabulary) {
      throw IoError(path + ": token " + std::to_string(i) + " is id " + std::to_string(id) +
                    ", beyond the vocabulary of " + std::to_string(vocabulary));
    }
    out.push_back(id);
  }
}
}  // namespace

TokenCorpus read_token_shards(const std::string& directory, std::int64_t vocabulary) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(directory, ec)) {
    throw IoError(directory + ": no such directory (--tokens takes a directory of llm.c .bin token shards)");
  }
  std::vector<std::string> train_files, validation_files;
  for (const auto& entry : fs::directory_iterator(directory)) {
    if (entry.path().extension() != ".bin") continue;
    const std::string name = entry.path().filename().string();
    (name.find("val") != std::string::npos ? validation_files : train_files).push_back(entry.path().string());
  }
  std::sort(train_files.begin(), train_files.end());
  std::sort(validation_files.begin(), validation_files.end());
  if (train_files.empty() || validation_files.empty()) {
    throw IoError(directory + ": needs training shards and a validation shard (a .bin file with \"val\" in its name); found " +
                  std::to_string(train_files.size()) + " training and " + std::to_string(validation_files.size()) +
                  " validation shards");
  }
  std::vector<std::int32_t> train, validation;
  for (const auto& f : train_files) append_shard(f, vocabulary, train);
  for (const auto& f : validation_files) append_shard(f, vocabulary, validation);
  TokenCorpus corpus;
  corpus.vocabulary = vocabulary;
  corpus.source = directory;
  corpus.train = std::make_shared<const std::vector<std::int32_t>>(std::move(train));
  corpus.validation = std::make_shared<const std::vector<std::int32_t>>(std::move(validation));
  corpus.shards = train_files;
  corpus.shards.insert(corpus.shards.end(), validation_files.begin(), validation_files.end());
  return corpus;
}

std::string decode_bytes(const std::vector<std::int32_t>& ids) {
  std::string out;
  out.reserve(ids.size());
  for (const std::int32_t id : ids) out.push_back(static_cast<char>(static_cast<unsigned char>(id & 0xFF)));
  return out;
}

}  // namespace mpx::io
