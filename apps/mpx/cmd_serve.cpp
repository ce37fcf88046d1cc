// `mpx serve MODEL_OR_RUN`: the model over the Open Inference Protocol (KServe v2 REST) with dynamic
// batching (a GPT over Triton's generate extension, a generator instance per request), a low-precision canary beside FP32, an FP32 shadow, SLO windows with automatic rollback, an
// admin endpoint and Prometheus metrics. SIGTERM or Ctrl-C: requests in flight finish, new ones get 503,
// then the server exits 0. Decisions (rollbacks, switches, windows) are JSON lines on stdout or --events.
#include <fmt/format.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>
#include <vector>

#include "commands.h"
#include "mpx/core/error.h"
#include "mpx/io/regular_file.h"
#include "mpx/serve/engine.h"
#include "mpx/serve/generation_engine.h"
#include "mpx/serve/http_server.h"
#include "mpx/serve/service.h"

namespace mpx::cli {

namespace {

struct ServeCommand {
  serve::ServeOptions engine;
  serve::HttpOptions http;
  std::string name, slo, slo_window = "30s", admin_token_file, events;
  double request_timeout_ms = 10000, drain_timeout_s = 30;
  int threads = 0;
};

std::string read_token(const std::string& file) {
  if (!file.empty()) {
    io::require_regular_file(file, "admin token file");
    std::ifstream in(file);
    if (!in) throw IoError("cannot read the admin token file " + file);
    std::stringstream text;
    text << in.rdbuf();
    std::string token = text.str();
    while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
    if (token.size() < 16) throw InvalidArgument("the admin token in " + file + " is shorter than 16 characters: use a long random one");
    return token;
  }
  if (const char* env = std::getenv("MPX_ADMIN_TOKEN"); env != nullptr && *env != '\0') {
    if (std::string(env).size() < 16) throw InvalidArgument("MPX_ADMIN_TOKEN is shorter than 16 characters: use a long random one");
    return env;
  }
  return "";
}

void run_serve(ServeCommand& o) {
  o.engine.request_timeout_seconds = o.request_timeout_ms / 1e3;
  if (!o.slo.empty()) o.engine.slo = serve::parse_slo(o.slo);
  o.engine.slo_window_seconds = serve::parse_duration_seconds(o.slo_window, "--slo-window");
  o.engine.batching.threads = o.threads;
  const std::string token = read_token(o.admin_token_file);
  // The signals go to one thread that waits for them: blocked here, before any thread starts, so every
  // thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::FILE* events_file = stdout;
  if (!o.events.empty()) {
    events_file = std::fopen(o.events.c_str(), "a");
    if (events_file == nullptr) throw IoError("cannot open --events " + o.events + " for appending");
  }
  serve::EventLog events(events_file);
  // One of the two engines: a GPT generates text, the classifiers answer infer requests.
  std::unique_ptr<serve::ServingEngine> images;
  std::unique_ptr<serve::GenerationEngine> text;
  std::unique_ptr<serve::InferenceService> service;
  std::string architecture, model_file, capacity;
  std::vector<std::string> variant_names;
  if (serve::holds_gpt(o.engine.model_or_run)) {
    text = std::make_unique<serve::GenerationEngine>(o.engine, events);
    architecture = "gpt";
    model_file = text->model_file();
    variant_names = text->variant_names();
    capacity = fmt::format("context {}, max tokens {}, {} instance(s)", text->config().block_size, text->max_new_tokens(),
                           o.engine.batching.instances);
  } else {
    images = std::make_unique<serve::ServingEngine>(o.engine, events);
    architecture = images->source().model;
    model_file = images->source().model_file;
    variant_names = images->variant_names();
    capacity = fmt::format("max batch {}, {} instance(s)", o.engine.batching.max_batch, o.engine.batching.instances);
  }
  serve::Rollout& rollout = text ? text->rollout() : images->rollout();
  const std::string model_name = o.name.empty() ? architecture : o.name;
  service = text ? std::make_unique<serve::InferenceService>(*text, serve::ServiceOptions{model_name, token})
                 : std::make_unique<serve::InferenceService>(*images, serve::ServiceOptions{model_name, token});
  serve::HttpServer http(*service, o.http);
  const nlohmann::json routing = rollout.routing();
  std::string variants;
  for (const std::string& v : variant_names) variants += (variants.empty() ? "" : ", ") + v;
  fmt::print("mpx serve: {} ({}) at {}/v2/models/{}: variants {}; primary {}", architecture, model_file, http.url(),
             model_name, variants, routing["primary"].get<std::string>());
  if (!routing["canary"].is_null()) {
    fmt::print(", canary {} at {:g}%", routing["canary"].get<std::string>(), 100 * routing["canary_share"].get<double>());
  }
  fmt::print("{}{}; {} x {} thread(s)\n", o.engine.shadow ? ", FP32 shadow" : "",
             o.engine.slo.empty() ? "" : ", SLO " + o.slo + " per " + o.slo_window, capacity,
             o.threads > 0 ? o.threads : std::max(1, omp_get_max_threads() / o.engine.batching.instances));
  if (token.empty()) fmt::print("mpx serve: admin endpoint off (no --admin-token-file or MPX_ADMIN_TOKEN)\n");
  std::fflush(stdout);
  rollout.start_slo_monitor();
  std::thread stopper([&] {
    int signal = 0;
    sigwait(&stop_signals, &signal);
    fmt::print(stderr, "mpx serve: {}: refusing new requests, finishing those in flight\n", signal == SIGTERM ? "SIGTERM" : "SIGINT");
    rollout.begin_drain();
    if (!rollout.wait_idle(o.drain_timeout_s)) {
      fmt::print(stderr, "mpx serve: requests still running after --drain-timeout {} s; stopping anyway\n", o.drain_timeout_s);
    }
    http.stop();
  });
  http.serve();
  if (!rollout.draining()) pthread_kill(stopper.native_handle(), SIGTERM);  // serve() ended by itself
  stopper.join();
  fmt::print("mpx serve: stopped after answering {} requests\n", http.answered());
  std::fflush(stdout);
  if (events_file != stdout) std::fclose(events_file);
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto o = std::make_shared<ServeCommand>();
  CLI::App* cmd = app.add_subcommand("serve", "Serve a model over the Open Inference Protocol (KServe v2 REST), "
                                              "with a low-precision canary, an FP32 shadow and SLO rollback");
  serve::ServeOptions& e = o->engine;
  cmd->add_option("model", e.model_or_run, "model.safetensors (or a PyTorch state dict), or a run directory")->required();
  cmd->add_option("--port", o->http.port, "TCP port (0: any free port, printed)")->capture_default_str()->check(CLI::Range(0, 65535));
  cmd->add_option("--bind", o->http.bind, "Address to listen on")->capture_default_str();
  cmd->add_option("--name", o->name, "The model's name in /v2/models/NAME (default: its architecture: cnn, mlp or gpt)");
  cmd->add_option("--model", e.model, "cnn or mlp (default: from the file's metadata, or its tensor names)");
  cmd->add_option("--data", e.data_dir, "Fashion-MNIST directory (normalisation of files that do not record it)")->capture_default_str();
  cmd->add_option("--precision", e.precision, "Primary variant: fp32, bf16 or fp16 (or a preset name)")->capture_default_str();
  cmd->add_option("--weights", e.weights, "Load the primary variant from this converted file (mpx convert) instead");
  cmd->add_option("--canary-precision", e.canary_precision, "Canary variant: bf16, fp16, ...");
  cmd->add_option("--canary-weights", e.canary_weights, "Load the canary from this converted file instead");
  cmd->add_option("--canary-share", e.canary_share, "Share of requests routed to the canary (by request id)")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  cmd->add_flag("--shadow", e.shadow, "Re-run low-precision answers in FP32 off the response path and compare");
  cmd->add_option("--shadow-share", e.shadow_share, "Share of low-precision answers the shadow re-runs")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--shadow-queue", e.shadow_queue, "Requests that may wait for the shadow (more are dropped, counted)")
      ->capture_default_str()->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--slo", o->slo, "Objectives of the low-precision traffic, e.g. p99_ms=2,agreement=0.995,nonfinite=0");
  cmd->add_option("--slo-window", o->slo_window, "Window the SLO is judged in (30s, 500ms, 2m)")->capture_default_str();
  cmd->add_option("--rollback-after", e.rollback_after, "Breached windows in a row before all traffic goes to FP32")
      ->capture_default_str()->check(CLI::Range(1, 1000000));
  cmd->add_option("--max-batch", e.batching.max_batch, "Largest batch a forward pass runs (and largest request)")
      ->capture_default_str()->check(CLI::Range(1, 4096));
  cmd->add_option("--max-queue-delay-us", e.batching.max_queue_delay_us,
                  "Longest a request waits for others to batch with (0: run what is queued at once)")
      ->capture_default_str()->check(CLI::Range(0, 10000000));
  cmd->add_option("--request-timeout-ms", o->request_timeout_ms, "A request still queued after this is answered 503")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--max-body-bytes", o->http.max_body_bytes, "Larger request bodies are answered 413")
      ->capture_default_str()->check(CLI::Range(1024, 1 << 30));
  cmd->add_option("--read-timeout-s", o->http.read_timeout_seconds, "Close a connection that sends nothing for this long")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--http-threads", o->http.threads, "Connections served at once")->capture_default_str()->check(CLI::Range(1, 4096));
  cmd->add_option("--one-thread-batch", e.batching.one_thread_batch,
                  "Batches of at most this many images run on one thread (0: all use --threads)")
      ->capture_default_str()->check(CLI::Range(0, 4096));
  cmd->add_option("--instances", e.batching.instances,
                  "Batching workers, each with its own copy of every variant (Triton's instance count)")
      ->capture_default_str()->check(CLI::Range(1, 64));
  cmd->add_option("--threads", o->threads, "CPU threads of each forward pass (0: the cores divided among --instances)")->capture_default_str()->check(CLI::Range(0, 1024));
  cmd->add_option("--admin-token-file", o->admin_token_file, "File holding the token POST /admin/precision requires "
                                                             "(or set MPX_ADMIN_TOKEN); without one the endpoint is off");
  cmd->add_option("--events", o->events, "Append the JSON-line events here instead of stdout");
  cmd->add_option("--drain-timeout", o->drain_timeout_s, "Seconds SIGTERM waits for requests in flight")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--max-tokens", e.max_new_tokens, "GPT: the most tokens one request may ask for")
      ->capture_default_str()->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 20));
  cmd->add_option("--inject-nonfinite-canary", e.inject_nonfinite_canary_after,
                  "Drill: the canary's outputs go NaN from its N-th batch (GPT: request) on (the rollback drill)");
  cmd->callback([o] { run_serve(*o); });
}

}  // namespace mpx::cli
