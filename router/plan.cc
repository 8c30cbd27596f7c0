#include "router/plan.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace dsv2::router {

bool Placement::complete() const {
  return std::none_of(replicas.begin(), replicas.end(),
                      [](const std::vector<int32_t>& r) { return r.empty(); });
}

std::vector<int32_t> Placement::ExpertsOf(int32_t shard) const {
  std::vector<int32_t> experts;
  for (size_t e = 0; e < replicas.size(); ++e) {
    const std::vector<int32_t>& r = replicas[e];
    if (std::find(r.begin(), r.end(), shard) != r.end()) {
      experts.push_back(static_cast<int32_t>(e));
    }
  }
  return experts;
}

absl::StatusOr<Placement> DefaultPlacement(const GateParams& gate, int32_t num_shards,
                                           uint64_t version) {
  if (num_shards < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("placement: num_shards = ", num_shards, " must be at least 1"));
  }
  const int32_t num_experts = gate.num_experts;
  if (num_experts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("placement: num_experts = ", num_experts, " must be at least 1"));
  }
  if (gate.n_group < 1 || num_experts % gate.n_group != 0) {
    return absl::InvalidArgumentError(absl::StrCat("placement: num_experts = ", num_experts,
                                                   " does not divide into n_group = ", gate.n_group,
                                                   " groups"));
  }
  Placement p;
  p.version = version;
  p.num_shards = num_shards;
  p.replicas.resize(num_experts);

  const bool grouped = gate.method == TopkMethod::kGroupLimitedGreedy && gate.n_group > 1;
  if (grouped) {
    // Whole groups dealt round-robin, so a token (routed within topk_group
    // groups) reaches at most topk_group shards whatever the replica key.
    const int32_t num_groups = gate.n_group;
    const int32_t per_group = num_experts / num_groups;
    for (int32_t g = 0; g < num_groups; ++g) {
      std::vector<int32_t> shards;
      if (num_shards <= num_groups) {
        shards.push_back(g % num_shards);
      } else {
        for (int32_t s = g; s < num_shards; s += num_groups) shards.push_back(s);
      }
      for (int32_t e = g * per_group; e < (g + 1) * per_group; ++e) p.replicas[e] = shards;
    }
  } else if (num_shards <= num_experts) {
    // Contiguous ranges; the first num_experts % num_shards are one larger.
    const int32_t base = num_experts / num_shards;
    const int32_t extra = num_experts % num_shards;
    int32_t e = 0;
    for (int32_t s = 0; s < num_shards; ++s) {
      const int32_t size = base + (s < extra ? 1 : 0);
      for (int32_t i = 0; i < size; ++i) p.replicas[e++].push_back(s);
    }
  } else {
    for (int32_t s = 0; s < num_shards; ++s) p.replicas[s % num_experts].push_back(s);
  }
  return p;
}

absl::StatusOr<Placement> DefaultPlacementOverShards(const GateParams& gate,
                                                     std::span<const int32_t> shard_ids,
                                                     uint64_t version) {
  if (shard_ids.empty()) {
    return absl::InvalidArgumentError("placement: no shard ids");
  }
  for (size_t i = 0; i < shard_ids.size(); ++i) {
    if (shard_ids[i] < 0 || (i > 0 && shard_ids[i] <= shard_ids[i - 1])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "placement: shard ids must be ascending, unique and >= 0; got ", shard_ids[i],
          " at position ", i));
    }
  }
  absl::StatusOr<Placement> dense =
      DefaultPlacement(gate, static_cast<int32_t>(shard_ids.size()), version);
  if (!dense.ok()) return dense.status();
  // Dense index i -> the i-th stable id; ids ascend, so replica lists stay
  // ascending.
  for (std::vector<int32_t>& replicas : dense->replicas) {
    for (int32_t& s : replicas) s = shard_ids[s];
  }
  dense->num_shards = shard_ids.back() + 1;
  return dense;
}

