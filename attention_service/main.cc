// dsv2-attention: an attention node (DESIGN.md section 2). Loads only the
// non-expert weights, owns the paged latent cache and the
// continuous-batching scheduler, reaches the routed experts on expert-shard
// services over UCX (DataPlaneExpertBackend), and serves the AttentionNode
// gRPC API (+ grpc.health.v1) on --port. Prints one ready line on stdout:
//   dsv2-attention ready port=PORT metrics_port=PORT cache_tokens=N placement_version=V
// With --coordinator it registers once its gRPC server listens (without a
// placement until the coordinator pushes one) and heartbeats its load.
// SIGTERM/SIGINT: leave the coordinator, stop admitting, finish live
// requests (up to --drain-timeout-s), exit 0 (1 if the coordinator refused
// the registration).
// Threads: main (start-up, then waits for the signal), gRPC's server
// threads (one per active RPC: they wait on RequestStreams), the engine
// thread (AttentionEngine: scheduler, layer loop, cache), the data plane's
// progress thread, the compute ThreadPool, the CoordinatorLink thread.
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <signal.h>
#include <unistd.h>

#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "attention_node.grpc.pb.h"
#include "attention_service/engine.h"
#include "attention_service/latent_cache.h"
#include "attention_service/layer_loop.h"
#include "attention_service/node_server.h"
#include "attention_service/data_plane_expert_backend.h"
#include "attention_service/scheduler.h"
#include "metrics/metrics.h"
#include "kernels/cpu.h"
#include "base/status_macros.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "service/coordinator_link.h"
#include "service/service_common.h"
#include "transport/ucx_data_plane.h"

