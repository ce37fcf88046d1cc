// `mpx predict MODEL [--precision P] [--model NAME] [--data DIR] [--out FILE]`: the test set's logits and
// predicted classes from a model file (mpx's model.safetensors, a converted copy, or a PyTorch state dict),
// with the accuracy; --out writes them as safetensors ("logits" f32 [N, 10], "predictions" i64 [N]).
#include <fmt/format.h>

#include <algorithm>

#include "commands.h"
#include "mpx/amp/precision_policy.h"
#include "mpx/artifacts/predict.h"
#include "mpx/io/fashion_mnist.h"
#include "mpx/io/safetensors.h"
#include "mpx/train/run/model_file.h"

namespace mpx::cli {

namespace {

struct PredictOptions {
  std::string weights, precision = "32-true", model, data = io::kFashionMnistDefaultDir, out;
  int batch_size = 500;
};

void run_predict(const PredictOptions& o) {
  const std::string weights = train::model_file_in(o.weights);
  const std::string model = !o.model.empty() ? o.model : train::model_name_of(io::SafetensorsFile::read(weights), weights);
  const std::string precision = amp::PrecisionPolicy::preset(o.precision).name;  // validates the name first
  const io::FashionMnist data = io::load_fashion_mnist(o.data);
  std::vector<std::string> notices;
  const std::vector<float> logits = artifacts::test_logits(model, weights, precision, data, o.batch_size, &notices);
  for (const std::string& notice : notices) fmt::print(stderr, "note: {}\n", notice);
  const std::int64_t images = data.test.count;
  const std::int64_t classes = static_cast<std::int64_t>(logits.size()) / std::max<std::int64_t>(1, images);
  std::vector<std::int64_t> predictions(static_cast<std::size_t>(images));
  std::int64_t right = 0;
  for (std::int64_t i = 0; i < images; ++i) {
    const float* row = logits.data() + i * classes;
    predictions[static_cast<std::size_t>(i)] = std::max_element(row, row + classes) - row;
    right += predictions[static_cast<std::size_t>(i)] == data.test.labels[static_cast<std::size_t>(i)];
  }
  const double accuracy = static_cast<double>(right) / static_cast<double>(std::max<std::int64_t>(1, images));
  fmt::print("{} ({}, {}): test accuracy {:.2f}% on {} images\n", weights, model, precision, 100 * accuracy, images);
  if (!o.out.empty()) {
    io::write_safetensors(o.out,
                          {{"logits", DType::f32, {images, classes}, logits.data()},
                           {"predictions", DType::i64, {images}, predictions.data()}},
                          {{"mpx.source_file", weights}, {"mpx.model", model}, {"mpx.precision", precision},
                           {"mpx.test_accuracy", fmt::format("{:.6f}", accuracy)}});
    fmt::print("logits and predictions: {}\n", o.out);
  }
}

}  // namespace

void add_predict_command(CLI::App& app) {
  auto o = std::make_shared<PredictOptions>();
  CLI::App* cmd = app.add_subcommand("predict", "Classify the test set with a model file; write logits and predictions");
  cmd->add_option("model_file", o->weights, "model.safetensors (mpx's or a PyTorch state dict) or a run directory")
      ->required();
  cmd->add_option("--precision", o->precision, "Evaluate under this precision preset")->capture_default_str();
  cmd->add_option("--model", o->model, "cnn or mlp (default: from the file's metadata, or its tensor names)");
  cmd->add_option("--data", o->data, "Fashion-MNIST directory")->capture_default_str();
  cmd->add_option("--batch-size", o->batch_size, "Images per forward pass")->capture_default_str()->check(CLI::Range(1, 65536));
  cmd->add_option("--out", o->out, "Write logits (f32) and predictions (i64) to this safetensors file");
  cmd->callback([o] { run_predict(*o); });
}

}  // namespace mpx::cli
