// Files mpx reads are checked to be regular files before they are opened: a FIFO would block the open (or
// the first read) forever, a directory or a device reads as nonsense or as an allocation failure.
#pragma once

#include <string>

namespace mpx::io {

// Throws IoError "<path>: is a FIFO (named pipe), not a regular file (<what> expected)" unless `path` is a
// regular file (or a link to one); a missing one is "<path>: no such <what>".
void require_regular_file(const std::string& path, const std::string& what);

}  // namespace mpx::io
