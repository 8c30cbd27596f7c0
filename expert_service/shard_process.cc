#include "expert_service/shard_process.h"

#include <grpcpp/grpcpp.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "coordinator.pb.h"
#include "expert_service/control_server.h"
#include "expert_service/data_plane_server.h"
#include "metrics/metrics.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "router/gate.h"
#include "service/tls.h"
#include "transport/ucx_data_plane.h"

namespace dsv2 {

// Declared in dependency order: each part borrows only parts above it, and
// they are destroyed in reverse.
struct ExpertShardProcess::Parts {
  ModelConfig config;
  std::unique_ptr<Checkpoint> checkpoint;
  std::string weights_fingerprint;  // of `checkpoint`, taken at open
  service::ComputeContext compute;
  std::unique_ptr<ExpertDataPlaneServer> server;
  std::shared_ptr<transport::DataPlaneKeyring> data_plane_keys;  // null without a coordinator
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  std::unique_ptr<metrics::ExpertShardMetrics> metrics;
  std::unique_ptr<transport::DataPlaneServer> data_plane;
  std::unique_ptr<ExpertControlServer> control;
};

namespace {

// The placement of --placement / --num-shards, if any.
absl::StatusOr<std::optional<internal::PlacementTable>> StartupPlacement(
    const ExpertShardOptions& options, const router::GateParams& gate) {
  if (options.placement_file) {
    DSV2_ASSIGN_OR_RETURN(internal::PlacementTable t,
                          service::ReadPlacementFile(*options.placement_file, gate));
    return t;
  }
  if (options.num_shards == 0) return std::nullopt;
  DSV2_ASSIGN_OR_RETURN(
      internal::PlacementTable t,
      service::DefaultPlacementTable(gate, static_cast<int32_t>(options.num_shards), 1));
  return t;
}

void ExportShardCounters(const ExpertDataPlaneServer& server, metrics::ExpertShardMetrics& m) {
  const DispatchServerCounters c = server.counters();
  for (size_t e = 0; e < c.expert_rows.size(); ++e) {
    if (c.expert_rows[e] == 0) continue;
    metrics::SetCounterTotal(m.expert_rows.Add({{"expert", std::to_string(e)}}),
                             static_cast<double>(c.expert_rows[e]));
  }
  for (const char* reason : {"malformed", "placement_version", "not_found", "internal"}) {
    const auto it = c.errors.find(reason);
    metrics::SetCounterTotal(m.dispatch_errors.Add({{"reason", reason}}),
                             it == c.errors.end() ? 0.0 : static_cast<double>(it->second));
  }
  m.resident_bytes.Set(static_cast<double>(ResidentBytes()));
}

void ExportHandshakeCounters(const transport::DataPlaneServerStats& s,
                             metrics::ExpertShardMetrics& m) {
  metrics::SetCounterTotal(m.data_plane_handshakes, static_cast<double>(s.handshakes_accepted));
  for (const auto& [reason, count] :
       {std::pair{"malformed", s.refused_malformed},
        std::pair{"unknown_key", s.refused_unknown_key}, std::pair{"no_key", s.refused_no_key},
        std::pair{"bad_mac", s.refused_bad_mac},
        std::pair{"unauthenticated", s.refused_unauthenticated}}) {
    metrics::SetCounterTotal(m.data_plane_refusals.Add({{"reason", reason}}),
                             static_cast<double>(count));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ExpertShardProcess>> ExpertShardProcess::Create(
    const ExpertShardOptions& options) {
  auto p = std::make_unique<Parts>();
  p->data_plane_keys = options.data_plane_keys;
  DSV2_ASSIGN_OR_RETURN(p->config, LoadModelConfig(options.model_dir + "/config.json"));
  DSV2_ASSIGN_OR_RETURN(p->checkpoint, Checkpoint::OpenDir(options.model_dir));
  p->weights_fingerprint = p->checkpoint->Fingerprint();
  DSV2_ASSIGN_OR_RETURN(p->compute, service::MakeComputeContext(options.common));
  DSV2_ASSIGN_OR_RETURN(const WeightQuantization quantization,
                        service::WeightQuantizationFromFlags(options.common));
  p->server = std::make_unique<ExpertDataPlaneServer>(p->config, *p->checkpoint, p->compute.ctx,
                                                      options.shard_id, quantization);
  const router::GateParams gate = router::GateParams::FromConfig(p->config);
  DSV2_ASSIGN_OR_RETURN(std::optional<internal::PlacementTable> table,
                        StartupPlacement(options, gate));
  if (table) {
    DSV2_ASSIGN_OR_RETURN(
        router::Placement placement,
        service::PlacementFromProto(*table, static_cast<int32_t>(p->config.n_routed_experts)));
    DSV2_RETURN_IF_ERROR(p->server->LoadExperts(placement));
  }
  DSV2_ASSIGN_OR_RETURN(p->metrics_server, metrics::MetricsServer::Start(
                                               options.common.host, options.common.metrics_port));
  p->metrics = std::make_unique<metrics::ExpertShardMetrics>(p->metrics_server->registry());
  p->server->SetDispatchObserver([m = p->metrics.get()](int64_t rows) {
    m->expert_batch_rows.Observe(static_cast<double>(rows));
  });
  service::ExportTlsMetrics(options.tls, *p->metrics_server);
  DSV2_ASSIGN_OR_RETURN(p->data_plane,
                        transport::CreateUcxServer(
                            service::UcxOptionsFromFlags(options.common, options.data_plane_keys),
                            [server = p->server.get()](std::span<const std::byte> request) {
                              return server->HandleMessage(request);
                            }));
  // After the data plane exists: scrapes run on the metrics server's thread.
  p->metrics_server->OnScrape([parts = p.get()] {
    ExportShardCounters(*parts->server, *parts->metrics);
    ExportHandshakeCounters(parts->data_plane->stats(), *parts->metrics);
  });
  p->control = std::make_unique<ExpertControlServer>(
      *p->server, p->data_plane->address(), static_cast<int32_t>(p->config.n_routed_experts));
  return std::unique_ptr<ExpertShardProcess>(new ExpertShardProcess(std::move(p)));
}

ExpertShardProcess::ExpertShardProcess(std::unique_ptr<Parts> parts) : parts_(std::move(parts)) {}

ExpertShardProcess::~ExpertShardProcess() { Shutdown(); }

std::vector<grpc::Service*> ExpertShardProcess::services() { return {parts_->control.get()}; }

std::shared_ptr<transport::DataPlaneKeyring> ExpertShardProcess::data_plane_keys() const {
  return parts_->data_plane_keys;
}

std::string ExpertShardProcess::ReadyFields() const {
  const ExpertDataPlaneServer& s = *parts_->server;
  return absl::StrCat("metrics_port=", parts_->metrics_server->port(), " shard_id=", s.shard_id(),
                      " placement_version=", s.placement_version(), " experts=", s.experts().size(),
                      " resident_bytes=", ResidentBytes(),
                      " ucx_address=", parts_->data_plane->address());
}

std::string ExpertShardProcess::ServingLogLine(int port) const {
  const ExpertDataPlaneServer& s = *parts_->server;
  return absl::StrCat("expert shard ", s.shard_id(), " serving on port ", port, " (",
                      s.experts().size(), " experts, ", s.expert_weight_bytes() >> 20,
                      " MiB expert weights, ", ResidentBytes() >> 20, " MiB resident)");
}

void ExpertShardProcess::FillRegistration(internal::RegisterRequest* reg) const {
  reg->set_role(internal::NODE_ROLE_EXPERT_SHARD);
  reg->set_ucx_address(parts_->data_plane->address());
  reg->set_shard_id(parts_->server->shard_id());
  service::FillModelIdentity(parts_->config, parts_->weights_fingerprint, reg);
}

void ExpertShardProcess::FillHeartbeat(internal::HeartbeatRequest* hb) const {
  hb->set_placement_version(parts_->server->placement_version());
  hb->set_resident_bytes(ResidentBytes());
}

void ExpertShardProcess::Shutdown() {
  if (parts_->data_plane) parts_->data_plane->Shutdown();
  parts_->metrics_server.reset();  // no scrape may read a stopped shard
}

}  // namespace dsv2
