// AttentionNodeProcess: everything one dsv2-attention process runs behind
// its gRPC port (DESIGN.md section 2), built from its options: the
// non-expert weights, the paged latent cache, the DataPlaneExpertBackend
// over UCX, the layer loop, scheduler and engine thread, the AttentionNode
// gRPC service and the node's /metrics. service::Serve runs it (ready line,
// coordinator registration, ordered drain).
//
// Threads: Create and the ServedProcess methods run on the main thread
// (FillHeartbeat on the CoordinatorLink's); the engine thread, the data
// plane's progress thread, the compute pool and gRPC's threads belong to
// the objects held here. Shutdown stops them; the destructor calls it.
#ifndef DSV2_ATTENTION_SERVICE_NODE_PROCESS_H_
#define DSV2_ATTENTION_SERVICE_NODE_PROCESS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "service/serve.h"
#include "service/service_common.h"

namespace dsv2 {

struct AttentionNodeOptions {
  std::string model_dir;                  // config.json + safetensors
  int64_t cache_tokens = 16384;           // latent cache capacity (64-token blocks)
  int64_t max_step_tokens = 512;          // token budget of one step
  int64_t max_running = 64;               // sequences in one step
  int64_t max_waiting = 1024;             // admission queue bound
  // gRPC addresses of the expert shards, shard 0 first: the default
  // placement over them (version 1). Ignored when placement_file is set.
  std::vector<std::string> expert_shards;
  std::optional<std::string> placement_file;  // JSON PlacementTable
  absl::Duration dispatch_timeout = absl::Seconds(10);  // one dispatch, re-sends included
  int64_t micro_batch_min_rows = 32;      // two ping-pong micro-batches from here; 0 = never
  service::CommonFlags common;            // threads, ISA, host, metrics port, UCX
  // The process's TLS: the one Serve's ports use (ServeOptions::tls, made
  // from common.tls), shared so the files are watched once; null = plaintext.
  std::shared_ptr<const service::TlsContext> tls;
  // On SIGTERM, hand live requests back (Aborted) for the coordinator to
  // resume on other nodes, instead of finishing them here (set when the
  // node has a coordinator).
  bool hand_off_on_drain = false;
  // With a coordinator: the keyring the data plane proves membership with
  // (transport/handshake.h), filled from each registration's response;
  // null = no coordinator, no proof (then only unauthenticated shards
  // accept this node).
  std::shared_ptr<transport::DataPlaneKeyring> data_plane_keys;
};

class AttentionNodeProcess final : public service::ServedProcess {
 public:
  // Loads the model and starts the engine, data plane and metrics server.
  // Errors name what failed (missing checkpoint, bad placement file,
  // unreachable shards of a static placement, port in use).
  static absl::StatusOr<std::unique_ptr<AttentionNodeProcess>> Create(
      const AttentionNodeOptions& options);
  ~AttentionNodeProcess() override;

  std::vector<grpc::Service*> services() override;
  std::string ReadyFields() const override;
  std::shared_ptr<transport::DataPlaneKeyring> data_plane_keys() const override;
  std::string ServingLogLine(int port) const override;
  void FillRegistration(internal::RegisterRequest* registration) const override;
  void FillHeartbeat(internal::HeartbeatRequest* heartbeat) const override;
  bool Drain(absl::Duration timeout) override;
  void Shutdown() override;

 private:
  struct Parts;  // node_process.cc: the owned objects, in construction order
  explicit AttentionNodeProcess(std::unique_ptr<Parts> parts);
  std::unique_ptr<Parts> parts_;
};

}  // namespace dsv2

#endif  // DSV2_ATTENTION_SERVICE_NODE_PROCESS_H_
