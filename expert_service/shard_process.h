// ExpertShardProcess: everything one dsv2-expert process runs behind its
// gRPC port (DESIGN.md section 2), built from its options: the routed
// experts its placement assigns (ExpertDataPlaneServer over ExpertCompute,
// memory-mapped from the checkpoint), the UCX data-plane server that takes
// dispatches from any number of attention nodes, the ExpertShardService
// control API (ExpertControlServer) and the shard's /metrics.
// service::Serve runs it (ready line, registration, ordered stop).
//
// Threads: Create and the ServedProcess methods run on the main thread
// (FillHeartbeat on the CoordinatorLink's); the data plane's progress and
// handler threads, the compute pool and gRPC's threads belong to the objects
// held here. Shutdown stops the data plane; the destructor calls it.
#ifndef DSV2_EXPERT_SERVICE_SHARD_PROCESS_H_
#define DSV2_EXPERT_SERVICE_SHARD_PROCESS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "service/serve.h"
#include "service/service_common.h"

namespace dsv2 {

struct ExpertShardOptions {
  std::string model_dir;  // config.json + safetensors
  int32_t shard_id = 0;   // this shard's stable id in placements, < service::kMaxShardId
  // Load this shard's experts of the default placement over num_shards
  // shards (version 1); 0 = start empty and wait for LoadExperts. Ignored
  // when placement_file is set.
  int64_t num_shards = 1;
  std::optional<std::string> placement_file;  // JSON PlacementTable
  service::CommonFlags common;                 // threads, ISA, host, metrics port, UCX
  // As AttentionNodeOptions::tls: Serve's TlsContext; null = plaintext.
  std::shared_ptr<const service::TlsContext> tls;
  // As AttentionNodeOptions::data_plane_keys.
  std::shared_ptr<transport::DataPlaneKeyring> data_plane_keys;
};

class ExpertShardProcess final : public service::ServedProcess {
 public:
  // Loads the placement's experts and starts the data plane and metrics
  // server. Errors name what failed.
  static absl::StatusOr<std::unique_ptr<ExpertShardProcess>> Create(
      const ExpertShardOptions& options);
  ~ExpertShardProcess() override;

  std::vector<grpc::Service*> services() override;
  std::string ReadyFields() const override;
  std::shared_ptr<transport::DataPlaneKeyring> data_plane_keys() const override;
  std::string ServingLogLine(int port) const override;
  void FillRegistration(internal::RegisterRequest* registration) const override;
  void FillHeartbeat(internal::HeartbeatRequest* heartbeat) const override;
  void Shutdown() override;

 private:
  struct Parts;  // shard_process.cc: the owned objects, in construction order
  explicit ExpertShardProcess(std::unique_ptr<Parts> parts);
  std::unique_ptr<Parts> parts_;
};

}  // namespace dsv2

#endif  // DSV2_EXPERT_SERVICE_SHARD_PROCESS_H_
