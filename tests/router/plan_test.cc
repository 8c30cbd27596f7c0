#include "router/plan.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "router/gate.h"

namespace dsv2::router {
namespace {

// DeepSeek-V2: 160 experts in 8 groups of 20, top-6 within 3 groups.
GateParams V2() {
  return GateParams{.num_experts = 160,
                    .top_k = 6,
                    .method = TopkMethod::kGroupLimitedGreedy,
                    .n_group = 8,
                    .topk_group = 3,
                    .routed_scaling_factor = 16.0f,
                    .norm_topk_prob = false};
}

// DeepSeek-V2-Lite: 64 experts, greedy top-6.
GateParams V2Lite() {
  return GateParams{.num_experts = 64,
                    .top_k = 6,
                    .method = TopkMethod::kGreedy,
                    .n_group = 1,
                    .topk_group = 1,
                    .routed_scaling_factor = 1.0f,
                    .norm_topk_prob = false};
}

// Routes `num_rows` rows of random logits through the real gate.
std::vector<RowRoute> RandomRoutes(const GateParams& p, int32_t num_rows, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<RowRoute> routes;
  std::vector<float> logits(p.num_experts);
  for (int32_t r = 0; r < num_rows; ++r) {
    for (float& l : logits) l = dist(rng);
    routes.push_back(Gate(p, logits));
  }
  return routes;
}

// Row-major assignments (row, experts ascending), as the attention node builds
// them.
std::vector<Assignment> ToAssignments(const std::vector<RowRoute>& routes) {
  std::vector<Assignment> a;
  for (size_t r = 0; r < routes.size(); ++r) {
    for (int32_t e : routes[r].experts) a.push_back({.row = static_cast<int32_t>(r), .expert = e});
  }
  return a;
}

// Random placement: every expert on 1..3 distinct shards, ascending.
Placement RandomPlacement(int32_t num_experts, int32_t num_shards, std::mt19937& rng) {
  Placement p;
  p.version = rng();
  p.num_shards = num_shards;
  p.replicas.resize(num_experts);
  std::uniform_int_distribution<int32_t> count(1, std::min(3, num_shards));
  std::uniform_int_distribution<int32_t> shard(0, num_shards - 1);
  for (auto& r : p.replicas) {
    std::set<int32_t> s;
    const int32_t c = count(rng);
    while (static_cast<int32_t>(s.size()) < c) s.insert(shard(rng));
    r.assign(s.begin(), s.end());
  }
  return p;
}

// Checks every structural promise of a plan and that reassembling via
// `source` reproduces `assignments` exactly.
void ExpectPlanReassembles(std::span<const Assignment> assignments, int32_t num_rows,
                           const Placement& placement, uint64_t key, const DispatchPlan& plan) {
  EXPECT_EQ(plan.placement_version, placement.version);
  std::vector<int> seen(assignments.size(), 0);
  int32_t prev_shard = -1;
  for (const ShardDispatch& d : plan.shards) {
    EXPECT_GT(d.shard, prev_shard) << "shards not ascending";
    prev_shard = d.shard;
    EXPECT_FALSE(d.assignments.empty());
    ASSERT_EQ(d.assignments.size(), d.source.size());
    for (size_t i = 1; i < d.rows.size(); ++i) EXPECT_LT(d.rows[i - 1], d.rows[i]);
    std::vector<bool> used(d.rows.size(), false);
    int32_t prev_source = -1;
    for (size_t k = 0; k < d.assignments.size(); ++k) {
      const int32_t src = d.source[k];
      ASSERT_GE(src, 0);
      ASSERT_LT(static_cast<size_t>(src), assignments.size());
      EXPECT_GT(src, prev_source) << "not in original assignment order";
      prev_source = src;
      ++seen[src];
      const Assignment& local = d.assignments[k];
      ASSERT_GE(local.row, 0);
      ASSERT_LT(static_cast<size_t>(local.row), d.rows.size());
      used[local.row] = true;
      EXPECT_EQ(d.rows[local.row], assignments[src].row);
      EXPECT_EQ(local.expert, assignments[src].expert);
      const std::vector<int32_t>& r = placement.replicas[local.expert];
      EXPECT_EQ(d.shard, r[key % r.size()]);
    }
    for (size_t i = 0; i < used.size(); ++i) EXPECT_TRUE(used[i]) << "row sent but not needed";
    for (int32_t row : d.rows) EXPECT_LT(row, num_rows);
  }
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], 1) << "assignment " << i;
}

