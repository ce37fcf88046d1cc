#include "mpx/io/regular_file.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "mpx/core/error.h"

namespace mpx::io {

void require_regular_file(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) throw IoError(path + ": no such " + what);
    throw IoError(path + ": cannot read this " + what + ": " + std::strerror(errno));
  }
  if (S_ISREG(st.st_mode)) return;
  const char* kind = S_ISDIR(st.st_mode)    ? "a directory"
                     : S_ISFIFO(st.st_mode) ? "a FIFO (named pipe)"
                     : S_ISSOCK(st.st_mode) ? "a socket"
                     : S_ISCHR(st.st_mode)  ? "a character device"
                     : S_ISBLK(st.st_mode)  ? "a block device"
                                            : "not a regular file";
  throw IoError(path + ": is " + std::string(kind) + ", not a regular file (" + what + " expected)");
}

}  // namespace mpx::io
