// CUDA conversions bit-identical to the CPU (values and statistics) on all 2^32 float inputs and every
// narrow bit pattern; stochastic rounding identical for the same (seed, index). Label `gpu`: skips with
// the reason when there is no device (or no CUDA build).
#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <vector>

#include "../support/gpu.h"
#include "../support/conversion_stats.h"
#include "mpx/backend/cuda.h"
#include "mpx/core/error.h"
#include "mpx/numeric/convert.h"
#include "mpx/numeric/stochastic_rounding.h"

namespace mpx::cuda {
namespace {

using numeric::same_stats;

TEST(CudaConvert, AllFloatsNarrowBitIdenticalToCpu) {
  MPX_SKIP_WITHOUT_GPU();
  constexpr std::size_t kChunk = std::size_t{1} << 28;
  std::vector<std::uint32_t> host_in(kChunk);
  std::vector<unsigned char> gpu_out(kChunk * 2), cpu_out(kChunk * 2);
  DeviceBuffer device_in(kChunk * 4), device_out(kChunk * 2);
  for (std::uint64_t base = 0; base < (std::uint64_t{1} << 32); base += kChunk) {
    for (std::size_t i = 0; i < kChunk; ++i) host_in[i] = static_cast<std::uint32_t>(base + i);
    device_in.copy_from_host(host_in.data(), kChunk * 4);
    for (DType to : {DType::f16, DType::bf16, DType::f8_e4m3, DType::f8_e5m2}) {
      for (auto overflow : {numeric::Fp8Overflow::saturate, numeric::Fp8Overflow::nan}) {
        if (overflow == numeric::Fp8Overflow::nan && to != DType::f8_e4m3) continue;
        numeric::ConversionStats gpu_stats, cpu_stats;
        convert(device_in.data(), DType::f32, device_out.data(), to, kChunk, overflow, &gpu_stats);
        device_out.copy_to_host(gpu_out.data(), kChunk * size_bytes(to));
        numeric::convert(host_in.data(), DType::f32, cpu_out.data(), to, kChunk, {numeric::CpuPath::automatic, 0, overflow},
                         &cpu_stats);
        ASSERT_EQ(std::memcmp(gpu_out.data(), cpu_out.data(), kChunk * size_bytes(to)), 0)
            << "f32 -> " << name(to) << " chunk at 0x" << std::hex << base;
        ASSERT_TRUE(same_stats(gpu_stats, cpu_stats)) << name(to) << " statistics, chunk at 0x" << std::hex << base;
        // Without statistics too.
        convert(device_in.data(), DType::f32, device_out.data(), to, kChunk, overflow);
        device_out.copy_to_host(gpu_out.data(), kChunk * size_bytes(to));
        ASSERT_EQ(std::memcmp(gpu_out.data(), cpu_out.data(), kChunk * size_bytes(to)), 0) << name(to);
      }
    }
  }
}

TEST(CudaConvert, EveryNarrowPatternWidensBitIdenticalToCpu) {
  MPX_SKIP_WITHOUT_GPU();
  std::vector<std::uint16_t> patterns(65536 + 3);  // +3: a tail that is not a whole vector
  for (std::size_t i = 0; i < patterns.size(); ++i) patterns[i] = static_cast<std::uint16_t>(i);
  // The FP8 directions read the patterns' bytes as 2 x as many elements, each widened to 4 bytes.
  const std::size_t out_bytes = patterns.size() * 2 * 4;
  DeviceBuffer device_in(patterns.size() * 2), device_out(out_bytes);
  device_in.copy_from_host(patterns.data(), patterns.size() * 2);
  std::vector<unsigned char> gpu_out(out_bytes), cpu_out(out_bytes);
  const std::pair<DType, DType> directions[] = {{DType::f16, DType::f32},     {DType::bf16, DType::f32},
                                                {DType::f8_e4m3, DType::f32}, {DType::f8_e5m2, DType::f32},
                                                {DType::f16, DType::bf16},    {DType::bf16, DType::f16}};
  for (const auto& [from, to] : directions) {
    const std::size_t n = size_bytes(from) == 1 ? patterns.size() * 2 : patterns.size();
    numeric::ConversionStats gpu_stats, cpu_stats;
    convert(device_in.data(), from, device_out.data(), to, n, numeric::Fp8Overflow::saturate, &gpu_stats);
    device_out.copy_to_host(gpu_out.data(), n * size_bytes(to));
    numeric::convert(patterns.data(), from, cpu_out.data(), to, n, {}, &cpu_stats);
    EXPECT_EQ(std::memcmp(gpu_out.data(), cpu_out.data(), n * size_bytes(to)), 0) << name(from) << " -> " << name(to);
    EXPECT_TRUE(same_stats(gpu_stats, cpu_stats)) << name(from) << " -> " << name(to);
  }
}

TEST(CudaConvert, MisalignedPointersStillConvertCorrectly) {
  MPX_SKIP_WITHOUT_GPU();
  std::vector<float> host(1000);
  for (std::size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i) * 0.37f - 100.0f;
  DeviceBuffer in(host.size() * 4 + 16), out(host.size() * 2 + 16);
  in.copy_from_host(host.data(), host.size() * 4);
  const auto* src = static_cast<const float*>(in.data()) + 1;
  auto* dst = static_cast<std::uint16_t*>(out.data()) + 1;
  convert(src, DType::f32, dst, DType::f16, host.size() - 1);
  std::vector<std::uint16_t> gpu(host.size());
  out.copy_to_host(gpu.data(), host.size() * 2);
  for (std::size_t i = 1; i < host.size(); ++i) EXPECT_EQ(gpu[i], numeric::Half(host[i]).bits()) << i;
}

TEST(CudaStochasticRounding, IdenticalToCpuForTheSameSeedAndIndex) {
  MPX_SKIP_WITHOUT_GPU();
  const std::size_t n = (std::size_t{1} << 24) + 5;
  std::vector<float> host(n);
  for (std::size_t i = 0; i < n; ++i) host[i] = std::bit_cast<float>(static_cast<std::uint32_t>(i * 2654435761u));
  DeviceBuffer in(n * 4), out(n * 2);
  in.copy_from_host(host.data(), n * 4);
  for (DType to : {DType::bf16, DType::f16}) {
    stochastic_round(static_cast<const float*>(in.data()), out.data(), to, n, 1234, 77);
    std::vector<std::uint16_t> gpu(n);
    out.copy_to_host(gpu.data(), n * 2);
    std::vector<std::uint16_t> cpu(n);
    if (to == DType::bf16) {
      numeric::stochastic_round(host, std::span(reinterpret_cast<numeric::BFloat16*>(cpu.data()), n), 1234, 77);
    } else {
      numeric::stochastic_round(host, std::span(reinterpret_cast<numeric::Half*>(cpu.data()), n), 1234, 77);
    }
    EXPECT_EQ(std::memcmp(gpu.data(), cpu.data(), n * 2), 0) << name(to);
  }
}

TEST(CudaConvert, WithoutADeviceTheErrorSaysWhy) {
  if (!devices().empty()) GTEST_SKIP() << "a device is present";
  EXPECT_THROW(require_device(), NotAvailable);
  EXPECT_FALSE(no_device_reason().empty());
}

}  // namespace
}  // namespace mpx::cuda
