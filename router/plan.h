// Expert placement and dispatch planning (DESIGN.md sections 3 and 5).
// Pure functions over plain data; thread-safe.
//
// A Placement says which shards hold each routed expert. The default rules:
// - grouped models (group_limited_greedy, n_group > 1): whole expert groups
//   are dealt round-robin over the shards, so a token's assignments reach at
//   most topk_group shards. With S shards and G groups: S <= G gives group g
//   to shard g % S; S > G gives shard s the group s % G, so groups are
//   replicated, never split (S need not be a multiple of G).
// - greedy models (or n_group == 1): experts are split into S contiguous
//   ranges of near-equal size (the first E % S ranges one larger); S > E
//   gives shard s the expert s % E (replicas).
//
// Plan splits one dispatch's assignments by shard. A replica is chosen
// deterministically from `replica_key` (e.g. the step's first request id):
// replica index = replica_key % (number of replicas of the expert), so with
// equal replica counts per group every expert of one group goes to the same
// replica. In exact mode (unweighted rows, combined on the attention node in
// ascending expert id) the choice cannot change numerics.
#ifndef DSV2_ROUTER_PLAN_H_
#define DSV2_ROUTER_PLAN_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "router/dispatch.h"
#include "router/gate.h"

namespace dsv2::router {

struct Placement {
  uint64_t version = 0;
  int32_t num_shards = 0;
  // replicas[e]: the shards holding routed expert e, ascending, no
  // duplicates, each in [0, num_shards).
  std::vector<std::vector<int32_t>> replicas;

  // Every expert has at least one replica.
  bool complete() const;
  // Expert ids held by `shard`, ascending.
  std::vector<int32_t> ExpertsOf(int32_t shard) const;
};

// The default placement of the rules above. InvalidArgument for
// num_shards < 1 or gate parameters whose experts do not divide into
// n_group groups.
absl::StatusOr<Placement> DefaultPlacement(const GateParams& gate, int32_t num_shards,
                                           uint64_t version);

// The default placement over shards with stable, possibly sparse ids: the
// i-th id of `shard_ids` (ascending, unique, >= 0) takes the role of dense
// shard i of DefaultPlacement, and num_shards = the largest id + 1 (an id
// not listed holds no experts). InvalidArgument for an empty, unsorted or
// negative id list, or what DefaultPlacement refuses.
absl::StatusOr<Placement> DefaultPlacementOverShards(const GateParams& gate,
                                                     std::span<const int32_t> shard_ids,
                                                     uint64_t version);

// Checks a placement against a model: one entry per expert, shard ids in
// range, ascending without duplicates. InvalidArgument naming the expert
// otherwise; FailedPrecondition when an expert has no replica.
absl::Status ValidatePlacement(const Placement& placement, int32_t num_experts);

// Placement versions are 64-bit and grow by 1 per published table; one that
// arrives more than kMaxPlacementVersionJump above the receiver's current
// version (a table, a heartbeat, a dispatch) is refused, so a corrupt or
// hostile number can neither wrap nor fence the cluster off for good.
inline constexpr uint64_t kMaxPlacementVersionJump = uint64_t{1} << 20;
// InvalidArgument naming both numbers when incoming > current + the jump.
absl::Status CheckPlacementVersionJump(uint64_t current, uint64_t incoming);

// The part of one dispatch that goes to one shard.
struct ShardDispatch {
  int32_t shard = 0;
  // Rows of the original dispatch this shard needs, ascending; the shard
  // sees them as rows 0..rows.size()-1.
  std::vector<int32_t> rows;
  // (local row, expert), in the original assignment order.
  std::vector<Assignment> assignments;
  // For each entry of `assignments`, its index in the original dispatch's
  // assignment list (where the reply row goes back to).
  std::vector<int32_t> source;
};

struct DispatchPlan {
  uint64_t placement_version = 0;
  std::vector<ShardDispatch> shards;  // ascending shard id, none empty
};

// Splits `assignments` (rows in [0, num_rows)) over the placement.
// FailedPrecondition when an assigned expert has no replica;
// InvalidArgument for a row or expert out of range.
absl::StatusOr<DispatchPlan> Plan(std::span<const Assignment> assignments, int32_t num_rows,
                                  const Placement& placement, uint64_t replica_key);

}  // namespace dsv2::router

#endif  // DSV2_ROUTER_PLAN_H_
