// What every dsv2 service binary (dsv2-expert, dsv2-attention) shares at its
// edge: the flags they all take, absl::Status -> grpc::Status mapping,
// placement tables between protobuf, JSON files and router::Placement, the
// machine-readable ready line, and SIGTERM/SIGINT handling.
//
// This is service-edge code: it includes gRPC and generated protobuf
// headers, so model, kernel and router code never includes it.
#ifndef DSV2_TOOLS_SERVICE_SERVICE_COMMON_H_
#define DSV2_TOOLS_SERVICE_SERVICE_COMMON_H_

#include <grpcpp/grpcpp.h>

#include <csignal>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/flags.h"
#include "kernels/cpu.h"
#include "placement.pb.h"
#include "router/plan.h"
#include "tools/dsv2/cli_flags.h"
#include "transport/ucx_data_plane.h"

namespace dsv2::service {

// Flags every service binary takes (DESIGN.md section 8; each also from
// DSV2_<NAME>): --threads, --cpu-isa, --host, --port, --ucx-transports,
// --rendezvous-threshold, --help.
std::vector<cli::FlagSpec> CommonFlagSpecs();

struct CommonFlags {
  int threads = 1;
  std::string cpu_isa;
  std::string host = "127.0.0.1";
  int port = 0;  // 0 = OS-chosen
  int metrics_port = 0;  // /metrics HTTP port; 0 = OS-chosen
  std::string ucx_transports;
  int64_t rendezvous_threshold = 64 << 10;
};
absl::StatusOr<CommonFlags> ParseCommonFlags(const cli::ParsedFlags& flags);
// Defines the common flags on `set` with *out's values as defaults (the
// typed parser, base/flags.h; what every service main moves to).
void DefineCommonFlags(flags::FlagSet& set, CommonFlags* out);

// A service binary's command line: its flags, the common ones, --model.
struct ServiceCommandLine {
  cli::ParsedFlags flags;
  CommonFlags common;
  std::string model_dir;
};
// Prints "`binary`: `message`" and the flag help on stderr; returns 2, the
// usage-error exit code.
int UsageError(const std::string& binary, const std::vector<cli::FlagSpec>& specs,
               const std::string& message);
// Parses argv[1..] against `specs` (which include CommonFlagSpecs()) and
// requires --model. nullopt when the binary should exit with *exit_code:
// 0 after printing --help, 2 after a usage error.
std::optional<ServiceCommandLine> ParseServiceCommandLine(const std::string& binary, int argc,
                                                          char** argv,
                                                          const std::vector<cli::FlagSpec>& specs,
                                                          int* exit_code);

// An integer flag of a service binary: its default and smallest value.
struct IntFlag {
  const char* name;
  int64_t default_value;
  int64_t* out;
  int64_t min;
};
// Reads every flag into *out (the default when unset). InvalidArgument, a
// usage error, for a non-integer or a value below min ("--name=V must be
// >= min").
absl::Status ReadIntFlags(const cli::ParsedFlags& flags, std::initializer_list<IntFlag> specs);

// The compute context of --threads and --cpu-isa (the pool it points at is
// owned here).
struct ComputeContext {
  std::unique_ptr<kernels::ThreadPool> pool;
  kernels::CpuContext ctx;
};
absl::StatusOr<ComputeContext> MakeComputeContext(const CommonFlags& flags);

// The data-plane settings of --ucx-transports and --rendezvous-threshold.
transport::UcxOptions UcxOptionsFromFlags(const CommonFlags& flags);

// Builds and starts a gRPC server on --host:--port serving `service` and
// grpc.health.v1; *port receives the bound port. Unavailable when it cannot
// listen.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(const CommonFlags& flags,
                                                              grpc::Service* service, int* port);

// The absl code as the gRPC code, with the message.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// Placement tables. FromProto validates against the number of experts. Shard
// ids are unique, in [0, kMaxShardId), possibly sparse (num_shards = the
// largest id + 1; an id the table does not list holds no experts).
inline constexpr int32_t kMaxShardId = 4096;
absl::StatusOr<router::Placement> PlacementFromProto(const internal::PlacementTable& table,
                                                     int32_t num_experts);
internal::PlacementTable PlacementToProto(const router::Placement& placement);
// Reads a placement file: the JSON form of PlacementTable (protobuf JSON
// mapping). An empty `experts` list means the default placement over the
// listed shards (router::DefaultPlacement).
absl::StatusOr<internal::PlacementTable> ReadPlacementFile(const std::string& path,
                                                           const router::GateParams& gate);

// Resolves the default placement of `num_shards` into a table (shards
// without addresses).
absl::StatusOr<internal::PlacementTable> DefaultPlacementTable(const router::GateParams& gate,
                                                               int32_t num_shards,
                                                               uint32_t version);

// Hex <-> bytes (UCX worker addresses in flags, ready lines and logs).
std::string HexEncode(const std::string& bytes);
absl::StatusOr<std::string> HexDecode(const std::string& hex);

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

#endif  // DSV2_TOOLS_SERVICE_SERVICE_COMMON_H_
