// Ranks as threads of one process, connected through the real rendezvous and Gloo's TCP transport.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <map>
#include <thread>

#include "distributed_test_support.h"
#include "mpx/distributed/gradient_sync.h"
#include "mpx/numeric/convert.h"

namespace mpx::distributed {
namespace {

using namespace std::chrono_literals;

TEST(World, ReadsMpirunTorchrunAndPmiVariables) {
  std::map<std::string, std::string> env = {{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                                            {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
                                            {"MASTER_PORT", "12345"}};
  const auto getenv = [&](const char* name) -> const char* {
    const auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  WorldInfo w = world_from_environment(getenv);
  EXPECT_EQ(w.rank, 1);
  EXPECT_EQ(w.size, 4);
  EXPECT_EQ(w.launcher, "mpirun");
  EXPECT_EQ(w.master_port, 12345);
  EXPECT_EQ(w.local_size, 2);
  EXPECT_EQ(w.master_addr, "127.0.0.1");
  env = {{"RANK", "2"}, {"WORLD_SIZE", "3"}, {"LOCAL_RANK", "0"}, {"MASTER_ADDR", "node-a"}};
  w = world_from_environment(getenv);
  EXPECT_EQ(w.rank, 2);
  EXPECT_EQ(w.launcher, "torchrun");
  EXPECT_EQ(w.master_addr, "node-a");
  env = {{"PMI_RANK", "0"}, {"PMI_SIZE", "2"}};
  EXPECT_EQ(world_from_environment(getenv).launcher, "pmi");
  env = {};
  EXPECT_FALSE(world_from_environment(getenv).distributed());
}

TEST(World, RefusesARankOutsideTheWorldNamingTheVariable) {
  const std::map<std::string, std::string> env = {{"RANK", "3"}, {"WORLD_SIZE", "2"}};
  const auto getenv = [&](const char* name) -> const char* {
    const auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  try {
    world_from_environment(getenv);
    FAIL() << "accepted rank 3 of 2";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("RANK=3"), std::string::npos) << e.what();
  }
}

TEST(World, EachRankTrainsOnTheGpuOfItsLocalRankAndTooManyAreRefused) {
  WorldInfo w;
  w.size = 4;
  w.local_size = 2;
  w.local_rank = 1;
  EXPECT_EQ(device_for_rank(w, 2), 1);
  EXPECT_EQ(device_for_rank(w, 8), 1);
  try {
    device_for_rank(w, 1);
    ADD_FAILURE() << "two ranks on one GPU were accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("2 ranks run on this host but it has 1 CUDA device: data parallel on CUDA "
                                         "needs one GPU per rank (NCCL); start at most 1 per host"),
              std::string::npos)
        << e.what();
  }
  w.local_size = 1;  // a launcher that did not say how many share the host
  w.local_rank = 3;
  EXPECT_THROW(device_for_rank(w, 2), InvalidArgument);
}

TEST(GradComm, ParsesTheFiveModesAndRefusesOthers) {
  for (const char* mode : {"fp32", "bf16", "fp16", "bf16+ef", "fp16+ef"}) EXPECT_STREQ(name(parse_grad_comm(mode)), mode);
  EXPECT_EQ(wire_dtype(GradComm::fp16_ef), DType::f16);
  EXPECT_TRUE(error_feedback(GradComm::bf16_ef));
  EXPECT_FALSE(error_feedback(GradComm::bf16));
  try {
    parse_grad_comm("int8");
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("fp16+ef"), std::string::npos);
  }
}

TEST(ProcessGroup, AllReducesSumsMaximaAnd16BitValuesAcrossThreeRanks) {
  run_ranks(3, [](ProcessGroup& g) {
    std::vector<float> sum = {1.0f * static_cast<float>(g.rank()), 0.5f};
    g.allreduce_sum(std::span<float>(sum));
    EXPECT_EQ(sum[0], 3.0f);
    EXPECT_EQ(sum[1], 1.5f);
    std::vector<float> peak = {static_cast<float>(g.rank()), -static_cast<float>(g.rank())};
    g.allreduce_max(std::span<float>(peak));
    EXPECT_EQ(peak[0], 2.0f);
    EXPECT_EQ(peak[1], 0.0f);
    // 16-bit: 0.25 from every rank is exact in both formats; a sum beyond FP16's range is infinite.
    for (DType wire : {DType::f16, DType::bf16}) {
      const float values[2] = {0.25f, 40000.0f};
      std::uint16_t bits[2];
      numeric::convert(values, DType::f32, bits, wire, 2);
      g.allreduce_sum_16(std::span<std::uint16_t>(bits, 2), wire);
      float back[2];
      numeric::convert(bits, wire, back, DType::f32, 2);
      EXPECT_EQ(back[0], 0.75f);
      if (wire == DType::f16) EXPECT_TRUE(std::isinf(back[1]));
      else EXPECT_NEAR(back[1], 120000.0f, 120000.0f / 128);
    }
    const std::vector<std::string> all = g.exchange("who", "rank" + std::to_string(g.rank()));
    EXPECT_EQ(all, (std::vector<std::string>{"rank0", "rank1", "rank2"}));
    EXPECT_EQ(g.broadcast("dir", g.rank() == 0 ? "runs/x" : "ignored"), "runs/x");
    g.barrier();
  });
}

TEST(ProcessGroup, ARankThatNeverArrivesIsNamedWithinTheTimeout) {
  const auto start = std::chrono::steady_clock::now();
  try {
    ProcessGroup g({0, 2, "127.0.0.1", free_port(), 1000ms});
    FAIL() << "the rendezvous completed without rank 1";
  } catch (const CommunicationError& e) {
    EXPECT_EQ(e.missing_rank(), 1);
    EXPECT_NE(std::string(e.what()).find("rank 1 did not arrive"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

TEST(ProcessGroup, AnUnreachableRendezvousIsAClearErrorWithinTheTimeout) {
  const auto start = std::chrono::steady_clock::now();
  try {
    ProcessGroup g({1, 2, "127.0.0.1", free_port(), 500ms});
    FAIL() << "connected to nothing";
  } catch (const CommunicationError& e) {
    EXPECT_EQ(e.missing_rank(), 0);
    EXPECT_NE(std::string(e.what()).find("cannot reach the rendezvous"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

TEST(ProcessGroup, AKeyUsedAgainBroadcastsAndExchangesAfresh) {
  // A second connection of the same kind (a new trainer on the same group) must not read the first's values.
  std::vector<std::string> seen(4);
  run_ranks(2, [&](ProcessGroup& g) {
    const std::string r = std::to_string(g.rank());
    const std::string first = g.broadcast("token", g.rank() == 0 ? "one" : "");
    const std::string second = g.broadcast("token", g.rank() == 0 ? "two" : "");
    const std::vector<std::string> a = g.exchange("name", "a" + r), b = g.exchange("name", "b" + r);
    if (g.rank() == 1) seen = {first, second, a[0] + a[1], b[0] + b[1]};
  });
  EXPECT_EQ(seen, (std::vector<std::string>{"one", "two", "a0a1", "b0b1"}));
}

TEST(ProcessGroup, ARankThatStopsMidCollectiveIsNamedBySurvivors) {
  // Rank 2 leaves after the first all-reduce; ranks 0 and 1 fail in the second and name it.
  std::vector<int> named(3, -2);
  run_ranks(3, [&](ProcessGroup& g) {
    std::vector<float> v = {1.0f};
    g.allreduce_sum(std::span<float>(v));
    if (g.rank() == 2) return;  // gone: its connections close and its heartbeat stops
    try {
      g.allreduce_sum(std::span<float>(v));
    } catch (const CommunicationError& e) {
      named[static_cast<std::size_t>(g.rank())] = e.missing_rank();
    }
  }, 1500ms);
  EXPECT_EQ(named[0], 2);
  EXPECT_EQ(named[1], 2);
}

}  // namespace
}  // namespace mpx::distributed
