// `mpx convert IN OUT --to fp16|bf16|fp8-e4m3|fp8-e5m2 [--keep REGEX]... [--on-overflow error|clamp|inf]
// [--allow-nonfinite] [--json]`: a safetensors checkpoint converted tensor by tensor, with a report of what
// each lost. Exit 1 (and no output file) when values overflow under --on-overflow error, or when the source
// holds NaN/Inf without --allow-nonfinite.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "mpx/artifacts/convert.h"

namespace mpx::cli {

namespace {

struct ConvertOptions {
  std::string in, out, to;
  std::vector<std::string> keep;
  std::string on_overflow = "error";
  bool allow_nonfinite = false;
  bool json = false;
};

nlohmann::json to_json(const artifacts::TensorConversion& t) {
  return {{"name", t.name}, {"from", std::string(name(t.from))}, {"to", std::string(name(t.to))},
          {"converted", t.converted}, {"elements", t.elements}, {"overflowed", t.overflowed},
          {"underflowed_to_zero", t.underflowed}, {"subnormal", t.subnormal}, {"nonfinite", t.nonfinite},
          {"max_relative_error", t.max_relative_error}};
}

void run_convert(const ConvertOptions& o) {
  artifacts::ConvertSpec spec;
  spec.to = artifacts::parse_target_dtype(o.to);
  spec.keep = o.keep;
  spec.allow_nonfinite = o.allow_nonfinite;
  spec.on_overflow = o.on_overflow == "clamp" ? artifacts::OnOverflow::clamp
                     : o.on_overflow == "inf" ? artifacts::OnOverflow::inf
                                              : artifacts::OnOverflow::error;
  const artifacts::ConvertReport r = artifacts::convert_checkpoint(o.in, o.out, spec);
  if (o.json) {
    nlohmann::json tensors = nlohmann::json::array();
    for (const auto& t : r.tensors) tensors.push_back(to_json(t));
    fmt::print("{}\n", nlohmann::json{{"tensors", tensors}, {"total", to_json(r.total)}, {"written", r.written},
                                      {"out", r.written ? o.out : ""}}
                           .dump(2));
  } else {
    fmt::print("{:<30} {:<6} {:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}\n", "tensor", "from", "to", "elements",
               "overflow", "to zero", "subnormal", "NaN/Inf", "max rel err");
    for (const auto& t : r.tensors) {
      fmt::print("{:<30} {:<6} {:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12.3g}{}\n", t.name, name(t.from),
                 name(t.to), t.elements, t.overflowed, t.underflowed, t.subnormal, t.nonfinite, t.max_relative_error,
                 t.converted ? "" : "  (kept)");
    }
    fmt::print("{:<30} {:<6} {:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12.3g}\n", "total", "", name(r.total.to),
               r.total.elements, r.total.overflowed, r.total.underflowed, r.total.subnormal, r.total.nonfinite,
               r.total.max_relative_error);
    if (r.written) fmt::print("wrote {}\n", o.out);
  }
  if (!r.written && r.total.nonfinite > 0 && !o.allow_nonfinite) {
    fmt::print(stderr,
               "mpx: {} holds {} non-finite values (NaN/Inf, per tensor above): nothing written (the model is damaged; "
               "--allow-nonfinite converts it anyway)\n",
               o.in, r.total.nonfinite);
    throw CheckFailed{1};
  }
  if (!r.written) {
    fmt::print(stderr,
               "mpx: {} values overflow {}: nothing written (use --on-overflow clamp or inf to accept, or --keep the "
               "tensors named above)\n",
               r.total.overflowed, name(r.total.to));
    throw CheckFailed{1};
  }
}

}  // namespace

void add_convert_command(CLI::App& app) {
  auto o = std::make_shared<ConvertOptions>();
  CLI::App* cmd = app.add_subcommand("convert", "Convert a safetensors checkpoint to FP16/BF16/FP8 with a loss report");
  cmd->add_option("in", o->in, "Source .safetensors")->required();
  cmd->add_option("out", o->out, "Output .safetensors (written atomically)")->required();
  cmd->add_option("--to", o->to, "fp16, bf16, fp8-e4m3 or fp8-e5m2")->required();
  cmd->add_option("--keep", o->keep,
                  "Regex of tensor names to leave unconverted (repeatable; default: normalisation weights, biases "
                  "and statistics)");
  cmd->add_option("--on-overflow", o->on_overflow, "error (write nothing), clamp (to the largest finite) or inf")
      ->check(CLI::IsMember({"error", "clamp", "inf"}))
      ->capture_default_str();
  cmd->add_flag("--allow-nonfinite", o->allow_nonfinite,
                "Convert even when the source holds NaN or Inf (refused by default: a damaged model)");
  cmd->add_flag("--json", o->json, "Print JSON");
  cmd->callback([o] { run_convert(*o); });
}

}  // namespace mpx::cli
