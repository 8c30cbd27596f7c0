// DataPlaneExpertBackend: the ExpertBackend of an attention node in a
// cluster (DESIGN.md sections 3, 4, 5 and 9). Send plans the dispatch over
// the current placement (router::Plan), sends one wire request per shard
// (only the rows that shard needs) through the data plane and returns at
// once; Wait collects the replies and puts every output row back in the
// dispatch's assignment order, so the layer loop combines in ascending
// expert id exactly as in the single-process engine.
//
// Failure handling: the dispatch (the layer's input rows) is kept until its
// replies are complete. A shard that fails or stays silent, or a reply
// saying the placement version is stale, makes Wait re-plan and re-send the
// whole dispatch once a newer placement is set (SetPlacement), or re-send
// after a short back-off on a version mismatch; if the dispatch's deadline
// (dispatch_timeout after Send) passes first, Wait returns UNAVAILABLE
// naming the shards.
//
// Connections: one data-plane peer per shard address, owned by the shard's
// membership (ShardTarget::node_id). A placement naming a new node id at an
// address (the shard process was removed and registered again) drops the
// old connection at once (its tickets fail and are re-sent over the new
// one: after a partition the old one may look alive and carry nothing).
// A connection that fails while the current placement still names its
// shard under the same node id (and no newer placement came within
// kReconnectAfter) is made again by the backend's reconnect thread, asked
// again every kReconnectAfter until the dispatch's deadline; the engine
// thread never blocks in a connect, and a newer placement is used the
// moment it is set. Connections to addresses a new placement no longer
// names are dropped. Expert work is stateless, so re-sending is safe and
// gives the same numbers. Malformed or not-found replies are INTERNAL (a
// bug, not a failure to wait out).
//
// Thread-safety: Send/Wait/Forget from the engine thread; SetPlacement and
// the accessors from any thread (gRPC). The backend owns one reconnect
// thread (joined by the destructor, which may wait up to the client's
// connect timeout for a connect in progress).
#ifndef DSV2_ATTENTION_SERVICE_DATA_PLANE_EXPERT_BACKEND_H_
#define DSV2_ATTENTION_SERVICE_DATA_PLANE_EXPERT_BACKEND_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "attention_service/expert_backend.h"
#include "router/plan.h"
#include "transport/data_plane.h"

namespace dsv2 {

struct RemoteExpertsOptions {
  // Deadline of one dispatch from Send, re-sends included.
  absl::Duration dispatch_timeout = absl::Seconds(10);
  // Called on the waiting (engine) thread when a dispatch completed: seconds
  // from Send until every reply arrived. May be empty.
  std::function<void(double seconds)> on_dispatch_done;
};

// A shard's data plane as a placement names it.
struct ShardTarget {
  std::string address;   // "host:port" of its UCX listener (DataPlaneServer::address())
  uint64_t node_id = 0;  // its membership (registration) at the coordinator; 0 = none
};

struct RemoteExpertsStats {
  int64_t dispatches = 0;       // Send calls
  int64_t shard_requests = 0;   // wire requests sent (re-sends included)
  int64_t resends = 0;          // dispatches re-planned and re-sent
  // Assignments carried by re-sends: only those not yet answered (the rows
  // of failed, silent or stale shards) are re-sent.
  int64_t resent_assignments = 0;
  int64_t failures = 0;         // Waits that returned an error
  // Connections replaced: to a shard's new membership at the same address,
  // or after the old one failed while its shard was still placed.
  int64_t reconnects = 0;
  int64_t request_bytes = 0;    // wire bytes sent
  int64_t reply_bytes = 0;      // wire bytes received
  // Token->expert assignments sent, by routed expert id (the per-expert
  // load; sized by the largest expert id seen).
  std::vector<int64_t> expert_assignments;
};

class DataPlaneExpertBackend : public ExpertBackend {
 public:
  // `client` must outlive the backend.
  DataPlaneExpertBackend(transport::DataPlaneClient& client, RemoteExpertsOptions options);
  ~DataPlaneExpertBackend() override;

