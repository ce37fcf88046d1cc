#include "mpx/artifacts/convert.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <regex>

#include "mpx/core/error.h"
#include "mpx/io/safetensors.h"
#include "mpx/io/tensor_values.h"
#include "mpx/numeric/bfloat16.h"
#include "mpx/numeric/float8.h"
#include "mpx/numeric/half.h"

namespace mpx::artifacts {

std::vector<std::string> default_keep_patterns() {
  return {R"((^|.*\.)([Bb]atch[Nn]orm|[Ll]ayer[Nn]orm|norm|bn|ln)[^.]*\.(weight|bias|running_mean|running_var)$)"};
}

DType parse_target_dtype(const std::string& text, const std::string& flag) {
  const std::string expected = flag + " must be fp16, bf16, fp8-e4m3 or fp8-e5m2, got '" + text + "'";
  DType d;
  try {
    d = parse_dtype(text);
  } catch (const InvalidArgument&) {
    throw InvalidArgument(expected);
  }
  if (d != DType::f16 && d != DType::bf16 && d != DType::f8_e4m3 && d != DType::f8_e5m2) throw InvalidArgument(expected);
  return d;
}

namespace {

// Rounds x once into T, applying the overflow policy; counts what happened.
template <class T>
void convert_values(const std::vector<double>& in, std::vector<std::byte>& out, OnOverflow policy,
                    TensorConversion& r) {
  constexpr bool kHasInfinity = std::numeric_limits<T>::has_infinity;
  const double max_finite = static_cast<float>(std::numeric_limits<T>::max());
  const double min_normal = static_cast<float>(std::numeric_limits<T>::min());
  out.resize(in.size() * sizeof(T));
  for (std::size_t i = 0; i < in.size(); ++i) {
    const double x = in[i];
    // Overflow is detected without saturation: the value rounds beyond the largest finite one.
    const T unsaturated(x, numeric::Fp8Overflow::nan);
    const double u = static_cast<float>(unsaturated);
    const bool overflow = std::isfinite(x) && !std::isfinite(u);
    T y = unsaturated;
    if (overflow && policy == OnOverflow::clamp) {
      y = T(std::copysign(max_finite, x));
    } else if (overflow && policy == OnOverflow::inf && kHasInfinity) {
      y = T(std::copysign(std::numeric_limits<double>::infinity(), x));
    }
    std::memcpy(out.data() + i * sizeof(T), &y, sizeof(T));
    const double v = static_cast<float>(y);
    r.overflowed += overflow;
    r.underflowed += x != 0 && std::isfinite(x) && v == 0;
    r.subnormal += v != 0 && std::fabs(v) < min_normal;
    if (std::isfinite(x) && x != 0 && std::isfinite(v)) {
      r.max_relative_error = std::max(r.max_relative_error, std::fabs(v - x) / std::fabs(x));
    }
  }
}

}  // namespace

ConvertReport convert_checkpoint(const std::string& in, const std::string& out, const ConvertSpec& spec) {
  const io::SafetensorsFile source = io::SafetensorsFile::read(in);
  std::vector<std::regex> keep;
  for (const std::string& pattern : spec.keep.empty() ? default_keep_patterns() : spec.keep) {
    try {
      keep.emplace_back(pattern);
    } catch (const std::regex_error& e) {
      throw InvalidArgument("--keep: bad regular expression '" + pattern + "': " + e.what());
    }
  }
  ConvertReport report;
  report.total.name = "total";
  report.total.to = spec.to;
  std::vector<std::vector<std::byte>> buffers;
  std::vector<io::TensorToWrite> tensors;
  std::map<std::string, std::string> metadata = source.metadata();
  metadata.erase(io::kDataSha256Key);
  for (const io::SafetensorsEntry& e : source.tensors()) {
    TensorConversion r;
    r.name = e.name;
    r.from = r.to = e.dtype;
    r.elements = static_cast<std::uint64_t>(numel(e.shape));
    const bool kept = std::any_of(keep.begin(), keep.end(), [&](const std::regex& re) { return std::regex_match(e.name, re); });
    const auto bytes = source.data(e);
    std::vector<double> values;
    if (traits(e.dtype).is_floating) {
      values = io::widen_to_double(bytes, e.dtype);
      r.nonfinite = static_cast<std::uint64_t>(std::count_if(values.begin(), values.end(), [](double x) { return !std::isfinite(x); }));
    }
    if (traits(e.dtype).is_floating && !kept && e.dtype != spec.to) {
      r.converted = true;
      r.to = spec.to;
      buffers.emplace_back();
      switch (spec.to) {
        case DType::f16: convert_values<numeric::Half>(values, buffers.back(), spec.on_overflow, r); break;
        case DType::bf16: convert_values<numeric::BFloat16>(values, buffers.back(), spec.on_overflow, r); break;
        case DType::f8_e4m3: convert_values<numeric::Float8E4M3>(values, buffers.back(), spec.on_overflow, r); break;
        case DType::f8_e5m2: convert_values<numeric::Float8E5M2>(values, buffers.back(), spec.on_overflow, r); break;
        default: throw InvalidArgument("convert: unsupported target dtype");
      }
      metadata["mpx.source_dtype." + e.name] = std::string(name(e.dtype));
    } else {
      buffers.emplace_back(bytes.begin(), bytes.end());
    }
    tensors.push_back({e.name, r.to, e.shape, buffers.back().data()});
    report.total.elements += r.elements;
    report.total.overflowed += r.overflowed;
    report.total.underflowed += r.underflowed;
    report.total.subnormal += r.subnormal;
    report.total.nonfinite += r.nonfinite;
    report.total.max_relative_error = std::max(report.total.max_relative_error, r.max_relative_error);
    report.tensors.push_back(std::move(r));
  }
  if (report.total.overflowed > 0 && spec.on_overflow == OnOverflow::error) return report;  // nothing written
  if (report.total.nonfinite > 0 && !spec.allow_nonfinite) return report;                   // nor here
  metadata["mpx.converted_to"] = std::string(name(spec.to));
  metadata["mpx.source_file"] = in;
  metadata["mpx.source_sha256"] = source.file_sha256();
  io::write_safetensors(out, tensors, metadata);
  report.written = true;
  return report;
}

}  // namespace mpx::artifacts
