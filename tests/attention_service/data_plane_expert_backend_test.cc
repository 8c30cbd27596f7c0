// DataPlaneExpertBackend + ExpertDataPlaneServer over the in-process data
// plane: the layer loop gives bitwise the logits of the single-process
// engine, re-plans across placement versions, and fails a step with
// UNAVAILABLE (leaving it re-runnable) when a shard goes away.
#include "attention_service/data_plane_expert_backend.h"

#include <atomic>
#include <functional>
#include <numeric>
#include <thread>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "attention_service/layer_loop.h"
#include "expert_service/data_plane_server.h"
#include "expert_service/expert_compute.h"
#include "gtest/gtest.h"
#include "tests/common/conformance_checkpoint.h"
#include "tests/common/wait_for.h"
#include "transport/in_process_data_plane.h"
#include "transport/wire.h"

namespace dsv2 {
namespace {

using testing_util::WaitFor;

class DataPlaneExpertBackendTest : public testing_util::ConformanceCheckpointTest {
 protected:
  void SetUp() override {
    ConformanceCheckpointTest::SetUp();
    if (HasFatalFailure()) return;
    ctx_ = kernels::CpuContext{kernels::BestCpuIsa(), nullptr};
    gate_ = router::GateParams::FromConfig(config_);
  }

  // Starts one shard server per shard of `placement`, holding its experts.
  // Shard 1's handler first calls `shard1_hook` when given (which may block
  // to hold the request; join the servers before what it uses goes).
  void StartShards(const router::Placement& placement,
                   std::function<void()> shard1_hook = nullptr) {
    for (int32_t s = 0; s < placement.num_shards; ++s) {
      servers_.push_back(std::make_unique<ExpertDataPlaneServer>(config_, *ckpt_, ctx_, s));
      ASSERT_TRUE(servers_.back()->LoadExperts(placement).ok());
      ExpertDataPlaneServer* srv = servers_.back().get();
      std::function<void()> hook = s == 1 ? shard1_hook : nullptr;
      planes_.push_back(transport::CreateInProcessServer([srv, hook](std::span<const std::byte> m) {
        if (hook) hook();
        return srv->HandleMessage(m);
      }));
      addresses_.push_back(planes_.back()->address());
    }
  }

  std::vector<std::vector<int32_t>> Prompts() {
    return {{5, 9, 300, 7, 44, 12}, {3}, {100, 200, 300, 400, 500, 600, 700, 800, 900, 17, 18}};
  }

  // Logits of one step over the prompts with `backend` (fresh cache).
  absl::Status RunStep(ExpertBackend& backend, std::vector<std::vector<float>>* logits,
                       int64_t micro_batch_rows = 0) {
    auto cache = LatentCache::Create(config_.num_hidden_layers, config_.latent_dim(),
                                     weights_->activation_dtype(), 16);
    if (!cache.ok()) return cache.status();
    LayerLoopOptions o;
    o.min_rows_for_micro_batches = micro_batch_rows;
    LayerLoop loop(*weights_, **cache, backend, ctx_, o);
    std::vector<std::vector<int32_t>> prompts = Prompts();
    std::vector<SequenceCache> seqs(prompts.size());
    std::vector<StepSequence> batch;
    for (size_t i = 0; i < prompts.size(); ++i) {
      batch.push_back(StepSequence{&seqs[i], prompts[i], true, 100 + i});
    }
    StepOutput out;
    absl::Status st = loop.Step(batch, &out);
    if (!st.ok()) {
      for (const SequenceCache& s : seqs) EXPECT_EQ(s.num_tokens, 0);
    }
    if (st.ok()) *logits = out.logits;
    return st;
  }

  std::vector<std::vector<float>> LocalLogits() {
    std::vector<int32_t> all(config_.n_routed_experts);
    std::iota(all.begin(), all.end(), 0);
    auto w = ExpertWeightSet::Load(config_, *ckpt_, ExpertWeightSet::AllLayers(config_, all));
    EXPECT_TRUE(w.ok());
    ExpertCompute shard(config_, *std::move(w), ctx_);
    InProcessExpertBackend local([&](const router::ExpertDispatch& d) { return shard.Handle(d); });
    std::vector<std::vector<float>> logits;
    EXPECT_TRUE(RunStep(local, &logits).ok());
    return logits;
  }

