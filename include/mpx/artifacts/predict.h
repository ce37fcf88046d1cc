// Inference on the Fashion-MNIST test set with a saved model: the logits `mpx parity` compares and
// `mpx predict` writes. Inputs are normalised with the training set's mean and standard deviation, as in
// training (the model file records both as "mpx.input_mean" / "mpx.input_std").
#pragma once

#include <string>
#include <vector>

#include "mpx/io/fashion_mnist.h"

namespace mpx::artifacts {

// Logits [test images, classes], row-major, of `weights` (a model file of `model_name`) evaluated under the
// `precision` preset. Notices about the file (an older layout converted on load) are added to `notices`.
std::vector<float> test_logits(const std::string& model_name, const std::string& weights, const std::string& precision,
                               const io::FashionMnist& data, int batch_size, std::vector<std::string>* notices);

}  // namespace mpx::artifacts
