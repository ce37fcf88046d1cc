// The rendezvous of a data-parallel job: a small key-value store that rank 0 serves over TCP and every
// rank (rank 0 too) reads and writes as a client. Gloo exchanges its addresses through it (gloo ships no
// TCP store); mpx keeps the ranks' settings, the run directory and heartbeats in it. Keys are written once
// or overwritten; wait() polls until keys exist or the timeout passes.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gloo/rendezvous/store.h>

namespace mpx::distributed {

class TcpStoreServer {
 public:
  // Listens on `port` (0: any free port; port() tells which) on every address.
  explicit TcpStoreServer(int port);
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;
  int port() const { return port_; }

 private:
  void serve();
  int listen_fd_ = -1, wake_[2] = {-1, -1}, port_ = 0;
  std::map<std::string, std::vector<char>> values_;
  std::thread thread_;
};

class TcpStoreClient : public gloo::rendezvous::Store {
 public:
  // Connects, retrying until `timeout` (rank 0 may start later); throws CommunicationError naming the address.
  TcpStoreClient(const std::string& host, int port, std::chrono::milliseconds timeout);
  ~TcpStoreClient() override;
  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;  // waits for the key up to the timeout
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;
  // The value when the key exists (no waiting).
  bool try_get(const std::string& key, std::vector<char>& out);
  // Keys of `keys` that are not there yet.
  std::vector<std::string> missing(const std::vector<std::string>& keys);
  std::string address() const { return host_ + ":" + std::to_string(port_); }

 private:
  std::vector<char> request(char op, const std::string& key, const std::vector<char>& value, bool& found);
  std::string host_;
  int port_, fd_ = -1;
  std::chrono::milliseconds timeout_;
  std::mutex mutex_;
};

}  // namespace mpx::distributed