// ---------------------------------------------------------------- placement

TEST(PlacementTest, VersionsAre64BitAndAJumpOverTwoToTheTwentyIsRefused) {
  EXPECT_TRUE(CheckPlacementVersionJump(0, 1).ok());
  EXPECT_TRUE(CheckPlacementVersionJump(7, 3).ok());  // older: the caller's rule, not this one
  EXPECT_TRUE(CheckPlacementVersionJump(5, 5 + kMaxPlacementVersionJump).ok());
  const absl::Status st = CheckPlacementVersionJump(5, 6 + kMaxPlacementVersionJump);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find(std::to_string(6 + kMaxPlacementVersionJump)), std::string::npos)
      << st;
  // Past 2^32 nothing wraps: (2^32 - 1) -> 2^32 is one step.
  EXPECT_TRUE(CheckPlacementVersionJump(0xFFFFFFFFull, 0x100000000ull).ok());
  EXPECT_FALSE(CheckPlacementVersionJump(0, ~uint64_t{0}).ok());
  EXPECT_TRUE(CheckPlacementVersionJump(~uint64_t{0} - 1, ~uint64_t{0}).ok());
}

TEST(PlacementTest, GroupedPlacesEveryExpertAndNeverSplitsAGroup) {
  const GateParams gate = V2();
  const int32_t per_group = gate.num_experts / gate.n_group;
  for (int32_t shards : {1, 2, 3, 4, 8, 16, 12}) {
    SCOPED_TRACE(absl::StrCat("shards = ", shards));
    absl::StatusOr<Placement> p = DefaultPlacement(gate, shards, 7);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->version, 7u);
    EXPECT_EQ(p->num_shards, shards);
    EXPECT_TRUE(p->complete());
    EXPECT_TRUE(ValidatePlacement(*p, gate.num_experts).ok());
    for (int32_t g = 0; g < gate.n_group; ++g) {
      // Every expert of a group has the same shards.
      for (int32_t e = g * per_group; e < (g + 1) * per_group; ++e) {
        EXPECT_EQ(p->replicas[e], p->replicas[g * per_group]);
      }
      std::vector<int32_t> expected;
      if (shards <= gate.n_group) {
        expected = {g % shards};
      } else {
        for (int32_t s = g; s < shards; s += gate.n_group) expected.push_back(s);
      }
      EXPECT_EQ(p->replicas[g * per_group], expected) << "group " << g;
    }
    // Each shard holds whole groups only; with S > G exactly one.
    for (int32_t s = 0; s < shards; ++s) {
      const std::vector<int32_t> experts = p->ExpertsOf(s);
      EXPECT_FALSE(experts.empty());
      EXPECT_EQ(experts.size() % per_group, 0u);
      std::set<int32_t> groups;
      for (int32_t e : experts) groups.insert(e / per_group);
      EXPECT_EQ(groups.size() * per_group, experts.size());
      if (shards > gate.n_group) {
        EXPECT_EQ(groups, std::set<int32_t>{s % gate.n_group});
      }
    }
  }
}

