// ExpertDataPlaneServer: wire requests in, wire replies out; every bad
// message is an error reply with a counted reason, never a crash.
#include "expert_service/data_plane_server.h"

#include <cstring>
#include <random>

#include "gtest/gtest.h"
#include "tests/common/conformance_checkpoint.h"
#include "transport/wire.h"

namespace dsv2 {
namespace {

using transport::WireStatus;

class ExpertDataPlaneServerTest : public testing_util::ConformanceCheckpointTest {
 protected:
  // The experts only: no non-expert weights.
  ExpertDataPlaneServerTest() : ConformanceCheckpointTest("v2_f32", /*load_weights=*/false) {}

  void SetUp() override {
    ConformanceCheckpointTest::SetUp();
    if (HasFatalFailure()) return;
    server_ = std::make_unique<ExpertDataPlaneServer>(
        config_, *ckpt_, kernels::CpuContext{kernels::BestCpuIsa(), nullptr}, 1);
    auto p = router::DefaultPlacement(router::GateParams::FromConfig(config_), 4, 3);
    ASSERT_TRUE(p.ok());
    placement_ = *p;
    ASSERT_TRUE(server_->LoadExperts(placement_).ok());
  }

  // A request for `experts` (one row each) at `version`.
  std::vector<std::byte> Request(const std::vector<int32_t>& experts, uint64_t version,
                                 uint32_t layer = 1) {
    transport::WireHeader h;
    h.request_id = 42;
    h.layer = layer;
    h.dtype = static_cast<uint16_t>(transport::WireDType::kF32);
    h.num_rows = static_cast<uint32_t>(experts.size());
    h.hidden = static_cast<uint32_t>(config_.hidden_size);
    h.num_assignments = h.num_rows;
    h.placement_version = version;
    std::vector<transport::WireAssignment> a;
    for (size_t i = 0; i < experts.size(); ++i) a.push_back({static_cast<int32_t>(i), experts[i]});
    std::vector<float> x(experts.size() * config_.hidden_size, 0.25f);
    return transport::EncodeRequest(
        h, a, std::span<const std::byte>(reinterpret_cast<const std::byte*>(x.data()),
                                         x.size() * 4));
  }

  WireStatus StatusOf(const std::vector<std::byte>& reply) {
    auto r = transport::ParseReply(reply);
    EXPECT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->header.request_id, 42u);
    return static_cast<WireStatus>(r->header.status);
  }

