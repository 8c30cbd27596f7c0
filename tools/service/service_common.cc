#include "tools/service/service_common.h"

#include "nlohmann/json.hpp"

#include <algorithm>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/health_check_service_interface.h>
#include <pthread.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace dsv2::service {

std::vector<cli::FlagSpec> CommonFlagSpecs() {
  return {
      {"threads", false, "compute threads (default 1)"},
      {"cpu-isa", false, "scalar, avx2 or avx512 (default: DSV2_CPU_ISA or the best available)"},
      {"host", false, "address the gRPC server binds (default 127.0.0.1; 0.0.0.0 for all)"},
      {"port", false, "gRPC port (default 0 = OS-chosen; the port is in the ready line)"},
      {"metrics-port", false,
       "HTTP port serving Prometheus /metrics on --host (default 0 = OS-chosen; in the ready "
       "line as metrics_port)"},
      {"ucx-transports", false,
       "UCX transports for the data plane, UCX_TLS syntax: tcp, sm, rc,sm, ... "
       "(default: UCX's choice)"},
      {"rendezvous-threshold", false,
       "data-plane messages of at least this many bytes go by UCX rendezvous (default 65536)"},
      {"help", true, "show this help"},
      {"flags-json", true,
       "print every flag as JSON ([{name, bool, help}], one line) and exit (for tools that "
       "check manifests against the real flags)"},
  };
}

absl::StatusOr<CommonFlags> ParseCommonFlags(const cli::ParsedFlags& flags) {
  CommonFlags c;
  DSV2_ASSIGN_OR_RETURN(const int64_t threads, flags.GetInt("threads", 1));
  if (threads < 1 || threads > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("--threads=", threads, " must be in [1, 1024]"));
  }
  c.threads = static_cast<int>(threads);
  c.cpu_isa = flags.Get("cpu-isa").value_or("");
  c.host = flags.Get("host").value_or("127.0.0.1");
  DSV2_ASSIGN_OR_RETURN(const int64_t port, flags.GetInt("port", 0));
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--port=", port, " must be in [0, 65535]"));
  }
  c.port = static_cast<int>(port);
  DSV2_ASSIGN_OR_RETURN(const int64_t metrics_port, flags.GetInt("metrics-port", 0));
  if (metrics_port < 0 || metrics_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-port=", metrics_port, " must be in [0, 65535]"));
  }
  c.metrics_port = static_cast<int>(metrics_port);
  c.ucx_transports = flags.Get("ucx-transports").value_or("");
  DSV2_ASSIGN_OR_RETURN(c.rendezvous_threshold, flags.GetInt("rendezvous-threshold", 64 << 10));
  if (c.rendezvous_threshold < 0) {
    return absl::InvalidArgumentError("--rendezvous-threshold must be >= 0");
  }
  return c;
}

void DefineCommonFlags(flags::FlagSet& set, CommonFlags* out) {
  set.Int("threads", &out->threads, "compute threads").Range(1, 1024);
  set.String("cpu-isa", &out->cpu_isa, "scalar, avx2 or avx512").DefaultText("the best available");
  set.String("host", &out->host, "address the gRPC server binds (0.0.0.0 for all)");
  set.Int("port", &out->port, "gRPC port (0 = OS-chosen; the port is in the ready line)")
      .Range(0, 65535);
  set.Int("metrics-port", &out->metrics_port,
          "HTTP port serving Prometheus /metrics on --host (0 = OS-chosen; in the ready line as "
          "metrics_port)")
      .Range(0, 65535);
  set.String("ucx-transports", &out->ucx_transports,
             "UCX transports for the data plane, UCX_TLS syntax: tcp, sm, rc,sm, ...")
      .DefaultText("UCX's choice");
  set.Int("rendezvous-threshold", &out->rendezvous_threshold,
          "data-plane messages of at least this many bytes go by UCX rendezvous")
      .Min(0);
}

int UsageError(const std::string& binary, const std::vector<cli::FlagSpec>& specs,
               const std::string& message) {
  std::cerr << binary << ": " << message << "\n" << cli::FlagsHelp(specs);
  return 2;
}