TEST(PlacementTest, GroupedReplicatesGroupsWhenMoreShardsThanGroups) {
  absl::StatusOr<Placement> p = DefaultPlacement(V2(), 12, 1);
  ASSERT_TRUE(p.ok()) << p.status();
  // Groups 0..3 on two shards (g, g + 8), groups 4..7 on one.
  EXPECT_EQ(p->replicas[0], (std::vector<int32_t>{0, 8}));
  EXPECT_EQ(p->replicas[79], (std::vector<int32_t>{3, 11}));
  EXPECT_EQ(p->replicas[80], (std::vector<int32_t>{4}));
  EXPECT_EQ(p->replicas[159], (std::vector<int32_t>{7}));
  absl::StatusOr<Placement> p16 = DefaultPlacement(V2(), 16, 1);
  ASSERT_TRUE(p16.ok());
  for (int32_t e = 0; e < 160; ++e) EXPECT_EQ(p16->replicas[e].size(), 2u);
}

TEST(PlacementTest, TokenTouchesAtMostTopkGroupShards) {
  const GateParams gate = V2();
  const std::vector<RowRoute> routes = RandomRoutes(gate, 300, 11);
  const std::vector<Assignment> assignments = ToAssignments(routes);
  for (int32_t shards : {1, 2, 3, 4, 8, 16, 12}) {
    absl::StatusOr<Placement> p = DefaultPlacement(gate, shards, 0);
    ASSERT_TRUE(p.ok());
    for (uint64_t key : {0ull, 1ull, 5ull, 12345ull}) {
      SCOPED_TRACE(absl::StrCat("shards = ", shards, " key = ", key));
      absl::StatusOr<DispatchPlan> plan = Plan(assignments, 300, *p, key);
      ASSERT_TRUE(plan.ok()) << plan.status();
      std::vector<int32_t> shards_per_row(routes.size(), 0);
      for (const ShardDispatch& d : plan->shards) {
        for (int32_t row : d.rows) ++shards_per_row[row];
      }
      int32_t max_shards = 0;
      for (int32_t c : shards_per_row) max_shards = std::max(max_shards, c);
      EXPECT_LE(max_shards, gate.topk_group);
      EXPECT_LE(max_shards, shards);
    }
  }
}

TEST(PlacementTest, GreedySplitsIntoContiguousNearEqualRanges) {
  const GateParams gate = V2Lite();
  for (int32_t shards : {1, 3, 4, 64}) {
    SCOPED_TRACE(absl::StrCat("shards = ", shards));
    absl::StatusOr<Placement> p = DefaultPlacement(gate, shards, 3);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_TRUE(ValidatePlacement(*p, 64).ok());
    int32_t next = 0;
    for (int32_t s = 0; s < shards; ++s) {
      const std::vector<int32_t> experts = p->ExpertsOf(s);
      const size_t expected_size = 64 / shards + (s < 64 % shards ? 1 : 0);
      ASSERT_EQ(experts.size(), expected_size);
      for (int32_t e : experts) EXPECT_EQ(e, next++);
    }
    EXPECT_EQ(next, 64);
    for (const auto& r : p->replicas) EXPECT_EQ(r.size(), 1u);
  }
  absl::StatusOr<Placement> p3 = DefaultPlacement(gate, 3, 0);
  ASSERT_TRUE(p3.ok());
  EXPECT_EQ(p3->ExpertsOf(0).size(), 22u);
  EXPECT_EQ(p3->ExpertsOf(1).size(), 21u);
  EXPECT_EQ(p3->ExpertsOf(2).size(), 21u);
  EXPECT_EQ(p3->replicas[21], std::vector<int32_t>{0});
  EXPECT_EQ(p3->replicas[22], std::vector<int32_t>{1});
}

TEST(PlacementTest, GreedyWithMoreShardsThanExpertsReplicates) {
  absl::StatusOr<Placement> p = DefaultPlacement(V2Lite(), 100, 0);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(ValidatePlacement(*p, 64).ok());
  for (int32_t e = 0; e < 64; ++e) {
    std::vector<int32_t> expected = {e};
    if (e + 64 < 100) expected.push_back(e + 64);
    EXPECT_EQ(p->replicas[e], expected);
  }
  for (int32_t s = 0; s < 100; ++s) EXPECT_EQ(p->ExpertsOf(s), std::vector<int32_t>{s % 64});
}

