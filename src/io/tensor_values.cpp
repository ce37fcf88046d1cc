#include "mpx/io/tensor_values.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "mpx/numeric/bfloat16.h"
#include "mpx/numeric/float8.h"
#include "mpx/numeric/half.h"

namespace mpx::io {

namespace {
template <class T>
T element(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
}  // namespace

std::vector<double> widen_to_double(std::span<const std::byte> bytes, DType dtype) {
  const std::size_t size = size_bytes(dtype), n = bytes.size() / size;
  std::vector<double> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::byte* p = bytes.data() + i * size;
    switch (dtype) {
      case DType::f32: out[i] = element<float>(p); break;
      case DType::f64: out[i] = element<double>(p); break;
      case DType::f16: out[i] = static_cast<float>(element<numeric::Half>(p)); break;
      case DType::bf16: out[i] = static_cast<float>(element<numeric::BFloat16>(p)); break;
      case DType::f8_e4m3: out[i] = static_cast<float>(element<numeric::Float8E4M3>(p)); break;
      case DType::f8_e5m2: out[i] = static_cast<float>(element<numeric::Float8E5M2>(p)); break;
      case DType::i64: out[i] = static_cast<double>(element<std::int64_t>(p)); break;
      case DType::i32: out[i] = element<std::int32_t>(p); break;
      case DType::u8: out[i] = element<std::uint8_t>(p); break;
      case DType::boolean: out[i] = element<std::uint8_t>(p) != 0; break;
    }
  }
  return out;
}

ValueSummary summarize(std::span<const double> values) {
  ValueSummary s;
  s.elements = values.size();
  double sum = 0;
  std::uint64_t finite = 0;
  for (double v : values) {
    if (!std::isfinite(v)) {
      ++s.nonfinite;
      continue;
    }
    s.min = finite == 0 ? v : std::min(s.min, v);
    s.max = finite == 0 ? v : std::max(s.max, v);
    sum += v;
    ++finite;
  }
  s.mean = finite ? sum / static_cast<double>(finite) : 0;
  return s;
}

}  // namespace mpx::io