std::optional<ServiceCommandLine> ParseServiceCommandLine(const std::string& binary, int argc,
                                                          char** argv,
                                                          const std::vector<cli::FlagSpec>& specs,
                                                          int* exit_code) {
  absl::StatusOr<cli::ParsedFlags> flags = cli::ParseFlags(argc, argv, 1, specs);
  if (!flags.ok()) {
    *exit_code = UsageError(binary, specs, std::string(flags.status().message()));
    return std::nullopt;
  }
  if (flags->GetBool("help")) {
    std::cout << binary << " flags (each also from DSV2_<FLAG>):\n" << cli::FlagsHelp(specs);
    *exit_code = 0;
    return std::nullopt;
  }
  if (flags->GetBool("flags-json")) {
    nlohmann::json all = nlohmann::json::array();
    for (const cli::FlagSpec& f : specs) {
      all.push_back({{"name", f.name}, {"bool", f.is_bool}, {"help", f.help},
                     {"env", cli::EnvName(f.name)}});
    }
    std::cout << all.dump() << "\n";
    *exit_code = 0;
    return std::nullopt;
  }
  absl::StatusOr<CommonFlags> common = ParseCommonFlags(*flags);
  if (!common.ok()) {
    *exit_code = UsageError(binary, specs, std::string(common.status().message()));
    return std::nullopt;
  }
  const std::optional<std::string> model_dir = flags->Get("model");
  if (!model_dir) {
    *exit_code = UsageError(binary, specs, "--model is required");
    return std::nullopt;
  }
  return ServiceCommandLine{*std::move(flags), *common, *model_dir};
}

absl::Status ReadIntFlags(const cli::ParsedFlags& flags, std::initializer_list<IntFlag> specs) {
  for (const IntFlag& f : specs) {
    DSV2_ASSIGN_OR_RETURN(const int64_t v, flags.GetInt(f.name, f.default_value));
    if (v < f.min) {
      return absl::InvalidArgumentError(absl::StrCat("--", f.name, "=", v, " must be >= ", f.min));
    }
    *f.out = v;
  }
  return absl::OkStatus();
}

absl::StatusOr<ComputeContext> MakeComputeContext(const CommonFlags& flags) {
  DSV2_ASSIGN_OR_RETURN(const kernels::CpuIsa isa, kernels::ResolveCpuIsa(flags.cpu_isa));
  ComputeContext c;
  c.pool = std::make_unique<kernels::ThreadPool>(flags.threads);
  c.ctx.isa = isa;
  c.ctx.pool = c.pool.get();
  return c;
}

transport::UcxOptions UcxOptionsFromFlags(const CommonFlags& flags) {
  transport::UcxOptions ucx;
  ucx.transports = flags.ucx_transports;
  ucx.rendezvous_threshold = static_cast<size_t>(flags.rendezvous_threshold);
  return ucx;
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(const CommonFlags& flags,
                                                              grpc::Service* service, int* port) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  *port = 0;
  builder.AddListeningPort(absl::StrCat(flags.host, ":", flags.port),
                           grpc::InsecureServerCredentials(), port);
  builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || *port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", flags.host, ":", flags.port));
  }
  return server;
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

internal::PlacementTable PlacementToProto(const router::Placement& placement) {
  internal::PlacementTable t;
  t.set_version(placement.version);
  for (const std::vector<int32_t>& r : placement.replicas) {
    internal::ExpertReplicas* er = t.add_experts();
    for (int32_t s : r) er->add_shard_ids(s);
  }
  for (int32_t s = 0; s < placement.num_shards; ++s) t.add_shards()->set_shard_id(s);
  return t;
}

absl::StatusOr<internal::PlacementTable> DefaultPlacementTable(const router::GateParams& gate,
                                                               int32_t num_shards,
                                                               uint32_t version) {
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

std::string HexEncode(const std::string& bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

absl::StatusOr<std::string> HexDecode(const std::string& hex) {
  if (hex.size() % 2 != 0) return absl::InvalidArgumentError("hex string has odd length");
  const auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return absl::InvalidArgumentError("not a hex string");
    out[i] = static_cast<char>(hi * 16 + lo);
  }
  return out;
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
}

void PrintReadyLine(const std::string& line) {
  std::fputs(line.c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

}  // namespace dsv2::service