  // Every address as a shard of membership `node_id` (0: a static table).
  static std::vector<ShardTarget> Targets(const std::vector<std::string>& addresses,
                                          uint64_t node_id = 0) {
    std::vector<ShardTarget> targets;
    for (const std::string& a : addresses) targets.push_back(ShardTarget{a, node_id});
    return targets;
  }

  // Error replies "placement_version" of every shard so far.
  int64_t VersionMismatches() const {
    int64_t n = 0;
    for (const auto& s : servers_) {
      const DispatchServerCounters c = s->counters();
      if (auto it = c.errors.find("placement_version"); it != c.errors.end()) n += it->second;
    }
    return n;
  }

  kernels::CpuContext ctx_;
  router::GateParams gate_;
  std::vector<std::unique_ptr<ExpertDataPlaneServer>> servers_;
  std::vector<std::unique_ptr<transport::DataPlaneServer>> planes_;
  std::vector<std::string> addresses_;
};

TEST_F(DataPlaneExpertBackendTest, LogitsEqualSingleProcessForAnyShardCount) {
  const std::vector<std::vector<float>> expected = LocalLogits();
  for (int32_t shards : {1, 3, 8, 12}) {
    SCOPED_TRACE(shards);
    servers_.clear();
    planes_.clear();
    addresses_.clear();
    auto placement = router::DefaultPlacement(gate_, shards, 1);
    ASSERT_TRUE(placement.ok());
    StartShards(*placement);
    auto client = transport::CreateInProcessClient();
    DataPlaneExpertBackend backend(*client, {});
    ASSERT_TRUE(backend.SetPlacement(*placement, Targets(addresses_)).ok());
    for (int64_t mb : {0, 1}) {
      std::vector<std::vector<float>> logits;
      ASSERT_TRUE(RunStep(backend, &logits, mb).ok());
      EXPECT_EQ(logits, expected) << "micro-batch rows " << mb;
    }
    EXPECT_EQ(backend.stats().failures, 0);
  }
}

TEST_F(DataPlaneExpertBackendTest, StaleVersionIsReplannedAfterNewPlacement) {
  const std::vector<std::vector<float>> expected = LocalLogits();
  auto v1 = router::DefaultPlacement(gate_, 2, 1);
  ASSERT_TRUE(v1.ok());
  StartShards(*v1);
  auto client = transport::CreateInProcessClient();
  // The step must outlast the wait below on a loaded machine.
  RemoteExpertsOptions o;
  o.dispatch_timeout = absl::Minutes(5);
  DataPlaneExpertBackend backend(*client, o);
  ASSERT_TRUE(backend.SetPlacement(*v1, Targets(addresses_)).ok());
  // The shards move to version 2 (groups swapped between them) first.
  router::Placement v2 = *v1;
  v2.version = 2;
  for (auto& r : v2.replicas) r[0] = 1 - r[0];
  for (auto& s : servers_) ASSERT_TRUE(s->LoadExperts(v2).ok());
  // The node learns version 2 only once a shard has refused a version-1
  // dispatch of the running step: the step is then stuck re-sending until
  // the new placement re-plans it.
  std::thread late([&] {
    EXPECT_TRUE(WaitFor([&] { return VersionMismatches() > 0; }, absl::Minutes(2)));
    EXPECT_TRUE(backend.SetPlacement(v2, Targets(addresses_)).ok());
  });
  std::vector<std::vector<float>> logits;
  ASSERT_TRUE(RunStep(backend, &logits).ok());
  late.join();
  EXPECT_EQ(logits, expected);
  EXPECT_GT(backend.stats().resends, 0);
  EXPECT_EQ(backend.stats().failures, 0);
}

TEST_F(DataPlaneExpertBackendTest, DeadShardFailsTheStepWithUnavailableThenRecovers) {
  const std::vector<std::vector<float>> expected = LocalLogits();
  auto v1 = router::DefaultPlacement(gate_, 2, 1);
  ASSERT_TRUE(v1.ok());
  StartShards(*v1);
  auto client = transport::CreateInProcessClient();
  RemoteExpertsOptions o;
  o.dispatch_timeout = absl::Milliseconds(300);
  DataPlaneExpertBackend backend(*client, o);
  ASSERT_TRUE(backend.SetPlacement(*v1, Targets(addresses_)).ok());
  planes_[1]->Shutdown();
  std::vector<std::vector<float>> logits;
  // The step ends (no hang) with UNAVAILABLE from the dispatch deadline,
  // naming the dead shard; RunStep checks that no sequence advanced.
  const absl::Status st = RunStep(backend, &logits);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "unreachable within 300ms")) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "(shards 1 failed or silent)")) << st;
  EXPECT_EQ(backend.stats().failures, 1);
  // A placement without shard 1 restores service with the same numbers.
  router::Placement v2 = *v1;
  v2.version = 2;
  for (auto& r : v2.replicas) r = {0};
  ASSERT_TRUE(servers_[0]->LoadExperts(v2).ok());
  ASSERT_TRUE(backend.SetPlacement(v2, Targets(addresses_)).ok());
  ASSERT_TRUE(RunStep(backend, &logits).ok());
  EXPECT_EQ(logits, expected);
}