namespace dsv2 {
namespace {

std::vector<cli::FlagSpec> FlagSpecs() {
  std::vector<cli::FlagSpec> specs = {
      {"model", false, "checkpoint directory (config.json + safetensors) (required)"},
      {"cache-tokens", false, "latent cache capacity in tokens (default 16384; 64-token blocks)"},
      {"max-step-tokens", false, "token budget of one step: prefill chunk size (default 512)"},
      {"max-running", false, "sequences in one step (default 64)"},
      {"max-waiting", false, "admission queue bound (default 1024)"},
      {"expert-shards", false,
       "comma-separated gRPC addresses of the expert shards, shard 0 first: the default "
       "placement over them (version 1)"},
      {"placement", false, "placement file (JSON PlacementTable); overrides --expert-shards"},
      {"dispatch-timeout-ms", false,
       "deadline of one expert dispatch, re-sends included (default 10000)"},
      {"micro-batch-min-rows", false,
       "split a step into two ping-pong micro-batches from this many rows (default 32; 0 = "
       "never)"},
      {"drain-timeout-s", false, "on SIGTERM, how long live requests may finish (default 30)"},
      {"coordinator", false,
       "HOST:PORT of dsv2-coordinator: register, heartbeat and take placements from it "
       "(then --expert-shards/--placement are not needed)"},
      {"advertise-host", false,
       "host the coordinator uses to reach this node's gRPC port (default: --host)"},
  };
  for (cli::FlagSpec& s : service::CommonFlagSpecs()) specs.push_back(std::move(s));
  return specs;
}

int Main(int argc, char** argv) {
  service::BlockTerminationSignals();
  service::InitLogging("dsv2-attention");
  const std::vector<cli::FlagSpec> specs = FlagSpecs();
  int exit_code = 0;
  std::optional<service::ServiceCommandLine> cmd =
      service::ParseServiceCommandLine("dsv2-attention", argc, argv, specs, &exit_code);
  if (!cmd) return exit_code;
  const cli::ParsedFlags& flags = cmd->flags;
  const auto usage = [&](const std::string& msg) {
    return service::UsageError("dsv2-attention", specs, msg);
  };
  int64_t cache_tokens, max_step_tokens, max_running, max_waiting, dispatch_ms, mb_rows, drain_s;
  if (absl::Status st = service::ReadIntFlags(
          flags, {{"cache-tokens", 16384, &cache_tokens, 1},
                  {"max-step-tokens", 512, &max_step_tokens, 1},
                  {"max-running", 64, &max_running, 1},
                  {"max-waiting", 1024, &max_waiting, 0},
                  {"dispatch-timeout-ms", 10000, &dispatch_ms, 1},
                  {"micro-batch-min-rows", 32, &mb_rows, 0},
                  {"drain-timeout-s", 30, &drain_s, 0}});
      !st.ok()) {
    return usage(std::string(st.message()));
  }
  const auto fail = [](const absl::Status& st) {
    std::cerr << "dsv2-attention: " << st.message() << "\n";
    return 1;
  };

  absl::StatusOr<ModelConfig> config = LoadModelConfig(cmd->model_dir + "/config.json");
  if (!config.ok()) return fail(config.status());
  const router::GateParams gate = router::GateParams::FromConfig(*config);
  std::optional<internal::PlacementTable> table;
  if (std::optional<std::string> file = flags.Get("placement")) {
    absl::StatusOr<internal::PlacementTable> t = service::ReadPlacementFile(*file, gate);
    if (!t.ok()) return fail(t.status());
    table = *t;
  } else if (std::optional<std::string> shards = flags.Get("expert-shards")) {
    std::vector<std::string> addrs = absl::StrSplit(*shards, ',', absl::SkipEmpty());
    absl::StatusOr<internal::PlacementTable> t =
        service::DefaultPlacementTable(gate, static_cast<int32_t>(addrs.size()), 1);
    if (addrs.empty() || !t.ok()) {
      return usage(addrs.empty() ? "--expert-shards lists no address"
                                 : std::string(t.status().message()));
    }
    for (size_t i = 0; i < addrs.size(); ++i) t->mutable_shards(i)->set_grpc_address(addrs[i]);
    table = *t;
  }

  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::OpenDir(cmd->model_dir);
  if (!ckpt.ok()) return fail(ckpt.status());
  absl::StatusOr<service::ComputeContext> compute = service::MakeComputeContext(cmd->common);
  if (!compute.ok()) return fail(compute.status());
  absl::StatusOr<std::unique_ptr<NonExpertWeights>> weights =
      NonExpertWeights::Load(*config, **ckpt);
  if (!weights.ok()) return fail(weights.status());
  absl::StatusOr<std::unique_ptr<LatentCache>> cache = LatentCache::Create(
      config->num_hidden_layers, config->latent_dim(), (*weights)->activation_dtype(),
      LatentCache::BlocksForTokens(cache_tokens));
  if (!cache.ok()) return fail(cache.status());

  absl::StatusOr<std::unique_ptr<transport::DataPlaneClient>> client =
      transport::CreateUcxClient(service::UcxOptionsFromFlags(cmd->common));
  if (!client.ok()) return fail(client.status());
  absl::StatusOr<std::unique_ptr<metrics::MetricsServer>> metrics_server =
      metrics::MetricsServer::Start(cmd->common.host, cmd->common.metrics_port);
  if (!metrics_server.ok()) return fail(metrics_server.status());
  metrics::AttentionMetrics node_metrics((*metrics_server)->registry());
  RemoteExpertsOptions ro;
  ro.on_dispatch_done = [&node_metrics](double seconds) {
    node_metrics.expert_dispatch_seconds.Observe(seconds);
  };
  ro.dispatch_timeout = absl::Milliseconds(dispatch_ms);
  DataPlaneExpertBackend backend(**client, ro);
  if (table) {
    if (absl::Status st = ApplyPlacement(*table, static_cast<int32_t>(config->n_routed_experts),
                                         absl::Now() + absl::Seconds(30), backend);
        !st.ok()) {
      return fail(st);
    }
  }

  LayerLoopOptions lo;
  lo.min_rows_for_micro_batches = mb_rows;
  LayerLoop loop(**weights, **cache, backend, compute->ctx, lo);
  SchedulerOptions so;
  so.max_step_tokens = max_step_tokens;
  so.max_running = max_running;
  so.max_waiting = max_waiting;
  so.eos_token_ids = config->eos_token_ids;
  Scheduler scheduler(*config, loop, **cache, so);
  AttentionEngine engine(scheduler, **cache, [&node_metrics](const SchedulerStats& st) {
    node_metrics.batch_size.Observe(static_cast<double>(st.last_step_sequences));
    node_metrics.step_seconds.Observe(st.last_step.step_seconds);
  });
  (*metrics_server)->OnScrape([&engine, &backend, &node_metrics] {
    const EngineStats st = engine.stats();
    const int64_t total = st.cache_capacity_tokens / kLatentBlockTokens;
    const int64_t free_blocks = st.cache_free_tokens / kLatentBlockTokens;
    node_metrics.latent_cache_blocks.Add({{"state", "used"}})
        .Set(static_cast<double>(total - free_blocks));
    node_metrics.latent_cache_blocks.Add({{"state", "free"}}).Set(static_cast<double>(free_blocks));
    node_metrics.latent_cache_usage_ratio.Set(
        total > 0 ? static_cast<double>(total - free_blocks) / static_cast<double>(total) : 0.0);
    metrics::SetCounterTotal(node_metrics.preemptions,
                             static_cast<double>(st.scheduler.preemptions_total));
    const std::vector<int64_t> load = backend.stats().expert_assignments;
    for (size_t e = 0; e < load.size(); ++e) {
      if (load[e] == 0) continue;
      metrics::SetCounterTotal(node_metrics.expert_assignments.Add({{"expert", std::to_string(e)}}),
                               static_cast<double>(load[e]));
    }
  });

  AttentionNodeServer node(*config, engine, backend);
  int port = 0;
  absl::StatusOr<std::unique_ptr<grpc::Server>> server =
      service::StartGrpcServer(cmd->common, &node, &port);
  if (!server.ok()) return fail(server.status());
  std::unique_ptr<service::CoordinatorLink> link;
  if (std::optional<std::string> coord = flags.Get("coordinator")) {
    service::CoordinatorLinkOptions lo;
    lo.coordinator_address = *coord;
    internal::RegisterRequest& reg = lo.registration;
    reg.set_role(internal::NODE_ROLE_ATTENTION);
    reg.set_grpc_address(
        absl::StrCat(flags.Get("advertise-host").value_or(cmd->common.host), ":", port));
    reg.set_cache_capacity_tokens((*cache)->capacity_tokens());
    reg.set_vocab_size(config->vocab_size);
    reg.set_num_layers(config->num_hidden_layers);
    reg.set_n_routed_experts(config->n_routed_experts);
    lo.load = [&engine, &backend](internal::HeartbeatRequest* hb) {
      const EngineStats st = engine.stats();
      hb->set_placement_version(backend.placement_version());
      hb->set_cache_free_tokens(st.cache_free_tokens);
      hb->set_running(static_cast<int32_t>(st.scheduler.running));
      hb->set_waiting(static_cast<int32_t>(st.scheduler.waiting));
    };
    // A refusal (another model) is fatal, also after the ready line: it
    // raises SIGTERM and the node exits 1 below. An absent coordinator is not.
    lo.on_fatal = [](const absl::Status&) { kill(getpid(), SIGTERM); };
    link = std::make_unique<service::CoordinatorLink>(std::move(lo));
    link->Start();
    if (absl::Status st = link->WaitRegistered(absl::Seconds(1)); absl::IsInvalidArgument(st)) {
      link->Stop();
      (*server)->Shutdown();
      engine.Shutdown();
      metrics_server->reset();
      return fail(st);
    }
  }
  service::PrintReadyLine(absl::StrCat("dsv2-attention ready port=", port,
                                       " metrics_port=", (*metrics_server)->port(),
                                       " cache_tokens=", (*cache)->capacity_tokens(),
                                       " placement_version=", backend.placement_version()));
  spdlog::info("attention node serving on port {} ({} cache tokens, {} threads)", port,
               (*cache)->capacity_tokens(), cmd->common.threads);

  const int sig = service::WaitForTerminationSignal();
  spdlog::info("signal {}: draining", sig);
  // Leave first, so the coordinator sends nothing new while we drain.
  if (link) link->Stop();
  const bool drained = engine.Drain(absl::Seconds(drain_s));
  if (!drained) spdlog::warn("drain timed out; failing the remaining requests");
  // Live requests are done (or failed) by now; cancel whatever RPC is left.
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  engine.Shutdown();
  metrics_server->reset();  // no scrape may read a stopped engine
  spdlog::info("stopped");
  if (link && !link->fatal().ok()) return fail(link->fatal());
  return 0;
}

}  // namespace
}  // namespace dsv2

int main(int argc, char** argv) {
  try {
    return dsv2::Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "dsv2-attention: internal error: " << e.what() << "\n";
    return 1;
  }
}
