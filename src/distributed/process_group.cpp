#include "mpx/distributed/process_group.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <map>
#include <thread>

#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/transport/tcp/device.h>

#include "mpx/numeric/convert.h"
#include "tcp_store.h"

namespace mpx::distributed {

namespace {
using namespace std::chrono_literals;
constexpr auto kHeartbeatInterval = 200ms;
// A rank whose heartbeat has not moved for this long is the one that stopped (5 intervals missed).
constexpr auto kStaleAfter = 1200ms;
// Collectives give up this much before the timeout, so that naming the missing rank (the heartbeat check)
// still ends within it.
constexpr auto kDiagnosis = 1500ms;

std::vector<char> bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string text(const std::vector<char>& v) { return {v.begin(), v.end()}; }
std::string seconds(std::chrono::milliseconds ms) {
  char out[32];
  std::snprintf(out, sizeof(out), "%g s", static_cast<double>(ms.count()) / 1000.0);
  return out;
}

// The address this rank's Gloo connections listen on: the loopback for a one-host job, else the host's name
// (GLOO_SOCKET_IFNAME or MPX_SOCKET_IFNAME picks an interface instead).
gloo::transport::tcp::attr transport_address(const std::string& master) {
  gloo::transport::tcp::attr attr;
  for (const char* var : {"MPX_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"}) {
    if (const char* iface = std::getenv(var); iface && *iface) {
      attr.iface = iface;
      return attr;
    }
  }
  if (master == "127.0.0.1" || master == "localhost" || master == "::1") {
    attr.hostname = master == "::1" ? "::1" : "127.0.0.1";
    return attr;
  }
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  attr.hostname = host;
  return attr;
}
}  // namespace

struct ProcessGroup::Impl {
  Options options;
  std::unique_ptr<TcpStoreServer> server;  // rank 0
  std::unique_ptr<TcpStoreClient> store;
  std::shared_ptr<gloo::rendezvous::Context> context;
  std::uint32_t tag = 0;
  bool failed = false;  // a collective failed: the destructor does not wait for the others
  std::chrono::milliseconds collective_timeout() const {
    return options.timeout > 2 * kDiagnosis ? options.timeout - kDiagnosis : options.timeout;
  }
  std::vector<float> scratch_a, scratch_b;  // the 16-bit reduction's FP32 operands
  // How often each exchange/broadcast key has been used: every use is a store key of its own, so that a
  // later use never reads an earlier one's values (every rank counts alike: calls come in the same order).
  std::map<std::string, int> key_uses;
  std::string fresh(const std::string& kind, const std::string& key) {
    return kind + "/" + key + "/" + std::to_string(key_uses[kind + "/" + key]++);
  }

  // The heartbeat: a counter this rank advances in the store every interval, on its own connection.
  std::thread heartbeat;
  std::mutex mutex;
  std::condition_variable stop_cv;
  bool stopping = false;

  void beat() {
    std::unique_ptr<TcpStoreClient> client;
    try {
      client = std::make_unique<TcpStoreClient>(options.master_addr, options.master_port, 1000ms);
    } catch (const std::exception&) {
      return;  // rank 0 is gone: the collectives say so
    }
    std::uint64_t count = 0;
    std::unique_lock lock(mutex);
    while (!stopping) {
      lock.unlock();
      try {
        client->set("heartbeat/" + std::to_string(options.rank), bytes(std::to_string(++count)));
      } catch (const std::exception&) {
        return;
      }
      lock.lock();
      stop_cv.wait_for(lock, kHeartbeatInterval, [&] { return stopping; });
    }
  }

  void stop_heartbeat() {
    {
      const std::lock_guard lock(mutex);
      stopping = true;
    }
    stop_cv.notify_all();
    if (heartbeat.joinable()) heartbeat.join();
  }

