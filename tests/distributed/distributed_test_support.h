// Ranks as threads: one ProcessGroup per thread, meeting at a free port.
#pragma once

#include <chrono>
#include <functional>
#include <thread>
#include <vector>

#include "mpx/distributed/process_group.h"
#include "../support/free_port.h"

namespace mpx::distributed {

using test::free_port;

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
