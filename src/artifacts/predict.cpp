#include "mpx/artifacts/predict.h"

#include <algorithm>

#include "mpx/amp/precision_policy.h"
#include "mpx/numeric/convert.h"
#include "mpx/train/run/model_file.h"

namespace mpx::artifacts {

std::vector<float> test_logits(const std::string& model_name, const std::string& weights, const std::string& precision,
                               const io::FashionMnist& data, int batch_size, std::vector<std::string>* notices) {
  nn::Context ctx;
  ctx.policy = amp::PrecisionPolicy::preset(precision);
  nn::Sequential model = nn::make_model(model_name, 0);
  const nn::TensorSpec out = model.plan({{batch_size, 28, 28, 1}, DType::f32}, ctx);
  const train::LoadedModel loaded = train::load_model(weights, model, ctx);
  if (notices && !loaded.notice.empty() && std::find(notices->begin(), notices->end(), loaded.notice) == notices->end()) {
    notices->push_back(loaded.notice);
  }
  const io::PixelNormalisation normalise = io::pixel_normalisation(data.train);
  const io::ImageSet& test = data.test;
  Tensor input = ctx.allocate({batch_size, 28, 28, 1}, DType::f32, MemoryCategory::activations);
  const std::int64_t classes = out.shape[1];
  std::vector<float> logits(static_cast<std::size_t>(test.count * classes));
  for (std::int64_t first = 0; first < test.count; first += batch_size) {
    const std::int64_t rows = std::min<std::int64_t>(batch_size, test.count - first);
    float* x = input.data_as<float>();
    for (std::int64_t i = 0; i < rows * 28 * 28; ++i) x[i] = normalise(test.pixels[static_cast<std::size_t>(first * 28 * 28 + i)]);
    const Tensor y = model.forward(input.first_rows(rows), ctx, false);
    float* dst = logits.data() + first * classes;
    if (y.dtype() == DType::f32) {
      std::copy_n(y.data_as<float>(), rows * classes, dst);
    } else {
      numeric::convert(y.data(), y.dtype(), dst, DType::f32, static_cast<std::size_t>(rows * classes));
    }
  }
  return logits;
}

}  // namespace mpx::artifacts
