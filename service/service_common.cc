#include "service/service_common.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/health_check_service_interface.h>
#include <pthread.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "coordinator.pb.h"

namespace dsv2::service {

void DefineCommonFlags(flags::FlagSet& flags, CommonFlags* c) {
  flags.Int("threads", &c->threads, "compute threads").Range(1, 1024);
  flags.String("cpu-isa", &c->cpu_isa, "scalar, avx2, avx512bf16, amx or auto")
      .DefaultText("DSV2_CPU_ISA or the best available");
  flags.String("host", &c->host, "address the gRPC server binds (0.0.0.0 for all)");
  flags.Int("port", &c->port, "gRPC port (0 = OS-chosen; the port is in the ready line)")
      .Range(0, 65535);
  flags.Int("metrics-port", &c->metrics_port,
            "HTTP port serving Prometheus /metrics on --host (0 = OS-chosen; in the ready line "
            "as metrics_port)")
      .Range(0, 65535);
  flags.String("ucx-transports", &c->ucx_transports,
               "UCX transports for the data plane, UCX_TLS syntax: tcp, sm, rc,sm, ...")
      .DefaultText("UCX's choice");
  flags.Int("rendezvous-threshold", &c->rendezvous_threshold,
            "data-plane messages of at least this many bytes go by UCX rendezvous")
      .Min(0);
  flags
      .String("tls-cert", &c->tls.cert,
              "this process's certificate chain (PEM); with --tls-key and --tls-ca: TLS on "
              "every gRPC port and channel, mutual TLS between members (re-read when the "
              "files change)")
      .DefaultText("none: plaintext");
  flags.String("tls-key", &c->tls.key, "the private key of --tls-cert (PEM)");
  flags.String("tls-ca", &c->tls.ca,
               "the cluster's certificate authority (PEM): members' certificates must be "
               "signed by it");
  flags
      .Int("health-port", &c->health_port,
           "also serve grpc.health.v1 alone, in plaintext, on this port (for probes that "
           "cannot speak TLS; 0 = OS-chosen, in the ready line as health_port=)")
      .Range(0, 65535)
      .DefaultText("none");
}

void DefineWeightFlags(flags::FlagSet& flags, CommonFlags* c) {
  dsv2::DefineWeightFlags(flags,
                          "quantize the linear weights at load: none, int8 or int4 (group-32, f16 "
                          "scales; docs/numerics.md)",
                          "as stored", &c->weight_flags);
  dsv2::DefineQuantActivationsFlag(flags, &c->weight_flags);
}

absl::StatusOr<WeightQuantization> WeightQuantizationFromFlags(const CommonFlags& c) {
  return dsv2::WeightQuantizationFromFlags(c.weight_flags);
}

void DefineCoordinatorFlags(flags::FlagSet& flags, ServeOptions* serve,
                            std::string_view coordinator_help) {
  flags.String("coordinator", &serve->coordinator,
               absl::StrCat("HOST:PORT of dsv2-coordinator: ", std::string(coordinator_help)));
  flags
      .String("advertise-host", &serve->advertise_host,
              "host the coordinator (and attention nodes, for a shard) use to reach this "
              "process's gRPC port (and a shard's data-plane listener)")
      .DefaultText("--host");
}

void DefineDrainFlag(flags::FlagSet& flags, ServeOptions* serve) {
  flags.Duration("drain-timeout", &serve->drain_timeout,
                 "on SIGTERM, how long live requests may finish")
      .Min(absl::ZeroDuration())
      .LegacyAlias("drain-timeout-s", absl::Seconds(1));
}

absl::Status ApplyCommonFlags(const CommonFlags& common, ServeOptions* serve) {
  serve->host = common.host;
  serve->port = common.port;
  serve->health_port = common.health_port;
  absl::StatusOr<std::shared_ptr<const TlsContext>> tls = TlsContext::Create(common.tls);
  if (!tls.ok()) return tls.status();
  serve->tls = *std::move(tls);
  return absl::OkStatus();
}

absl::StatusOr<ComputeContext> MakeComputeContext(const CommonFlags& flags) {
  DSV2_ASSIGN_OR_RETURN(const kernels::CpuIsa isa, kernels::ResolveCpuIsa(flags.cpu_isa));
  ComputeContext c;
  c.pool = std::make_unique<kernels::ThreadPool>(flags.threads);
  c.ctx.isa = isa;
  c.ctx.pool = c.pool.get();
  DSV2_ASSIGN_OR_RETURN(const WeightQuantization q,
                        dsv2::WeightQuantizationFromFlags(flags.weight_flags));
  c.ctx.quant_activations =
      q.int8_activations ? kernels::QuantActivations::kInt8 : kernels::QuantActivations::kF32;
  return c;
}

absl::StatusOr<DataPlaneKeyGrant> NewDataPlaneKeyGrant() {
  absl::StatusOr<transport::DataPlaneKey> key = transport::MakeDataPlaneKey();
  if (!key.ok()) return key.status();
  return DataPlaneKeyGrant{key->id, std::string(key->secret.begin(), key->secret.end())};
}

transport::UcxOptions UcxOptionsFromFlags(const CommonFlags& flags,
                                          std::shared_ptr<const transport::DataPlaneKeyring> keys) {
  transport::UcxOptions ucx;
  ucx.keys = std::move(keys);
  ucx.transports = flags.ucx_transports;
  ucx.rendezvous_threshold = static_cast<size_t>(flags.rendezvous_threshold);
  ucx.listen_host = flags.host;
  ucx.advertise_host = flags.advertise_host;
  return ucx;
}

void FillModelIdentity(const ModelConfig& config, const std::string& weights_fingerprint,
                       internal::RegisterRequest* registration) {
  registration->set_vocab_size(config.vocab_size);
  registration->set_num_layers(config.num_hidden_layers);
  registration->set_n_routed_experts(config.n_routed_experts);
  registration->set_config_fingerprint(config.fingerprint);
  registration->set_weights_fingerprint(weights_fingerprint);
}

grpc::ChannelArguments MemberLinkChannelArguments(absl::Duration reconnect) {
  const int backoff_ms = static_cast<int>(
      std::clamp<int64_t>(absl::ToInt64Milliseconds(reconnect), int64_t{100}, int64_t{5000}));
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, backoff_ms);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, backoff_ms);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, backoff_ms);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  return args;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

