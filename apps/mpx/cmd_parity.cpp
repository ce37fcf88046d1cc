// `mpx parity CHECKPOINT [--precision P | --against OTHER] [--data DIR] [--max-accuracy-drop PTS]
// [--max-class-drop PTS] [--max-logit-error X] [--json FILE]`: the FP32 baseline against a candidate on the test set. Exit 0
// within the thresholds, 1 over them (a gate for CI), 2 on error.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "validators.h"
#include "mpx/artifacts/parity.h"
#include "mpx/io/fashion_mnist.h"
#include "mpx/train/run/run_files.h"

namespace mpx::cli {

namespace {

constexpr const char* kClasses[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                      "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

struct ParityCliOptions {
  artifacts::ParityOptions parity;
  std::string data = io::kFashionMnistDefaultDir;
  std::string json;
  bool precision_given = false;
};

void run_parity(ParityCliOptions& o) {
  if (!o.parity.against.empty() && !o.precision_given) o.parity.precision = "32-true";
  const io::FashionMnist data = io::load_fashion_mnist(o.data);
  const artifacts::ParityReport r = artifacts::run_parity(o.parity, data);
  for (const std::string& notice : r.notices) fmt::print(stderr, "note: {}\n", notice);
  for (const std::string& warning : r.warnings) fmt::print(stderr, "warning: {}\n", warning);
  fmt::print("baseline : {}\ncandidate: {}\n", r.baseline, r.candidate);
  fmt::print("accuracy {:.2f}% -> {:.2f}% ({:+.2f} points; gate {:.2f}), top-1 agreement {:.2f}%\n",
             100 * r.baseline_accuracy, 100 * r.candidate_accuracy, 0.0 - r.accuracy_drop + 0.0, o.parity.max_accuracy_drop,
             100 * r.top1_agreement);
  fmt::print("logits: max abs error {:.3g}{}, mean {:.3g}; max relative {:.3g}, mean {:.3g}; NaN {}, inf {}\n",
             r.max_abs_error, o.parity.max_logit_error >= 0 ? fmt::format(" (gate {:.3g})", o.parity.max_logit_error) : "",
             r.mean_abs_error, r.max_rel_error, r.mean_rel_error, r.candidate_nan, r.candidate_inf);
  fmt::print("per class (gate {:.2f} points):\n", o.parity.max_class_drop);
  nlohmann::json classes = nlohmann::json::array();
  for (std::size_t k = 0; k < 10; ++k) {
    fmt::print("  {:<12} {:6.2f}% -> {:6.2f}% ({:+.2f}){}\n", kClasses[k], 100 * r.baseline_class[k],
               100 * r.candidate_class[k], 0.0 - r.class_drop[k] + 0.0,
               r.class_drop[k] > o.parity.max_class_drop ? "  OVER" : "");
    classes.push_back({{"class", kClasses[k]}, {"baseline_accuracy", r.baseline_class[k]},
                       {"candidate_accuracy", r.candidate_class[k]}, {"drop_points", r.class_drop[k]}});
  }
  fmt::print("{}\n", r.passed ? "parity: PASS" : "parity: FAIL (over a threshold, or non-finite logits)");
  if (!o.json.empty()) {
    train::write_json_atomic(
        o.json, {{"baseline", r.baseline}, {"candidate", r.candidate}, {"images", r.images},
                 {"baseline_accuracy", r.baseline_accuracy}, {"candidate_accuracy", r.candidate_accuracy},
                 {"accuracy_drop_points", r.accuracy_drop}, {"max_class_drop_points", r.max_class_drop},
                 {"classes", classes}, {"top1_agreement", r.top1_agreement}, {"max_abs_error", r.max_abs_error},
                 {"mean_abs_error", r.mean_abs_error}, {"max_rel_error", r.max_rel_error},
                 {"mean_rel_error", r.mean_rel_error}, {"candidate_nan", r.candidate_nan},
                 {"candidate_inf", r.candidate_inf}, {"max_accuracy_drop", o.parity.max_accuracy_drop},
                 {"max_class_drop", o.parity.max_class_drop},
                 {"max_logit_error", o.parity.max_logit_error >= 0 ? nlohmann::json(o.parity.max_logit_error) : nlohmann::json()},
                 {"warnings", r.warnings}, {"passed", r.passed}});
  }
  if (!r.passed) throw CheckFailed{1};
}

}  // namespace

void add_parity_command(CLI::App& app) {
  auto o = std::make_shared<ParityCliOptions>();
  CLI::App* cmd = app.add_subcommand("parity", "Gate a low-precision model on parity with its FP32 baseline");
  cmd->add_option("checkpoint", o->parity.checkpoint, "model.safetensors (FP32) or a run directory")->required();
  auto* precision = cmd->add_option("--precision", o->parity.precision,
                                    "Candidate: the same weights under this precision (default 16-mixed)");
  cmd->add_option("--against", o->parity.against,
                  "Candidate: another file's weights, e.g. an mpx convert copy (evaluated under 32-true unless "
                  "--precision says otherwise)");
  cmd->add_option("--model", o->parity.model, "cnn or mlp (default: from the file's metadata, or its tensor names)");
  cmd->add_option("--data", o->data, "Fashion-MNIST directory")->capture_default_str();
  cmd->add_option("--max-accuracy-drop", o->parity.max_accuracy_drop, "Gate: overall accuracy drop, points")
      ->check(non_negative())
      ->capture_default_str();
  cmd->add_option("--max-class-drop", o->parity.max_class_drop, "Gate: any one class's accuracy drop, points")
      ->check(non_negative())
      ->capture_default_str();
  cmd->add_option("--max-logit-error", o->parity.max_logit_error,
                  "Gate: the largest |candidate - baseline| logit (default: no gate)")
      ->check(non_negative());
  cmd->add_option("--json", o->json, "Also write the report to this JSON file");
  cmd->callback([o, precision] {
    o->precision_given = precision->count() > 0;
    run_parity(*o);
  });
}

}  // namespace mpx::cli