// A shard that hangs (accepts the dispatch, never replies) is waited for in
// slices: a newer placement without it is used at once, not after the
// dispatch deadline (an hour here: without the slices this test would hang
// until ctest's timeout), and only the rows it held are re-sent.
TEST_F(DataPlaneExpertBackendTest, HungShardIsBypassedByANewerPlacementResendingOnlyItsRows) {
  const std::vector<std::vector<float>> expected = LocalLogits();
  auto v1 = router::DefaultPlacement(gate_, 2, 1);
  ASSERT_TRUE(v1.ok());
  std::atomic<int> hung{0};
  absl::Notification release;
  StartShards(*v1, [&] {
    ++hung;
    release.WaitForNotification();
  });
  auto client = transport::CreateInProcessClient();
  RemoteExpertsOptions o;
  o.dispatch_timeout = absl::Hours(1);
  DataPlaneExpertBackend backend(*client, o);
  ASSERT_TRUE(backend.SetPlacement(*v1, Targets(addresses_)).ok());
  // Once shard 1 holds a dispatch and shard 0 has answered its share, the
  // coordinator's new placement (all on shard 0) arrives. (Had shard 0
  // moved to version 2 first, it would refuse its version-1 share as stale
  // and that share would rightly go again.)
  std::thread coordinator([&] {
    EXPECT_TRUE(
        WaitFor([&] { return hung.load() > 0 && servers_[0]->counters().dispatches_total > 0; },
                absl::Minutes(2)));
    router::Placement v2 = *v1;
    v2.version = 2;
    for (auto& r : v2.replicas) r = {0};
    EXPECT_TRUE(servers_[0]->LoadExperts(v2).ok());
    EXPECT_TRUE(backend.SetPlacement(v2, Targets(addresses_)).ok());
  });
  std::vector<std::vector<float>> logits;
  const absl::Status st = RunStep(backend, &logits);
  coordinator.join();
  EXPECT_EQ(hung.load(), 1);  // still silent: the step did not wait for it
  release.Notify();
  // The handlers use `release`: joined before it goes.
  for (auto& plane : planes_) plane->Shutdown();
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(logits, expected);
  const RemoteExpertsStats stats = backend.stats();
  EXPECT_EQ(stats.failures, 0);
  EXPECT_EQ(stats.resends, 1);
  // Only the hung shard's share of that dispatch went again.
  const int64_t tokens = 6 + 1 + 11;  // Prompts()
  EXPECT_GT(stats.resent_assignments, 0);
  EXPECT_LT(stats.resent_assignments, tokens * config_.num_experts_per_tok);
}

// A shard whose connection failed but that no newer placement removes (it
// is alive to the coordinator: here a process restarted at the same
// address) gets a new connection after kReconnectAfter, and its rows go
// there; the step does not wait out its deadline.
TEST_F(DataPlaneExpertBackendTest, FailedConnectionToAPlacedShardIsMadeAgain) {
  const std::vector<std::vector<float>> expected = LocalLogits();
  auto v1 = router::DefaultPlacement(gate_, 2, 1);
  ASSERT_TRUE(v1.ok());
  StartShards(*v1);
  auto client = transport::CreateInProcessClient();
  RemoteExpertsOptions o;
  o.dispatch_timeout = absl::Minutes(2);  // without the reconnect: UNAVAILABLE after it
  DataPlaneExpertBackend backend(*client, o);
  ASSERT_TRUE(backend.SetPlacement(*v1, Targets(addresses_, 7)).ok());
  // Shard 1's process goes away and a new one listens at its address; the
  // placement (node 7) does not change.
  planes_[1]->Shutdown();
  ExpertDataPlaneServer* srv = servers_[1].get();
  planes_[1] = transport::CreateInProcessServerAt(
      addresses_[1], [srv](std::span<const std::byte> m) { return srv->HandleMessage(m); });
  std::vector<std::vector<float>> logits;
  const absl::Status st = RunStep(backend, &logits);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(logits, expected);
  const RemoteExpertsStats stats = backend.stats();
  EXPECT_EQ(stats.failures, 0);
  EXPECT_EQ(stats.reconnects, 1);
  EXPECT_GT(planes_[1]->stats().replies_sent, 0);
}