absl::StatusOr<router::Placement> PlacementFromProto(const internal::PlacementTable& table,
                                                     int32_t num_experts) {
  router::Placement p;
  p.version = table.version();
  if (p.version == 0) return absl::InvalidArgumentError("placement version must be >= 1");
  // Shard ids are unique and bounded (a peer-supplied table cannot make us
  // size anything by a huge id) but may be sparse: the coordinator keeps a
  // shard's id stable, so a table without a dead shard has a hole.
  int num_shards = 0;
  std::vector<bool> seen(kMaxShardId, false);
  for (const internal::ShardEndpoint& s : table.shards()) {
    if (s.shard_id() < 0 || s.shard_id() >= kMaxShardId || seen[s.shard_id()]) {
      return absl::InvalidArgumentError(absl::StrCat("shard id ", s.shard_id(),
                                                     " must be unique and in [0, ", kMaxShardId,
                                                     ")"));
    }
    seen[s.shard_id()] = true;
    num_shards = std::max(num_shards, s.shard_id() + 1);
    if (s.ucx_address().size() > (64u << 10)) {
      return absl::InvalidArgumentError(absl::StrCat("shard ", s.shard_id(), " UCX address has ",
                                                     s.ucx_address().size(),
                                                     " bytes; the limit is 65536"));
    }
  }
  // Every shard an expert names must be listed.
  for (const internal::ExpertReplicas& r : table.experts()) {
    for (int32_t id : r.shard_ids()) {
      if (id < 0 || id >= kMaxShardId || !seen[id]) {
        return absl::InvalidArgumentError(
            absl::StrCat("an expert names shard ", id, ", which the table does not list"));
      }
    }
  }
  p.num_shards = num_shards;
  p.replicas.resize(table.experts_size());
  for (int e = 0; e < table.experts_size(); ++e) {
    p.replicas[e].assign(table.experts(e).shard_ids().begin(), table.experts(e).shard_ids().end());
  }
  DSV2_RETURN_IF_ERROR(router::ValidatePlacement(p, num_experts));
  return p;
}

internal::PlacementTable PlacementToProto(const router::Placement& placement,
                                          const std::vector<internal::ShardEndpoint>& shards) {
  internal::PlacementTable t;
  t.set_version(placement.version);
  for (const std::vector<int32_t>& r : placement.replicas) {
    internal::ExpertReplicas* er = t.add_experts();
    for (int32_t s : r) er->add_shard_ids(s);
  }
  for (const internal::ShardEndpoint& ep : shards) *t.add_shards() = ep;
  return t;
}

internal::PlacementTable PlacementToProto(const router::Placement& placement) {
  std::vector<internal::ShardEndpoint> shards(placement.num_shards);
  for (int32_t s = 0; s < placement.num_shards; ++s) shards[s].set_shard_id(s);
  return PlacementToProto(placement, shards);
}

absl::StatusOr<internal::PlacementTable> DefaultPlacementTable(const router::GateParams& gate,
                                                               int32_t num_shards,
                                                               uint64_t version) {
  DSV2_ASSIGN_OR_RETURN(router::Placement p, router::DefaultPlacement(gate, num_shards, version));
  return PlacementToProto(p);
}

absl::StatusOr<internal::PlacementTable> ReadPlacementFile(const std::string& path,
                                                           const router::GateParams& gate) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open placement file"));
  std::stringstream ss;
  ss << in.rdbuf();
  internal::PlacementTable table;
  google::protobuf::util::JsonParseOptions opts;
  const auto st = google::protobuf::util::JsonStringToMessage(ss.str(), &table, opts);
  if (!st.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a PlacementTable in JSON: ", st.message().as_string()));
  }
  if (table.version() == 0) table.set_version(1);
  if (table.experts_size() == 0) {
    if (table.shards_size() == 0) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": the placement lists no shards"));
    }
    DSV2_ASSIGN_OR_RETURN(internal::PlacementTable dflt,
                          DefaultPlacementTable(gate, table.shards_size(), table.version()));
    *table.mutable_experts() = dflt.experts();
  }
  DSV2_RETURN_IF_ERROR(PlacementFromProto(table, gate.num_experts).status());
  return table;
}

namespace {
sigset_t TerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}
}  // namespace

void BlockTerminationSignals() {
  const sigset_t set = TerminationSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForTerminationSignal() {
  const sigset_t set = TerminationSignals();
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  return sig;
}

void InitLogging(const std::string& component) {
  auto logger = spdlog::stderr_logger_mt(component);
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l %n: %v");
  spdlog::set_default_logger(logger);
  RouteGrpcLogs();
}

void PrintReadyLine(const std::string& line) {
  std::fputs(line.c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

}  // namespace dsv2::service
