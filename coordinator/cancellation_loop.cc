#include "coordinator/coordinator_core_internal.h"

namespace dsv2::coordinator {

void CoordinatorCore::CancelOnNode(const std::string& address, uint64_t request_id) {
  internal::AttentionNode::Stub stub(AttentionChannel(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(absl::Seconds(2)));
  internal::CancelRequest req;
  req.set_request_id(request_id);
  internal::CancelResponse resp;
  (void)stub.Cancel(&ctx, req, &resp);  // best effort: the stream's cancel also frees it
}

void CoordinatorCore::CancellationLoop() {
  while (true) {
    {
      absl::MutexLock lock(&loop_mu);
      auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(loop_mu) { return stop; };
      if (loop_mu.AwaitWithTimeout(absl::Condition(&stopped), absl::Milliseconds(20))) return;
    }
    // A request whose attention node was removed as dead (missed heartbeats)
    // is cancelled too: a hung node would otherwise hold it forever.
    absl::flat_hash_set<std::string> live_nodes;
    for (const AttentionNodeEntry& n : state.attention_nodes()) live_nodes.insert(n.address);
    absl::MutexLock lock(&live_mu);
    for (auto& [id, r] : live) {
      if (r->node_ctx == nullptr) continue;
      if (r->server_ctx->IsCancelled() || !live_nodes.contains(r->node_address)) {
        r->node_ctx->TryCancel();
      }
    }
  }
}

}  // namespace dsv2::coordinator
