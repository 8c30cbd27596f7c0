// CoordinatorCore: the state the coordinator's parts share (the gRPC
// services, the placement thread, the cancellation thread), private to
// coordinator/. Each part lives in its own file:
//   membership_service.cc   dsv2.internal.Coordinator (register, heartbeat, leave)
//   placement_loop.cc       the placement thread (expiry, placement, pushes, health)
//   cancellation_loop.cc    the cancellation thread
//   inference_service.cc    dsv2.v1.Inference (Generate, Tokenize, ...)
//   coordinator_server.cc   Coordinator: owns the core, starts and stops the threads
// Threads and locks: see coordinator_server.h and the members below.
#ifndef DSV2_COORDINATOR_COORDINATOR_CORE_INTERNAL_H_
#define DSV2_COORDINATOR_COORDINATOR_CORE_INTERNAL_H_

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "attention_node.grpc.pb.h"
#include "coordinator.grpc.pb.h"
#include "coordinator/coordinator_server.h"
#include "coordinator/text_stream.h"
#include "expert_shard.grpc.pb.h"
#include "inference.grpc.pb.h"
#include "metrics/metrics.h"
#include "model/sampling.h"
#include "router/gate.h"
#include "router/plan.h"
#include "service/service_common.h"
#include "service/tls.h"

namespace dsv2::coordinator {

inline std::chrono::system_clock::time_point Deadline(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

inline v1::FinishReason ToPublic(internal::FinishReason r) {
  switch (r) {
    case internal::FINISH_REASON_LENGTH:
      return v1::FINISH_REASON_LENGTH;
    case internal::FINISH_REASON_EOS:
      return v1::FINISH_REASON_EOS;
    case internal::FINISH_REASON_STOP:
      return v1::FINISH_REASON_STOP;
    default:
      return v1::FINISH_REASON_UNSPECIFIED;
  }
}

// One Generate past admission checks (the cancellation thread reads it; the
// handler owns it). node_ctx and node_address change under live_mu when the
// request is resumed on another node; node_ctx is null while it waits for one.
struct LiveRequest {
  uint64_t id = 0;
  grpc::ServerContext* server_ctx = nullptr;
  grpc::ClientContext* node_ctx = nullptr;
  std::string node_address;
  // Tokens generated so far, recorded before they are streamed (a failover
  // re-prefills prompt + these on the next node).
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> generated;
  // The detokenizer state (text returned so far, held-back text, stop
  // strings) that goes with `generated`.
  std::optional<TextStream> text;
};

struct CoordinatorCore {
  CoordinatorCore(const ModelConfig& config, ServedModel model, CoordinatorOptions options)
      : config(config),
        model(std::move(model)),
        options(std::move(options)),
        state(this->options.admission),
        gate(router::GateParams::FromConfig(config)),
        data_plane_key(service::NewDataPlaneKeyGrant()) {
    if (!data_plane_key.ok()) {
      // Members then get no key, and their data planes say "no data-plane key yet".
      spdlog::error("no data-plane key for this incarnation: {}",
                    std::string(data_plane_key.status().message()));
    }
  }

  // ---- channels -----------------------------------------------------------
  // The channel to the member at `address` in `role`: with TLS, the peer
  // must present a certificate of that role (a shard's address never gets
  // an attention node's prompts, nor the reverse).
  std::shared_ptr<grpc::Channel> Channel(const std::string& address, service::MemberRole role) {
    absl::MutexLock lock(&channels_mu);
    auto& ch = channels[{address, role}];
    if (ch == nullptr) {
      // A member whose host vanished or was partitioned away is noticed in
      // ~4 s, and one that comes back is reached within a second of its
      // re-registration.
      const std::shared_ptr<const service::TlsContext> tls =
          options.tls != nullptr ? options.tls : service::TlsContext::Insecure();
      ch = grpc::CreateCustomChannel(address, tls->MemberChannelCredentials({role}),
                                     service::MemberLinkChannelArguments(absl::Seconds(1)));
    }
    return ch;
  }
  std::shared_ptr<grpc::Channel> AttentionChannel(const std::string& address) {
    return Channel(address, service::MemberRole::kAttention);
  }
  std::shared_ptr<grpc::Channel> ShardChannel(const std::string& address) {
    return Channel(address, service::MemberRole::kExpert);
  }

  // ---- placement thread ---------------------------------------------------
  void PlacementLoop();
  // Builds, loads and publishes a placement over the live shards. False
  // when a shard failed (retried on the next tick).
  bool Republish();
  void PushToAttentionNodes();
  void UpdateServing();
  void Wake() {
    absl::MutexLock lock(&loop_mu);
    wake = true;
  }

  // ---- cancellation thread ------------------------------------------------
  void CancellationLoop();
  void CancelOnNode(const std::string& address, uint64_t request_id);

  const ModelConfig& config;
  const ServedModel model;
  const CoordinatorOptions options;
  ClusterState state;
  const router::GateParams gate;
  // This incarnation's data-plane key, handed to every member that
  // registers (transport/handshake.h); an error when the CSPRNG failed.
  const absl::StatusOr<service::DataPlaneKeyGrant> data_plane_key;

  absl::Mutex channels_mu;
  std::map<std::pair<std::string, service::MemberRole>, std::shared_ptr<grpc::Channel>> channels
      ABSL_GUARDED_BY(channels_mu);

  // Placement thread state (only that thread touches table/last_generation).
  internal::PlacementTable table;
  uint64_t published_generation = ~uint64_t{0};
  bool serving = false;

  absl::Mutex loop_mu;
  bool stop ABSL_GUARDED_BY(loop_mu) = false;
  bool wake ABSL_GUARDED_BY(loop_mu) = false;
  std::function<void(bool)> serving_callback ABSL_GUARDED_BY(loop_mu);
  bool report_serving ABSL_GUARDED_BY(loop_mu) = false;

  absl::Mutex live_mu;
  absl::flat_hash_map<uint64_t, LiveRequest*> live ABSL_GUARDED_BY(live_mu);
  bool draining ABSL_GUARDED_BY(live_mu) = false;
  // Generate calls past the draining check (queued or running).
  int64_t active ABSL_GUARDED_BY(live_mu) = 0;
  // Request ids on nodes: random start (below 2^62; nodes pick ids with the
  // high bit for requests without one), so ids of a restarted coordinator do
  // not collide with requests still live from before.
  std::atomic<uint64_t> next_request_id{(RandomSeed() >> 2) | 1};

  std::unique_ptr<grpc::Service> inference;
  std::unique_ptr<grpc::Service> membership;
  std::thread placement_thread;
  std::thread cancellation_thread;
};

// The two gRPC services over the core (membership_service.cc,
// inference_service.cc).
std::unique_ptr<grpc::Service> MakeMembershipService(CoordinatorCore& core);
std::unique_ptr<grpc::Service> MakeInferenceService(CoordinatorCore& core);

}  // namespace dsv2::coordinator

#endif  // DSV2_COORDINATOR_COORDINATOR_CORE_INTERNAL_H_
