#include "attention_service/node_process.h"

#include <grpcpp/grpcpp.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "attention_service/data_plane_expert_backend.h"
#include "attention_service/engine.h"
#include "attention_service/latent_cache.h"
#include "attention_service/layer_loop.h"
#include "attention_service/node_server.h"
#include "attention_service/scheduler.h"
#include "base/status_macros.h"
#include "coordinator.pb.h"
#include "metrics/metrics.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "router/gate.h"
#include "transport/ucx_data_plane.h"

namespace dsv2 {

// Declared in dependency order: each part borrows only parts above it, and
// they are destroyed in reverse.
struct AttentionNodeProcess::Parts {
  ModelConfig config;
  std::unique_ptr<Checkpoint> checkpoint;
  std::string weights_fingerprint;  // of `checkpoint`, taken at open
  service::ComputeContext compute;
  std::unique_ptr<NonExpertWeights> weights;
  std::unique_ptr<LatentCache> cache;
  std::shared_ptr<transport::DataPlaneKeyring> data_plane_keys;  // null without a coordinator
  std::unique_ptr<transport::DataPlaneClient> data_plane;
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  std::unique_ptr<metrics::AttentionMetrics> metrics;
  std::unique_ptr<DataPlaneExpertBackend> backend;
  std::shared_ptr<const service::TlsContext> tls;
  std::unique_ptr<LayerLoop> loop;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<AttentionEngine> engine;
  std::unique_ptr<AttentionNodeServer> server;
  int threads = 1;
  bool hand_off_on_drain = false;
};

namespace {

// The static placement of --placement / --expert-shards, if any.
absl::StatusOr<std::optional<internal::PlacementTable>> StaticPlacement(
    const AttentionNodeOptions& options, const router::GateParams& gate) {
  if (options.placement_file) {
    DSV2_ASSIGN_OR_RETURN(internal::PlacementTable t,
                          service::ReadPlacementFile(*options.placement_file, gate));
    return t;
  }
  if (options.expert_shards.empty()) return std::nullopt;
  const std::vector<std::string>& addrs = options.expert_shards;
  DSV2_ASSIGN_OR_RETURN(
      internal::PlacementTable t,
      service::DefaultPlacementTable(gate, static_cast<int32_t>(addrs.size()), 1));
  for (size_t i = 0; i < addrs.size(); ++i) t.mutable_shards(i)->set_grpc_address(addrs[i]);
  return t;
}

void ExportEngineStats(const AttentionEngine& engine, const DataPlaneExpertBackend& backend,
                       metrics::AttentionMetrics& m) {
  const EngineStats st = engine.stats();
  const int64_t total = st.cache_capacity_tokens / kLatentBlockTokens;
  const int64_t free_blocks = st.cache_free_tokens / kLatentBlockTokens;
  m.latent_cache_blocks.Add({{"state", "used"}}).Set(static_cast<double>(total - free_blocks));
  m.latent_cache_blocks.Add({{"state", "free"}}).Set(static_cast<double>(free_blocks));
  m.latent_cache_usage_ratio.Set(
      total > 0 ? static_cast<double>(total - free_blocks) / static_cast<double>(total) : 0.0);
  metrics::SetCounterTotal(m.preemptions, static_cast<double>(st.scheduler.preemptions_total));
  const RemoteExpertsStats bs = backend.stats();
  metrics::SetCounterTotal(m.expert_resends, static_cast<double>(bs.resends));
  metrics::SetCounterTotal(m.expert_resent_assignments, static_cast<double>(bs.resent_assignments));
  metrics::SetCounterTotal(m.expert_reconnects, static_cast<double>(bs.reconnects));
  const std::vector<int64_t>& load = bs.expert_assignments;
  for (size_t e = 0; e < load.size(); ++e) {
    if (load[e] == 0) continue;
    metrics::SetCounterTotal(m.expert_assignments.Add({{"expert", std::to_string(e)}}),
                             static_cast<double>(load[e]));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<AttentionNodeProcess>> AttentionNodeProcess::Create(
    const AttentionNodeOptions& options) {
  auto p = std::make_unique<Parts>();
  p->data_plane_keys = options.data_plane_keys;
  p->hand_off_on_drain = options.hand_off_on_drain;
  p->threads = options.common.threads;
  DSV2_ASSIGN_OR_RETURN(p->config, LoadModelConfig(options.model_dir + "/config.json"));
  const router::GateParams gate = router::GateParams::FromConfig(p->config);
  DSV2_ASSIGN_OR_RETURN(std::optional<internal::PlacementTable> table,
                        StaticPlacement(options, gate));
  DSV2_ASSIGN_OR_RETURN(p->checkpoint, Checkpoint::OpenDir(options.model_dir));
  p->weights_fingerprint = p->checkpoint->Fingerprint();
  DSV2_ASSIGN_OR_RETURN(p->compute, service::MakeComputeContext(options.common));
  DSV2_ASSIGN_OR_RETURN(const WeightQuantization quantization,
                        service::WeightQuantizationFromFlags(options.common));
  DSV2_ASSIGN_OR_RETURN(
      p->weights, NonExpertWeights::Load(p->config, *p->checkpoint, std::nullopt, quantization));
  DSV2_ASSIGN_OR_RETURN(
      p->cache, LatentCache::Create(p->config.num_hidden_layers, p->config.latent_dim(),
                                    p->weights->activation_dtype(),
                                    LatentCache::BlocksForTokens(options.cache_tokens)));
  DSV2_ASSIGN_OR_RETURN(p->data_plane, transport::CreateUcxClient(service::UcxOptionsFromFlags(
                                           options.common, options.data_plane_keys)));
  DSV2_ASSIGN_OR_RETURN(p->metrics_server, metrics::MetricsServer::Start(
                                               options.common.host, options.common.metrics_port));
  p->metrics = std::make_unique<metrics::AttentionMetrics>(p->metrics_server->registry());

  RemoteExpertsOptions ro;
  ro.on_dispatch_done = [m = p->metrics.get()](double seconds) {
    m->expert_dispatch_seconds.Observe(seconds);
  };
  ro.dispatch_timeout = options.dispatch_timeout;
  p->backend = std::make_unique<DataPlaneExpertBackend>(*p->data_plane, ro);
  p->tls = options.tls != nullptr ? options.tls : service::TlsContext::Insecure();
  service::ExportTlsMetrics(p->tls, *p->metrics_server);
  if (table) {
    DSV2_RETURN_IF_ERROR(ApplyPlacement(*table, static_cast<int32_t>(p->config.n_routed_experts),
                                        absl::Now() + absl::Seconds(30), *p->backend, *p->tls));
  }
  LayerLoopOptions lo;
  lo.min_rows_for_micro_batches = options.micro_batch_min_rows;
  p->loop = std::make_unique<LayerLoop>(*p->weights, *p->cache, *p->backend, p->compute.ctx, lo);
  SchedulerOptions so;
  so.max_step_tokens = options.max_step_tokens;
  so.max_running = options.max_running;
  so.max_waiting = options.max_waiting;
  so.eos_token_ids = p->config.eos_token_ids;
  p->scheduler = std::make_unique<Scheduler>(p->config, *p->loop, *p->cache, so);
  p->engine = std::make_unique<AttentionEngine>(
      *p->scheduler, *p->cache, [m = p->metrics.get()](const SchedulerStats& st) {
        m->batch_size.Observe(static_cast<double>(st.last_step_sequences));
        m->step_seconds.Observe(st.last_step.step_seconds);
      });
  p->metrics_server->OnScrape([parts = p.get()] {
    ExportEngineStats(*parts->engine, *parts->backend, *parts->metrics);
  });
  p->server = std::make_unique<AttentionNodeServer>(p->config, *p->engine, *p->backend, p->tls);
  return std::unique_ptr<AttentionNodeProcess>(new AttentionNodeProcess(std::move(p)));
}

AttentionNodeProcess::AttentionNodeProcess(std::unique_ptr<Parts> parts)
    : parts_(std::move(parts)) {}

AttentionNodeProcess::~AttentionNodeProcess() { Shutdown(); }

std::vector<grpc::Service*> AttentionNodeProcess::services() { return {parts_->server.get()}; }

std::shared_ptr<transport::DataPlaneKeyring> AttentionNodeProcess::data_plane_keys() const {
  return parts_->data_plane_keys;
}

std::string AttentionNodeProcess::ReadyFields() const {
  return absl::StrCat("metrics_port=", parts_->metrics_server->port(),
                      " cache_tokens=", parts_->cache->capacity_tokens(),
                      " placement_version=", parts_->backend->placement_version());
}

std::string AttentionNodeProcess::ServingLogLine(int port) const {
  return absl::StrCat("attention node serving on port ", port, " (",
                      parts_->cache->capacity_tokens(), " cache tokens, ", parts_->threads,
                      " threads)");
}

void AttentionNodeProcess::FillRegistration(internal::RegisterRequest* reg) const {
  reg->set_role(internal::NODE_ROLE_ATTENTION);
  reg->set_cache_capacity_tokens(parts_->cache->capacity_tokens());
  service::FillModelIdentity(parts_->config, parts_->weights_fingerprint, reg);
}

void AttentionNodeProcess::FillHeartbeat(internal::HeartbeatRequest* hb) const {
  const EngineStats st = parts_->engine->stats();
  hb->set_placement_version(parts_->backend->placement_version());
  hb->set_cache_free_tokens(st.cache_free_tokens);
  hb->set_running(static_cast<int32_t>(st.scheduler.running));
  hb->set_waiting(static_cast<int32_t>(st.scheduler.waiting));
}

bool AttentionNodeProcess::Drain(absl::Duration timeout) {
  if (parts_->hand_off_on_drain) parts_->engine->HandOff();
  return parts_->engine->Drain(timeout);
}

void AttentionNodeProcess::Shutdown() {
  if (parts_->engine) parts_->engine->Shutdown();
  parts_->metrics_server.reset();  // no scrape may read a stopped engine
}

}  // namespace dsv2
