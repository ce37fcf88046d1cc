#include "mpx/serve/variant.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>

#include "mpx/amp/precision_policy.h"
#include "mpx/core/error.h"
#include "mpx/io/safetensors.h"
#include "mpx/nn/model.h"
#include "mpx/numeric/convert.h"
#include "mpx/train/run/model_file.h"

namespace mpx::serve {

std::string serving_preset(const std::string& precision, const std::string& flag) {
  if (precision == "fp32") return "32-true";
  if (precision == "bf16") return "bf16-true";
  if (precision == "fp16") return "16-true";
  try {
    return amp::PrecisionPolicy::preset(precision).name;
  } catch (const InvalidArgument&) {
    throw InvalidArgument(flag + " '" + precision + "': use fp32, bf16 or fp16 (or a preset such as 16-mixed)");
  }
}

std::string variant_name(const std::string& preset) {
  if (preset == "32-true") return "fp32";
  if (preset == "bf16-true") return "bf16";
  if (preset == "16-true") return "fp16";
  return preset;
}

namespace {

float metadata_float(const io::SafetensorsFile& file, const std::string& key, const std::string& path) {
  const std::string& text = file.metadata().at(key);
  try {
    std::size_t used = 0;
    const float value = std::stof(text, &used);
    if (used == text.size() && std::isfinite(value)) return value;
  } catch (const std::exception&) {
  }
  throw IoError(path + ": metadata " + key + " '" + text + "' is not a finite number; the file is damaged");
}

}  // namespace

ModelSource resolve_model(const std::string& model_or_run, const std::string& model, const std::string& data_dir) {
  ModelSource s;
  s.model_file = train::model_file_in(model_or_run);
  if (!std::filesystem::exists(s.model_file)) {
    throw IoError(s.model_file + " does not exist: give a model file or a run directory that holds model.safetensors");
  }
  const io::SafetensorsFile file = io::SafetensorsFile::read(s.model_file);
  s.model = model.empty() ? train::model_name_of(file, s.model_file) : model;
  if (s.model != "cnn" && s.model != "mlp") {
    throw InvalidArgument(s.model_file + " holds a '" + s.model + "' model: mpx serve serves the image classifiers (cnn, mlp)");
  }
  const auto& meta = file.metadata();
  if (meta.count("mpx.input_mean") && meta.count("mpx.input_std")) {
    s.normalisation.mean = metadata_float(file, "mpx.input_mean", s.model_file);
    const float std_dev = metadata_float(file, "mpx.input_std", s.model_file);
    if (!(std_dev > 0)) throw IoError(s.model_file + ": metadata mpx.input_std must be positive; the file is damaged");
    s.normalisation.inv_std = 1.0f / std_dev;
  } else {
    // A PyTorch state dict records no normalisation: training's is the Fashion-MNIST training set's.
    s.normalisation = io::pixel_normalisation(io::load_fashion_mnist(data_dir).train);
  }
  return s;
}

struct ModelVariant::Impl {
  nn::Context ctx;
  nn::Sequential model;
  Tensor input;
  io::PixelNormalisation normalisation;
  explicit Impl(const std::string& name) : model(nn::make_model(name, 0)) {}
};

ModelVariant::ModelVariant(const ModelSource& source, const std::string& preset, std::int64_t max_batch,
                           const std::string& weights, int instances)
    : name_(variant_name(preset)),
      preset_(preset),
      weights_(weights.empty() ? source.model_file : weights),
      max_batch_(max_batch),
      pixels_(source.height * source.width) {
  MPX_REQUIRE(max_batch >= 1, "a variant serves batches of at least one image");
  MPX_REQUIRE(instances >= 1, "a variant needs at least one instance");
  for (int k = 0; k < instances; ++k) {
    auto impl = std::make_unique<Impl>(source.model);
    impl->ctx.policy = amp::PrecisionPolicy::preset(preset);
    impl->normalisation = source.normalisation;
    const nn::TensorSpec out = impl->model.plan({{max_batch, source.height, source.width, 1}, DType::f32}, impl->ctx);
    train::load_model(weights_, impl->model, impl->ctx);
    impl->input = impl->ctx.allocate({max_batch, source.height, source.width, 1}, DType::f32, MemoryCategory::activations);
    classes_ = out.shape[1];
    impl_.push_back(std::move(impl));
  }
}

ModelVariant::~ModelVariant() = default;

int ModelVariant::instances() const { return static_cast<int>(impl_.size()); }

void ModelVariant::infer(const float* pixels, std::int64_t rows, float* logits, int instance) {
  MPX_REQUIRE(rows >= 1 && rows <= max_batch_, "batch of " + std::to_string(rows) + " images outside 1.." +
                                                   std::to_string(max_batch_));
  MPX_REQUIRE(instance >= 0 && instance < instances(), "no instance " + std::to_string(instance) + " of variant " + name_);
  Impl& impl = *impl_[static_cast<std::size_t>(instance)];
  float* x = impl.input.data_as<float>();
  const io::PixelNormalisation n = impl.normalisation;
  const std::int64_t count = rows * pixels_;
  for (std::int64_t i = 0; i < count; ++i) x[i] = (pixels[i] - n.mean) * n.inv_std;
  const std::int64_t poison_after = poison_after_.load();
  if (poison_after >= 0 && batches_.fetch_add(1) >= poison_after) {
    for (std::int64_t r = 0; r < rows; ++r) x[r * pixels_] = std::numeric_limits<float>::quiet_NaN();
  }
  const Tensor y = impl.model.forward(impl.input.first_rows(rows), impl.ctx, false);
  if (y.dtype() == DType::f32) {
    std::copy_n(y.data_as<float>(), rows * classes_, logits);
  } else {
    numeric::convert(y.data(), y.dtype(), logits, DType::f32, static_cast<std::size_t>(rows * classes_));
  }
}

}  // namespace mpx::serve
