// dsv2-expert: an expert-shard service (DESIGN.md section 2). Loads the
// routed experts its placement assigns (every MoE layer, memory-mapped from
// the checkpoint), serves dispatches from any number of attention nodes
// over UCX active messages, and a gRPC control API (ExpertShardService +
// grpc.health.v1) on --port. Prints one ready line on stdout:
//   dsv2-expert ready port=PORT metrics_port=PORT shard_id=N placement_version=V experts=K
//   resident_bytes=B ucx_address=HEX
// With --coordinator it registers (--shard-id, UCX address) once its gRPC
// server listens and loads the experts the coordinator pushes.
// SIGTERM/SIGINT: leave the coordinator, stop accepting, finish the
// dispatch in progress, exit 0 (1 if the coordinator refused the
// registration).
// Threads: main (start-up, then waits for the signal), gRPC's server
// threads (control RPCs), the data plane's progress and handler threads
// (transport/ucx_data_plane.h), the compute ThreadPool, the CoordinatorLink
// thread.
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <signal.h>
#include <unistd.h>

#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "expert_service/data_plane_server.h"
#include "expert_service/control_server.h"
#include "kernels/cpu.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "metrics/metrics.h"
#include "service/coordinator_link.h"
#include "service/service_common.h"
#include "transport/ucx_data_plane.h"

