// Language-model training data: any UTF-8 text as byte-level tokens (vocabulary 256), or llm.c's token
// shards (.bin: a 256 x int32 header with magic 20240520, version 1 and the token count, then uint16 GPT-2
// token ids). Both split into a training and a validation stream of i32 ids.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mpx::io {

// Where `scripts/setup.sh` puts the default corpus: the King James Bible (Debian's bible-kjv), one verse
// per line, 4.3 MB.
inline constexpr const char* kDefaultTextCorpus = "data/bible-kjv.txt";

struct TokenCorpus {
  std::shared_ptr<const std::vector<std::int32_t>> train, validation;
  std::int64_t vocabulary = 256;  // the ids' range: 256 bytes, or GPT-2's 50257 tokens
  std::string source;             // the file or directory, for messages and config.json
  std::vector<std::string> shards;  // token shards read (train first), empty for text
};

// The file's bytes as tokens, the last `validation_fraction` held out. Throws IoError naming the file when
// it is missing, not a regular file, empty, or not UTF-8 text (the offset of the first bad byte; a NUL
// byte is taken as binary data).
TokenCorpus read_text_corpus(const std::string& path, double validation_fraction = 0.1);

// The .bin shards of a directory: names containing "val" form the validation stream, the others
// (sorted by name) the training one. Throws IoError naming the shard for a bad header, a count that does
// not match the file's size, or a token id >= `vocabulary` (with its offset).
TokenCorpus read_token_shards(const std::string& directory, std::int64_t vocabulary = 50257);

// Byte-level text of ids < 256 (what a byte-level model's samples decode to).
std::string decode_bytes(const std::vector<std::int32_t>& ids);

}  // namespace mpx::io
