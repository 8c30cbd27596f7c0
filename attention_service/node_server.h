// AttentionNodeServer: the gRPC edge of an attention node (DESIGN.md
// section 2): the AttentionNode service of proto/attention_node.proto over an
// AttentionEngine and a DataPlaneExpertBackend. absl::Status maps to gRPC
// codes here and nowhere else in the node.
//
// Threads: gRPC's server threads call the handlers, one per active RPC; a
// Submit handler waits on its RequestStream (50 ms polls, so a cancelled
// client is noticed) while the engine thread produces its events. The
// engine and backend are thread-safe and must outlive the server.
#ifndef DSV2_ATTENTION_SERVICE_NODE_SERVER_H_
#define DSV2_ATTENTION_SERVICE_NODE_SERVER_H_

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "attention_node.grpc.pb.h"
#include "attention_service/engine.h"
#include "attention_service/data_plane_expert_backend.h"
#include "model/config.h"

namespace dsv2 {
namespace service {
class TlsContext;
}  // namespace service

// Resolves the table's missing UCX addresses (asking each shard's
// GetStatus, retrying until `deadline` while shards start) and adopts it in
// `backend`. InvalidArgument for a table that does not fit the model,
// Unavailable when a shard cannot be reached. `tls`: the credentials of
// those GetStatus calls (service/tls.h).
absl::Status ApplyPlacement(internal::PlacementTable table, int32_t num_experts,
                            absl::Time deadline, DataPlaneExpertBackend& backend,
                            const service::TlsContext& tls);

class AttentionNodeServer final : public internal::AttentionNode::Service {
 public:
  // `tls` null: plaintext.
  AttentionNodeServer(const ModelConfig& config, AttentionEngine& engine,
                      DataPlaneExpertBackend& backend,
                      std::shared_ptr<const service::TlsContext> tls = nullptr);

  grpc::Status Submit(grpc::ServerContext* ctx, const internal::SubmitRequest* req,
                      grpc::ServerWriter<internal::SubmitResponse>* writer) override;
  grpc::Status Cancel(grpc::ServerContext* ctx, const internal::CancelRequest* req,
                      internal::CancelResponse* out) override;
  grpc::Status GetStatus(grpc::ServerContext* ctx, const internal::NodeStatusRequest* req,
                         internal::NodeStatus* out) override;
  grpc::Status SetPlacement(grpc::ServerContext* ctx, const internal::PlacementTable* table,
                            internal::SetPlacementResponse* out) override;

 private:
  const ModelConfig& config_;
  AttentionEngine& engine_;
  DataPlaneExpertBackend& backend_;
  const std::shared_ptr<const service::TlsContext> tls_;
  // Ids for requests that come without one (high bit set, so they never
  // collide with caller-chosen small ids).
  std::atomic<uint64_t> next_id_{1};
};

}  // namespace dsv2

#endif  // DSV2_ATTENTION_SERVICE_NODE_SERVER_H_
