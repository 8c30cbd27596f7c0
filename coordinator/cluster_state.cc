#include "coordinator/cluster_state.h"

#include <algorithm>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "model/sampling.h"
#include "re2/re2.h"
#include "router/plan.h"

namespace dsv2::coordinator {

uint32_t RandomIncarnation() {
  return static_cast<uint32_t>(RandomSeed() % ((uint64_t{1} << 31) - 1)) + 1;
}

absl::Status ValidateMemberAddress(absl::string_view address, absl::string_view field) {
  static const RE2* const kHostPort =
      new RE2(R"(^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})$)");
  const auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
  };
  if (address.empty()) return bad("empty");
  if (address.size() > 255)
    return bad(absl::StrCat("longer than 255 bytes (", address.size(), ")"));
  std::string host;
  int port = 0;
  if (!RE2::FullMatch(re2::StringPiece(address.data(), address.size()), *kHostPort, &host, &port)) {
    return bad(absl::StrCat("\"", absl::CHexEscape(address), "\" is not host:port"));
  }
  if (port < 1 || port > 65535) return bad(absl::StrCat("port ", port, " is outside [1, 65535]"));
  return absl::OkStatus();
}

ClusterState::ClusterState(AdmissionOptions options, uint32_t incarnation)
    : options_(options),
      incarnation_(incarnation),
      next_node_id_((static_cast<uint64_t>(incarnation) << 32) | 1) {}

uint64_t ClusterState::RegisterAttentionNode(const std::string& address, int64_t capacity_tokens,
                                             uint64_t placement_version, absl::Time now,
                                             const std::string& owner) {
  absl::MutexLock lock(&mu_);
  // A node that restarted on the same address replaces its old entry.
  for (auto it = attention_.begin(); it != attention_.end();) {
    it = it->second.address == address ? attention_.erase(it) : std::next(it);
  }
  dead_attention_.erase(address);
  AttentionNodeEntry e;
  e.node_id = next_node_id_++;
  e.address = address;
  e.capacity_tokens = capacity_tokens;
  e.owner = owner;
  e.placement_version = placement_version;
  e.last_heartbeat = now;
  max_reported_version_ = std::max(max_reported_version_, placement_version);
  attention_[e.node_id] = e;
  return e.node_id;
}

absl::StatusOr<uint64_t> ClusterState::RegisterShard(int32_t shard_id, const std::string& address,
                                                     const std::string& ucx_address,
                                                     uint64_t placement_version, absl::Time now,
                                                     const std::string& owner) {
  if (shard_id < 0 || shard_id >= kMaxShardId) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard_id ", shard_id, " is outside [0, ", kMaxShardId, ")"));
  }
  absl::MutexLock lock(&mu_);
  ShardEntry e;
  e.node_id = next_node_id_++;
  e.shard_id = shard_id;
  e.address = address;
  e.ucx_address = ucx_address;
  e.owner = owner;
  e.placement_version = placement_version;
  e.last_heartbeat = now;
  max_reported_version_ = std::max(max_reported_version_, placement_version);
  shards_[shard_id] = e;
  dead_shards_.erase(shard_id);
  ++shard_generation_;
  return e.node_id;
}

absl::Status ClusterState::CheckOwner(uint64_t node_id, const std::string& owner) const {
  absl::MutexLock lock(&mu_);
  const std::string* registered = nullptr;
  if (auto it = attention_.find(node_id); it != attention_.end()) registered = &it->second.owner;
  for (const auto& [id, s] : shards_) {
    if (s.node_id == node_id) registered = &s.owner;
  }
  if (registered == nullptr) {
    return absl::NotFoundError(absl::StrCat("node ", node_id, " is not registered"));
  }
  if (*registered != owner) {
    return absl::PermissionDeniedError(
        absl::StrCat(owner, " may not act as node ", node_id, ": ", *registered, " registered it"));
  }
  return absl::OkStatus();
}

absl::Status ClusterState::CheckAttentionAddressOwner(const std::string& address,
                                                      const std::string& owner) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [id, e] : attention_) {
    if (e.address == address && e.owner != owner) {
      return absl::AlreadyExistsError(absl::StrCat(owner, " may not replace attention node ", id,
                                                   " at ", address, ": ", e.owner,
                                                   " registered it (retry once it is gone)"));
    }
  }
  return absl::OkStatus();
}

absl::Status ClusterState::AdmitWeightsFingerprint(const std::string& fingerprint) {
  absl::MutexLock lock(&mu_);
  if (attention_.empty() && shards_.empty()) {
    weights_fingerprint_ = fingerprint;
    return absl::OkStatus();
  }
  if (fingerprint != weights_fingerprint_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model mismatch: weights_fingerprint ", fingerprint, " differs from the live members' ",
        weights_fingerprint_, " (one cluster serves one checkpoint)"));
  }
  return absl::OkStatus();
}

std::string ClusterState::weights_fingerprint() const {
  absl::MutexLock lock(&mu_);
  return attention_.empty() && shards_.empty() ? std::string() : weights_fingerprint_;
}

