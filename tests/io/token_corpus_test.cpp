// Language-model data: UTF-8 text as byte tokens with a held-out tail, llm.c token shards, and the token
// windows the trainer reads; each bad input refused naming the file and what is wrong.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "mpx/core/error.h"
#include "mpx/io/token_corpus.h"
#include "mpx/train/dataset.h"

namespace mpx::io {
namespace {

namespace fs = std::filesystem;

fs::path scratch_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("mpx_token_corpus_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string shard(std::int32_t magic, std::int32_t version, std::int32_t count, const std::vector<std::uint16_t>& ids) {
  std::vector<std::int32_t> header(256, 0);
  header[0] = magic;
  header[1] = version;
  header[2] = count;
  std::string bytes(reinterpret_cast<const char*>(header.data()), 1024);
  bytes.append(reinterpret_cast<const char*>(ids.data()), ids.size() * 2);
  return bytes;
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(TokenCorpus, TextBecomesByteTokensWithTheLastTenthHeldOut) {
  const fs::path dir = scratch_dir("text");
  std::string text;
  for (int i = 0; i < 100; ++i) text += static_cast<char>('a' + i % 26);
  text += "\xc3\xa9";  // é: two bytes of UTF-8
  write_bytes(dir / "t.txt", text);
  const TokenCorpus c = read_text_corpus((dir / "t.txt").string());
  EXPECT_EQ(c.vocabulary, 256);
  ASSERT_EQ(c.train->size() + c.validation->size(), text.size());
  EXPECT_EQ(c.validation->size(), 10u);
  EXPECT_EQ((*c.train)[1], 'b');
  EXPECT_EQ(c.validation->back(), 0xa9);
  EXPECT_EQ(decode_bytes(*c.validation).substr(8), "\xc3\xa9");
}

TEST(TokenCorpus, EmptyBinaryOrMissingTextIsRefusedNamingTheFile) {
  const fs::path dir = scratch_dir("bad_text");
  write_bytes(dir / "empty.txt", "");
  write_bytes(dir / "nul.txt", std::string("abc\0def", 7));
  write_bytes(dir / "latin1.txt", "caf\xe9!");
  write_bytes(dir / "cut.txt", "ok \xe2\x82");
  EXPECT_NE(message_of([&] { read_text_corpus((dir / "empty.txt").string()); }).find("empty"), std::string::npos);
  EXPECT_NE(message_of([&] { read_text_corpus((dir / "nul.txt").string()); }).find("at offset 3"), std::string::npos);
  EXPECT_NE(message_of([&] { read_text_corpus((dir / "latin1.txt").string()); }).find("byte 0xe9 at offset 3"),
            std::string::npos);
  EXPECT_NE(message_of([&] { read_text_corpus((dir / "cut.txt").string()); }).find("not UTF-8"), std::string::npos);
  EXPECT_NE(message_of([&] { read_text_corpus((dir / "none.txt").string()); }).find("none.txt"), std::string::npos);
  EXPECT_THROW(read_text_corpus(dir.string()), IoError);  // a directory
}

TEST(TokenCorpus, LlmcShardsReadTrainAndValidationByName) {
  const fs::path dir = scratch_dir("shards");
  write_bytes(dir / "data_train_000001.bin", shard(20240520, 1, 3, {5, 50256, 7}));
  write_bytes(dir / "data_train_000000.bin", shard(20240520, 1, 2, {1, 2}));
  write_bytes(dir / "data_val_000000.bin", shard(20240520, 1, 2, {9, 8}));
  const TokenCorpus c = read_token_shards(dir.string());
  EXPECT_EQ(*c.train, (std::vector<std::int32_t>{1, 2, 5, 50256, 7}));  // shards in name order
  EXPECT_EQ(*c.validation, (std::vector<std::int32_t>{9, 8}));
  EXPECT_EQ(c.shards.size(), 3u);
}

TEST(TokenCorpus, DamagedShardsAreRefusedNamingTheShard) {
  const fs::path dir = scratch_dir("bad_shards");
  write_bytes(dir / "val.bin", shard(20240520, 1, 2, {9, 8}));
  write_bytes(dir / "train.bin", shard(20240520, 1, 3, {1, 60000, 2}));
  EXPECT_NE(message_of([&] { read_token_shards(dir.string()); }).find("token 1 is id 60000, beyond the vocabulary of 50257"),
            std::string::npos);
  write_bytes(dir / "train.bin", shard(1234, 1, 1, {1}));
  EXPECT_NE(message_of([&] { read_token_shards(dir.string()); }).find("magic 1234"), std::string::npos);
  write_bytes(dir / "train.bin", shard(20240520, 2, 1, {1}));
  EXPECT_NE(message_of([&] { read_token_shards(dir.string()); }).find("version 2"), std::string::npos);
  write_bytes(dir / "train.bin", shard(20240520, 1, 5, {1, 2}));
  EXPECT_NE(message_of([&] { read_token_shards(dir.string()); }).find("says 5 tokens"), std::string::npos);
  write_bytes(dir / "train.bin", "short");
  EXPECT_NE(message_of([&] { read_token_shards(dir.string()); }).find("train.bin"), std::string::npos);
  fs::remove(dir / "val.bin");
  write_bytes(dir / "train.bin", shard(20240520, 1, 1, {1}));
  EXPECT_NE(message_of([&] { read_token_shards(dir.string()); }).find("validation shard"), std::string::npos);
  EXPECT_THROW(read_token_shards((dir / "missing").string()), IoError);
}

TEST(TokenWindows, SamplesAreWindowsAndLabelsTheNextTokens) {
  auto tokens = std::make_shared<const std::vector<std::int32_t>>(std::vector<std::int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  const train::TokenWindows windows(tokens, 3, "ten tokens");
  EXPECT_EQ(windows.size(), 3);  // [0,3) [3,6) [6,9), the last needing token 9 for its labels
  std::vector<std::int32_t> x(6), y(6);
  const std::int64_t picks[] = {2, 0};
  windows.gather(picks, x.data(), y.data());
  EXPECT_EQ(x, (std::vector<std::int32_t>{6, 7, 8, 0, 1, 2}));
  EXPECT_EQ(y, (std::vector<std::int32_t>{7, 8, 9, 1, 2, 3}));
}

TEST(TokenWindows, ABlockLongerThanTheDataIsRefusedSayingWhatToDo) {
  auto tokens = std::make_shared<const std::vector<std::int32_t>>(std::vector<std::int32_t>{1, 2, 3, 4});
  const std::string m = message_of([&] { train::TokenWindows(tokens, 4, "the validation split"); });
  EXPECT_NE(m.find("the validation split holds 4 tokens"), std::string::npos) << m;
  EXPECT_NE(m.find("--block-size"), std::string::npos) << m;
}

}  // namespace
}  // namespace mpx::io