// A client whose Connect to one address blocks until released (a host that
// does not answer: UCX waits out its connect timeout).
class BlockingConnectClient final : public transport::DataPlaneClient {
 public:
  BlockingConnectClient(transport::DataPlaneClient& inner, std::string blocked)
      : inner_(inner), blocked_(std::move(blocked)) {}
  absl::StatusOr<transport::PeerId> Connect(const std::string& address) override {
    if (address == blocked_ && armed_.load()) {
      ++blocked_connects_;
      release_.WaitForNotification();
      return absl::UnavailableError("no answer");
    }
    return inner_.Connect(address);
  }
  void Disconnect(transport::PeerId peer) override { inner_.Disconnect(peer); }
  absl::StatusOr<uint64_t> Send(transport::PeerId peer, std::vector<std::byte> m) override {
    return inner_.Send(peer, std::move(m));
  }
  absl::StatusOr<std::vector<std::byte>> Wait(uint64_t t, absl::Time d) override {
    return inner_.Wait(t, d);
  }
  absl::StatusOr<std::vector<std::byte>> Poll(uint64_t t, absl::Time u) override {
    return inner_.Poll(t, u);
  }
  void Forget(uint64_t t) override { inner_.Forget(t); }

  std::atomic<bool> armed_{false};
  std::atomic<int> blocked_connects_{0};
  absl::Notification release_;

 private:
  transport::DataPlaneClient& inner_;
  const std::string blocked_;
};

// A shard that died while its reconnect hangs (its host does not answer):
// the newer placement without it is used the moment it is set; the engine
// thread never waits for the connect.
TEST_F(DataPlaneExpertBackendTest, AHangingReconnectDoesNotDelayANewerPlacement) {
  const std::vector<std::vector<float>> expected = LocalLogits();
  auto v1 = router::DefaultPlacement(gate_, 2, 1);
  ASSERT_TRUE(v1.ok());
  StartShards(*v1);
  auto inner = transport::CreateInProcessClient();
  BlockingConnectClient client(*inner, addresses_[1]);
  RemoteExpertsOptions o;
  o.dispatch_timeout = absl::Minutes(2);
  auto backend = std::make_unique<DataPlaneExpertBackend>(client, o);
  ASSERT_TRUE(backend->SetPlacement(*v1, Targets(addresses_, 3)).ok());
  client.armed_ = true;
  planes_[1]->Shutdown();
  std::thread coordinator([&] {
    // Once the reconnect hangs, the coordinator removes shard 1.
    EXPECT_TRUE(WaitFor([&] { return client.blocked_connects_.load() > 0; }, absl::Minutes(1)));
    router::Placement v2 = *v1;
    v2.version = 2;
    for (auto& r : v2.replicas) r = {0};
    EXPECT_TRUE(servers_[0]->LoadExperts(v2).ok());
    EXPECT_TRUE(backend->SetPlacement(v2, Targets(addresses_, 3)).ok());
  });
  std::vector<std::vector<float>> logits;
  const absl::Status st = RunStep(*backend, &logits);
  coordinator.join();
  // The step ended while the connect still hangs.
  EXPECT_FALSE(client.release_.HasBeenNotified());
  client.release_.Notify();
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(logits, expected);
  EXPECT_EQ(backend->stats().failures, 0);
  backend.reset();  // joins the reconnect thread
}