absl::Status ClusterState::Heartbeat(uint64_t node_id, uint64_t placement_version,
                                     int64_t resident_bytes, absl::Time now) {
  absl::MutexLock lock(&mu_);
  max_reported_version_ = std::max(max_reported_version_, placement_version);
  if (auto it = attention_.find(node_id); it != attention_.end()) {
    it->second.last_heartbeat = now;
    it->second.placement_version = placement_version;
    if (it->second.heartbeats_until_trusted > 0) --it->second.heartbeats_until_trusted;
    return absl::OkStatus();
  }
  for (auto& [id, s] : shards_) {
    if (s.node_id == node_id) {
      s.last_heartbeat = now;
      s.resident_bytes = resident_bytes;
      s.placement_version = placement_version;
      return absl::OkStatus();
    }
  }
  return absl::NotFoundError(absl::StrCat("node ", node_id, " is not registered"));
}

void ClusterState::Suspect(uint64_t node_id) {
  absl::MutexLock lock(&mu_);
  if (auto it = attention_.find(node_id); it != attention_.end()) {
    it->second.heartbeats_until_trusted = 2;
  }
}

bool ClusterState::Remove(uint64_t node_id, bool dead) {
  absl::MutexLock lock(&mu_);
  if (auto it = attention_.find(node_id); it != attention_.end()) {
    if (dead) {
      dead_attention_.insert(it->second.address);
    } else {
      left_attention_.insert(node_id);
      left_order_.push_back(node_id);
      if (left_order_.size() > kRememberedLeaves) {
        left_attention_.erase(left_order_.front());
        left_order_.pop_front();
      }
    }
    attention_.erase(it);
    return true;
  }
  for (auto it = shards_.begin(); it != shards_.end(); ++it) {
    if (it->second.node_id == node_id) {
      if (dead) dead_shards_.insert(it->first);
      shards_.erase(it);
      ++shard_generation_;
      return true;
    }
  }
  return false;
}

absl::Status ClusterState::CheckReportedVersion(uint64_t version) const {
  absl::MutexLock lock(&mu_);
  return router::CheckPlacementVersionJump(std::max(published_.version, max_reported_version_),
                                           version);
}

bool ClusterState::AttentionNodeLeft(uint64_t node_id) const {
  absl::MutexLock lock(&mu_);
  return left_attention_.contains(node_id);
}

ClusterState::DeadCounts ClusterState::dead_counts() const {
  absl::MutexLock lock(&mu_);
  return DeadCounts{static_cast<int64_t>(dead_attention_.size()),
                    static_cast<int64_t>(dead_shards_.size())};
}

std::vector<uint64_t> ClusterState::ExpireDead(absl::Time now, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  std::vector<uint64_t> removed;
  for (auto it = attention_.begin(); it != attention_.end();) {
    if (now - it->second.last_heartbeat > timeout) {
      removed.push_back(it->first);
      dead_attention_.insert(it->second.address);
      it = attention_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = shards_.begin(); it != shards_.end();) {
    if (now - it->second.last_heartbeat > timeout) {
      removed.push_back(it->second.node_id);
      dead_shards_.insert(it->first);
      it = shards_.erase(it);
      ++shard_generation_;
    } else {
      ++it;
    }
  }
  return removed;
}

uint64_t ClusterState::shard_generation() const {
  absl::MutexLock lock(&mu_);
  return shard_generation_;
}

std::vector<ShardEntry> ClusterState::shards() const {
  absl::MutexLock lock(&mu_);
  std::vector<ShardEntry> out;
  for (const auto& [id, s] : shards_) out.push_back(s);
  return out;
}

std::vector<AttentionNodeEntry> ClusterState::attention_nodes() const {
  absl::MutexLock lock(&mu_);
  std::vector<AttentionNodeEntry> out;
  for (const auto& [id, n] : attention_) out.push_back(n);
  return out;
}

void ClusterState::SetShardLoaded(uint64_t node_id, uint64_t version, int32_t experts) {
  absl::MutexLock lock(&mu_);
  for (auto& [id, s] : shards_) {
    if (s.node_id == node_id) {
      s.placement_version = version;
      s.experts = experts;
    }
  }
}

void ClusterState::SetAttentionVersion(uint64_t node_id, uint64_t version) {
  absl::MutexLock lock(&mu_);
  if (auto it = attention_.find(node_id); it != attention_.end()) {
    it->second.placement_version = version;
  }
}

uint64_t ClusterState::max_reported_version() const {
  absl::MutexLock lock(&mu_);
  return max_reported_version_;
}

void ClusterState::Publish(PublishedPlacement placement, bool complete) {
  absl::MutexLock lock(&mu_);
  published_ = std::move(placement);
  complete_ = complete;
}

PublishedPlacement ClusterState::published() const {
  absl::MutexLock lock(&mu_);
  return published_;
}

bool ClusterState::placement_complete() const {
  absl::MutexLock lock(&mu_);
  if (!complete_) return false;
  // Every shard of the published table must still be live.
  for (int32_t id : published_.shard_ids) {
    if (!shards_.contains(id)) return false;
  }
  return true;
}

absl::StatusOr<int64_t> ClusterState::LargestCapacity() const {
  const bool complete = placement_complete();
  absl::MutexLock lock(&mu_);
  if (attention_.empty()) return absl::UnavailableError("no attention node is registered");
  if (!complete) {
    return absl::UnavailableError(
        shards_.empty() ? "no expert shard is registered: the expert placement is incomplete"
                        : "the expert placement is incomplete");
  }
  int64_t largest = 0;
  for (const auto& [id, n] : attention_) largest = std::max(largest, n.capacity_tokens);
  return largest;
}

absl::StatusOr<uint64_t> ClusterState::Enqueue(int64_t need_tokens, bool resumed) {
  absl::MutexLock lock(&mu_);
  if (resumed) {
    const uint64_t id = next_ticket_++;
    queue_.push_front(Ticket{id, need_tokens});
    return id;
  }
  // A request a node can take at once never counts against the bound.
  const bool runs_now = queue_.empty() && PickNode(need_tokens) != nullptr;
  if (!runs_now && static_cast<int64_t>(queue_.size()) >= options_.max_queued) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the admission queue is full (", queue_.size(), " requests waiting; --max-queue ",
        options_.max_queued, ")"));
  }
  const uint64_t id = next_ticket_++;
  queue_.push_back(Ticket{id, need_tokens});
  return id;
}

