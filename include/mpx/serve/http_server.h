// The HTTP transport of `mpx serve` (cpp-httplib, Debian's libcpp-httplib-dev): a thread pool of
// keep-alive connections handing every request to InferenceService. Bodies over `max_body_bytes` are
// answered 413 without being read; a connection that sends nothing for `read_timeout_seconds` is closed, so
// slow or half-open clients cannot hold the server.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "mpx/serve/service.h"

namespace mpx::serve {

struct HttpOptions {
  std::string bind = "127.0.0.1";
  int port = 8080;  // 0: any free port (port() tells which)
  int threads = 128;  // connections served at once (each keep-alive connection holds one)
  std::size_t max_body_bytes = 8u << 20;
  double read_timeout_seconds = 5, write_timeout_seconds = 5;
  int keep_alive_seconds = 2;
};

class HttpServer {
 public:
  // Binds at once: throws IoError naming the address when it cannot.
  HttpServer(InferenceService& service, const HttpOptions& options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }
  std::string url() const;
  void serve();  // blocks until stop(); requests in progress finish first
  void stop();   // thread-safe
  // Requests handed to the service and answered (whatever the status), for the exit summary.
  std::uint64_t answered() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  HttpOptions options_;
  int port_ = 0;
};

}  // namespace mpx::serve