TEST(PlacementTest, GroupLimitedWithOneGroupIsSplitLikeGreedy) {
  GateParams gate = V2Lite();
  gate.method = TopkMethod::kGroupLimitedGreedy;
  absl::StatusOr<Placement> p = DefaultPlacement(gate, 4, 0);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->ExpertsOf(1).front(), 16);
  EXPECT_EQ(p->ExpertsOf(1).size(), 16u);
}

TEST(PlacementTest, DefaultPlacementRejectsBadArguments) {
  EXPECT_EQ(DefaultPlacement(V2(), 0, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DefaultPlacement(V2(), -2, 0).status().code(), absl::StatusCode::kInvalidArgument);
  GateParams bad = V2();
  bad.n_group = 7;  // 160 % 7 != 0
  EXPECT_EQ(DefaultPlacement(bad, 4, 0).status().code(), absl::StatusCode::kInvalidArgument);
  bad.n_group = 0;
  EXPECT_EQ(DefaultPlacement(bad, 4, 0).status().code(), absl::StatusCode::kInvalidArgument);
  GateParams none = V2Lite();
  none.num_experts = 0;
  EXPECT_EQ(DefaultPlacement(none, 4, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PlacementTest, CompleteAndExpertsOf) {
  Placement p{.version = 1, .num_shards = 3, .replicas = {{0, 2}, {1}, {}, {2}}};
  EXPECT_FALSE(p.complete());
  EXPECT_EQ(p.ExpertsOf(2), (std::vector<int32_t>{0, 3}));
  EXPECT_EQ(p.ExpertsOf(1), (std::vector<int32_t>{1}));
  EXPECT_TRUE(p.ExpertsOf(5).empty());
  p.replicas[2] = {0};
  EXPECT_TRUE(p.complete());
  EXPECT_EQ(p.ExpertsOf(0), (std::vector<int32_t>{0, 2}));
}

TEST(ValidatePlacementTest, AcceptsWellFormed) {
  Placement p{.version = 1, .num_shards = 3, .replicas = {{0, 2}, {1}, {0, 1, 2}}};
  EXPECT_TRUE(ValidatePlacement(p, 3).ok());
}

TEST(ValidatePlacementTest, RejectsWrongSize) {
  Placement p{.version = 1, .num_shards = 2, .replicas = {{0}, {1}}};
  EXPECT_EQ(ValidatePlacement(p, 3).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidatePlacement(p, 1).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ValidatePlacementTest, RejectsNoShards) {
  Placement p{.version = 1, .num_shards = 0, .replicas = {}};
  EXPECT_EQ(ValidatePlacement(p, 0).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ValidatePlacementTest, RejectsShardOutOfRangeNamingTheExpert) {
  Placement p{.version = 1, .num_shards = 2, .replicas = {{0}, {2}}};
  const absl::Status s = ValidatePlacement(p, 2);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("expert 1"), absl::string_view::npos) << s;
  p.replicas[1] = {-1};
  EXPECT_EQ(ValidatePlacement(p, 2).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ValidatePlacementTest, RejectsDuplicateAndUnsorted) {
  Placement dup{.version = 1, .num_shards = 3, .replicas = {{0}, {1, 1}}};
  const absl::Status s = ValidatePlacement(dup, 2);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("expert 1"), absl::string_view::npos) << s;
  Placement unsorted{.version = 1, .num_shards = 3, .replicas = {{2, 0}, {1}}};
  EXPECT_EQ(ValidatePlacement(unsorted, 2).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ValidatePlacementTest, EmptyExpertIsFailedPrecondition) {
  Placement p{.version = 1, .num_shards = 2, .replicas = {{0}, {}, {1}}};
  const absl::Status s = ValidatePlacement(p, 3);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("expert 1"), absl::string_view::npos) << s;
}

// --------------------------------------------------------------------- plan

TEST(PlanTest, SmallExampleSplitsByShardWithLocalRows) {
  Placement p{.version = 9, .num_shards = 3, .replicas = {{0}, {2}, {2}, {0}}};
  const std::vector<Assignment> a = {{0, 1}, {0, 3}, {2, 2}, {2, 1}, {3, 0}};
  absl::StatusOr<DispatchPlan> plan = Plan(a, 5, p, 0);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->placement_version, 9u);
  ASSERT_EQ(plan->shards.size(), 2u);  // shard 1 has nothing: omitted
  const ShardDispatch& s0 = plan->shards[0];
  EXPECT_EQ(s0.shard, 0);
  EXPECT_EQ(s0.rows, (std::vector<int32_t>{0, 3}));
  ASSERT_EQ(s0.assignments.size(), 2u);
  EXPECT_EQ(s0.assignments[0].row, 0);
  EXPECT_EQ(s0.assignments[0].expert, 3);
  EXPECT_EQ(s0.assignments[1].row, 1);
  EXPECT_EQ(s0.assignments[1].expert, 0);
  EXPECT_EQ(s0.source, (std::vector<int32_t>{1, 4}));
  const ShardDispatch& s2 = plan->shards[1];
  EXPECT_EQ(s2.shard, 2);
  EXPECT_EQ(s2.rows, (std::vector<int32_t>{0, 2}));
  ASSERT_EQ(s2.assignments.size(), 3u);
  EXPECT_EQ(s2.assignments[0].row, 0);
  EXPECT_EQ(s2.assignments[1].row, 1);
  EXPECT_EQ(s2.assignments[2].row, 1);
  EXPECT_EQ(s2.source, (std::vector<int32_t>{0, 2, 3}));
}

TEST(PlanTest, LocalRowsFollowAscendingOriginalRowWhateverTheAssignmentOrder) {
  Placement p{.version = 1, .num_shards = 1, .replicas = {{0}, {0}}};
  const std::vector<Assignment> a = {{7, 0}, {2, 1}, {7, 1}, {4, 0}, {2, 0}};
  absl::StatusOr<DispatchPlan> plan = Plan(a, 8, p, 0);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->shards.size(), 1u);
  EXPECT_EQ(plan->shards[0].rows, (std::vector<int32_t>{2, 4, 7}));
  std::vector<int32_t> local;
  for (const Assignment& x : plan->shards[0].assignments) local.push_back(x.row);
  EXPECT_EQ(local, (std::vector<int32_t>{2, 0, 2, 1, 0}));
  EXPECT_EQ(plan->shards[0].source, (std::vector<int32_t>{0, 1, 2, 3, 4}));
}

TEST(PlanTest, EmptyDispatchHasNoShards) {
  absl::StatusOr<Placement> p = DefaultPlacement(V2(), 4, 5);
  ASSERT_TRUE(p.ok());
  absl::StatusOr<DispatchPlan> plan = Plan({}, 0, *p, 0);
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->shards.empty());
  EXPECT_EQ(plan->placement_version, 5u);
}

TEST(PlanTest, ReassemblingBySourceReproducesTheAssignmentsForRandomPlacements) {
  std::mt19937 rng(2024);
  for (int trial = 0; trial < 60; ++trial) {
    const GateParams gate = (trial % 2 == 0) ? V2() : V2Lite();
    const int32_t num_rows = std::uniform_int_distribution<int32_t>(1, 200)(rng);
    std::vector<Assignment> a = ToAssignments(RandomRoutes(gate, num_rows, rng()));
    if (trial % 3 == 0) std::shuffle(a.begin(), a.end(), rng);  // any order is allowed
    const int32_t shards = std::uniform_int_distribution<int32_t>(1, 20)(rng);
    Placement p;
    if (trial % 4 == 0) {
      absl::StatusOr<Placement> d = DefaultPlacement(gate, shards, trial);
      ASSERT_TRUE(d.ok());
      p = *d;
    } else {
      p = RandomPlacement(gate.num_experts, shards, rng);
    }
    const uint64_t key = (static_cast<uint64_t>(rng()) << 32) | rng();
    SCOPED_TRACE(absl::StrCat("trial ", trial, " shards ", shards, " key ", key));
    absl::StatusOr<DispatchPlan> plan = Plan(a, num_rows, p, key);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ExpectPlanReassembles(a, num_rows, p, key, *plan);

    // Reassemble into the original order.
    std::vector<Assignment> back(a.size(), Assignment{-1, -1});
    for (const ShardDispatch& d : plan->shards) {
      for (size_t k = 0; k < d.assignments.size(); ++k) {
        back[d.source[k]] = {d.rows[d.assignments[k].row], d.assignments[k].expert};
      }
    }
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(back[i].row, a[i].row);
      EXPECT_EQ(back[i].expert, a[i].expert);
    }
  }
}

