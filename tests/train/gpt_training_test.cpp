// GPT training end to end on the default corpus (data/bible-kjv.txt, written by scripts/setup.sh): gpt-tiny
// learns well below the unigram baseline in a CI-sized run in every mixed precision; the first steps'
// losses of the mixed presets follow FP32's within BF16/FP16 tolerance; a checkpoint resumes bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <unistd.h>

#include "mpx/io/token_corpus.h"
#include "mpx/train/trainer.h"

namespace mpx::train {
namespace {

const io::TokenCorpus* corpus() {
  static const std::optional<io::TokenCorpus> c = []() -> std::optional<io::TokenCorpus> {
    const std::string path = std::string(MPX_SOURCE_DIR) + "/" + io::kDefaultTextCorpus;
    if (!std::filesystem::exists(path)) return std::nullopt;
    return io::read_text_corpus(path);
  }();
  return c ? &*c : nullptr;
}

#define MPX_NEED_CORPUS() \
  if (!corpus()) GTEST_SKIP() << io::kDefaultTextCorpus << " is missing: scripts/setup.sh writes it"

// Entropy (nats) of the training split's byte frequencies: what a model that ignores context achieves.
double unigram_entropy(const std::vector<std::int32_t>& tokens) {
  std::map<std::int32_t, double> count;
  for (const std::int32_t t : tokens) count[t] += 1;
  double h = 0;
  for (const auto& [token, n] : count) {
    const double p = n / static_cast<double>(tokens.size());
    h -= p * std::log(p);
  }
  return h;
}

TrainConfig gpt_tiny(const std::string& precision, std::int64_t steps) {
  TrainConfig c;
  c.model = "gpt-tiny";
  c.precision = precision;
  c.batch_size = 12;
  c.lr = 1e-3f;
  c.weight_decay = 0.1f;
  c.schedule = ScheduleKind::cosine;
  c.min_lr = 1e-4f;
  c.warmup_steps = 20;
  c.epochs = 100;
  c.max_steps = steps;
  c.schedule_steps = steps;
  c.numerics_every = 0;
  return c;
}

std::unique_ptr<Dataset> windows(const std::shared_ptr<const std::vector<std::int32_t>>& tokens, std::int64_t limit) {
  return std::make_unique<TokenWindows>(tokens, 64, "the corpus", limit);
}

TEST(GptTraining, GptTinyLearnsWellBelowTheUnigramBaselineInEveryPrecision) {
  MPX_NEED_CORPUS();
  const double baseline = unigram_entropy(*corpus()->train);
  for (const char* precision : {"32-true", "bf16-mixed", "16-mixed"}) {
    Trainer trainer(gpt_tiny(precision, 250), windows(corpus()->train, 0), windows(corpus()->validation, 240));
    const TrainResult r = trainer.run();
    RecordProperty(std::string(precision) + "_val_loss", std::to_string(r.test_loss));
    EXPECT_LT(r.test_loss, baseline - 0.5) << precision << ": validation loss " << r.test_loss << ", unigram " << baseline;
    EXPECT_EQ(r.skipped_steps, 0) << precision;
    EXPECT_GT(r.tokens_per_second, 0) << precision;
  }
}

TEST(GptTraining, MixedPrecisionLossesFollowFp32StepByStep) {
  MPX_NEED_CORPUS();
  std::map<std::string, std::vector<float>> losses;
  for (const char* precision : {"32-true", "bf16-mixed", "16-mixed"}) {
    Trainer trainer(gpt_tiny(precision, 10), windows(corpus()->train, 0), windows(corpus()->validation, 12));
    Callbacks callbacks;
    callbacks.on_step = [&](const StepReport& s) { losses[precision].push_back(s.loss); };
    trainer.run(callbacks);
  }
  ASSERT_EQ(losses["32-true"].size(), 10u);
  for (std::size_t s = 0; s < 10; ++s) {
    const float reference = losses["32-true"][s];
    // The same weights and batches: BF16 products round to 8 bits of mantissa, FP16 to 11.
    EXPECT_NEAR(losses["bf16-mixed"][s], reference, 2e-2 * reference) << "step " << s + 1;
    EXPECT_NEAR(losses["16-mixed"][s], reference, 5e-3 * reference) << "step " << s + 1;
  }
}

// What --record-samples writes: a reference trained on these windows sees mpx's data in mpx's order.
TEST(GptTraining, StepsReportTheWindowsTheyTrainedOnEachEpochAPermutationRepeatedBySeed) {
  MPX_NEED_CORPUS();
  const auto run = [&](std::uint64_t seed) {
    TrainConfig c = gpt_tiny("32-true", 6);  // 36 windows, batch 12: two epochs of three steps
    c.seed = seed;
    Trainer trainer(c, windows(corpus()->train, 36), windows(corpus()->validation, 12));
    std::vector<std::vector<std::int64_t>> steps;
    Callbacks callbacks;
    callbacks.on_step = [&](const StepReport& s) { steps.emplace_back(s.samples.begin(), s.samples.end()); };
    trainer.run(callbacks);
    return steps;
  };
  const auto steps = run(1);
  ASSERT_EQ(steps.size(), 6u);
  std::vector<std::int64_t> epochs[2];
  for (std::size_t s = 0; s < steps.size(); ++s) {
    ASSERT_EQ(steps[s].size(), 12u) << "step " << s + 1;
    epochs[s / 3].insert(epochs[s / 3].end(), steps[s].begin(), steps[s].end());
  }
  EXPECT_NE(epochs[0], epochs[1]) << "each epoch is shuffled anew";
  for (auto& e : epochs) {
    std::sort(e.begin(), e.end());
    for (std::int64_t i = 0; i < 36; ++i) EXPECT_EQ(e[static_cast<std::size_t>(i)], i);
  }
  EXPECT_EQ(run(1), steps) << "the same seed draws the same order";
  EXPECT_NE(run(2), steps);
}

// The CNN's numerics telemetry and drills, unchanged for a GPT: samples every N steps name the GPT-2
// layers, an injected inf inside a residual block is traced to its layer and the step is skipped, and
// --detect-anomaly stops there.
TEST(GptTraining, DrillsAndNumericsTraceANonFiniteToTheGptLayerWhereItBegan) {
  MPX_NEED_CORPUS();
  for (const char* precision : {"bf16-mixed", "16-mixed"}) {
    TrainConfig c = gpt_tiny(precision, 6);
    c.numerics_every = 3;
    c.inject_nonfinite = "transformer.h.1.mlp.c_fc:forward:4:2";
    Trainer trainer(c, windows(corpus()->train, 0), windows(corpus()->validation, 12));
    int samples = 0;
    bool saw_layer = false;
    Callbacks callbacks;
    callbacks.on_numerics = [&](const telemetry::NumericsSample& sample) {
      ++samples;
      for (const auto& t : sample.tensors) saw_layer = saw_layer || t.tensor.rfind("transformer.h.1.mlp.c_fc", 0) == 0;
    };
    const TrainResult r = trainer.run(callbacks);
    EXPECT_EQ(samples, 2) << precision;
    EXPECT_TRUE(saw_layer) << precision << ": the samples name GPT-2's layers";
    EXPECT_EQ(r.skipped_steps, 1) << precision;
    ASSERT_EQ(r.nonfinite_origins.size(), 1u) << precision;
    EXPECT_EQ(r.nonfinite_origins[0].step, 4);
    EXPECT_EQ(r.nonfinite_origins[0].layer, "transformer.h.1.mlp.c_fc");
    EXPECT_EQ(r.nonfinite_origins[0].pass, "forward");
  }
  TrainConfig c = gpt_tiny("bf16-mixed", 6);
  c.detect_anomaly = true;
  c.inject_nonfinite = "transformer.h.0.attn.c_proj:backward:2:1:nan";
  try {
    Trainer(c, windows(corpus()->train, 0), windows(corpus()->validation, 12)).run();
    FAIL() << "--detect-anomaly let the run go on";
  } catch (const TrainingDiverged& e) {
    EXPECT_NE(std::string(e.what()).find("transformer.h.0.attn.c_proj backward"), std::string::npos) << e.what();
  }
}

// bf16-true too: its stochastic weight rounding draws from (seed, applied step), so the resumed half
// rounds exactly as the straight run did.
TEST(GptTraining, ACheckpointResumesBitForBit) {
  MPX_NEED_CORPUS();
  for (const char* precision : {"bf16-mixed", "bf16-true"}) {
    const auto path = std::filesystem::temp_directory_path() / ("mpx_gpt_checkpoint_" + std::to_string(::getpid()));
    TrainConfig c = gpt_tiny(precision, 12);
    Trainer straight(c, windows(corpus()->train, 0), windows(corpus()->validation, 12));
    const TrainResult whole = straight.run();
    c.max_steps = 6;
    c.checkpoint_every = 6;
    c.checkpoint_path = path.string();
    Trainer first(c, windows(corpus()->train, 0), windows(corpus()->validation, 12));
    first.run();
    c.max_steps = 12;
    c.checkpoint_every = 0;
    Trainer second(c, windows(corpus()->train, 0), windows(corpus()->validation, 12));
    second.load_checkpoint(path.string());
    const TrainResult resumed = second.run();
    EXPECT_EQ(resumed.final_loss, whole.final_loss) << precision;
    EXPECT_EQ(resumed.test_loss, whole.test_loss) << precision;
    std::filesystem::remove(path);
  }
}

}  // namespace
}  // namespace mpx::train
