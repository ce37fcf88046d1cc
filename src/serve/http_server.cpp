#include "mpx/serve/http_server.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>

#include "mpx/core/error.h"

namespace mpx::serve {

struct HttpServer::Impl {
  httplib::Server server;
  std::atomic<std::uint64_t> answered{0};
};

namespace {

std::pair<time_t, time_t> split_seconds(double seconds) {
  const double whole = std::floor(seconds);
  return {static_cast<time_t>(whole), static_cast<time_t>((seconds - whole) * 1e6)};
}

}  // namespace

HttpServer::HttpServer(InferenceService& service, const HttpOptions& options)
    : impl_(std::make_unique<Impl>()), options_(options) {
  MPX_REQUIRE(options.threads >= 1, "--http-threads must be 1 or more");
  MPX_REQUIRE(options.port >= 0 && options.port <= 65535, "--port must be 0-65535");
  httplib::Server& s = impl_->server;
  const int threads = options.threads;
  s.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<std::size_t>(threads)); };
  s.set_payload_max_length(options.max_body_bytes);
  const auto [read_s, read_us] = split_seconds(options.read_timeout_seconds);
  s.set_read_timeout(read_s, read_us);
  const auto [write_s, write_us] = split_seconds(options.write_timeout_seconds);
  s.set_write_timeout(write_s, write_us);
  s.set_keep_alive_timeout(options.keep_alive_seconds);
  s.set_keep_alive_max_count(1u << 30);
  s.set_tcp_nodelay(true);
  auto handler = [&service, impl = impl_.get()](const httplib::Request& req, httplib::Response& res) {
    HttpRequest r;
    r.method = req.method;
    r.path = req.path;
    r.body = req.body;
    for (const auto& [name, value] : req.headers) {
      std::string lower = name;
      std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
      r.headers[lower] = value;
    }
    HttpResponse out = service.handle(r);
    // httplib gzips any JSON answer a client accepts gzip for, and a deflate stream per 400-byte answer
    // cost a third of the throughput at concurrency 64; only /metrics is large enough to gain from it.
    // (The Request is not const where httplib made it: clearing its header here is well-defined.)
    if (req.path != "/metrics") const_cast<httplib::Request&>(req).headers.erase("Accept-Encoding");
    res.status = out.status;
    for (const auto& [name, value] : out.headers) res.set_header(name, value);
    if (out.status == 503) res.set_header("Connection", "close");
    if (out.stream) {
      // Chunked transfer: httplib calls the provider once, on this connection's thread, after the headers.
      res.set_chunked_content_provider(out.content_type, [stream = std::move(out.stream), impl](std::size_t, httplib::DataSink& sink) {
        stream([&sink](const std::string& chunk) { return sink.write(chunk.data(), chunk.size()); });
        sink.done();
        impl->answered.fetch_add(1);
        return true;
      });
      return;
    }
    res.set_content(std::move(out.body), out.content_type);
    impl->answered.fetch_add(1);
  };
  s.Get(".*", handler);
  s.Post(".*", httplib::Server::Handler(handler));
  s.Put(".*", httplib::Server::Handler(handler));
  s.Patch(".*", httplib::Server::Handler(handler));
  s.Delete(".*", httplib::Server::Handler(handler));
  s.Options(".*", handler);
  // What httplib answers itself (413 for a body over the limit, 400 for a malformed request line): the
  // same JSON error body as every other error.
  s.set_error_handler(httplib::Server::HandlerWithResponse([max = options.max_body_bytes](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    const std::string message = res.status == 413 ? "the body is larger than --max-body-bytes " + std::to_string(max)
                                                  : "the request could not be read (HTTP status " + std::to_string(res.status) + ")";
    res.set_content(InferenceService::error_body(message), "application/json");
    return httplib::Server::HandlerResponse::Handled;
  }));
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string message = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      message += std::string(": ") + e.what();
    } catch (...) {
    }
    res.status = 500;
    res.set_content(InferenceService::error_body(message), "application/json");
  });
  if (options.port == 0) {
    port_ = s.bind_to_any_port(options.bind);
    if (port_ < 0) throw IoError("cannot listen on " + options.bind + ": is the address one of this machine's?");
  } else {
    if (!s.bind_to_port(options.bind, options.port)) {
      throw IoError("cannot listen on " + options.bind + ":" + std::to_string(options.port) +
                    ": the port is in use or the address is not this machine's; pick another with --port/--bind");
    }
    port_ = options.port;
  }
}

HttpServer::~HttpServer() = default;

std::string HttpServer::url() const { return "http://" + options_.bind + ":" + std::to_string(port_); }

void HttpServer::serve() { impl_->server.listen_after_bind(); }

void HttpServer::stop() { impl_->server.stop(); }

std::uint64_t HttpServer::answered() const { return impl_->answered.load(); }

}  // namespace mpx::serve
