// The multi-tensor chunk plan covers every element of every tensor exactly once, in order.
#include <gtest/gtest.h>

#include <vector>

#include "mpx/backend/multi_tensor.h"
#include "mpx/core/error.h"

namespace mpx::backend {
namespace {

TEST(MultiTensorPlan, CoversEveryElementOnceInOrder) {
  const std::vector<std::size_t> sizes = {10, 0, 64, 65, 3};
  const auto chunks = plan_chunks(sizes, 32);
  std::vector<std::vector<int>> seen(sizes.size());
  for (std::size_t t = 0; t < sizes.size(); ++t) seen[t].assign(sizes[t], 0);
  std::uint32_t last_tensor = 0;
  for (const TensorChunk& c : chunks) {
    ASSERT_LT(c.tensor, sizes.size());
    EXPECT_GE(c.tensor, last_tensor);
    last_tensor = c.tensor;
    EXPECT_EQ(c.begin % 32, 0u);
    EXPECT_GT(c.length, 0u);
    EXPECT_LE(c.length, 32u);
    for (std::uint64_t i = c.begin; i < c.begin + c.length; ++i) ++seen[c.tensor].at(i);
  }
  for (const auto& tensor : seen) {
    for (int count : tensor) EXPECT_EQ(count, 1);
  }
  EXPECT_EQ(chunks.size(), 1u + 2u + 3u + 1u);
}

TEST(MultiTensorPlan, RejectsChunkSizesThatBreakVectorAlignment) {
  const std::vector<std::size_t> sizes = {8};
  EXPECT_THROW(plan_chunks(sizes, 0), InvalidArgument);
  EXPECT_THROW(plan_chunks(sizes, 6), InvalidArgument);
}

}  // namespace
}  // namespace mpx::backend
