// One precision variant of a served model: the model built and planned once for the largest batch, its
// weights loaded from the FP32 file (rounded to the variant's format as `mpx convert` rounds them) or from
// an already converted file, evaluated under the variant's precision preset. Inputs are pixel intensities
// in [0, 1]; the variant normalises them as training did; outputs are FP32 logits whatever it computes in.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mpx/io/fashion_mnist.h"

namespace mpx::serve {

// "fp32", "bf16", "fp16" (the serving names: 32-true, bf16-true, 16-true) or any training preset name
// ("16-mixed", ...). Returns the preset's canonical name; throws InvalidArgument naming `flag` otherwise.
std::string serving_preset(const std::string& precision, const std::string& flag = "--precision");
// The short name a variant is known by in responses and metrics: "fp32", "bf16", "fp16" for the serving
// presets, the preset's own name otherwise.
std::string variant_name(const std::string& preset);

struct ModelSource {
  std::string model_file;  // the FP32 model.safetensors (or a PyTorch state dict)
  std::string model;       // cnn or mlp
  io::PixelNormalisation normalisation;
  std::int64_t height = 28, width = 28;
};

// Resolves a model file or run directory: the file, its builder name (or `model` when given) and its input
// normalisation (the file's "mpx.input_mean"/"mpx.input_std", else computed from the Fashion-MNIST training
// set in `data_dir`). Throws IoError/InvalidArgument saying why the model cannot be served.
ModelSource resolve_model(const std::string& model_or_run, const std::string& model, const std::string& data_dir);

class ModelVariant {
 public:
  // `weights`: empty to use source.model_file. Throws (IoError naming the tensor) when the file does not fit.
  // `instances`: copies of the planned model, one per batching worker (a forward pass writes its own
  // activations), so that that many batches of this variant can run at once.
  ModelVariant(const ModelSource& source, const std::string& preset, std::int64_t max_batch,
               const std::string& weights = "", int instances = 1);
  ~ModelVariant();
  ModelVariant(const ModelVariant&) = delete;
  ModelVariant& operator=(const ModelVariant&) = delete;

  // rows x (height*width) intensities in [0, 1] -> rows x classes FP32 logits, on copy `instance`. One
  // caller at a time per instance (batching worker `instance`).
  void infer(const float* pixels, std::int64_t rows, float* logits, int instance = 0);
  int instances() const;

  const std::string& name() const { return name_; }
  const std::string& preset() const { return preset_; }
  const std::string& weights_file() const { return weights_; }
  std::int64_t classes() const { return classes_; }
  std::int64_t max_batch() const { return max_batch_; }
  std::int64_t pixels_per_image() const { return pixels_; }
  // Drill: from the `after`-th batch on (0: the first), every input is poisoned with a NaN so the variant's
  // outputs go non-finite through its real forward pass. Negative: off.
  void inject_nonfinite_after(std::int64_t after) { poison_after_ = after; }

 private:
  struct Impl;
  std::vector<std::unique_ptr<Impl>> impl_;
  std::string name_, preset_, weights_;
  std::int64_t classes_ = 0, max_batch_ = 0, pixels_ = 0;
  std::atomic<std::int64_t> batches_{0}, poison_after_{-1};
};

}  // namespace mpx::serve
