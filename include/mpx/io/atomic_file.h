// A file that appears complete or not at all: bytes go to PATH.tmp.<pid>, and commit() flushes them to
// disk, renames over PATH and flushes the directory. Until commit() (or if anything fails) the previous
// PATH is untouched and the temporary is removed. Errors are IoError naming the file ("disk full?" on
// write failures). Temporaries left by writers that were killed (PATH.tmp.<pid of a dead process>) are
// removed when the next AtomicFile for PATH is created.
#pragma once

#include <cstddef>
#include <string>

namespace mpx::io {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();  // removes the temporary unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t size);
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// Writes `text` to `path` atomically.
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace mpx::io