  void run(gloo::AllreduceOptions& opts) {
    opts.setTag(tag++);
    opts.setTimeout(collective_timeout());
    gloo::allreduce(opts);
  }
};

ProcessGroup::ProcessGroup(const Options& o) : impl_(std::make_unique<Impl>()) {
  if (o.size < 2 || o.rank < 0 || o.rank >= o.size) {
    throw InvalidArgument("a process group needs at least 2 ranks and a rank in [0, size); got rank " +
                          std::to_string(o.rank) + " of " + std::to_string(o.size));
  }
  Impl& m = *impl_;
  m.options = o;
  if (o.rank == 0) {
    m.server = std::make_unique<TcpStoreServer>(o.master_port);
    m.options.master_port = m.server->port();
  }
  m.store = std::make_unique<TcpStoreClient>(m.options.master_addr, m.options.master_port, o.timeout);
  m.store->set("joined/" + std::to_string(o.rank), bytes("1"));
  std::vector<std::string> everyone;
  for (int r = 0; r < o.size; ++r) everyone.push_back("joined/" + std::to_string(r));
  const auto deadline = std::chrono::steady_clock::now() + o.timeout;
  for (std::vector<std::string> left = everyone; !(left = m.store->missing(left)).empty();) {
    if (std::chrono::steady_clock::now() >= deadline) {
      const int missing = std::stoi(left.front().substr(7));
      throw CommunicationError("rank " + std::to_string(missing) + " did not arrive at the rendezvous " +
                               m.store->address() + " within " + seconds(o.timeout) + " (" + std::to_string(left.size()) +
                               " of " + std::to_string(o.size) + " ranks missing); start every rank with the same "
                               "world size, MASTER_ADDR and MASTER_PORT", missing);
    }
    std::this_thread::sleep_for(20ms);
  }
  m.heartbeat = std::thread([&m] { m.beat(); });
  try {
    auto device = gloo::transport::tcp::CreateDevice(transport_address(m.options.master_addr));
    m.context = std::make_shared<gloo::rendezvous::Context>(o.rank, o.size);
    m.context->setTimeout(m.collective_timeout());
    gloo::rendezvous::PrefixStore prefixed("gloo", *m.store);
    m.context->connectFullMesh(prefixed, device);
  } catch (const CommunicationError&) {
    m.stop_heartbeat();
    throw;
  } catch (const std::exception& e) {
    m.stop_heartbeat();
    throw CommunicationError(std::string("rank ") + std::to_string(o.rank) + " could not connect to the other ranks: " +
                             e.what() + " (check that every host can reach the others' addresses; "
                             "GLOO_SOCKET_IFNAME names the interface to use)", -1);
  }
}

ProcessGroup::~ProcessGroup() {
  Impl& m = *impl_;
  m.stop_heartbeat();
  if (m.failed) return;  // the others are gone or leaving too: nothing to wait for
  try {
    m.store->set("done/" + std::to_string(m.options.rank), bytes("1"));
    if (m.options.rank == 0) {  // the others may still be reading the rendezvous
      std::vector<std::string> everyone;
      for (int r = 1; r < m.options.size; ++r) everyone.push_back("done/" + std::to_string(r));
      m.store->wait(everyone, m.options.timeout);
    }
  } catch (const std::exception&) {
    // A rank that is gone cannot say it is done: nothing to wait for.
  }
}

int ProcessGroup::rank() const { return impl_->options.rank; }
int ProcessGroup::size() const { return impl_->options.size; }
int ProcessGroup::port() const { return impl_->options.master_port; }
std::chrono::milliseconds ProcessGroup::timeout() const { return impl_->options.timeout; }

int ProcessGroup::missing_rank() {
  Impl& m = *impl_;
  m.failed = true;
  try {
    // A connection of its own with a short timeout: a stopped rank 0 answers nothing.
    TcpStoreClient probe(m.options.master_addr, m.options.master_port, 1000ms);
    const auto read = [&](std::vector<std::string>& out) {
      out.assign(static_cast<std::size_t>(m.options.size), {});
      for (int r = 0; r < m.options.size; ++r) {
        std::vector<char> v;
        if (r != m.options.rank && probe.try_get("heartbeat/" + std::to_string(r), v)) out[static_cast<std::size_t>(r)] = text(v);
      }
    };
    // Survivors say so first: a survivor that exits while the others look is not the one that failed.
    probe.set("survivor/" + std::to_string(m.options.rank), bytes("1"));
    std::vector<std::string> before, after;
    read(before);
    std::this_thread::sleep_for(kStaleAfter);
    read(after);
    int stale = -1;
    for (int r = 0; r < m.options.size; ++r) {
      if (r == m.options.rank || before[static_cast<std::size_t>(r)] != after[static_cast<std::size_t>(r)]) continue;
      std::vector<char> ignored;
      if (!probe.try_get("survivor/" + std::to_string(r), ignored)) return r;
      if (stale < 0) stale = r;
    }
    return stale;
  } catch (const std::exception&) {
    return 0;  // the rendezvous lives in rank 0: it is rank 0 that is gone or stopped
  }
}

void ProcessGroup::fail(const std::string& during, const std::exception& e) {
  const int missing = missing_rank();
  const std::string who = missing >= 0 ? "rank " + std::to_string(missing) + " stopped responding"
                                       : "a rank stopped responding";
  throw CommunicationError("rank " + std::to_string(rank()) + ": " + who + " during " + during + " (within --comm-timeout " +
                           seconds(timeout()) + ": " + e.what() + ")", missing);
}

template <typename T>
void ProcessGroup::reduce(std::span<T> values, void (*add)(void*, const void*, const void*, std::size_t), const char* what) {
  gloo::AllreduceOptions opts(impl_->context);
  opts.setOutput(values.data(), values.size());
  opts.setReduceFunction(add);
  try {
    impl_->run(opts);
  } catch (const std::exception& e) {
    fail(what, e);
  }
}

void ProcessGroup::allreduce_sum(std::span<float> values) { reduce(values, &gloo::sum<float>, "an FP32 all-reduce"); }
void ProcessGroup::allreduce_sum(std::span<double> values) { reduce(values, &gloo::sum<double>, "an FP64 all-reduce"); }
void ProcessGroup::allreduce_max(std::span<float> values) { reduce(values, &gloo::max<float>, "a max all-reduce"); }

void ProcessGroup::allreduce_sum_16(std::span<std::uint16_t> values, DType wire) {
  if (wire != DType::f16 && wire != DType::bf16) throw InvalidArgument("16-bit all-reduce takes f16 or bf16");
  Impl& m = *impl_;
  // Called by Gloo for each pair of segments (c may be a): both to FP32, added, rounded back once.
  const auto add = [&m, wire](void* c, const void* a, const void* b, std::size_t n) {
    constexpr std::size_t kChunk = 4096;
    m.scratch_a.resize(kChunk);
    m.scratch_b.resize(kChunk);
    const numeric::ConvertOptions one_thread{numeric::CpuPath::automatic, 1};
    for (std::size_t i = 0; i < n; i += kChunk) {
      const std::size_t k = std::min(kChunk, n - i);
      numeric::convert(static_cast<const std::uint16_t*>(a) + i, wire, m.scratch_a.data(), DType::f32, k, one_thread);
      numeric::convert(static_cast<const std::uint16_t*>(b) + i, wire, m.scratch_b.data(), DType::f32, k, one_thread);
      for (std::size_t j = 0; j < k; ++j) m.scratch_a[j] += m.scratch_b[j];
      numeric::convert(m.scratch_a.data(), DType::f32, static_cast<std::uint16_t*>(c) + i, wire, k, one_thread);
    }
  };
  gloo::AllreduceOptions opts(m.context);
  opts.setOutput(values.data(), values.size());
  opts.setReduceFunction(add);
  try {
    m.run(opts);
  } catch (const std::exception& e) {
    fail(std::string("a 16-bit (") + std::string(name(wire)) + ") all-reduce", e);
  }
}

std::vector<std::string> ProcessGroup::exchange(const std::string& key, const std::string& mine) {
  Impl& m = *impl_;
  const std::string base = m.fresh("exchange", key);
  m.store->set(base + "/" + std::to_string(rank()), bytes(mine));
  std::vector<std::string> out;
  for (int r = 0; r < size(); ++r) {
    const std::string k = base + "/" + std::to_string(r);
    try {
      m.store->wait({k}, timeout());
    } catch (const CommunicationError&) {
      throw CommunicationError("rank " + std::to_string(r) + " did not send its " + key + " within " + seconds(timeout()), r);
    }
    out.push_back(text(m.store->get(k)));
  }
  return out;
}

std::string ProcessGroup::broadcast(const std::string& key, const std::string& value) {
  Impl& m = *impl_;
  const std::string k = m.fresh("broadcast", key);
  if (rank() == 0) {
    m.store->set(k, bytes(value));
    return value;
  }
  try {
    m.store->wait({k}, timeout());
  } catch (const CommunicationError&) {
    throw CommunicationError("rank 0 did not send its " + key + " within " + seconds(timeout()), 0);
  }
  return text(m.store->get(k));
}

void ProcessGroup::barrier() {
  gloo::BarrierOptions opts(impl_->context);
  opts.setTag(impl_->tag++);
  opts.setTimeout(impl_->collective_timeout());
  try {
    gloo::barrier(opts);
  } catch (const std::exception& e) {
    fail("a barrier", e);
  }
}

}  // namespace mpx::distributed