// A placement that names a new membership (node id) at a shard's address
// drops the old connection at once: what it carried is re-sent over a new
// one. Here the old connection swallowed a request (the handler holds it,
// as a half-open TCP connection after a partition would): without the drop
// the step would wait for it until its deadline and fail.
TEST_F(DataPlaneExpertBackendTest, NewMembershipAtAShardAddressGetsANewConnection) {
  const std::vector<std::vector<float>> expected = LocalLogits();
  auto v1 = router::DefaultPlacement(gate_, 2, 1);
  ASSERT_TRUE(v1.ok());
  std::atomic<int> held{0};
  absl::Notification release;
  StartShards(*v1, [&] {
    if (held.fetch_add(1) == 0) release.WaitForNotification();
  });
  auto client = transport::CreateInProcessClient();
  RemoteExpertsOptions o;
  o.dispatch_timeout = absl::Minutes(2);  // without the drop: UNAVAILABLE after it
  DataPlaneExpertBackend backend(*client, o);
  ASSERT_TRUE(backend.SetPlacement(*v1, Targets(addresses_, 1)).ok());
  std::thread coordinator([&] {
    // Shard 1 holds the first request; it re-registers (node 2, same
    // address) and the coordinator publishes version 2.
    EXPECT_TRUE(WaitFor([&] { return held.load() > 0; }, absl::Minutes(2)));
    router::Placement v2 = *v1;
    v2.version = 2;
    for (auto& s : servers_) EXPECT_TRUE(s->LoadExperts(v2).ok());
    std::vector<ShardTarget> targets = Targets(addresses_, 1);
    targets[1].node_id = 2;
    EXPECT_TRUE(backend.SetPlacement(v2, targets).ok());
    // The held request's rows went again, queued behind it: let it go.
    EXPECT_TRUE(WaitFor([&] { return backend.stats().resends > 0; }, absl::Minutes(2)));
    release.Notify();
  });
  std::vector<std::vector<float>> logits;
  const absl::Status st = RunStep(backend, &logits);
  coordinator.join();
  // The handlers use `release`: joined before it goes.
  for (auto& plane : planes_) plane->Shutdown();
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(logits, expected);
  const RemoteExpertsStats stats = backend.stats();
  EXPECT_EQ(stats.failures, 0);
  EXPECT_EQ(stats.reconnects, 1);
}

TEST_F(DataPlaneExpertBackendTest, SparseShardIdsServeWithoutAddressesForAbsentShards) {
  // Shards 0..3; shard 1 dies and the next table (the coordinator keeps shard
  // ids stable) holds shards {0, 2, 3}: shard 1 needs no address.
  const std::vector<std::vector<float>> expected = LocalLogits();
  auto v1 = router::DefaultPlacement(gate_, 4, 1);
  ASSERT_TRUE(v1.ok());
  StartShards(*v1);
  auto client = transport::CreateInProcessClient();
  DataPlaneExpertBackend backend(*client, {});
  ASSERT_TRUE(backend.SetPlacement(*v1, Targets(addresses_)).ok());
  planes_[1]->Shutdown();
  router::Placement v2 = *v1;
  v2.version = 2;
  for (auto& r : v2.replicas) {
    if (r == std::vector<int32_t>{1}) r = {2};
  }
  ASSERT_TRUE(v2.ExpertsOf(1).empty());
  for (int s : {0, 2, 3}) ASSERT_TRUE(servers_[s]->LoadExperts(v2).ok());
  std::vector<std::string> addresses = addresses_;
  addresses[1].clear();
  ASSERT_TRUE(backend.SetPlacement(v2, Targets(addresses)).ok());
  std::vector<std::vector<float>> logits;
  ASSERT_TRUE(RunStep(backend, &logits).ok());
  EXPECT_EQ(logits, expected);
  EXPECT_EQ(backend.stats().failures, 0);
  // A shard the table uses still needs its address.
  router::Placement v3 = v2;
  v3.version = 3;
  addresses[3].clear();
  EXPECT_EQ(backend.SetPlacement(v3, Targets(addresses)).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(DataPlaneExpertBackendTest, OlderPlacementIsRefused) {
  auto v2 = router::DefaultPlacement(gate_, 1, 2);
  ASSERT_TRUE(v2.ok());
  StartShards(*v2);
  auto client = transport::CreateInProcessClient();
  DataPlaneExpertBackend backend(*client, {});
  EXPECT_FALSE(backend.ready());
  ASSERT_TRUE(backend.SetPlacement(*v2, Targets(addresses_)).ok());
  EXPECT_TRUE(backend.ready());
  router::Placement v1 = *v2;
  v1.version = 1;
  EXPECT_EQ(backend.SetPlacement(v1, Targets(addresses_)).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(backend.SetPlacement(*v2, {}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend.placement_version(), 2u);
}

}  // namespace
}  // namespace dsv2
