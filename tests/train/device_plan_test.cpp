// How the CUDA engine maps the models onto device ops, checked without a device: shapes and dtypes flow
// through, ReLUs fuse into the linear layer before them, the logits are FP32, no gradient is computed for
// the images, dropout keeps the CPU layer's Philox key, and layers the engine lacks are refused by name.
#include <gtest/gtest.h>

#include <memory>

#include "mpx/core/error.h"
#include "mpx/nn/layers.h"
#include "mpx/train/device_plan.h"

namespace mpx::train {
namespace {

nn::Sequential planned(nn::Sequential model, nn::Context& ctx, std::int64_t batch) {
  model.plan({{batch, 28, 28, 1}, DType::f32}, ctx);
  return model;
}

TEST(DevicePlan, TheCnnMapsOntoFusedOpsWithFp32Logits) {
  nn::Context ctx;
  nn::Sequential cnn = planned(nn::make_cnn(1), ctx, 128);
  const auto ops = plan_device_ops(cnn, DType::bf16, 128, 28, 28, 1, 7);
  ASSERT_EQ(ops.size(), 11u);
  const DeviceOpKind expected[] = {DeviceOpKind::conv,     DeviceOpKind::batch_norm, DeviceOpKind::max_pool,
                                   DeviceOpKind::conv,     DeviceOpKind::batch_norm, DeviceOpKind::max_pool,
                                   DeviceOpKind::flatten,  DeviceOpKind::linear,     DeviceOpKind::relu,
                                   DeviceOpKind::dropout,  DeviceOpKind::linear};
  for (std::size_t i = 0; i < ops.size(); ++i) EXPECT_EQ(ops[i].kind, expected[i]) << i;
  EXPECT_EQ(ops[0].conv.batch, 128);
  EXPECT_FALSE(ops[0].input_gradient);  // the images need no gradient
  EXPECT_TRUE(ops[1].input_gradient);
  EXPECT_TRUE(ops[1].norm.relu);
  EXPECT_EQ(ops[1].norm.rows, 28 * 28);
  EXPECT_EQ(ops[1].norm.channels, 32);
  EXPECT_EQ(ops[2].out_features, 14 * 14 * 32);
  EXPECT_EQ(ops[5].out_features, 7 * 7 * 64);
  EXPECT_EQ(ops[7].in_features, 3136);
  EXPECT_TRUE(ops[7].relu_after);
  EXPECT_TRUE(ops[8].passes_through);
  EXPECT_EQ(ops[7].out_dtype, DType::bf16);  // activations in the compute dtype
  EXPECT_EQ(ops[10].out_dtype, DType::f32);  // logits
  EXPECT_EQ(ops[10].out_features, 10);
  auto* dropout = dynamic_cast<nn::Dropout*>(ops[9].layer);
  ASSERT_NE(dropout, nullptr);
  EXPECT_EQ(ops[9].dropout.key, dropout->key(7));
  EXPECT_EQ(ops[9].dropout.planned_elements, 128u * 256u);
  EXPECT_FLOAT_EQ(ops[9].dropout.probability, 0.25f);
}

TEST(DevicePlan, TheMlpNeedsNoGradientBeforeItsFirstLinearLayer) {
  nn::Context ctx;
  nn::Sequential mlp = planned(nn::make_mlp(1), ctx, 64);
  const auto ops = plan_device_ops(mlp, DType::f16, 64, 28, 28, 1, 0);
  ASSERT_GE(ops.size(), 3u);
  EXPECT_EQ(ops[0].kind, DeviceOpKind::flatten);
  EXPECT_FALSE(ops[0].input_gradient);
  EXPECT_EQ(ops[1].kind, DeviceOpKind::linear);
  EXPECT_FALSE(ops[1].input_gradient);
  EXPECT_EQ(ops[1].in_features, 784);
  EXPECT_TRUE(ops[2].input_gradient);
  EXPECT_EQ(ops.back().out_dtype, DType::f32);
}

TEST(DevicePlan, RefusesALayerTheEngineLacksByName) {
  nn::Context ctx;
  nn::Sequential model;
  model.add(std::make_unique<nn::Flatten>("flatten"));
  model.add(std::make_unique<nn::Linear>("fc1", 784, 32, 1));
  model.add(std::make_unique<nn::GELU>("gelu1"));
  model.add(std::make_unique<nn::Linear>("fc2", 32, 10, 2));
  model.plan({{8, 28, 28, 1}, DType::f32}, ctx);
  try {
    plan_device_ops(model, DType::f32, 8, 28, 28, 1, 0);
    FAIL() << "expected NotAvailable";
  } catch (const NotAvailable& e) {
    EXPECT_NE(std::string(e.what()).find("gelu1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--device cpu"), std::string::npos) << e.what();
  }
}

TEST(DevicePlan, RefusesAReluItCannotFuse) {
  nn::Context ctx;
  nn::Sequential model;
  model.add(std::make_unique<nn::Conv2d>("conv1", 1, 8, 3, 1, 1, 1));
  model.add(std::make_unique<nn::ReLU>("relu1"));
  model.add(std::make_unique<nn::Flatten>("flatten"));
  model.add(std::make_unique<nn::Linear>("fc", 8 * 28 * 28, 10, 2));
  model.plan({{4, 28, 28, 1}, DType::f32}, ctx);
  EXPECT_THROW(plan_device_ops(model, DType::f32, 4, 28, 28, 1, 0), NotAvailable);
}

TEST(DevicePlan, RejectsAModelPlannedForOtherImages) {
  nn::Context ctx;
  nn::Sequential cnn = planned(nn::make_cnn(1), ctx, 16);
  EXPECT_THROW(plan_device_ops(cnn, DType::f32, 16, 32, 32, 1, 0), InvalidArgument);
}

}  // namespace
}  // namespace mpx::train
