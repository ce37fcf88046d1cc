// Trains the Fashion-MNIST CNN in 16-mixed (FP16 products with FP32 accumulation, FP32 master weights,
// dynamic loss scaling with PyTorch GradScaler's defaults) through mpx's C++ API, then saves the model in
// PyTorch's layout. Usage: train_cnn [FASHION_MNIST_DIR] [TRAIN_IMAGES] [OUT_FILE]
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include <mpx/io/fashion_mnist.h>
#include <mpx/train/run/model_file.h>
#include <mpx/train/trainer.h>

int main(int argc, char** argv) {
  const std::string data_dir = argc > 1 ? argv[1] : mpx::io::kFashionMnistDefaultDir;
  const std::string out = argc > 3 ? argv[3] : "cnn.safetensors";
  try {
    mpx::train::TrainConfig config;
    config.model = "cnn";
    config.precision = "16-mixed";
    config.epochs = 1;
    config.train_subset = argc > 2 ? std::atoll(argv[2]) : 0;  // 0: all 60,000 images
    config.numerics_every = 0;

    const mpx::io::FashionMnist data = mpx::io::load_fashion_mnist(data_dir);
    mpx::train::Trainer trainer(config, data);

    mpx::train::Callbacks callbacks;
    callbacks.on_epoch = [](const mpx::train::EpochReport& e) {
      std::printf("epoch %d: loss %.4f, test accuracy %.2f%%, %.0f img/s\n", e.epoch, e.train_loss,
                  100 * e.test_accuracy, e.images_per_second);
    };
    const mpx::train::TrainResult result = trainer.run(callbacks);
    std::printf("loss scale %g after %lld steps (%lld skipped)\n", result.loss_scaler.scale,
                static_cast<long long>(result.steps), static_cast<long long>(result.skipped_steps));

    mpx::train::save_model(out, trainer.model(), {{"mpx.model", "cnn"}, {"mpx.precision", config.precision}});
    std::printf("saved %s\n", out.c_str());
    return result.test_accuracy > 0.5 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_cnn: %s\n", e.what());
    return 2;
  }
}
