#include "coordinator/coordinator_process.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "metrics/metrics.h"
#include "model/chat_template.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "service/tls.h"

namespace dsv2::coordinator {
namespace {

constexpr char kInferenceService[] = "dsv2.v1.Inference";

// config.json's model_type (informational; empty when absent).
std::string ModelType(const std::string& dir) {
  std::ifstream in(dir + "/config.json");
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("model_type") && j["model_type"].is_string()) {
    return j["model_type"].get<std::string>();
  }
  return "";
}

// The directory's name, for GetModelInfo ("/models/v2-lite/" -> "v2-lite").
std::string ModelName(const std::string& dir) {
  const std::filesystem::path p = std::filesystem::path(dir).lexically_normal();
  std::string name = p.filename().string();
  if (name.empty()) name = p.parent_path().filename().string();
  return name;
}

void ExportClusterState(ClusterState& state, metrics::CoordinatorMetrics& m) {
  m.queue_depth.Set(state.queued());
  const ClusterState::DeadCounts dead = state.dead_counts();
  m.nodes.Add({{"role", "attention"}, {"state", "live"}})
      .Set(static_cast<double>(state.attention_nodes().size()));
  m.nodes.Add({{"role", "expert_shard"}, {"state", "live"}})
      .Set(static_cast<double>(state.shards().size()));
  m.nodes.Add({{"role", "attention"}, {"state", "dead"}}).Set(static_cast<double>(dead.attention));
  m.nodes.Add({{"role", "expert_shard"}, {"state", "dead"}}).Set(static_cast<double>(dead.shards));
  m.placement_version.Set(state.published().version);
  m.placement_complete.Set(state.placement_complete() ? 1 : 0);
}

}  // namespace

// Declared in dependency order; destroyed in reverse.
struct CoordinatorProcess::Parts {
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  std::optional<ChatTemplate> chat_template;
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  std::unique_ptr<metrics::CoordinatorMetrics> metrics;
  std::unique_ptr<Coordinator> coordinator;
  std::string model_name;
  // The health services of the main server and of the health port (owned
  // by their gRPC servers); set on the main thread before serving.
  std::vector<grpc::HealthCheckServiceInterface*> health;
};

absl::StatusOr<std::unique_ptr<CoordinatorProcess>> CoordinatorProcess::Create(
    CoordinatorProcessOptions options) {
  auto p = std::make_unique<Parts>();
  const std::string& dir = options.model_dir;
  DSV2_ASSIGN_OR_RETURN(p->config, LoadModelConfig(dir + "/config.json"));
  std::error_code ec;
  if (std::filesystem::exists(dir + "/tokenizer.json", ec)) {
    DSV2_ASSIGN_OR_RETURN(p->tokenizer, Tokenizer::FromDir(dir));
    if (p->tokenizer->chat_template()) {
      DSV2_ASSIGN_OR_RETURN(p->chat_template, ChatTemplate::Parse(*p->tokenizer->chat_template()));
    }
  } else {
    spdlog::warn("{} has no tokenizer.json: only prompt_ids requests are served", dir);
  }
  ServedModel model;
  model.context_tokens = p->config.max_position_embeddings;
  model.vocab_size = p->config.vocab_size;
  for (int64_t id : p->config.eos_token_ids) model.eos_token_ids.push_back(static_cast<int32_t>(id));
  if (model.eos_token_ids.empty() && p->tokenizer && p->tokenizer->eos_id()) {
    model.eos_token_ids.push_back(*p->tokenizer->eos_id());
  }
  model.tokenizer = p->tokenizer.get();
  model.chat_template = p->chat_template ? &*p->chat_template : nullptr;

  DSV2_ASSIGN_OR_RETURN(p->metrics_server,
                        metrics::MetricsServer::Start(options.host, options.metrics_port));
  p->metrics = std::make_unique<metrics::CoordinatorMetrics>(p->metrics_server->registry());
  CoordinatorOptions& co = options.coordinator;
  co.metrics = p->metrics.get();
  co.model_name = p->model_name = ModelName(dir);
  co.model_type = ModelType(dir);
  p->coordinator = std::make_unique<Coordinator>(p->config, model, co);
  p->metrics_server->OnScrape(
      [parts = p.get()] { ExportClusterState(parts->coordinator->state(), *parts->metrics); });
  service::ExportTlsMetrics(co.tls, *p->metrics_server);
  return std::unique_ptr<CoordinatorProcess>(new CoordinatorProcess(std::move(p)));
}

CoordinatorProcess::CoordinatorProcess(std::unique_ptr<Parts> parts) : parts_(std::move(parts)) {}

CoordinatorProcess::~CoordinatorProcess() { Shutdown(); }

std::vector<grpc::Service*> CoordinatorProcess::services() {
  return {parts_->coordinator->inference_service()};
}

std::vector<grpc::Service*> CoordinatorProcess::internal_services() {
  return {parts_->coordinator->membership_service()};
}

void CoordinatorProcess::OnListening(grpc::Server& server) {
  grpc::HealthCheckServiceInterface* health = server.GetHealthCheckService();
  parts_->health.push_back(health);
  health->SetServingStatus(kInferenceService, false);
  // The callback holds its own copy: the placement thread may run the
  // previous one while this replaces it.
  parts_->coordinator->SetServingCallback([all = parts_->health](bool serving) {
    for (grpc::HealthCheckServiceInterface* h : all)
      h->SetServingStatus(kInferenceService, serving);
  });
}

std::string CoordinatorProcess::ReadyFields() const {
  return absl::StrCat("metrics_port=", parts_->metrics_server->port());
}

std::string CoordinatorProcess::ServingLogLine(int port) const {
  return absl::StrCat("coordinator serving ", parts_->model_name, " on port ", port);
}

bool CoordinatorProcess::Drain(absl::Duration timeout) {
  for (grpc::HealthCheckServiceInterface* h : parts_->health) {
    h->SetServingStatus(kInferenceService, false);
  }
  return parts_->coordinator->Drain(timeout);
}

void CoordinatorProcess::Shutdown() {
  if (parts_->coordinator) parts_->coordinator->Shutdown();
  // No scrape may run its hook on a stopped coordinator.
  parts_->metrics_server.reset();
}

}  // namespace dsv2::coordinator
