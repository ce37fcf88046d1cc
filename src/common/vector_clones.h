// Builds of the engine's own hot loops for x86-64-v4 (AVX-512 F/BW/DQ/VL) and x86-64-v3 (AVX2) beside the
// baseline, chosen at load time
// (GCC's target_clones, an ifunc). Apply it to plain functions that do the loop work on a range; call
// them from inside the OpenMP region (OpenMP's outlined bodies are not cloned). Internal to src/.
#pragma once

#include <omp.h>

#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__gnu_linux__)
#define MPX_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MPX_VECTOR_CLONES
#endif

namespace mpx::detail {

// Calls chunk(begin, end) on contiguous ranges of [0, count), one per OpenMP thread when count is large.
template <class Chunk>
void parallel_ranges(std::int64_t count, std::int64_t min_parallel, Chunk chunk) {
  if (count < min_parallel) {
    chunk(std::int64_t{0}, count);
    return;
  }
#pragma omp parallel
  {
    const auto t = static_cast<std::int64_t>(omp_get_thread_num());
    const auto n = static_cast<std::int64_t>(omp_get_num_threads());
    chunk(count * t / n, count * (t + 1) / n);
  }
}

}  // namespace mpx::detail
