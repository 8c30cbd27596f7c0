#include "coordinator/coordinator_core_internal.h"

namespace dsv2::coordinator {

bool CoordinatorCore::Republish() {
  const uint64_t generation = state.shard_generation();
  std::vector<ShardEntry> shards = state.shards();
  if (shards.empty()) {
    PublishedPlacement p = state.published();
    p.shard_ids.clear();
    state.Publish(p, /*complete=*/false);
    published_generation = generation;
    return true;
  }
  const uint64_t version = std::max(state.published().version, state.max_reported_version()) + 1;
  PublishedPlacement published;
  published.version = version;
  // ClusterState::shards() is in ascending id order, as the placement needs.
  for (const ShardEntry& s : shards) published.shard_ids.push_back(s.shard_id);
  absl::StatusOr<router::Placement> placement =
      router::DefaultPlacementOverShards(gate, published.shard_ids, version);
  if (!placement.ok()) {
    spdlog::error("placement over {} shards: {}", shards.size(), placement.status().ToString());
    return false;
  }
  std::vector<internal::ShardEndpoint> endpoints;
  for (const ShardEntry& s : shards) {
    internal::ShardEndpoint& ep = endpoints.emplace_back();
    ep.set_shard_id(s.shard_id);
    ep.set_grpc_address(s.address);
    ep.set_ucx_address(s.ucx_address);
    ep.set_node_id(s.node_id);
  }
  internal::PlacementTable t = service::PlacementToProto(*placement, endpoints);
  // Every shard loads what it gains before any attention node sees the
  // version (DESIGN.md section 5).
  for (const ShardEntry& s : shards) {
    internal::ExpertShardService::Stub stub(ShardChannel(s.address));
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(options.load_experts_timeout));
    internal::LoadExpertsRequest req;
    req.set_shard_id(s.shard_id);
    *req.mutable_table() = t;
    internal::LoadExpertsResponse resp;
    const grpc::Status st = stub.LoadExperts(&ctx, req, &resp);
    if (!st.ok()) {
      // Dead, hung or unable to load (e.g. out of memory): it cannot serve
      // this placement, so drop it; if alive it re-registers on its next
      // heartbeat (NOT_FOUND) and is tried again then.
      spdlog::warn("placement v{}: shard {} at {} failed LoadExperts: {} (code {}); dropped",
                   version, s.shard_id, s.address, st.error_message(),
                   static_cast<int>(st.error_code()));
      state.Remove(s.node_id, /*dead=*/true);
      return false;
    }
    {
      absl::MutexLock lock(&loop_mu);
      if (stop) return false;
    }
    state.SetShardLoaded(s.node_id, version, resp.experts_size());
  }
  table = std::move(t);
  state.Publish(std::move(published), /*complete=*/true);
  published_generation = generation;
  spdlog::info("placement v{} published over {} shards", version, shards.size());
  return true;
}

void CoordinatorCore::PushToAttentionNodes() {
  const PublishedPlacement p = state.published();
  if (p.version == 0 || table.version() != p.version) return;
  for (const AttentionNodeEntry& n : state.attention_nodes()) {
    if (n.placement_version == p.version) continue;
    internal::AttentionNode::Stub stub(AttentionChannel(n.address));
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(options.control_timeout));
    internal::SetPlacementResponse resp;
    const grpc::Status st = stub.SetPlacement(&ctx, table, &resp);
    if (st.ok()) {
      state.SetAttentionVersion(n.node_id, resp.placement_version());
    } else {
      spdlog::warn("placement v{}: attention node {} at {}: {}", p.version, n.node_id, n.address,
                   st.error_message());
    }
  }
}

void CoordinatorCore::UpdateServing() {
  const bool now_serving = state.LargestCapacity().ok();
  std::function<void(bool)> cb;
  {
    absl::MutexLock lock(&loop_mu);
    if (now_serving == serving && !report_serving) return;
    report_serving = false;
    cb = serving_callback;
  }
  serving = now_serving;
  spdlog::info(serving ? "serving" : "not serving");
  if (cb) cb(serving);
}

void CoordinatorCore::PlacementLoop() {
  while (true) {
    {
      absl::MutexLock lock(&loop_mu);
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(loop_mu) { return stop || wake; };
      loop_mu.AwaitWithTimeout(absl::Condition(&woken), absl::Milliseconds(100));
      if (stop) return;
      wake = false;
    }
    for (uint64_t id : state.ExpireDead(absl::Now(), options.heartbeat_timeout)) {
      spdlog::warn("node {} missed its heartbeats for {}: removed", id,
                   absl::FormatDuration(options.heartbeat_timeout));
    }
    const bool behind = state.max_reported_version() > state.published().version;
    if (state.shard_generation() != published_generation || behind) {
      // A failed shard was dropped; the next tick republishes without it.
      // Attention nodes and health are kept current meanwhile.
      (void)Republish();
    }
    PushToAttentionNodes();
    UpdateServing();
  }
}

}  // namespace dsv2::coordinator
