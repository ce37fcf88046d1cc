// The model file is in PyTorch's layout: a Linear fed by a Flatten has its columns in the order nn.Flatten
// of NCHW gives, so the same weights compute the same outputs on PyTorch's flattened activation; files move
// both ways bit for bit; an older mpx file (NHWC columns) is read in its own order with a notice; an
// unknown layout is refused; a layout that cannot be expressed is an error, never a silent NHWC file.
#include <gtest/gtest.h>

#include <filesystem>
#include <cstring>
#include <random>
#include <unistd.h>

#include "mpx/core/error.h"
#include "mpx/io/safetensors.h"
#include "mpx/train/run/model_file.h"
#include "mpx/train/run/pytorch_layout.h"

namespace mpx::train {
namespace {

std::filesystem::path temp_file(const std::string& name) {
  return std::filesystem::temp_directory_path() / ("mpx_model_file_test_" + std::to_string(::getpid()) + "_" + name);
}

struct PlannedCnn {
  nn::Context ctx;
  nn::Sequential model = nn::make_cnn(7);
  PlannedCnn() { model.plan({{4, 28, 28, 1}, DType::f32}, ctx); }
};

// The model's tensors as they lie in memory (what an earlier mpx wrote), under their file names.
std::vector<io::TensorToWrite> memory_order_tensors(nn::Sequential& model) {
  std::vector<io::TensorToWrite> tensors;
  for (const auto& layer : model.layers()) {
    for (nn::Parameter* p : layer->parameters()) tensors.push_back({p->name, DType::f32, p->value.shape(), p->value.data()});
    for (auto& [name, t] : layer->buffers()) tensors.push_back({name, DType::f32, t->shape(), t->data()});
  }
  return tensors;
}

nn::Linear& fc1(nn::Sequential& model) {
  for (const auto& layer : model.layers()) {
    if (layer->name() == "fc1") return dynamic_cast<nn::Linear&>(*layer);
  }
  throw std::logic_error("no fc1");
}

TEST(PytorchLayout, FileWeightsOnNchwFlattenEqualMemoryWeightsOnNhwcFlatten) {
  PlannedCnn cnn;
  const auto orders = pytorch_column_orders(cnn.model);
  ASSERT_EQ(orders.size(), 1u);
  const ColumnOrder& order = orders.at("fc1.weight");
  ASSERT_EQ(order.rows, 256);
  ASSERT_EQ(order.columns, 64 * 7 * 7);
  const std::int64_t H = 7, W = 7, C = 64, in = H * W * C, out = 256;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> memory_weight(static_cast<std::size_t>(out * in)), nhwc(static_cast<std::size_t>(in));
  for (float& v : memory_weight) v = normal(rng);
  for (float& v : nhwc) v = normal(rng);
  std::vector<float> file_weight(memory_weight.size());
  order.memory_to_file(memory_weight.data(), file_weight.data());
  // The same activation as PyTorch holds it, NCHW, flattened (C, H, W).
  std::vector<float> nchw(nhwc.size());
  for (std::int64_t c = 0; c < C; ++c) {
    for (std::int64_t h = 0; h < H; ++h) {
      for (std::int64_t w = 0; w < W; ++w) nchw[static_cast<std::size_t>((c * H + h) * W + w)] = nhwc[static_cast<std::size_t>((h * W + w) * C + c)];
    }
  }
  for (std::int64_t o = 0; o < out; ++o) {
    double ours = 0, theirs = 0;
    for (std::int64_t i = 0; i < in; ++i) {
      ours += double(memory_weight[static_cast<std::size_t>(o * in + i)]) * nhwc[static_cast<std::size_t>(i)];
      theirs += double(file_weight[static_cast<std::size_t>(o * in + i)]) * nchw[static_cast<std::size_t>(i)];
    }
    ASSERT_NEAR(ours, theirs, 1e-9 * (1 + std::abs(ours))) << "output " << o;
  }
  std::vector<float> back(memory_weight.size());
  order.file_to_memory(file_weight.data(), back.data());
  EXPECT_EQ(back, memory_weight);
}

TEST(PytorchLayout, SingleChannelFlattenNeedsNoReordering) {
  nn::Context ctx;
  nn::Sequential mlp = nn::make_mlp(1);
  mlp.plan({{2, 28, 28, 1}, DType::f32}, ctx);
  EXPECT_TRUE(pytorch_column_orders(mlp).empty());
}

TEST(PytorchLayout, FlattenIntoANonLinearLayerWithParametersIsRefused) {
  nn::Context ctx;
  nn::Sequential m;
  m.add(std::make_unique<nn::Conv2d>("conv", 1, 4, 3, 1, 1, 1));
  m.add(std::make_unique<nn::Flatten>("flatten"));
  m.add(std::make_unique<nn::LayerNorm>("ln", 4 * 8 * 8));
  m.plan({{2, 8, 8, 1}, DType::f32}, ctx);
  EXPECT_THROW(pytorch_column_orders(m), InvalidArgument);
}

TEST(ModelFile, SavesPytorchOrderAndLoadsBackBitForBit) {
  PlannedCnn a, b;
  const auto path = temp_file("roundtrip.safetensors");
  save_model(path.string(), a.model, {{"mpx.model", "cnn"}});
  const io::SafetensorsFile file = io::SafetensorsFile::read(path.string());
  EXPECT_EQ(file.metadata().at(kLayoutKey), kPytorchLayout);
  // The file's fc1.weight is the memory weight reordered, not a copy of memory.
  const auto* entry = file.find("fc1.weight");
  ASSERT_NE(entry, nullptr);
  const float* stored = reinterpret_cast<const float*>(file.data(*entry).data());
  const float* memory = fc1(a.model).weight().value.data_as<float>();
  const ColumnOrder order = pytorch_column_orders(a.model).at("fc1.weight");
  for (std::int64_t p : {0, 1, 48, 49, 3135}) EXPECT_EQ(stored[p], memory[order.memory_column[static_cast<std::size_t>(p)]]);
  EXPECT_NE(std::memcmp(stored, memory, 3136 * sizeof(float)), 0);

  const LoadedModel loaded = load_model(path.string(), b.model, b.ctx);
  EXPECT_EQ(loaded.layout, FileLayout::pytorch);
  EXPECT_TRUE(loaded.notice.empty());
  EXPECT_EQ(std::memcmp(fc1(b.model).weight().value.data(), memory, fc1(a.model).weight().value.bytes()), 0);
  std::filesystem::remove(path);
}

TEST(ModelFile, OldNhwcFileIsReadInItsOwnOrderWithANotice) {
  PlannedCnn a, b;
  const auto path = temp_file("old.safetensors");
  io::write_safetensors(path.string(), memory_order_tensors(a.model), {{"mpx.model", "cnn"}, {"mpx.version", "0.1.0"}});
  const LoadedModel loaded = load_model(path.string(), b.model, b.ctx);
  EXPECT_EQ(loaded.layout, FileLayout::mpx_nhwc);
  EXPECT_NE(loaded.notice.find("NHWC"), std::string::npos) << loaded.notice;
  EXPECT_EQ(std::memcmp(fc1(b.model).weight().value.data(), fc1(a.model).weight().value.data(),
                        fc1(a.model).weight().value.bytes()),
            0);
  std::filesystem::remove(path);
}

TEST(ModelFile, UnknownLayoutIsRefusedNamingIt) {
  PlannedCnn a;
  const auto path = temp_file("future.safetensors");
  io::write_safetensors(path.string(), memory_order_tensors(a.model), {{"mpx.model", "cnn"}, {kLayoutKey, "nchw-v9"}});
  try {
    load_model(path.string(), a.model, a.ctx);
    FAIL() << "an unknown layout was read";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("nchw-v9"), std::string::npos) << e.what();
  }
  std::filesystem::remove(path);
}

TEST(ModelFile, PytorchFileWithoutMetadataNamesItsModelByTensors) {
  PlannedCnn a;
  const auto path = temp_file("torch.safetensors");
  save_model(path.string(), a.model, {});
  EXPECT_EQ(model_name_of(io::SafetensorsFile::read(path.string()), path.string()), "cnn");
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace mpx::train

namespace mpx::train {
namespace {

// GPT-2's Linear weights are [in, out] in files (Hugging Face's Conv1D), [out, in] in memory; the file
// carries the sizes; a file without the "transformer." prefix (GPT2Model's names) and without mpx metadata
// loads the same; a smaller token table (GPT-2's 50257 rows under a padded 50304) fills the leading rows.
TEST(ModelFile, GptWeightsUseHuggingFaceNamesAndConv1dLayouts) {
  const nn::GptConfig config{1, 2, 8, 4, 16, 0.0f};
  nn::Context ctx;
  nn::Sequential model = nn::make_gpt(config, 9);
  model.plan({{1, 4}, DType::i32}, ctx);
  const auto path = temp_file("gpt.safetensors");
  save_model(path.string(), model, {{kGptKey, gpt_metadata(config)}});
  const io::SafetensorsFile file = io::SafetensorsFile::read(path.string());
  const io::SafetensorsEntry* c_attn = file.find("transformer.h.0.attn.c_attn.weight");
  ASSERT_NE(c_attn, nullptr);
  EXPECT_EQ(c_attn->shape, (Shape{8, 24}));
  nn::Linear* linear = nullptr;
  nn::visit_layers(model, [&](nn::Layer& l) {
    if (l.name() == "transformer.h.0.attn.c_attn") linear = dynamic_cast<nn::Linear*>(&l);
  });
  ASSERT_NE(linear, nullptr);
  const float* memory = linear->weight().value.data_as<float>();
  const auto* stored = reinterpret_cast<const float*>(file.data(*c_attn).data());
  EXPECT_EQ(stored[2 * 24 + 5], memory[5 * 8 + 2]);  // file [in=2, out=5] is memory [out=5, in=2]
  EXPECT_EQ(file.find("lm_head.weight"), nullptr);  // tied: held once, as transformer.wte.weight
  const auto read = gpt_config_of(file, path.string());
  ASSERT_TRUE(read.has_value());
  EXPECT_EQ(read->n_embd, 8);
  EXPECT_EQ(read->block_size, 4);

  // The same tensors under GPT2Model's names, no metadata, and a token table of 13 rows (vocabulary padded to 16).
  std::vector<io::TensorToWrite> tensors;
  std::vector<float> table13(13 * 8);
  for (const auto& e : file.tensors()) {
    std::string name = e.name.substr(std::string("transformer.").size());
    if (name == "wte.weight") {
      std::memcpy(table13.data(), file.data(e).data(), table13.size() * sizeof(float));
      tensors.push_back({name, DType::f32, {13, 8}, table13.data()});
    } else {
      tensors.push_back({name, e.dtype, e.shape, file.data(e).data()});
    }
  }
  const auto hf = temp_file("gpt_hf.safetensors");
  io::write_safetensors(hf.string(), tensors, {});
  const io::SafetensorsFile hf_file = io::SafetensorsFile::read(hf.string());
  const auto inferred = gpt_config_of(hf_file, hf.string());
  ASSERT_TRUE(inferred.has_value());
  EXPECT_EQ(inferred->n_layer, 1);
  EXPECT_EQ(inferred->vocab_size, 13);
  nn::Context ctx2;
  nn::Sequential loaded = nn::make_gpt(config, 1);
  loaded.plan({{1, 4}, DType::i32}, ctx2);
  load_model(hf.string(), loaded, ctx2);
  const auto a = model.parameters(), b = loaded.parameters();
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 1; i < a.size(); ++i) {  // all but the table: identical
    EXPECT_EQ(std::memcmp(a[i]->value.data(), b[i]->value.data(), a[i]->value.bytes()), 0) << a[i]->name;
  }
  EXPECT_EQ(std::memcmp(a[0]->value.data(), b[0]->value.data(), 13 * 8 * sizeof(float)), 0);
  EXPECT_EQ(b[0]->value.data_as<float>()[13 * 8], 0.0f);  // the padding rows

  // Another architecture: the tensor and both shapes are named.
  nn::Context ctx3;
  nn::Sequential wider = nn::make_gpt({1, 2, 16, 4, 16, 0.0f}, 1);
  wider.plan({{1, 4}, DType::i32}, ctx3);
  try {
    load_model(path.string(), wider, ctx3);
    FAIL() << "loaded an 8-wide model into a 16-wide one";
  } catch (const IoError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("transformer.wte.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("[16, 8]"), std::string::npos) << m;
    EXPECT_NE(m.find("[16, 16]"), std::string::npos) << m;
  }
  std::filesystem::remove(path);
  std::filesystem::remove(hf);
}

}  // namespace
}  // namespace mpx::train
