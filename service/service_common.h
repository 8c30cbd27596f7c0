// What every dsv2 service binary (dsv2-coordinator, dsv2-attention,
// dsv2-expert) shares at its edge: the flags they all take, absl::Status -> grpc::Status mapping,
// placement tables between protobuf, JSON files and router::Placement, the
// machine-readable ready line, and SIGTERM/SIGINT handling.
//
// This is service-edge code: it includes gRPC and generated protobuf
// headers, so model, kernel and router code never includes it.
#ifndef DSV2_SERVICE_SERVICE_COMMON_H_
#define DSV2_SERVICE_SERVICE_COMMON_H_

#include <grpcpp/grpcpp.h>

#include <csignal>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/flags.h"
#include "kernels/cpu.h"
#include "model/weight_flags.h"
#include "model/weights.h"
#include "placement.pb.h"
#include "router/plan.h"
#include "service/serve.h"
#include "service/tls.h"
#include "transport/ucx_data_plane.h"

namespace dsv2::service {

// Flags every service binary takes (DESIGN.md section 8; each also from
// DSV2_<NAME>): --threads, --cpu-isa, --host, --port, --metrics-port,
// --ucx-transports, --rendezvous-threshold, --tls-cert, --tls-key, --tls-ca,
// --health-port.
struct CommonFlags {
  int threads = 1;
  std::string cpu_isa;  // empty: DSV2_CPU_ISA or the best available
  std::string host = "127.0.0.1";
  int port = 0;          // 0 = OS-chosen
  int metrics_port = 0;  // /metrics HTTP port; 0 = OS-chosen
  std::string ucx_transports;
  int64_t rendezvous_threshold = 64 << 10;
  // Host the data-plane address advertises (a shard's UCX listener binds
  // --host); copied from --advertise-host by the binaries that have it.
  std::string advertise_host;
  // Transport security (service/tls.h): none given = plaintext.
  TlsFiles tls;
  // A plaintext port serving only grpc.health.v1 (probes cannot speak TLS).
  std::optional<int> health_port;
  // --weights, --experts-only, --lm-head-bf16 (dsv2-attention and
  // dsv2-expert only: DefineWeightFlags).
  WeightFlags weight_flags;
};
void DefineCommonFlags(flags::FlagSet& flags, CommonFlags* common);
// --weights none|int8|int4, --experts-only, --lm-head-bf16 (load-time
// quantization, as `dsv2 run`'s) into `common`.
void DefineWeightFlags(flags::FlagSet& flags, CommonFlags* common);
// Those flags as a WeightQuantization; InvalidArgument for an unknown
// format, or --experts-only / --lm-head-bf16 without a format.
absl::StatusOr<WeightQuantization> WeightQuantizationFromFlags(const CommonFlags& common);
// --coordinator (`coordinator_help` says what the binary does with it) and
// --advertise-host, into `serve`.
void DefineCoordinatorFlags(flags::FlagSet& flags, ServeOptions* serve,
                            std::string_view coordinator_help);
// --drain-timeout (legacy --drain-timeout-s), into `serve`.
void DefineDrainFlag(flags::FlagSet& flags, ServeOptions* serve);
// Copies --host, --port and --health-port into `serve` and makes its
// TlsContext from --tls-*; InvalidArgument naming the flag when the TLS
// files are incomplete or unreadable.
absl::Status ApplyCommonFlags(const CommonFlags& common, ServeOptions* serve);

// The compute context of --threads and --cpu-isa (the pool it points at is
// owned here).
struct ComputeContext {
  std::unique_ptr<kernels::ThreadPool> pool;
  kernels::CpuContext ctx;
};
absl::StatusOr<ComputeContext> MakeComputeContext(const CommonFlags& flags);

// A coordinator incarnation's data-plane key as RegisterResponse carries it
// (transport::MakeDataPlaneKey: 32 random bytes and a random non-zero id);
// the coordinator hands it out but has no data plane of its own.
struct DataPlaneKeyGrant {
  uint64_t id = 0;
  std::string secret;
};
absl::StatusOr<DataPlaneKeyGrant> NewDataPlaneKeyGrant();

// The data-plane settings of --ucx-transports and --rendezvous-threshold,
// proving membership with `keys` (UcxOptions::keys; null = no proof).
transport::UcxOptions UcxOptionsFromFlags(
    const CommonFlags& flags, std::shared_ptr<const transport::DataPlaneKeyring> keys = nullptr);

// The absl code as the gRPC code, with the message.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// Channel arguments for the links between the coordinator and its members,
// both ways. A partition drops packets without a reset, so a TCP connection
// would look alive for minutes of retransmissions and a member would come
// back long after the network did: ping every 2 s, calls or not, and close
// a link unanswered for 2 s (every server accepts such pings: serve.cc).
// Reconnect attempts every `reconnect`, clamped to [100 ms, 5 s] (gRPC's
// default backoff grows to 120 s).
grpc::ChannelArguments MemberLinkChannelArguments(absl::Duration reconnect);

// The model a member serves, as its registration states it (the coordinator
// refuses a member of another model): sizes and the config and weights
// fingerprints.
void FillModelIdentity(const ModelConfig& config, const std::string& weights_fingerprint,
                       internal::RegisterRequest* registration);

// Placement tables. FromProto validates against the number of experts. Shard
// ids are unique, in [0, kMaxShardId), possibly sparse (num_shards = the
// largest id + 1; an id the table does not list holds no experts).
inline constexpr int32_t kMaxShardId = 4096;
absl::StatusOr<router::Placement> PlacementFromProto(const internal::PlacementTable& table,
                                                     int32_t num_experts);
internal::PlacementTable PlacementToProto(const router::Placement& placement);
// The same with the given shard endpoints (addresses) as the table's shard
// list instead of shards 0..num_shards-1 without addresses.
internal::PlacementTable PlacementToProto(const router::Placement& placement,
                                          const std::vector<internal::ShardEndpoint>& shards);
// Reads a placement file: the JSON form of PlacementTable (protobuf JSON
// mapping). An empty `experts` list means the default placement over the
// listed shards (router::DefaultPlacement).
absl::StatusOr<internal::PlacementTable> ReadPlacementFile(const std::string& path,
                                                           const router::GateParams& gate);

// Resolves the default placement of `num_shards` into a table (shards
// without addresses).
absl::StatusOr<internal::PlacementTable> DefaultPlacementTable(const router::GateParams& gate,
                                                               int32_t num_shards,
                                                               uint64_t version);

// Blocks SIGTERM and SIGINT in the calling thread and every thread it
// starts afterwards; call first in main. WaitForTerminationSignal then
// returns the signal number once one arrives (sigwait in the main thread:
// no handler runs in arbitrary threads and no thread is detached).
void BlockTerminationSignals();
int WaitForTerminationSignal();

// Logs go to stderr (stdout carries only the ready line), one line per
// event: time, level, component.
void InitLogging(const std::string& component);

// Prints `line` plus '\n' to stdout and flushes (the ready line).
void PrintReadyLine(const std::string& line);

}  // namespace dsv2::service

#endif  // DSV2_SERVICE_SERVICE_COMMON_H_