TEST(PlanTest, ReplicaChoiceIsDeterministicAndVariesWithKey) {
  Placement p{.version = 1, .num_shards = 4, .replicas = {{0, 1, 3}, {2}}};
  const std::vector<Assignment> a = {{0, 0}, {0, 1}, {1, 0}};
  std::map<int32_t, int> shard_for_expert0;
  for (uint64_t key = 0; key < 9; ++key) {
    absl::StatusOr<DispatchPlan> first = Plan(a, 2, p, key);
    absl::StatusOr<DispatchPlan> again = Plan(a, 2, p, key);
    ASSERT_TRUE(first.ok() && again.ok());
    ASSERT_EQ(first->shards.size(), again->shards.size());
    for (size_t i = 0; i < first->shards.size(); ++i) {
      EXPECT_EQ(first->shards[i].shard, again->shards[i].shard);
      EXPECT_EQ(first->shards[i].rows, again->shards[i].rows);
      EXPECT_EQ(first->shards[i].source, again->shards[i].source);
    }
    const int32_t expected = p.replicas[0][key % 3];
    for (const ShardDispatch& d : first->shards) {
      for (size_t k = 0; k < d.assignments.size(); ++k) {
        if (d.assignments[k].expert == 0) {
          EXPECT_EQ(d.shard, expected) << "key " << key;
          ++shard_for_expert0[d.shard];
        } else {
          EXPECT_EQ(d.shard, 2);
        }
      }
    }
  }
  EXPECT_EQ(shard_for_expert0.size(), 3u);  // all replicas used across keys
}

