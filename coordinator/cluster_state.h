// ClusterState: the coordinator's view of the cluster (DESIGN.md sections 2,
// 5, 9): live attention nodes and expert shards with their heartbeats, the
// published placement, and the admission queue that hands requests to the
// attention node with the least latent-cache load.
//
// Pure bookkeeping: no I/O, no gRPC. Time is passed in by the caller so
// tests drive it. Thread-safety: every method is thread-safe (one mutex);
// WaitForNode blocks the calling thread only.
#ifndef DSV2_COORDINATOR_CLUSTER_STATE_H_
#define DSV2_COORDINATOR_CLUSTER_STATE_H_

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace dsv2::coordinator {

struct AttentionNodeEntry {
  uint64_t node_id = 0;
  std::string address;            // gRPC "host:port"
  int64_t capacity_tokens = 0;    // latent cache capacity
  // The member identity URI that registered it (service/tls.h; "" on a
  // plaintext port): only it may heartbeat or leave as this node.
  std::string owner;
  int64_t reserved_tokens = 0;    // prompt + max_tokens of live requests placed here
  int32_t live_requests = 0;
  uint64_t placement_version = 0;  // last version the node acknowledged
  absl::Time last_heartbeat;
  // > 0: a request's stream on this node broke (Suspect); no new work goes
  // here until this many more heartbeats came (a dead node sends none; one
  // may already be in flight when it dies, hence 2).
  int32_t heartbeats_until_trusted = 0;
};

struct ShardEntry {
  uint64_t node_id = 0;
  int32_t shard_id = 0;  // stable identity, [0, kMaxShardId)
  std::string address;   // gRPC "host:port"
  std::string ucx_address;
  std::string owner;  // as AttentionNodeEntry::owner
  int64_t resident_bytes = 0;
  uint64_t placement_version = 0;  // last version the shard reported or loaded
  int32_t experts = 0;             // routed experts it loaded for that version
  absl::Time last_heartbeat;
};

// A published placement: its version and the shard ids it uses (ascending).
struct PublishedPlacement {
  uint64_t version = 0;
  std::vector<int32_t> shard_ids;
};

// Where an admitted request runs.
struct NodeAssignment {
  uint64_t node_id = 0;
  std::string address;
};

struct AdmissionOptions {
  int64_t max_queued = 256;  // requests waiting for a node; beyond: ResourceExhausted
};

// Node ids are (incarnation << 32) | n, n = 1, 2, ...: a coordinator that
// restarts draws a new incarnation, so a heartbeat carrying an id of the
// previous one is NotFound (the node registers again) and never lands in
// another node's slot. In [1, 2^31).
uint32_t RandomIncarnation();

// A member's gRPC address as the coordinator will dial it: "host:port" with
// a DNS name or IPv4 address ([A-Za-z0-9._-]) or a bracketed IPv6 address,
// and a port in [1, 65535]; at most 255 bytes. InvalidArgument naming
// `field` otherwise (an address from the network is checked before use).
absl::Status ValidateMemberAddress(absl::string_view address, absl::string_view field);

class ClusterState {
 public:
  static constexpr int32_t kMaxShardId = 4096;

  explicit ClusterState(AdmissionOptions options, uint32_t incarnation = RandomIncarnation());
  uint32_t incarnation() const { return incarnation_; }

  // Membership. Register* return the new node id. A shard registering with
  // the shard id of a live shard replaces it (a restarted process).
  uint64_t RegisterAttentionNode(const std::string& address, int64_t capacity_tokens,
                                 uint64_t placement_version, absl::Time now,
                                 const std::string& owner = "");
  absl::StatusOr<uint64_t> RegisterShard(int32_t shard_id, const std::string& address,
                                         const std::string& ucx_address, uint64_t placement_version,
                                         absl::Time now, const std::string& owner = "");
  // Membership authorization (mutual TLS). OK when `owner` registered node
  // `node_id`; NotFound when no such node is registered; PermissionDenied
  // when another identity did.
  absl::Status CheckOwner(uint64_t node_id, const std::string& owner) const;
  // OK when an attention node registering at `address` as `owner` would
  // replace no node another identity registered there; else AlreadyExists
  // (not fatal to the registering member: it retries, and succeeds once the
  // other registration is gone).
  absl::Status CheckAttentionAddressOwner(const std::string& address,
                                          const std::string& owner) const;
  // The checkpoint every live member serves (RegisterRequest's
  // weights_fingerprint): with no live member, `fingerprint` becomes it;
  // otherwise it must equal it (InvalidArgument "model mismatch: ..."). Call
  // it and then Register* under one lock of the caller's, so that two first
  // members cannot both set it.
  absl::Status AdmitWeightsFingerprint(const std::string& fingerprint);
  // That fingerprint; empty while no member is live.
  std::string weights_fingerprint() const;
  // NotFound for an unknown id (the node registers again).
  absl::Status Heartbeat(uint64_t node_id, uint64_t placement_version, int64_t resident_bytes,
                         absl::Time now);
  // A request's stream on attention node `node_id` broke: it takes no new
  // work until it has heartbeated twice more (a dead node never does and is
  // removed by ExpireDead; a live one is back within two intervals). No-op
  // for an unknown id.
  void Suspect(uint64_t node_id);
  // Removes a node; false if unknown. `dead`: it failed (counted in
  // dead_counts until a node with its identity registers again) rather
  // than left.
  bool Remove(uint64_t node_id, bool dead = false);
  // Whether attention node `node_id` left (Remove without `dead`): its
  // requests were handed back, not lost with a failed node. The last
  // kRememberedLeaves leaves are remembered (a node's requests learn of its
  // leaving within seconds; the memory stays bounded over a long life).
  bool AttentionNodeLeft(uint64_t node_id) const;
  static constexpr size_t kRememberedLeaves = 1024;
  // Removes every node whose last heartbeat is older than now - timeout;
  // returns the removed ids.
  std::vector<uint64_t> ExpireDead(absl::Time now, absl::Duration timeout);

  // Nodes declared dead (heartbeat timeout, failed calls) and not replaced
  // since by a registration with the same address (attention) or shard id.
  struct DeadCounts {
    int64_t attention = 0;
    int64_t shards = 0;
  };
  DeadCounts dead_counts() const;

  // Bumped by every change of the shard set (join, leave, death, replace).
  uint64_t shard_generation() const;
  std::vector<ShardEntry> shards() const;                    // ascending shard id
  std::vector<AttentionNodeEntry> attention_nodes() const;   // ascending node id
  void SetShardLoaded(uint64_t node_id, uint64_t version, int32_t experts);
  void SetAttentionVersion(uint64_t node_id, uint64_t version);
  // InvalidArgument when a member reports a placement version more than
  // router::kMaxPlacementVersionJump above the largest one known here
  // (published or reported): it is refused, never adopted.
  absl::Status CheckReportedVersion(uint64_t version) const;
  // Largest placement version any node has reported (for numbering after a
  // coordinator restart).
  uint64_t max_reported_version() const;

  // The placement attention nodes use; complete = every routed expert is
  // held by a live shard (set by the placement controller).
  void Publish(PublishedPlacement placement, bool complete);
  PublishedPlacement published() const;
  bool placement_complete() const;

  // Serving: Unavailable when no attention node is live or the placement is
  // not complete; else the largest live node capacity (tokens): a request
  // is admitted against the nodes that can hold it (one node's small cache
  // does not cap every request; admission picks a node with room).
  absl::StatusOr<int64_t> LargestCapacity() const;

  // Admission. Enqueue takes a place in the FIFO queue (ResourceExhausted
  // at once when max_queued requests already wait); WaitForNode blocks until
  // the request is at the front and an attention node serving the current
  // placement has `need_tokens` unreserved, then reserves them there.
  // Returns nullopt on timeout (the caller checks cancellation and calls
  // again) and Unavailable when no node could ever take it (none live, or
  // none large enough any more).
  // Abandon drops a queued ticket; Release returns a reservation.
  // `resumed`: a request resumed after its node failed or left; it goes to
  // the front of the queue and never counts against max_queued (its client
  // is already streaming).
  absl::StatusOr<uint64_t> Enqueue(int64_t need_tokens, bool resumed = false);
  absl::StatusOr<std::optional<NodeAssignment>> WaitForNode(uint64_t ticket,
                                                            absl::Duration timeout);
  void Abandon(uint64_t ticket);
  void Release(uint64_t node_id, int64_t need_tokens);
  int32_t queued() const;
  // Calls of WaitForNode blocked now, waiting for their turn or for room
  // (tests: a waiter is known to block before the change that wakes it).
  int32_t blocked_waiters() const;
  int64_t max_queued() const { return options_.max_queued; }

 private:
  struct Ticket {
    uint64_t id;
    int64_t need_tokens;
  };
  // The node for `need` tokens: least reserved/capacity among live nodes
  // that serve exactly the published version and have room, while that
  // placement is complete; ties to the lowest id. nullptr if none.
  AttentionNodeEntry* PickNode(int64_t need) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const AdmissionOptions options_;
  const uint32_t incarnation_;
  mutable absl::Mutex mu_;
  uint64_t next_node_id_ ABSL_GUARDED_BY(mu_);
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t shard_generation_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t max_reported_version_ ABSL_GUARDED_BY(mu_) = 0;
  std::string weights_fingerprint_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, AttentionNodeEntry> attention_ ABSL_GUARDED_BY(mu_);
  std::map<int32_t, ShardEntry> shards_ ABSL_GUARDED_BY(mu_);  // by shard id
  PublishedPlacement published_ ABSL_GUARDED_BY(mu_);
  bool complete_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Ticket> queue_ ABSL_GUARDED_BY(mu_);
  int32_t blocked_waiters_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_set<std::string> dead_attention_ ABSL_GUARDED_BY(mu_);  // addresses
  absl::flat_hash_set<int32_t> dead_shards_ ABSL_GUARDED_BY(mu_);         // shard ids
  absl::flat_hash_set<uint64_t> left_attention_ ABSL_GUARDED_BY(mu_);     // node ids
  std::deque<uint64_t> left_order_ ABSL_GUARDED_BY(mu_);  // left_attention_, oldest first
};

}  // namespace dsv2::coordinator

#endif  // DSV2_COORDINATOR_CLUSTER_STATE_H_
