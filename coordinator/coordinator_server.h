// Coordinator: dsv2's public endpoint and the owner of membership and
// placement (DESIGN.md sections 2, 5, 9). Two gRPC services on one port:
//   dsv2.v1.Inference        (proto/inference.proto) for clients;
//   dsv2.internal.Coordinator (proto/coordinator.proto) for nodes.
// absl::Status maps to gRPC codes here and nowhere else in the coordinator.
//
// Threads:
//   * gRPC's server threads run the handlers, one per active RPC. A Generate
//     handler waits in the admission queue, then reads its attention node's
//     Submit stream and writes the client's stream; it records every token
//     (LiveRequest) before writing it.
//   * the placement thread (owned, joined by Shutdown) expires nodes whose
//     heartbeats stopped, computes a new placement when the shard set
//     changed, makes every shard load its experts (LoadExperts) and only
//     then publishes the version to the attention nodes (SetPlacement); it
//     is the only thread that calls nodes' control RPCs.
//   * the cancellation thread (owned) propagates a client's cancellation to
//     the attention-node call of its request within ~20 ms.
#ifndef DSV2_COORDINATOR_COORDINATOR_SERVER_H_
#define DSV2_COORDINATOR_COORDINATOR_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "coordinator/cluster_state.h"
#include "coordinator/generate_request.h"
#include "model/config.h"

namespace grpc {
class Service;
}  // namespace grpc

namespace dsv2::coordinator {

struct CoordinatorCore;  // coordinator_server.cc

}  // namespace dsv2::coordinator

namespace dsv2::metrics {
struct CoordinatorMetrics;
}  // namespace dsv2::metrics

namespace dsv2::service {
class ApiKeys;
class TlsContext;
}  // namespace dsv2::service

namespace dsv2::coordinator {

struct CoordinatorOptions {
  AdmissionOptions admission;
  // Nodes heartbeat at this interval; a node silent for heartbeat_timeout is
  // declared dead and removed from membership and placement.
  absl::Duration heartbeat_interval = absl::Milliseconds(500);
  absl::Duration heartbeat_timeout = absl::Seconds(3);
  // Deadline of one LoadExperts call (a shard maps and prefaults experts).
  absl::Duration load_experts_timeout = absl::Seconds(120);
  // Deadline of the other control calls to nodes.
  absl::Duration control_timeout = absl::Seconds(10);
  // Request metrics (finish reasons, errors, TTFT, inter-token latency,
  // durations, tokens); null = none. Must outlive the coordinator.
  metrics::CoordinatorMetrics* metrics = nullptr;
  // The public service's API keys (dsv2.v1.Inference: every call needs
  // "authorization: Bearer KEY"); null = no key needed. Health, reflection
  // and the membership service are not behind it.
  std::shared_ptr<service::ApiKeys> api_keys;
  // Credentials of the coordinator's channels to members (mutual TLS,
  // service/tls.h); null = plaintext.
  std::shared_ptr<const service::TlsContext> tls;
  // Informational, for GetModelInfo.
  std::string model_name;
  std::string model_type;
};

class Coordinator {
 public:
  // `config` and the tokenizer/template behind `model` must outlive the
  // coordinator. Starts the placement and cancellation threads.
  Coordinator(const ModelConfig& config, ServedModel model, CoordinatorOptions options);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // The services to register on the server (owned by the coordinator).
  grpc::Service* inference_service();
  grpc::Service* membership_service();

  // Called (from the placement thread) whenever the cluster starts or stops
  // being able to serve (an attention node and a complete placement).
  void SetServingCallback(std::function<void(bool)> callback);

  // Stops admitting Generate (UNAVAILABLE) and waits until the live requests
  // finished or `timeout` passed. Returns whether all finished.
  bool Drain(absl::Duration timeout);
  // Stops the owned threads. Idempotent; the destructor calls it.
  void Shutdown();

  ClusterState& state();

 private:
  std::unique_ptr<CoordinatorCore> core_;
};

}  // namespace dsv2::coordinator

#endif  // DSV2_COORDINATOR_COORDINATOR_SERVER_H_
