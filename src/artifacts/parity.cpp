#include "mpx/artifacts/parity.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "mpx/amp/precision_policy.h"
#include "mpx/core/error.h"
#include "mpx/io/safetensors.h"
#include "mpx/numeric/convert.h"
#include "mpx/artifacts/predict.h"
#include "mpx/train/run/model_file.h"

namespace mpx::artifacts {

ParityReport run_parity(const ParityOptions& o, const io::FashionMnist& data) {
  const std::string baseline_file = train::model_file_in(o.checkpoint);
  std::string model_name = o.model;
  ParityReport r;
  {
    const io::SafetensorsFile baseline = io::SafetensorsFile::read(baseline_file);
    if (model_name.empty()) model_name = train::model_name_of(baseline, baseline_file);
    // The baseline is the reference: weights already rounded to a narrow format make it a weaker one.
    for (const io::SafetensorsEntry& e : baseline.tensors()) {
      if (traits(e.dtype).is_floating && e.dtype != DType::f32) {
        r.warnings.push_back("the baseline " + baseline_file + " holds " + std::string(name(e.dtype)) + " weights ('" +
                             e.name + "'), not FP32: the comparison is against a rounded model, not an FP32 reference");
        break;
      }
    }
  }
  const std::string candidate_file = o.against.empty() ? baseline_file : train::model_file_in(o.against);
  const std::string candidate_precision = o.against.empty() ? o.precision : (o.precision.empty() ? "32-true" : o.precision);
  r.baseline = baseline_file + " under 32-true";
  r.candidate = candidate_file + " under " + amp::PrecisionPolicy::preset(candidate_precision).name;
  const std::vector<float> base = test_logits(model_name, baseline_file, "32-true", data, o.batch_size, &r.notices);
  const std::vector<float> cand = test_logits(model_name, candidate_file, candidate_precision, data, o.batch_size, &r.notices);
  const std::int64_t n = data.test.count, classes = 10;
  r.images = n;
  std::array<std::int64_t, 10> per_class{}, base_right{}, cand_right{};
  std::int64_t agree = 0, b_right = 0, c_right = 0;
  double abs_sum = 0, rel_sum = 0;
  std::int64_t finite_pairs = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const float* b = base.data() + i * classes;
    const float* c = cand.data() + i * classes;
    const auto bp = std::max_element(b, b + classes) - b;
    const auto cp = std::max_element(c, c + classes) - c;
    const int label = data.test.labels[static_cast<std::size_t>(i)];
    ++per_class[static_cast<std::size_t>(label)];
    base_right[static_cast<std::size_t>(label)] += bp == label;
    cand_right[static_cast<std::size_t>(label)] += cp == label;
    b_right += bp == label;
    c_right += cp == label;
    agree += bp == cp;
    for (std::int64_t k = 0; k < classes; ++k) {
      if (std::isnan(c[k])) ++r.candidate_nan;
      if (std::isinf(c[k])) ++r.candidate_inf;
      if (!std::isfinite(c[k])) continue;
      const double e = std::fabs(static_cast<double>(c[k]) - b[k]);
      const double rel = e / std::max(std::fabs(static_cast<double>(b[k])), 1e-3);
      r.max_abs_error = std::max(r.max_abs_error, e);
      r.max_rel_error = std::max(r.max_rel_error, rel);
      abs_sum += e;
      rel_sum += rel;
      ++finite_pairs;
    }
  }
  r.baseline_accuracy = static_cast<double>(b_right) / static_cast<double>(n);
  r.candidate_accuracy = static_cast<double>(c_right) / static_cast<double>(n);
  r.accuracy_drop = 100 * (r.baseline_accuracy - r.candidate_accuracy);
  for (std::size_t k = 0; k < 10; ++k) {
    const double total = static_cast<double>(std::max<std::int64_t>(1, per_class[k]));
    r.baseline_class[k] = static_cast<double>(base_right[k]) / total;
    r.candidate_class[k] = static_cast<double>(cand_right[k]) / total;
    r.class_drop[k] = 100 * (r.baseline_class[k] - r.candidate_class[k]);
    r.max_class_drop = std::max(r.max_class_drop, r.class_drop[k]);
  }
  r.top1_agreement = static_cast<double>(agree) / static_cast<double>(n);
  r.mean_abs_error = finite_pairs ? abs_sum / static_cast<double>(finite_pairs) : 0;
  r.mean_rel_error = finite_pairs ? rel_sum / static_cast<double>(finite_pairs) : 0;
  r.passed = r.accuracy_drop <= o.max_accuracy_drop && r.max_class_drop <= o.max_class_drop && r.candidate_nan == 0 &&
             r.candidate_inf == 0 && (o.max_logit_error < 0 || r.max_abs_error <= o.max_logit_error);
  return r;
}

}  // namespace mpx::artifacts
