#include "tcp_store.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "mpx/distributed/world.h"

namespace mpx::distributed {

namespace {
// A message: op (1 byte: 's' set, 'g' get), key length (4 bytes), key, value length (4 bytes), value.
// A reply: found (1 byte), value length (4 bytes), value.
void put_u32(std::vector<char>& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
std::uint32_t get_u32(const char* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

// A complete message at the front of `in`: its size (0 when more bytes are needed).
std::size_t complete_message(const std::vector<char>& in) {
  if (in.size() < 5) return 0;
  const std::size_t key = get_u32(in.data() + 1);
  if (in.size() < 9 + key) return 0;
  const std::size_t value = get_u32(in.data() + 5 + key);
  return in.size() < 9 + key + value ? 0 : 9 + key + value;
}

bool send_all(int fd, const char* data, std::size_t n) {
  while (n > 0) {
    const ssize_t sent = ::send(fd, data, n, MSG_NOSIGNAL);
    if (sent <= 0) {
      if (sent < 0 && errno == EINTR) continue;
      return false;
    }
    data += sent;
    n -= static_cast<std::size_t>(sent);
  }
  return true;
}

bool recv_all(int fd, char* data, std::size_t n) {
  while (n > 0) {
    const ssize_t got = ::recv(fd, data, n, 0);
    if (got <= 0) {
      if (got < 0 && errno == EINTR) continue;
      return false;
    }
    data += got;
    n -= static_cast<std::size_t>(got);
  }
  return true;
}
}  // namespace

TcpStoreServer::TcpStoreServer(int port) {
  listen_fd_ = ::socket(AF_INET6, SOCK_STREAM, 0);
  const bool v6 = listen_fd_ >= 0;
  if (!v6) listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  if (listen_fd_ < 0) throw CommunicationError(std::string("rendezvous: cannot open a socket: ") + std::strerror(errno), -1);
  const int one = 1, zero = 0;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  int rc;
  if (v6) {
    ::setsockopt(listen_fd_, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));  // IPv4 clients too
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_any;
    a.sin6_port = htons(static_cast<std::uint16_t>(port));
    rc = ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  } else {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    rc = ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  }
  if (rc != 0 || ::listen(listen_fd_, 128) != 0) {
    const std::string why = std::strerror(errno);
    ::close(listen_fd_);
    throw CommunicationError("rendezvous: rank 0 cannot listen on port " + std::to_string(port) + ": " + why +
                             " (another job on this port? set MASTER_PORT to a free one)", -1);
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len);
  port_ = ntohs(v6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  if (::pipe(wake_) != 0) throw CommunicationError("rendezvous: cannot make a pipe", -1);
  thread_ = std::thread([this] { serve(); });
}

TcpStoreServer::~TcpStoreServer() {
  const char stop = 0;
  if (::write(wake_[1], &stop, 1) < 0) { /* the thread is gone already */ }
  if (thread_.joinable()) thread_.join();
  ::close(listen_fd_);
  ::close(wake_[0]);
  ::close(wake_[1]);
}

void TcpStoreServer::serve() {
  struct Client {
    int fd;
    std::vector<char> in;
  };
  std::vector<Client> clients;
  for (;;) {
    std::vector<pollfd> fds = {{wake_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    for (const Client& c : clients) fds.push_back({c.fd, POLLIN, 0});
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents) break;
    if (fds[1].revents & POLLIN) {
      const int fd = ::accept(listen_fd_, nullptr, nullptr);
      if (fd >= 0) {
        const int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        clients.push_back({fd, {}});
      }
    }
    for (std::size_t i = clients.size(); i-- > 0;) {
      if (!fds[2 + i].revents) continue;
      Client& c = clients[i];
      char buffer[4096];
      const ssize_t got = ::recv(c.fd, buffer, sizeof(buffer), 0);
      bool ok = got > 0;
      if (ok) c.in.insert(c.in.end(), buffer, buffer + got);
      while (ok) {
        const std::size_t n = complete_message(c.in);
        if (n == 0) break;
        const std::size_t key_len = get_u32(c.in.data() + 1);
        std::string key(c.in.data() + 5, key_len);
        std::vector<char> reply;
        if (c.in[0] == 's') {
          values_[key].assign(c.in.begin() + static_cast<std::ptrdiff_t>(9 + key_len), c.in.begin() + static_cast<std::ptrdiff_t>(n));
          reply.push_back(1);
          put_u32(reply, 0);
        } else {
          const auto it = values_.find(key);
          reply.push_back(it != values_.end());
          put_u32(reply, it != values_.end() ? static_cast<std::uint32_t>(it->second.size()) : 0);
          if (it != values_.end()) reply.insert(reply.end(), it->second.begin(), it->second.end());
        }
        c.in.erase(c.in.begin(), c.in.begin() + static_cast<std::ptrdiff_t>(n));
        ok = send_all(c.fd, reply.data(), reply.size());
      }
      if (!ok) {
        ::close(c.fd);
        clients.erase(clients.begin() + static_cast<std::ptrdiff_t>(i));
      }
    }
  }
  for (const Client& c : clients) ::close(c.fd);
}

TcpStoreClient::TcpStoreClient(const std::string& host, int port, std::chrono::milliseconds timeout)
    : host_(host), port_(port), timeout_(timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string why;
  for (;;) {
    addrinfo hints{}, *found = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
    if (rc != 0) {
      throw CommunicationError("rendezvous: cannot resolve MASTER_ADDR " + host + ": " + ::gai_strerror(rc), 0);
    }
    for (addrinfo* a = found; a && fd_ < 0; a = a->ai_next) {
      const int fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
      if (fd < 0) continue;
      if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
        fd_ = fd;
      } else {
        why = std::strerror(errno);
        ::close(fd);
      }
    }
    ::freeaddrinfo(found);
    if (fd_ >= 0) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      throw CommunicationError("cannot reach the rendezvous at " + address() + " (rank 0's) within " +
                               std::to_string(static_cast<double>(timeout.count()) / 1000.0).substr(0, 4) + " s: " + why +
                               "; is rank 0 running, and are MASTER_ADDR and MASTER_PORT the same on every rank?", 0);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  // Rank 0 stopped (SIGSTOP) answers nothing: a request gives up after the timeout instead of hanging.
  timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

TcpStoreClient::~TcpStoreClient() {
  if (fd_ >= 0) ::close(fd_);
}

std::vector<char> TcpStoreClient::request(char op, const std::string& key, const std::vector<char>& value, bool& found) {
  std::vector<char> message = {op};
  put_u32(message, static_cast<std::uint32_t>(key.size()));
  message.insert(message.end(), key.begin(), key.end());
  put_u32(message, static_cast<std::uint32_t>(value.size()));
  message.insert(message.end(), value.begin(), value.end());
  const std::lock_guard lock(mutex_);
  char header[5];
  if (!send_all(fd_, message.data(), message.size()) || !recv_all(fd_, header, 5)) {
    throw CommunicationError("the rendezvous at " + address() + " (rank 0) did not answer: " +
                             (errno == EAGAIN || errno == EWOULDBLOCK ? std::string("timed out") : std::strerror(errno)), 0);
  }
  found = header[0] != 0;
  std::vector<char> out(get_u32(header + 1));
  if (!recv_all(fd_, out.data(), out.size())) {
    throw CommunicationError("the rendezvous at " + address() + " (rank 0) broke off an answer", 0);
  }
  return out;
}

void TcpStoreClient::set(const std::string& key, const std::vector<char>& data) {
  bool found = false;
  request('s', key, data, found);
}

bool TcpStoreClient::try_get(const std::string& key, std::vector<char>& out) {
  bool found = false;
  out = request('g', key, {}, found);
  return found;
}

std::vector<std::string> TcpStoreClient::missing(const std::vector<std::string>& keys) {
  std::vector<std::string> out;
  std::vector<char> ignored;
  for (const std::string& k : keys) {
    if (!try_get(k, ignored)) out.push_back(k);
  }
  return out;
}

void TcpStoreClient::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<std::string> left = keys;
  while (!(left = missing(left)).empty()) {
    if (std::chrono::steady_clock::now() >= deadline) {
      throw CommunicationError("rendezvous: gave up waiting for " + left.front() + " after " +
                               std::to_string(timeout.count()) + " ms", -1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::vector<char> TcpStoreClient::get(const std::string& key) {
  wait({key});
  std::vector<char> out;
  try_get(key, out);
  return out;
}

}  // namespace mpx::distributed
