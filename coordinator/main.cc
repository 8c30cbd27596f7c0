// dsv2-coordinator: the public endpoint of a dsv2 cluster (DESIGN.md
// section 2). Serves dsv2.v1.Inference (clients), dsv2.internal.Coordinator
// (attention nodes and expert shards register and heartbeat),
// grpc.health.v1.Health and server reflection on --port, and prints one
// ready line on stdout:
//   dsv2-coordinator ready port=PORT metrics_port=PORT
// Prometheus /metrics is served on --metrics-port (metrics/metrics.h).
// Health: "" is SERVING while the process runs; "dsv2.v1.Inference" is
// SERVING only while an attention node and a complete placement exist.
// SIGTERM/SIGINT: stop admitting, let live requests finish (up to
// --drain-timeout), exit 0.
// Threads: main (start-up, then waits for the signal), gRPC's server
// threads, the coordinator's placement and cancellation threads.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/flags.h"
#include "coordinator/coordinator_server.h"
#include "metrics/metrics.h"
#include "model/chat_template.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tools/service/service_common.h"

namespace dsv2 {
namespace {

constexpr char kInferenceService[] = "dsv2.v1.Inference";

int Main(int argc, char** argv) {
  service::BlockTerminationSignals();
  service::InitLogging("dsv2-coordinator");
  // Defaults: the option structs' initializers (CoordinatorOptions,
  // AdmissionOptions, CommonFlags), written nowhere else.
  std::string dir;
  coordinator::CoordinatorOptions options;
  absl::Duration drain_timeout = absl::Seconds(30);
  service::CommonFlags common;
  flags::FlagSet flags("dsv2-coordinator", /*version=*/"");
  flags.String("model", &dir,
               "checkpoint directory: config.json (+ tokenizer.json, tokenizer_config.json)")
      .Required();
  flags.Int("max-queue", &options.admission.max_queued,
            "requests that may wait for an attention node; beyond: RESOURCE_EXHAUSTED")
      .Min(0);
  flags.Duration("heartbeat-interval", &options.heartbeat_interval, "how often nodes heartbeat")
      .Min(absl::Milliseconds(10))
      .LegacyAlias("heartbeat-interval-ms", absl::Milliseconds(1));
  flags.Duration("heartbeat-timeout", &options.heartbeat_timeout,
                 "a node silent this long is declared dead and removed")
      .Min(absl::Milliseconds(20))
      .LegacyAlias("heartbeat-timeout-ms", absl::Milliseconds(1));
  flags.Duration("load-experts-timeout", &options.load_experts_timeout,
                 "deadline of one shard's LoadExperts when the placement changes")
      .Min(absl::Seconds(1))
      .LegacyAlias("load-experts-timeout-s", absl::Seconds(1));
  flags.Duration("drain-timeout", &drain_timeout, "on SIGTERM, how long live requests may finish")
      .Min(absl::ZeroDuration())
      .LegacyAlias("drain-timeout-s", absl::Seconds(1));
  service::DefineCommonFlags(flags, &common);
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;
  if (options.heartbeat_timeout <= options.heartbeat_interval) {
    return flags.UsageError("--heartbeat-timeout must be larger than --heartbeat-interval");
  }
  const auto fail = [](const absl::Status& st) {
    std::cerr << "dsv2-coordinator: " << st.message() << "\n";
    return 1;
  };
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir + "/config.json");
  if (!config.ok()) return fail(config.status());
  std::string model_type;
  {
    std::ifstream in(dir + "/config.json");
    nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("model_type") && j["model_type"].is_string()) {
      model_type = j["model_type"].get<std::string>();
    }
  }
  std::unique_ptr<Tokenizer> tokenizer;
  std::optional<ChatTemplate> chat_template;
  std::error_code ec;
  if (std::filesystem::exists(dir + "/tokenizer.json", ec)) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::FromDir(dir);
    if (!t.ok()) return fail(t.status());
    tokenizer = *std::move(t);
    if (tokenizer->chat_template()) {
      absl::StatusOr<ChatTemplate> tmpl = ChatTemplate::Parse(*tokenizer->chat_template());
      if (!tmpl.ok()) return fail(tmpl.status());
      chat_template = *std::move(tmpl);
    }
  } else {
    spdlog::warn("{} has no tokenizer.json: only prompt_ids requests are served", dir);
  }
  coordinator::ServedModel model;
  model.context_tokens = config->max_position_embeddings;
  model.vocab_size = config->vocab_size;
  for (int64_t id : config->eos_token_ids) model.eos_token_ids.push_back(static_cast<int32_t>(id));
  if (model.eos_token_ids.empty() && tokenizer && tokenizer->eos_id()) {
    model.eos_token_ids.push_back(*tokenizer->eos_id());
  }
  model.tokenizer = tokenizer.get();
  model.chat_template = chat_template ? &*chat_template : nullptr;

  options.model_name = std::filesystem::path(dir).lexically_normal().filename().string();
  if (options.model_name.empty()) {
    options.model_name = std::filesystem::path(dir).lexically_normal().parent_path().filename();
  }
  options.model_type = model_type;
  absl::StatusOr<std::unique_ptr<metrics::MetricsServer>> metrics_server =
      metrics::MetricsServer::Start(common.host, common.metrics_port);
  if (!metrics_server.ok()) return fail(metrics_server.status());
  metrics::CoordinatorMetrics coordinator_metrics((*metrics_server)->registry());
  options.metrics = &coordinator_metrics;
  coordinator::Coordinator coord(*config, model, options);
  (*metrics_server)->OnScrape([&coord, &coordinator_metrics] {
    coordinator::ClusterState& state = coord.state();
    metrics::CoordinatorMetrics& m = coordinator_metrics;
    m.queue_depth.Set(state.queued());
    const coordinator::ClusterState::DeadCounts dead = state.dead_counts();
    m.nodes.Add({{"role", "attention"}, {"state", "live"}})
        .Set(static_cast<double>(state.attention_nodes().size()));
    m.nodes.Add({{"role", "expert_shard"}, {"state", "live"}})
        .Set(static_cast<double>(state.shards().size()));
    m.nodes.Add({{"role", "attention"}, {"state", "dead"}}).Set(static_cast<double>(dead.attention));
    m.nodes.Add({{"role", "expert_shard"}, {"state", "dead"}}).Set(static_cast<double>(dead.shards));
    m.placement_version.Set(state.published().version);
    m.placement_complete.Set(state.placement_complete() ? 1 : 0);
  });

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::StrCat(common.host, ":", common.port),
                           grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(coord.inference_service());
  builder.RegisterService(coord.membership_service());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    metrics_server->reset();  // its scrape hook reads `coord`
    return fail(
        absl::UnavailableError(absl::StrCat("cannot listen on ", common.host, ":", common.port)));
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(kInferenceService, false);
  coord.SetServingCallback(
      [health](bool serving) { health->SetServingStatus(kInferenceService, serving); });
  service::PrintReadyLine(absl::StrCat("dsv2-coordinator ready port=", port,
                                       " metrics_port=", (*metrics_server)->port()));
  spdlog::info("coordinator serving {} on port {}", options.model_name, port);

  const int sig = service::WaitForTerminationSignal();
  spdlog::info("signal {}: draining", sig);
  health->SetServingStatus(kInferenceService, false);
  if (!coord.Drain(drain_timeout)) {
    spdlog::warn("drain timed out; cancelling the remaining requests");
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  coord.Shutdown();
  metrics_server->reset();  // no scrape may run its hook on a stopped coordinator
  spdlog::info("stopped");
  return 0;
}

}  // namespace
}  // namespace dsv2

int main(int argc, char** argv) {
  try {
    return dsv2::Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "dsv2-coordinator: internal error: " << e.what() << "\n";
    return 1;
  }
}