  std::unique_ptr<ExpertDataPlaneServer> server_;
  router::Placement placement_;
};

TEST_F(ExpertDataPlaneServerTest, HoldsOnlyItsPlacementShare) {
  EXPECT_EQ(server_->experts(), placement_.ExpertsOf(1));
  EXPECT_EQ(server_->placement_version(), 3u);
  EXPECT_GT(server_->expert_weight_bytes(), 0);
}

TEST_F(ExpertDataPlaneServerTest, ServesHeldExperts) {
  const std::vector<int32_t> held = server_->experts();
  const auto reply = server_->HandleMessage(Request({held[0], held[3]}, 3));
  ASSERT_EQ(StatusOf(reply), WireStatus::kOk);
  auto r = transport::ParseReply(reply);
  EXPECT_EQ(r->outputs.size(), 2u * config_.hidden_size * 4);
  const DispatchServerCounters c = server_->counters();
  EXPECT_EQ(c.dispatches_total, 1);
  EXPECT_EQ(c.rows_total, 2);
  EXPECT_EQ(c.expert_rows[held[0]], 1);
}

TEST_F(ExpertDataPlaneServerTest, EveryBadMessageGetsACountedErrorReply) {
  const std::vector<int32_t> held = server_->experts();
  const std::vector<std::byte> good = Request({held[0]}, 3);
  // Truncated, garbage, empty: malformed.
  std::vector<std::vector<std::byte>> bad = {
      std::vector<std::byte>(good.begin(), good.end() - 1), std::vector<std::byte>(7),
      std::vector<std::byte>()};
  std::vector<std::byte> magic = good;
  magic[0] = std::byte{0};
  bad.push_back(magic);
  std::mt19937 rng(5);
  for (int i = 0; i < 200; ++i) {
    std::vector<std::byte> m = good;
    m[rng() % 48] ^= std::byte{static_cast<unsigned char>(1 + rng() % 255)};
    bad.push_back(m);
  }
  int64_t errors = 0;
  for (const auto& m : bad) {
    const auto reply = server_->HandleMessage(m);
    auto r = transport::ParseReply(reply);
    ASSERT_TRUE(r.ok()) << r.status();
    if (r->header.status != 0) ++errors;
  }
  // A wrong layer (dense layer 0) is malformed too.
  EXPECT_EQ(StatusOf(server_->HandleMessage(Request({held[0]}, 3, 0))), WireStatus::kMalformed);
  const DispatchServerCounters c = server_->counters();
  EXPECT_GE(c.errors.at("malformed"), 5);
  EXPECT_GT(errors, 100);
}

TEST_F(ExpertDataPlaneServerTest, StaleVersionAndMissingExpertAreDistinct) {
  const std::vector<int32_t> held = server_->experts();
  int32_t other = 0;
  while (std::find(held.begin(), held.end(), other) != held.end()) ++other;
  EXPECT_EQ(StatusOf(server_->HandleMessage(Request({held[0]}, 2))),
            WireStatus::kPlacementMismatch);
  EXPECT_EQ(StatusOf(server_->HandleMessage(Request({other}, 3))), WireStatus::kNotFound);
  // Planned with a newer table the shard has not loaded: re-plan, not a bug.
  EXPECT_EQ(StatusOf(server_->HandleMessage(Request({other}, 4))),
            WireStatus::kPlacementMismatch);
  EXPECT_EQ(StatusOf(server_->HandleMessage(Request({held[0]}, 4))), WireStatus::kOk);
  const DispatchServerCounters c = server_->counters();
  EXPECT_EQ(c.errors.at("placement_version"), 2);
  EXPECT_EQ(c.errors.at("not_found"), 1);
}

TEST_F(ExpertDataPlaneServerTest, LoadExpertsRefusesOlderVersions) {
  router::Placement older = placement_;
  older.version = 2;
  EXPECT_EQ(server_->LoadExperts(older).code(), absl::StatusCode::kFailedPrecondition);
  router::Placement all = placement_;
  all.version = 5;
  for (auto& r : all.replicas) r = {1};
  ASSERT_TRUE(server_->LoadExperts(all).ok());
  EXPECT_EQ(server_->experts().size(), static_cast<size_t>(config_.n_routed_experts));
}

// A table or dispatch more than 2^20 versions ahead is refused (a corrupt or
// hostile number), never adopted: the shard keeps serving its version.
TEST_F(ExpertDataPlaneServerTest, VersionsFarAheadAreRefused) {
  const std::vector<int32_t> held = server_->experts();
  const uint64_t current = placement_.version;
  EXPECT_EQ(StatusOf(server_->HandleMessage(Request({held[0]}, current + (1u << 20) + 1))),
            WireStatus::kMalformed);
  EXPECT_EQ(StatusOf(server_->HandleMessage(Request({held[0]}, current))), WireStatus::kOk);
  router::Placement far = placement_;
  far.version = current + (uint64_t{1} << 32);
  EXPECT_EQ(server_->LoadExperts(far).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(server_->placement_version(), current);
  router::Placement next = placement_;
  next.version = current + (1u << 20);  // exactly the largest jump
  EXPECT_TRUE(server_->LoadExperts(next).ok());
  EXPECT_EQ(server_->placement_version(), current + (1u << 20));
}

TEST_F(ExpertDataPlaneServerTest, SparseShardIdsHoldOnlyWhatTheTableGives) {
  // This is shard 1. Version 4: shards {0, 3} only (1 and 2 absent).
  router::Placement p = placement_;
  p.version = 4;
  for (size_t e = 0; e < p.replicas.size(); ++e) p.replicas[e] = {e % 2 ? 3 : 0};
  ASSERT_TRUE(server_->LoadExperts(p).ok());
  EXPECT_TRUE(server_->experts().empty());
  EXPECT_EQ(server_->placement_version(), 4u);
  EXPECT_EQ(StatusOf(server_->HandleMessage(Request({0}, 4))), WireStatus::kNotFound);
  // Version 5: shards {1, 3}; shard 1 gains the even experts.
  p.version = 5;
  for (size_t e = 0; e < p.replicas.size(); ++e) p.replicas[e] = {e % 2 ? 3 : 1};
  ASSERT_TRUE(server_->LoadExperts(p).ok());
  EXPECT_EQ(server_->experts(), p.ExpertsOf(1));
  EXPECT_EQ(StatusOf(server_->HandleMessage(Request({0, 2}, 5))), WireStatus::kOk);
  // Version 6: one shard, id 0; this shard's id is past the table's.
  p.version = 6;
  p.num_shards = 1;
  for (auto& r : p.replicas) r = {0};
  ASSERT_TRUE(server_->LoadExperts(p).ok());
  EXPECT_TRUE(server_->experts().empty());
}

}  // namespace
}  // namespace dsv2