  // Adopts `placement` with each shard's data plane (shards[s] for shard
  // s), connecting to shards (addresses, or node ids at an address) it has
  // not seen. FailedPrecondition for a version older than the current one
  // (the same version is a no-op); InvalidArgument when an address is
  // missing; Unavailable when a shard cannot be reached (the placement is
  // then not adopted).
  absl::Status SetPlacement(const router::Placement& placement,
                            const std::vector<ShardTarget>& shards);
  // 0 before the first placement.
  uint64_t placement_version() const;
  // Whether a complete placement is set (requests can be served).
  bool ready() const;

  absl::StatusOr<uint64_t> Send(router::ExpertDispatch dispatch,
                                const DispatchContext& context) override;
  absl::StatusOr<router::ExpertReply> Wait(uint64_t ticket) override;
  void Forget(uint64_t ticket) override;

  RemoteExpertsStats stats() const;

 private:
  struct Pending;
  struct PlacementState {
    router::Placement placement;
    std::vector<ShardTarget> shards;  // by shard id; empty address = not used
  };
  struct Connection {
    uint64_t node_id = 0;
    transport::PeerId peer = 0;
  };
  // Without a newer placement, a failed connection to a placed shard is
  // re-made this long after the failure was seen.
  static constexpr absl::Duration kReconnectAfter = absl::Seconds(1);

  // A reconnect the engine asked for: `target`'s connection was `failed`.
  struct ReconnectRequest {
    ShardTarget target;
    transport::PeerId failed = 0;
  };

  // The connection to `target`: the recorded one when it is alive and of
  // the same node id; else a new one (the old one dropped). Blocks up to
  // the client's connect timeout (SetPlacement's threads).
  absl::StatusOr<transport::PeerId> ConnectTo(const ShardTarget& target)
      ABSL_LOCKS_EXCLUDED(connect_mu_, mu_);
  // The reconnect thread: connects outside every lock, then replaces the
  // recorded connection only if it is still request.failed under the same
  // node id (a placement that came meanwhile wins).
  void ReconnectLoop() ABSL_LOCKS_EXCLUDED(connect_mu_, mu_);
  void Reconnect(const ReconnectRequest& request) ABSL_LOCKS_EXCLUDED(connect_mu_, mu_);
  // The recorded peer for `address`; 0 when none.
  transport::PeerId PeerAt(const std::string& address) const ABSL_LOCKS_EXCLUDED(mu_);
  // Plans `p` over the current placement and sends every part.
  absl::Status SendParts(Pending& p);
  std::shared_ptr<const PlacementState> placement() const;
  // Whether a placement newer than `planned` is set and holds nothing on
  // `shard` (the coordinator removed it).
  bool NewerPlacementWithout(uint64_t planned, int32_t shard) const;

  transport::DataPlaneClient& client_;
  const RemoteExpertsOptions options_;

  // Serializes changes of connections_ (ConnectTo, Reconnect's swap).
  // Taken before mu_, never while holding it.
  absl::Mutex connect_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  std::shared_ptr<const PlacementState> placement_ ABSL_GUARDED_BY(mu_);
  // By shard address.
  absl::flat_hash_map<std::string, Connection> connections_ ABSL_GUARDED_BY(mu_);
  // Bumped whenever a connection is replaced: a waiting dispatch re-sends.
  uint64_t connections_changed_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<ReconnectRequest> reconnects_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  RemoteExpertsStats stats_ ABSL_GUARDED_BY(mu_);
  std::thread reconnect_thread_;

  // Engine-thread state.
  uint64_t next_ticket_ = 1;
  uint64_t next_request_id_ = 1;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Pending>> pending_;
};

}  // namespace dsv2

#endif  // DSV2_ATTENTION_SERVICE_DATA_PLANE_EXPERT_BACKEND_H_