absl::Status ValidatePlacement(const Placement& placement, int32_t num_experts) {
  if (placement.num_shards < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("placement: num_shards = ", placement.num_shards, " must be at least 1"));
  }
  if (num_experts < 0 || placement.replicas.size() != static_cast<size_t>(num_experts)) {
    return absl::InvalidArgumentError(absl::StrCat("placement: has ", placement.replicas.size(),
                                                   " expert entries; the model has ", num_experts,
                                                   " routed experts"));
  }
  // Malformed entries first: they are bad input, a missing replica is state.
  for (int32_t e = 0; e < num_experts; ++e) {
    const std::vector<int32_t>& r = placement.replicas[e];
    for (size_t i = 0; i < r.size(); ++i) {
      if (r[i] < 0 || r[i] >= placement.num_shards) {
        return absl::InvalidArgumentError(absl::StrCat("placement: expert ", e, " has shard ", r[i],
                                                       " outside [0, ", placement.num_shards, ")"));
      }
      if (i > 0 && r[i] <= r[i - 1]) {
        return absl::InvalidArgumentError(
            absl::StrCat("placement: expert ", e, " shards are not ascending without duplicates (",
                         r[i - 1], " then ", r[i], ")"));
      }
    }
  }
  for (int32_t e = 0; e < num_experts; ++e) {
    if (placement.replicas[e].empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("placement version ", placement.version, ": expert ", e, " has no replica"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<DispatchPlan> Plan(std::span<const Assignment> assignments, int32_t num_rows,
                                  const Placement& placement, uint64_t replica_key) {
  if (num_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("plan: num_rows = ", num_rows, " < 0"));
  }
  const int32_t num_shards = std::max(placement.num_shards, 0);
  const size_t num_experts = placement.replicas.size();
  const size_t n = assignments.size();

  // Pass 1 (assignment order): validate, pick each assignment's shard and
  // count assignments per shard.
  std::vector<int32_t> shard_of(n);
  std::vector<int32_t> per_shard(num_shards, 0);
  bool row_ordered = true;  // rows non-decreasing, as the attention node builds them
  int32_t prev_row = 0;
  for (size_t i = 0; i < n; ++i) {
    const Assignment& a = assignments[i];
    if (a.row < 0 || a.row >= num_rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("plan: assignment ", i, " has row ", a.row, " outside [0, ", num_rows, ")"));
    }
    if (a.expert < 0 || static_cast<size_t>(a.expert) >= num_experts) {
      return absl::InvalidArgumentError(absl::StrCat("plan: assignment ", i, " has expert ",
                                                     a.expert, " outside [0, ", num_experts, ")"));
    }
    const std::vector<int32_t>& r = placement.replicas[a.expert];
    if (r.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "plan: expert ", a.expert, " has no replica in placement version ", placement.version));
    }
    const int32_t s = r[replica_key % r.size()];
    if (s < 0 || s >= num_shards) {
      return absl::InvalidArgumentError(absl::StrCat("plan: expert ", a.expert, " is on shard ", s,
                                                     " outside [0, ", num_shards, ")"));
    }
    shard_of[i] = s;
    ++per_shard[s];
    row_ordered = row_ordered && a.row >= prev_row;
    prev_row = a.row;
  }

  DispatchPlan plan;
  plan.placement_version = placement.version;
  std::vector<int32_t> out_index(num_shards, -1);
  for (int32_t s = 0; s < num_shards; ++s) {
    if (per_shard[s] == 0) continue;
    out_index[s] = static_cast<int32_t>(plan.shards.size());
    ShardDispatch& d = plan.shards.emplace_back();
    d.shard = s;
    d.rows.reserve(std::min(per_shard[s], num_rows));
    d.assignments.reserve(per_shard[s]);
    d.source.reserve(per_shard[s]);
  }
  // last_row[s]: the last row appended to shard s's `rows`; since rows are
  // visited in non-decreasing order, each shard's rows come out ascending and
  // distinct, and a row's local number is the size of `rows` minus one.
  std::vector<int32_t> last_row(num_shards, -1);

  if (row_ordered) {
    // One pass gives rows and assignments together.
    for (size_t i = 0; i < n; ++i) {
      const int32_t s = shard_of[i];
      ShardDispatch& d = plan.shards[out_index[s]];
      const int32_t row = assignments[i].row;
      if (last_row[s] != row) {
        last_row[s] = row;
        d.rows.push_back(row);
      }
      d.assignments.push_back(Assignment{.row = static_cast<int32_t>(d.rows.size()) - 1,
                                         .expert = assignments[i].expert});
      d.source.push_back(static_cast<int32_t>(i));
    }
    return plan;
  }

  // Any order: a stable counting sort of assignment indices by row gives the
  // local rows (pass 2); the assignment lists keep the original order (pass 3).
  std::vector<int32_t> row_start(static_cast<size_t>(num_rows) + 1, 0);
  for (size_t i = 0; i < n; ++i) ++row_start[assignments[i].row + 1];
  for (int32_t r = 0; r < num_rows; ++r) row_start[r + 1] += row_start[r];
  std::vector<int32_t> by_row(n);
  for (size_t i = 0; i < n; ++i) {
    by_row[row_start[assignments[i].row]++] = static_cast<int32_t>(i);
  }

  std::vector<int32_t> local(n);
  for (size_t j = 0; j < n; ++j) {
    const int32_t i = by_row[j];
    const int32_t s = shard_of[i];
    const int32_t row = assignments[i].row;
    std::vector<int32_t>& rows = plan.shards[out_index[s]].rows;
    if (last_row[s] != row) {
      last_row[s] = row;
      rows.push_back(row);
    }
    local[i] = static_cast<int32_t>(rows.size()) - 1;
  }
  for (size_t i = 0; i < n; ++i) {
    ShardDispatch& d = plan.shards[out_index[shard_of[i]]];
    d.assignments.push_back(Assignment{.row = local[i], .expert = assignments[i].expert});
    d.source.push_back(static_cast<int32_t>(i));
  }
  return plan;
}

absl::Status CheckPlacementVersionJump(uint64_t current, uint64_t incoming) {
  if (incoming > current && incoming - current > kMaxPlacementVersionJump) {
    return absl::InvalidArgumentError(absl::StrCat("placement version ", incoming, " is more than ",
                                                   kMaxPlacementVersionJump,
                                                   " above the current version ", current));
  }
  return absl::OkStatus();
}

}  // namespace dsv2::router