TEST(PlanTest, GroupedPlacementSendsAWholeGroupToOneReplica) {
  absl::StatusOr<Placement> p = DefaultPlacement(V2(), 16, 0);
  ASSERT_TRUE(p.ok());
  std::vector<Assignment> a;
  for (int32_t e = 0; e < 20; ++e) a.push_back({0, e});  // all of group 0
  for (uint64_t key : {0ull, 1ull, 2ull, 3ull}) {
    absl::StatusOr<DispatchPlan> plan = Plan(a, 1, *p, key);
    ASSERT_TRUE(plan.ok());
    ASSERT_EQ(plan->shards.size(), 1u);
    EXPECT_EQ(plan->shards[0].shard, key % 2 == 0 ? 0 : 8);
  }
}

TEST(PlanTest, MissingReplicaIsFailedPrecondition) {
  Placement p{.version = 1, .num_shards = 2, .replicas = {{0}, {}, {1}}};
  const std::vector<Assignment> ok = {{0, 0}, {0, 2}};
  EXPECT_TRUE(Plan(ok, 1, p, 0).ok());
  const std::vector<Assignment> a = {{0, 0}, {0, 1}};
  EXPECT_EQ(Plan(a, 1, p, 0).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(PlanTest, RowOrExpertOutOfRangeIsInvalidArgument) {
  Placement p{.version = 1, .num_shards = 2, .replicas = {{0}, {1}}};
  const auto code = [&](std::vector<Assignment> a, int32_t rows) {
    return Plan(a, rows, p, 0).status().code();
  };
  EXPECT_EQ(code({{0, 0}, {2, 1}}, 2), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{-1, 0}}, 2), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{0, 2}}, 2), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{0, -1}}, 2), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{0, 0}}, -1), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{0, 0}}, 0), absl::StatusCode::kInvalidArgument);
  // A placement naming a shard outside [0, num_shards).
  Placement bad{.version = 1, .num_shards = 2, .replicas = {{0}, {5}}};
  EXPECT_EQ(Plan(std::vector<Assignment>{{0, 1}}, 1, bad, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ------------------------------------------------------------------ combine

// A deterministic stand-in for Expert_e(h_row)[d]: what a shard would compute
// from the activation row it was sent.
float FakeExpertOutput(int32_t row, int32_t expert, size_t d) {
  const uint32_t h = static_cast<uint32_t>(row) * 2654435761u ^
                     static_cast<uint32_t>(expert) * 40503u ^ static_cast<uint32_t>(d) * 97u;
  return (static_cast<float>(h % 20011u) / 20011.0f - 0.5f) * (1.0f + 0.37f * expert);
}

// Runs one MoE combine through a plan: each shard computes its assignments
// from the rows it was sent, replies go back by `source`, the attention node
// combines each row's experts in ascending expert id.
std::vector<float> CombineThroughPlan(const std::vector<RowRoute>& routes,
                                      const Placement& placement, uint64_t key, size_t hidden,
                                      DType act) {
  const std::vector<Assignment> a = ToAssignments(routes);
  const int32_t num_rows = static_cast<int32_t>(routes.size());
  absl::StatusOr<DispatchPlan> plan = Plan(a, num_rows, placement, key);
  EXPECT_TRUE(plan.ok()) << plan.status();
  if (!plan.ok()) return {};
  std::vector<float> replies(a.size() * hidden, 0.0f);
  for (const ShardDispatch& d : plan->shards) {
    for (size_t k = 0; k < d.assignments.size(); ++k) {
      const int32_t original_row = d.rows[d.assignments[k].row];
      float* out = &replies[static_cast<size_t>(d.source[k]) * hidden];
      for (size_t x = 0; x < hidden; ++x) {
        out[x] = FakeExpertOutput(original_row, d.assignments[k].expert, x);
      }
      RoundInPlace(out, hidden, act);
    }
  }
  std::vector<float> y(routes.size() * hidden);
  size_t i = 0;
  for (size_t r = 0; r < routes.size(); ++r) {
    std::vector<const float*> rows;
    for (size_t k = 0; k < routes[r].experts.size(); ++k) {
      rows.push_back(&replies[(i++) * hidden]);
    }
    Combine(routes[r].weights, rows, hidden, act, &y[r * hidden]);
  }
  return y;
}

TEST(PlanTest, CombineIsBitwiseIndependentOfPlacementAndShardCount) {
  const size_t hidden = 48;
  for (const GateParams& gate : {V2(), V2Lite()}) {
    const std::vector<RowRoute> routes = RandomRoutes(gate, 64, 99);
    for (DType act : {DType::kF32, DType::kBF16}) {
      absl::StatusOr<Placement> one = DefaultPlacement(gate, 1, 0);
      ASSERT_TRUE(one.ok());
      const std::vector<float> reference = CombineThroughPlan(routes, *one, 0, hidden, act);
      ASSERT_EQ(reference.size(), routes.size() * hidden);
      std::mt19937 rng(5);
      for (int32_t shards : {2, 3, 4, 8, 12, 16, 64, 100}) {
        for (uint64_t key : {0ull, 1ull, 7ull}) {
          SCOPED_TRACE(
              absl::StrCat("experts ", gate.num_experts, " shards ", shards, " key ", key));
          absl::StatusOr<Placement> d = DefaultPlacement(gate, shards, 1);
          ASSERT_TRUE(d.ok());
          for (const Placement& p : {*d, RandomPlacement(gate.num_experts, shards, rng)}) {
            const std::vector<float> y = CombineThroughPlan(routes, p, key, hidden, act);
            ASSERT_EQ(y.size(), reference.size());
            EXPECT_EQ(std::memcmp(y.data(), reference.data(), y.size() * sizeof(float)), 0);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace dsv2::router
