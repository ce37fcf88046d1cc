// Every engine kernel against the CPU layer it stands in for, on fresh random inputs: BatchNorm (+ReLU)
// forward/backward and running statistics, LayerNorm, pooling, dropout (the same mask), softmax cross-entropy,
// convolution through im2col + cuBLASLt + col2im, column sums, batch gathering. Pooling and dropout must
// be bit-identical; the rest within FP32 reduction-order tolerance. Label `gpu`: skips without a device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "../support/gpu.h"
#include "mpx/backend/cuda.h"
#include "mpx/backend/cuda_kernels.h"
#include "mpx/backend/cuda_matmul.h"
#include "mpx/nn/layers.h"
#include "mpx/telemetry/numerics_monitor.h"

namespace mpx::cuda {
namespace {

std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float scale = 1.0f, float offset = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(offset, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

template <class T>
DeviceBuffer upload(const std::vector<T>& v) {
  DeviceBuffer b(std::max<std::size_t>(1, v.size() * sizeof(T)));
  if (!v.empty()) b.copy_from_host(v.data(), v.size() * sizeof(T));
  return b;
}

template <class T>
std::vector<T> download(const DeviceBuffer& b, std::size_t n) {
  std::vector<T> v(n);
  b.copy_to_host(v.data(), n * sizeof(T));
  return v;
}

Tensor host_tensor(const Shape& shape, const std::vector<float>& values) {
  Tensor t = Tensor::empty(shape, DType::f32, MemoryCategory::activations, nullptr);
  std::memcpy(t.data(), values.data(), values.size() * 4);
  return t;
}

void expect_close(const std::vector<float>& gpu, const float* cpu, std::size_t n, float rel, float abs, const char* what) {
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_NEAR(gpu[i], cpu[i], abs + rel * std::fabs(cpu[i])) << what << " element " << i;
  }
}

TEST(CudaKernels, BatchNormWithReluMatchesTheCpuLayer) {
  MPX_SKIP_WITHOUT_GPU();
  const std::int64_t n = 16, h = 14, w = 14, c = 64, rows = n * h * w;
  nn::Context ctx;
  nn::BatchNorm2d layer("bn", c, 0.1f, 1e-5f, true);
  layer.plan({{n, h, w, c}, DType::f32}, ctx);
  auto gamma = random_floats(c, 1, 0.3f, 1.0f), beta = random_floats(c, 2, 0.2f);
  std::memcpy(layer.parameters()[0]->value.data(), gamma.data(), c * 4);
  std::memcpy(layer.parameters()[1]->value.data(), beta.data(), c * 4);
  const auto x = random_floats(static_cast<std::size_t>(rows * c), 3, 2.0f, 5.0f);  // offset: cancellation check
  const auto dy = random_floats(x.size(), 4);
  const Tensor y_cpu = layer.forward(host_tensor({n, h, w, c}, x), ctx, true);
  const Tensor dx_cpu = layer.backward(host_tensor({n, h, w, c}, dy), ctx);

  DeviceContext dev;
  auto dx_in = upload(x), ddy = upload(dy), dgamma_in = upload(gamma), dbeta_in = upload(beta);
  auto rm = upload(std::vector<float>(c, 0.0f)), rv = upload(std::vector<float>(c, 1.0f));
  DeviceBuffer mean(c * 4), inv_std(c * 4), y(x.size() * 4), dx(x.size() * 4), dgamma(c * 4), dbeta(c * 4),
      workspace(kernels::reduction_workspace_floats(rows, c) * 4);
  const kernels::BatchNormShape s{rows, c, 1e-5f, 0.1f, true};
  auto* ws = static_cast<float*>(workspace.data());
  kernels::batch_norm_forward_training(dev, s, dx_in.data(), DType::f32, static_cast<float*>(dgamma_in.data()),
                                       static_cast<float*>(dbeta_in.data()), static_cast<float*>(rm.data()),
                                       static_cast<float*>(rv.data()), true, static_cast<float*>(mean.data()),
                                       static_cast<float*>(inv_std.data()), ws, y.data());
  kernels::batch_norm_backward(dev, s, dx_in.data(), ddy.data(), DType::f32, static_cast<float*>(dgamma_in.data()),
                               static_cast<float*>(dbeta_in.data()), static_cast<float*>(mean.data()),
                               static_cast<float*>(inv_std.data()), ws, dx.data(), static_cast<float*>(dgamma.data()),
                               static_cast<float*>(dbeta.data()));
  dev.synchronize();
  expect_close(download<float>(y, x.size()), y_cpu.data_as<float>(), x.size(), 1e-5f, 1e-5f, "y");
  expect_close(download<float>(dx, x.size()), dx_cpu.data_as<float>(), x.size(), 1e-4f, 1e-6f, "dx");
  expect_close(download<float>(rm, c), layer.running_mean().data_as<float>(), c, 1e-6f, 1e-6f, "running_mean");
  expect_close(download<float>(rv, c), layer.running_var().data_as<float>(), c, 1e-6f, 1e-6f, "running_var");
  expect_close(download<float>(dgamma, c), layer.parameters()[0]->grad.data_as<float>(), c, 1e-5f, 1e-4f, "dgamma");
  expect_close(download<float>(dbeta, c), layer.parameters()[1]->grad.data_as<float>(), c, 1e-5f, 1e-4f, "dbeta");
}

TEST(CudaKernels, LayerNormMatchesTheCpuLayer) {
  MPX_SKIP_WITHOUT_GPU();
  const std::int64_t rows = 96, features = 768;
  nn::Context ctx;
  nn::LayerNorm layer("ln", features);
  layer.plan({{rows, features}, DType::f32}, ctx);
  const auto gamma = random_floats(features, 21, 0.3f, 1.0f), beta = random_floats(features, 22, 0.2f);
  std::memcpy(layer.parameters()[0]->value.data(), gamma.data(), features * 4);
  std::memcpy(layer.parameters()[1]->value.data(), beta.data(), features * 4);
  const auto x = random_floats(static_cast<std::size_t>(rows * features), 23, 3.0f, 2.0f);
  const auto dy = random_floats(x.size(), 24);
  const Tensor y_cpu = layer.forward(host_tensor({rows, features}, x), ctx, true);
  const Tensor dx_cpu = layer.backward(host_tensor({rows, features}, dy), ctx);
  DeviceContext dev;
  auto dxin = upload(x), ddy = upload(dy), dgamma_in = upload(gamma), dbeta_in = upload(beta);
  DeviceBuffer mean(rows * 4), inv_std(rows * 4), y(x.size() * 4), dx(x.size() * 4), dgamma(features * 4),
      dbeta(features * 4), workspace(kernels::reduction_workspace_floats(rows, features) * 4);
  const kernels::LayerNormShape s{rows, features, 1e-5f};
  kernels::layer_norm_forward(dev, s, dxin.data(), DType::f32, static_cast<float*>(dgamma_in.data()),
                              static_cast<float*>(dbeta_in.data()), static_cast<float*>(mean.data()),
                              static_cast<float*>(inv_std.data()), y.data());
  kernels::layer_norm_backward(dev, s, dxin.data(), ddy.data(), DType::f32, static_cast<float*>(dgamma_in.data()),
                               static_cast<float*>(mean.data()), static_cast<float*>(inv_std.data()),
                               static_cast<float*>(workspace.data()), dx.data(), static_cast<float*>(dgamma.data()),
                               static_cast<float*>(dbeta.data()));
  dev.synchronize();
  expect_close(download<float>(y, x.size()), y_cpu.data_as<float>(), x.size(), 1e-5f, 1e-5f, "y");
  expect_close(download<float>(dx, x.size()), dx_cpu.data_as<float>(), x.size(), 1e-4f, 1e-5f, "dx");
  expect_close(download<float>(dgamma, features), layer.parameters()[0]->grad.data_as<float>(), features, 1e-4f, 1e-4f,
               "dgamma");
  expect_close(download<float>(dbeta, features), layer.parameters()[1]->grad.data_as<float>(), features, 1e-4f, 1e-4f,
               "dbeta");
}

TEST(CudaKernels, MaxPoolingIsBitIdenticalToTheCpuLayerWithTiesAndNaN) {
  MPX_SKIP_WITHOUT_GPU();
  const std::int64_t n = 8, h = 28, w = 28, c = 32;
  auto x = random_floats(static_cast<std::size_t>(n * h * w * c), 5);
  for (std::size_t i = 0; i + c < x.size(); i += 97) x[i] = x[i + c];  // ties between window positions
  x[1234] = NAN;
  const auto dy = random_floats(static_cast<std::size_t>(n * h / 2 * w / 2 * c), 6);
  nn::Context ctx;
  nn::MaxPool2d layer("pool", 2);
  layer.plan({{n, h, w, c}, DType::f32}, ctx);
  const Tensor y_cpu = layer.forward(host_tensor({n, h, w, c}, x), ctx, true);
  const Tensor dx_cpu = layer.backward(host_tensor({n, h / 2, w / 2, c}, dy), ctx);
  DeviceContext dev;
  auto dxin = upload(x), ddy = upload(dy);
  DeviceBuffer y(dy.size() * 4), dx(x.size() * 4);
  kernels::max_pool_forward(dev, dxin.data(), DType::f32, n, h, w, c, 2, y.data());
  kernels::max_pool_backward(dev, dxin.data(), y.data(), ddy.data(), DType::f32, n, h, w, c, 2, dx.data());
  dev.synchronize();
  const auto y_gpu = download<float>(y, dy.size()), dx_gpu = download<float>(dx, x.size());
  EXPECT_EQ(std::memcmp(y_gpu.data(), y_cpu.data(), dy.size() * 4), 0);
  EXPECT_EQ(std::memcmp(dx_gpu.data(), dx_cpu.data(), x.size() * 4), 0);
}

TEST(CudaKernels, DropoutDrawsTheCpuLayersMask) {
  MPX_SKIP_WITHOUT_GPU();
  const std::int64_t n = 128, features = 256;
  nn::Context ctx;
  ctx.seed = 42;
  ctx.step = 17;
  nn::Dropout layer("dropout", 0.25f, 1);
  layer.plan({{n, features}, DType::f32}, ctx);
  const auto x = random_floats(static_cast<std::size_t>(n * features), 7);
  const Tensor y_cpu = layer.forward(host_tensor({n, features}, x), ctx, true);
  DeviceContext dev;
  auto dxin = upload(x), step = upload(std::vector<std::uint64_t>{17});
  DeviceBuffer y(x.size() * 4), keep(x.size());
  const kernels::DropoutArgs args{0.25f, 42 ^ (1 * 0x9E3779B97F4A7C15ull), static_cast<std::uint64_t>(n * features)};
  kernels::dropout_forward(dev, args, static_cast<const std::uint64_t*>(step.data()), dxin.data(), DType::f32, n * features,
                           y.data(), static_cast<std::uint8_t*>(keep.data()));
  dev.synchronize();
  const auto y_gpu = download<float>(y, x.size());
  EXPECT_EQ(std::memcmp(y_gpu.data(), y_cpu.data(), x.size() * 4), 0);
}

TEST(CudaKernels, SoftmaxCrossEntropyMatchesTheCpuLoss) {
  MPX_SKIP_WITHOUT_GPU();
  const std::int64_t rows = 128, classes = 10;
  const auto logits = random_floats(static_cast<std::size_t>(rows * classes), 8, 3.0f);
  std::vector<std::uint8_t> labels(rows);
  for (std::int64_t r = 0; r < rows; ++r) labels[r] = static_cast<std::uint8_t>((r * 7) % classes);
  nn::Context ctx;
  nn::SoftmaxCrossEntropy loss;
  loss.plan({{rows, classes}, DType::f32}, ctx);
  const float loss_cpu = loss.forward(host_tensor({rows, classes}, logits), labels.data());
  const Tensor grad_cpu = loss.backward(1024.0f);
  int correct_cpu = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* z = logits.data() + r * classes;
    correct_cpu += static_cast<int>(std::max_element(z, z + classes) - z) == labels[r];
  }
  DeviceContext dev;
  auto dlogits_in = upload(logits), dlabels = upload(labels), scale = upload(std::vector<float>{1024.0f});
  DeviceBuffer out_loss(4), correct(4), grad(logits.size() * 4), workspace(rows * 8);
  kernels::softmax_cross_entropy(dev, static_cast<const float*>(dlogits_in.data()),
                                 static_cast<const std::uint8_t*>(dlabels.data()), rows, classes,
                                 static_cast<const float*>(scale.data()), static_cast<float*>(out_loss.data()),
                                 static_cast<int*>(correct.data()), grad.data(), DType::f32,
                                 static_cast<float*>(workspace.data()));
  dev.synchronize();
  EXPECT_NEAR(download<float>(out_loss, 1)[0], loss_cpu, 1e-6f * loss_cpu);
  EXPECT_EQ(download<int>(correct, 1)[0], correct_cpu);
  expect_close(download<float>(grad, logits.size()), grad_cpu.data_as<float>(), logits.size(), 1e-5f, 1e-7f, "dlogits");
}

TEST(CudaKernels, ConvolutionThroughIm2colAndCublasLtMatchesTheCpuLayer) {
  MPX_SKIP_WITHOUT_GPU();
  const std::int64_t n = 4, h = 14, w = 14, cin = 32, cout = 64;
  nn::Context ctx;
  nn::Conv2d layer("conv", cin, cout, 3, 1, 1, 9);
  layer.plan({{n, h, w, cin}, DType::f32}, ctx);
  const auto x = random_floats(static_cast<std::size_t>(n * h * w * cin), 10);
  const auto dy = random_floats(static_cast<std::size_t>(n * h * w * cout), 11);
  const Tensor y_cpu = layer.forward(host_tensor({n, h, w, cin}, x), ctx, true);
  const Tensor dx_cpu = layer.backward(host_tensor({n, h, w, cout}, dy), ctx);
  nn::Parameter& weight = *layer.parameters()[0];
  nn::Parameter& bias = *layer.parameters()[1];
  const backend::ConvShape s{n, cin, h, w, cout, 3, 1, 1};
  const std::int64_t rows = n * h * w, patch = cin * 9;
  DeviceContext dev;
  Matmul matmul(dev);
  std::vector<float> wv(weight.value.data_as<float>(), weight.value.data_as<float>() + cout * patch);
  std::vector<float> bv(bias.value.data_as<float>(), bias.value.data_as<float>() + cout);
  auto dxin = upload(x), ddy = upload(dy), dw = upload(wv), db = upload(bv);
  DeviceBuffer cols(rows * patch * 4), y(rows * cout * 4), dcols(rows * patch * 4), dx(x.size() * 4), dwgrad(cout * patch * 4),
      dbgrad(cout * 4), workspace(kernels::reduction_workspace_floats(rows, cout) * 4);
  kernels::im2col(dev, s, dxin.data(), DType::f32, cols.data());
  matmul.run({rows, cout, patch, false, true, DType::f32, DType::f32, MatmulEpilogue::bias}, cols.data(), dw.data(), y.data(),
             static_cast<const float*>(db.data()));
  matmul.run({rows, patch, cout, false, false, DType::f32, DType::f32}, ddy.data(), dw.data(), dcols.data());
  kernels::col2im(dev, s, static_cast<const float*>(dcols.data()), dx.data(), DType::f32);
  matmul.run({cout, patch, rows, true, false, DType::f32, DType::f32}, ddy.data(), cols.data(), dwgrad.data());
  kernels::column_sums(dev, ddy.data(), DType::f32, rows, cout, static_cast<float*>(dbgrad.data()),
                       static_cast<float*>(workspace.data()));
  dev.synchronize();
  expect_close(download<float>(y, y_cpu.numel()), y_cpu.data_as<float>(), y_cpu.numel(), 1e-4f, 1e-4f, "y");
  expect_close(download<float>(dx, x.size()), dx_cpu.data_as<float>(), x.size(), 1e-4f, 1e-4f, "dx");
  expect_close(download<float>(dwgrad, wv.size()), weight.grad.data_as<float>(), wv.size(), 1e-4f, 1e-3f, "dW");
  expect_close(download<float>(dbgrad, bv.size()), bias.grad.data_as<float>(), bv.size(), 1e-5f, 1e-4f, "db");
}

TEST(CudaKernels, GatherBatchNormalisesAndPicksLabels) {
  MPX_SKIP_WITHOUT_GPU();
  const std::int64_t images = 5, pixels = 784;
  std::vector<std::uint8_t> data(images * pixels), labels = {3, 1, 4, 1, 5};
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i * 31);
  const std::vector<std::int64_t> index = {4, 0, 2};
  DeviceContext dev;
  auto ddata = upload(data), dlabels = upload(labels), dindex = upload(index);
  DeviceBuffer x(3 * pixels * 4), out_labels(3);
  kernels::gather_batch(dev, static_cast<const std::uint8_t*>(ddata.data()), static_cast<const std::uint8_t*>(dlabels.data()),
                        pixels, static_cast<const std::int64_t*>(dindex.data()), 3, 0.25f, 2.0f, x.data(), DType::f32,
                        static_cast<std::uint8_t*>(out_labels.data()));
  dev.synchronize();
  const auto xv = download<float>(x, 3 * pixels);
  const auto lv = download<std::uint8_t>(out_labels, 3);
  for (int b = 0; b < 3; ++b) {
    EXPECT_EQ(lv[b], labels[index[b]]);
    for (std::int64_t p = 0; p < pixels; ++p) {
      const float expected = (static_cast<float>(data[index[b] * pixels + p]) / 255.0f - 0.25f) * 2.0f;
      ASSERT_FLOAT_EQ(xv[b * pixels + p], expected);
    }
  }
}

