// Ranks as threads: a free port for the rendezvous and one ProcessGroup per thread.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <thread>
#include <vector>

#include "mpx/distributed/process_group.h"

namespace mpx::distributed {

inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// Runs `body` on `world` ranks, each a thread with its own ProcessGroup; waits for all.
inline void run_ranks(int world, const std::function<void(ProcessGroup&)>& body,
                      std::chrono::milliseconds timeout = std::chrono::milliseconds(10000)) {
  const int port = free_port();
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.emplace_back([&, r] {
      ProcessGroup group({r, world, "127.0.0.1", port, timeout});
      body(group);
    });
  }
  for (auto& t : ranks) t.join();
}

}  // namespace mpx::distributed
