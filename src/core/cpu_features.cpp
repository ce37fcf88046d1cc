#include "mpx/core/cpu_features.h"

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define MPX_X86_64 1
#endif

namespace mpx {

namespace {

#if defined(MPX_X86_64)
struct Registers {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
};

Registers cpuid(unsigned leaf, unsigned subleaf) {
  Registers r;
  __cpuid_count(leaf, subleaf, r.eax, r.ebx, r.ecx, r.edx);
  return r;
}

std::uint64_t xgetbv0() {
  unsigned eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<std::uint64_t>(edx) << 32) | eax;
}

bool bit(unsigned value, int index) { return ((value >> index) & 1u) != 0; }

CpuFeatures detect() {
  CpuFeatures f;
  f.x86_64 = true;
  const Registers leaf0 = cpuid(0, 0);
  char vendor[13] = {};
  std::memcpy(vendor + 0, &leaf0.ebx, 4);
  std::memcpy(vendor + 4, &leaf0.edx, 4);
  std::memcpy(vendor + 8, &leaf0.ecx, 4);
  f.vendor = vendor;

  if (cpuid(0x80000000u, 0).eax >= 0x80000004u) {
    char brand[49] = {};
    for (unsigned i = 0; i < 3; ++i) {
      const Registers r = cpuid(0x80000002u + i, 0);
      std::memcpy(brand + 16 * i + 0, &r.eax, 4);
      std::memcpy(brand + 16 * i + 4, &r.ebx, 4);
      std::memcpy(brand + 16 * i + 8, &r.ecx, 4);
      std::memcpy(brand + 16 * i + 12, &r.edx, 4);
    }
    f.brand = brand;
    const auto first = f.brand.find_first_not_of(' ');
    f.brand = first == std::string::npos ? "" : f.brand.substr(first);
    while (!f.brand.empty() && f.brand.back() == ' ') f.brand.pop_back();
  }

  const unsigned max_leaf = leaf0.eax;
  if (max_leaf < 1) return f;
  const Registers leaf1 = cpuid(1, 0);
  f.sse4_2 = bit(leaf1.ecx, 20);
  f.fma = bit(leaf1.ecx, 12);
  f.f16c = bit(leaf1.ecx, 29);
  const bool osxsave = bit(leaf1.ecx, 27);
  const std::uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;            // XMM and YMM state
  const bool os_avx512 = os_avx && (xcr0 & 0xE0) == 0xE0;  // opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;     // XTILECFG, XTILEDATA
  f.avx = bit(leaf1.ecx, 28) && os_avx;
  f.fma = f.fma && os_avx;
  f.f16c = f.f16c && os_avx;
  if (max_leaf < 7) return f;
  const Registers leaf7 = cpuid(7, 0);
  f.avx2 = bit(leaf7.ebx, 5) && os_avx;
  f.avx512f = bit(leaf7.ebx, 16) && os_avx512;
  f.avx512dq = bit(leaf7.ebx, 17) && os_avx512;
  f.avx512bw = bit(leaf7.ebx, 30) && os_avx512;
  f.avx512vl = bit(leaf7.ebx, 31) && os_avx512;
  f.avx512_fp16 = bit(leaf7.edx, 23) && os_avx512;
  f.amx_bf16 = bit(leaf7.edx, 22) && os_amx;
  f.amx_tile = bit(leaf7.edx, 24) && os_amx;
  f.amx_int8 = bit(leaf7.edx, 25) && os_amx;
  if (leaf7.eax >= 1) f.avx512_bf16 = bit(cpuid(7, 1).eax, 5) && os_avx512;
  return f;
}
#else
CpuFeatures detect() { return {}; }
#endif

}  // namespace

std::vector<std::string> CpuFeatures::names() const {
  std::vector<std::string> out;
  const std::pair<bool, const char*> all[] = {
      {sse4_2, "sse4_2"},       {avx, "avx"},           {avx2, "avx2"},
      {fma, "fma"},             {f16c, "f16c"},         {avx512f, "avx512f"},
      {avx512bw, "avx512bw"},   {avx512vl, "avx512vl"}, {avx512dq, "avx512dq"},
      {avx512_bf16, "avx512_bf16"}, {avx512_fp16, "avx512_fp16"}, {amx_tile, "amx_tile"},
      {amx_bf16, "amx_bf16"},   {amx_int8, "amx_int8"},
  };
  for (const auto& [present, feature] : all) {
    if (present) out.emplace_back(feature);
  }
  return out;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

}  // namespace mpx