namespace dsv2 {
namespace {

std::vector<cli::FlagSpec> FlagSpecs() {
  std::vector<cli::FlagSpec> specs = {
      {"model", false, "checkpoint directory (config.json + safetensors) (required)"},
      {"shard-id", false, "this shard's id in the placement (default 0)"},
      {"num-shards", false,
       "load this shard's experts of the default placement over N shards (default 1); "
       "0 = start empty and wait for LoadExperts"},
      {"placement", false, "placement file (JSON PlacementTable); overrides --num-shards"},
      {"coordinator", false,
       "HOST:PORT of dsv2-coordinator: register with --shard-id, heartbeat, and load the "
       "experts it assigns (--num-shards then defaults to 0)"},
      {"advertise-host", false,
       "host the coordinator and attention nodes use to reach this shard's gRPC port "
       "(default: --host)"},
  };
  for (cli::FlagSpec& s : service::CommonFlagSpecs()) specs.push_back(std::move(s));
  return specs;
}

int Main(int argc, char** argv) {
  service::BlockTerminationSignals();
  service::InitLogging("dsv2-expert");
  const std::vector<cli::FlagSpec> specs = FlagSpecs();
  int exit_code = 0;
  std::optional<service::ServiceCommandLine> cmd =
      service::ParseServiceCommandLine("dsv2-expert", argc, argv, specs, &exit_code);
  if (!cmd) return exit_code;
  const cli::ParsedFlags& flags = cmd->flags;
  const auto usage = [&](const std::string& msg) {
    return service::UsageError("dsv2-expert", specs, msg);
  };
  absl::StatusOr<int64_t> shard_id = flags.GetInt("shard-id", 0);
  const std::optional<std::string> coordinator = flags.Get("coordinator");
  absl::StatusOr<int64_t> num_shards = flags.GetInt("num-shards", coordinator ? 0 : 1);
  if (!shard_id.ok()) return usage(std::string(shard_id.status().message()));
  if (!num_shards.ok()) return usage(std::string(num_shards.status().message()));
  if (*shard_id < 0 || *num_shards < 0 || (*num_shards > 0 && *shard_id >= *num_shards)) {
    return usage(
        absl::StrCat("--shard-id=", *shard_id, " must be in [0, --num-shards=", *num_shards, ")"));
  }
  if (*shard_id >= service::kMaxShardId) {
    return usage(absl::StrCat("--shard-id=", *shard_id, " must be < ", service::kMaxShardId));
  }
  const auto fail = [](const absl::Status& st) {
    std::cerr << "dsv2-expert: " << st.message() << "\n";
    return 1;
  };

  absl::StatusOr<ModelConfig> config = LoadModelConfig(cmd->model_dir + "/config.json");
  if (!config.ok()) return fail(config.status());
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::OpenDir(cmd->model_dir);
  if (!ckpt.ok()) return fail(ckpt.status());
  absl::StatusOr<service::ComputeContext> compute = service::MakeComputeContext(cmd->common);
  if (!compute.ok()) return fail(compute.status());
  ExpertDataPlaneServer server(*config, **ckpt, compute->ctx, static_cast<int32_t>(*shard_id));

  const router::GateParams gate = router::GateParams::FromConfig(*config);
  std::optional<internal::PlacementTable> table;
  if (std::optional<std::string> file = flags.Get("placement")) {
    absl::StatusOr<internal::PlacementTable> t = service::ReadPlacementFile(*file, gate);
    if (!t.ok()) return fail(t.status());
    table = *t;
  } else if (*num_shards > 0) {
    absl::StatusOr<internal::PlacementTable> t =
        service::DefaultPlacementTable(gate, static_cast<int32_t>(*num_shards), 1);
    if (!t.ok()) return fail(t.status());
    table = *t;
  }
  if (table) {
    absl::StatusOr<router::Placement> p =
        service::PlacementFromProto(*table, static_cast<int32_t>(config->n_routed_experts));
    if (!p.ok()) return fail(p.status());
    if (absl::Status st = server.LoadExperts(*p); !st.ok()) return fail(st);
  }

  absl::StatusOr<std::unique_ptr<metrics::MetricsServer>> metrics_server =
      metrics::MetricsServer::Start(cmd->common.host, cmd->common.metrics_port);
  if (!metrics_server.ok()) return fail(metrics_server.status());
  metrics::ExpertShardMetrics shard_metrics((*metrics_server)->registry());
  server.SetDispatchObserver([&shard_metrics](int64_t rows) {
    shard_metrics.expert_batch_rows.Observe(static_cast<double>(rows));
  });
  (*metrics_server)->OnScrape([&server, &shard_metrics] {
    const DispatchServerCounters c = server.counters();
    for (size_t e = 0; e < c.expert_rows.size(); ++e) {
      if (c.expert_rows[e] == 0) continue;
      metrics::SetCounterTotal(shard_metrics.expert_rows.Add({{"expert", std::to_string(e)}}),
                               static_cast<double>(c.expert_rows[e]));
    }
    for (const char* reason : {"malformed", "placement_version", "not_found", "internal"}) {
      const auto it = c.errors.find(reason);
      metrics::SetCounterTotal(shard_metrics.dispatch_errors.Add({{"reason", reason}}),
                               it == c.errors.end() ? 0.0 : static_cast<double>(it->second));
    }
    shard_metrics.resident_bytes.Set(static_cast<double>(ResidentBytes()));
  });
  absl::StatusOr<std::unique_ptr<transport::DataPlaneServer>> data_plane =
      transport::CreateUcxServer(
          service::UcxOptionsFromFlags(cmd->common),
          [&server](std::span<const std::byte> request) { return server.HandleMessage(request); });
  if (!data_plane.ok()) return fail(data_plane.status());

  ExpertControlServer control(server, (*data_plane)->address(),
                            static_cast<int32_t>(config->n_routed_experts));
  int port = 0;
  absl::StatusOr<std::unique_ptr<grpc::Server>> grpc_server =
      service::StartGrpcServer(cmd->common, &control, &port);
  if (!grpc_server.ok()) return fail(grpc_server.status());
  std::unique_ptr<service::CoordinatorLink> link;
  if (coordinator) {
    service::CoordinatorLinkOptions lo;
    lo.coordinator_address = *coordinator;
    internal::RegisterRequest& reg = lo.registration;
    reg.set_role(internal::NODE_ROLE_EXPERT_SHARD);
    reg.set_grpc_address(
        absl::StrCat(flags.Get("advertise-host").value_or(cmd->common.host), ":", port));
    reg.set_ucx_address((*data_plane)->address());
    reg.set_shard_id(server.shard_id());
    reg.set_vocab_size(config->vocab_size);
    reg.set_num_layers(config->num_hidden_layers);
    reg.set_n_routed_experts(config->n_routed_experts);
    lo.load = [&server](internal::HeartbeatRequest* hb) {
      hb->set_placement_version(server.placement_version());
      hb->set_resident_bytes(ResidentBytes());
    };
    // A refusal (another model) is fatal, also after the ready line: it
    // raises SIGTERM and the shard exits 1 below. An absent coordinator is not.
    lo.on_fatal = [](const absl::Status&) { kill(getpid(), SIGTERM); };
    link = std::make_unique<service::CoordinatorLink>(std::move(lo));
    link->Start();
    if (absl::Status st = link->WaitRegistered(absl::Seconds(1)); absl::IsInvalidArgument(st)) {
      link->Stop();
      (*grpc_server)->Shutdown();
      (*data_plane)->Shutdown();
      return fail(st);
    }
  }
  service::PrintReadyLine(
      absl::StrCat("dsv2-expert ready port=", port, " metrics_port=", (*metrics_server)->port(),
                   " shard_id=", server.shard_id(),
                   " placement_version=", server.placement_version(),
                   " experts=", server.experts().size(), " resident_bytes=", ResidentBytes(),
                   " ucx_address=", service::HexEncode((*data_plane)->address())));
  spdlog::info(
      "expert shard {} serving on port {} ({} experts, {} MiB expert weights, {} MiB "
      "resident)",
      server.shard_id(), port, server.experts().size(), server.expert_weight_bytes() >> 20,
      ResidentBytes() >> 20);

  const int sig = service::WaitForTerminationSignal();
  spdlog::info("expert shard {}: signal {}, shutting down", server.shard_id(), sig);
  if (link) link->Stop();  // the coordinator re-places our experts first
  (*grpc_server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  (*data_plane)->Shutdown();
  if (link && !link->fatal().ok()) return fail(link->fatal());
  return 0;
}

}  // namespace
}  // namespace dsv2

int main(int argc, char** argv) {
  try {
    return dsv2::Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "dsv2-expert: internal error: " << e.what() << "\n";
    return 1;
  }
}