AttentionNodeEntry* ClusterState::PickNode(int64_t need) {
  AttentionNodeEntry* best = nullptr;
  // Nothing is handed out while the placement is incomplete (a shard died
  // and its experts are being re-placed): the request waits.
  if (!complete_ || published_.version == 0) return nullptr;
  for (int32_t id : published_.shard_ids) {
    if (!shards_.contains(id)) return nullptr;
  }
  for (auto& [id, n] : attention_) {
    if (n.placement_version != published_.version) continue;
    if (n.heartbeats_until_trusted > 0) continue;
    if (n.reserved_tokens + need > n.capacity_tokens) continue;
    // Least load first: reserved / capacity, compared exactly by cross
    // multiplication (ties keep the lower id: map order).
    if (best == nullptr ||
        static_cast<__int128>(n.reserved_tokens) * best->capacity_tokens <
            static_cast<__int128>(best->reserved_tokens) * n.capacity_tokens) {
      best = &n;
    }
  }
  return best;
}

absl::StatusOr<std::optional<NodeAssignment>> ClusterState::WaitForNode(uint64_t ticket,
                                                                        absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto at_front_with_room = [this, ticket]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (attention_.empty()) return true;  // decided: Unavailable
    return !queue_.empty() && queue_.front().id == ticket &&
           PickNode(queue_.front().need_tokens) != nullptr;
  };
  if (!at_front_with_room() && timeout > absl::ZeroDuration()) {
    ++blocked_waiters_;
    mu_.AwaitWithTimeout(absl::Condition(&at_front_with_room), timeout);
    --blocked_waiters_;
  }
  // A request no live node could ever hold (the nodes that could have left)
  // must not block the queue behind it.
  int64_t largest = 0;
  for (const auto& [id, n] : attention_) largest = std::max(largest, n.capacity_tokens);
  for (auto it = queue_.begin(); !attention_.empty() && it != queue_.end(); ++it) {
    if (it->id == ticket && it->need_tokens > largest) {
      const int64_t need = it->need_tokens;
      queue_.erase(it);
      return absl::UnavailableError(absl::StrCat(
          "no attention node can hold prompt + max_tokens = ", need,
          " tokens any more (the largest live cache holds ", largest, ")"));
    }
  }
  if (attention_.empty()) {
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (it->id == ticket) {
        queue_.erase(it);
        break;
      }
    }
    return absl::UnavailableError("no attention node is registered");
  }
  if (queue_.empty() || queue_.front().id != ticket) return std::optional<NodeAssignment>();
  AttentionNodeEntry* node = PickNode(queue_.front().need_tokens);
  if (node == nullptr) return std::optional<NodeAssignment>();
  node->reserved_tokens += queue_.front().need_tokens;
  node->live_requests += 1;
  queue_.pop_front();
  return std::optional<NodeAssignment>(NodeAssignment{node->node_id, node->address});
}

void ClusterState::Abandon(uint64_t ticket) {
  absl::MutexLock lock(&mu_);
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->id == ticket) {
      queue_.erase(it);
      return;
    }
  }
}

void ClusterState::Release(uint64_t node_id, int64_t need_tokens) {
  absl::MutexLock lock(&mu_);
  if (auto it = attention_.find(node_id); it != attention_.end()) {
    it->second.reserved_tokens = std::max<int64_t>(0, it->second.reserved_tokens - need_tokens);
    it->second.live_requests = std::max(0, it->second.live_requests - 1);
  }
}

int32_t ClusterState::blocked_waiters() const {
  absl::MutexLock lock(&mu_);
  return blocked_waiters_;
}

int32_t ClusterState::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int32_t>(queue_.size());
}

}  // namespace dsv2::coordinator