TEST(CudaKernels, ColumnSumsCoverMoreRowsThanOneGridDimensionHolds) {
  MPX_SKIP_WITHOUT_GPU();
  // 40M rows: more than 65,535 blocks of 512 rows (what a batch of ~51K images gives conv1's bias gradient).
  const std::int64_t rows = 40'000'000, columns = 2;
  std::vector<float> x(static_cast<std::size_t>(rows * columns));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = i % 2 == 0 ? 1.0f : static_cast<float>(i % 7) - 3.0f;
  double expected[2] = {0, 0};
  for (std::size_t i = 0; i < x.size(); ++i) expected[i % 2] += x[i];
  DeviceContext dev;
  auto dx = upload(x);
  DeviceBuffer out(columns * 4), workspace(kernels::reduction_workspace_floats(rows, columns) * 4);
  kernels::column_sums(dev, dx.data(), DType::f32, rows, columns, static_cast<float*>(out.data()),
                       static_cast<float*>(workspace.data()));
  dev.synchronize();
  const auto sums = download<float>(out, columns);
  EXPECT_EQ(sums[0], static_cast<float>(expected[0]));  // every row counted once (double accumulation: exact)
  EXPECT_EQ(sums[1], static_cast<float>(expected[1]));
}

TEST(CudaKernels, PoisonWritesTheElementsTheCpuInjectorWrites) {
  MPX_SKIP_WITHOUT_GPU();
  nn::Context ctx;
  ctx.step = 6;  // the drill's step 7
  nn::Flatten layer("flat");
  DeviceContext dev;
  for (const DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    for (const std::int64_t count : {1, 3, 1000, 5000}) {  // 5000 > n: every element
      for (const bool nan : {false, true}) {
        const std::int64_t n = 4099;
        const std::vector<std::uint8_t> zeros(static_cast<std::size_t>(n) * size_bytes(dtype), 0);
        Tensor cpu = Tensor::zeros({n}, dtype, MemoryCategory::activations, nullptr);
        telemetry::NonFiniteInjector("flat", nn::Pass::forward, 7, count, nan).after_layer(layer, nn::Pass::forward, Tensor{}, cpu, ctx);
        auto gpu = upload(zeros);
        kernels::poison(dev, gpu.data(), dtype, n, count, telemetry::NonFiniteInjector::bits(dtype, nan));
        dev.synchronize();
        const auto back = download<std::uint8_t>(gpu, zeros.size());
        EXPECT_EQ(std::memcmp(back.data(), cpu.data(), back.size()), 0) << name(dtype) << " count " << count << " nan " << nan;
      }
    }
  }
}

}  // namespace
}  // namespace mpx::cuda
