#include "coordinator/cluster_state.h"

#include <thread>

#include "gtest/gtest.h"
#include "tests/common/wait_for.h"

namespace dsv2::coordinator {
namespace {

using testing_util::WaitFor;

const absl::Time kT0 = absl::FromUnixSeconds(1000);

// A cluster with attention nodes of the given capacities and one shard, and
// a published complete placement every node acknowledged.
std::vector<uint64_t> Serve(ClusterState& s, const std::vector<int64_t>& capacities) {
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < capacities.size(); ++i) {
    ids.push_back(s.RegisterAttentionNode("node" + std::to_string(i), capacities[i], 0, kT0));
  }
  EXPECT_TRUE(s.RegisterShard(0, "shard0", "ucx", 0, kT0).ok());
  s.Publish(PublishedPlacement{1, {0}}, true);
  for (uint64_t id : ids) s.SetAttentionVersion(id, 1);
  return ids;
}

NodeAssignment Admit(ClusterState& s, int64_t need) {
  absl::StatusOr<uint64_t> t = s.Enqueue(need);
  EXPECT_TRUE(t.ok()) << t.status();
  absl::StatusOr<std::optional<NodeAssignment>> a = s.WaitForNode(*t, absl::ZeroDuration());
  EXPECT_TRUE(a.ok() && a->has_value());
  return a.ok() && a->has_value() ? **a : NodeAssignment{};
}

// The first member of an empty cluster sets the weights fingerprint;
// later ones must match it; once every member is gone, a new one may set
// another (a whole cluster moved to new weights).
TEST(ClusterState, WeightsFingerprintIsTheLiveMembers) {
  ClusterState s(AdmissionOptions{});
  EXPECT_EQ(s.weights_fingerprint(), "");
  ASSERT_TRUE(s.AdmitWeightsFingerprint("00000000000000aa").ok());
  const uint64_t a = s.RegisterAttentionNode("a", 100, 0, kT0);
  EXPECT_EQ(s.weights_fingerprint(), "00000000000000aa");
  const absl::Status other = s.AdmitWeightsFingerprint("00000000000000bb");
  EXPECT_EQ(other.code(), absl::StatusCode::kInvalidArgument) << other;
  EXPECT_NE(other.message().find("model mismatch"), std::string::npos) << other;
  EXPECT_EQ(s.weights_fingerprint(), "00000000000000aa");  // unchanged
  ASSERT_TRUE(s.AdmitWeightsFingerprint("00000000000000aa").ok());
  absl::StatusOr<uint64_t> shard = s.RegisterShard(0, "s", "ucx", 0, kT0);
  ASSERT_TRUE(shard.ok());
  ASSERT_TRUE(s.Remove(a));
  EXPECT_FALSE(s.AdmitWeightsFingerprint("00000000000000bb").ok());  // the shard is live
  ASSERT_TRUE(s.Remove(*shard, /*dead=*/true));
  EXPECT_EQ(s.weights_fingerprint(), "");
  EXPECT_TRUE(s.AdmitWeightsFingerprint("00000000000000bb").ok());
  s.RegisterAttentionNode("b", 100, 0, kT0);
  EXPECT_EQ(s.weights_fingerprint(), "00000000000000bb");
}

// Membership authorization (mutual TLS): the identity that registered a
// node is the only one that may act as it; a node restarting at its address
// is replaced only by the same identity.
TEST(ClusterState, OnlyTheRegisteringIdentityActsAsItsNode) {
  ClusterState s(AdmissionOptions{});
  const std::string a = "spiffe://dsv2/attention/a", b = "spiffe://dsv2/attention/b";
  const uint64_t node = s.RegisterAttentionNode("10.0.0.1:1", 64, 0, kT0, a);
  absl::StatusOr<uint64_t> shard =
      s.RegisterShard(3, "10.0.0.2:1", "10.0.0.2:2", 0, kT0, "spiffe://dsv2/expert/3");
  ASSERT_TRUE(shard.ok());
  EXPECT_TRUE(s.CheckOwner(node, a).ok());
  EXPECT_TRUE(s.CheckOwner(*shard, "spiffe://dsv2/expert/3").ok());
  EXPECT_TRUE(absl::IsPermissionDenied(s.CheckOwner(node, b)));
  EXPECT_TRUE(absl::IsPermissionDenied(s.CheckOwner(node, "")));
  EXPECT_TRUE(absl::IsPermissionDenied(s.CheckOwner(*shard, a)));
  EXPECT_TRUE(absl::IsNotFound(s.CheckOwner(node + 1000, a)));
  EXPECT_TRUE(s.CheckAttentionAddressOwner("10.0.0.1:1", a).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(s.CheckAttentionAddressOwner("10.0.0.1:1", b)));
  EXPECT_TRUE(s.CheckAttentionAddressOwner("10.0.0.9:1", b).ok());
  // Plaintext clusters register with no identity: all the same one.
  const uint64_t plain = s.RegisterAttentionNode("10.0.0.3:1", 64, 0, kT0);
  EXPECT_TRUE(s.CheckOwner(plain, "").ok());
  // Gone: NotFound, whoever asks.
  ASSERT_TRUE(s.Remove(node));
  EXPECT_TRUE(absl::IsNotFound(s.CheckOwner(node, a)));
  EXPECT_TRUE(s.CheckAttentionAddressOwner("10.0.0.1:1", b).ok());
}

// Leaves are remembered (a hand-off, not a failure) for the last
// kRememberedLeaves nodes only: bounded over a coordinator's life.
TEST(ClusterState, RemembersTheLastLeavesOnly) {
  ClusterState s(AdmissionOptions{});
  std::vector<uint64_t> ids;
  for (size_t i = 0; i <= ClusterState::kRememberedLeaves; ++i) {
    ids.push_back(s.RegisterAttentionNode("n" + std::to_string(i), 100, 0, kT0));
    ASSERT_TRUE(s.Remove(ids.back()));
  }
  EXPECT_FALSE(s.AttentionNodeLeft(ids.front()));
  EXPECT_TRUE(s.AttentionNodeLeft(ids[1]));
  EXPECT_TRUE(s.AttentionNodeLeft(ids.back()));
  const uint64_t dead = s.RegisterAttentionNode("d", 100, 0, kT0);
  ASSERT_TRUE(s.Remove(dead, /*dead=*/true));
  EXPECT_FALSE(s.AttentionNodeLeft(dead));
}

TEST(ClusterState, UnavailableWithoutNodesOrPlacement) {
  ClusterState s(AdmissionOptions{});
  EXPECT_EQ(s.LargestCapacity().status().code(), absl::StatusCode::kUnavailable);
  const uint64_t a = s.RegisterAttentionNode("a", 100, 0, kT0);
  EXPECT_EQ(s.LargestCapacity().status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(s.RegisterShard(3, "s", "ucx", 0, kT0).ok());
  EXPECT_EQ(s.LargestCapacity().status().code(), absl::StatusCode::kUnavailable);
  s.Publish(PublishedPlacement{1, {3}}, true);
  s.SetAttentionVersion(a, 1);
  ASSERT_TRUE(s.LargestCapacity().ok());
  EXPECT_EQ(*s.LargestCapacity(), 100);
  // The only shard dies: the placement is no longer complete.
  EXPECT_EQ(s.ExpireDead(kT0 + absl::Seconds(10), absl::Seconds(3)).size(), 2u);
  EXPECT_EQ(s.LargestCapacity().status().code(), absl::StatusCode::kUnavailable);
}

TEST(ClusterState, LeastCacheLoadGetsTheRequest) {
  ClusterState s(AdmissionOptions{});
  const std::vector<uint64_t> ids = Serve(s, {1000, 2000});
  // Both empty: lower id first.
  EXPECT_EQ(Admit(s, 100).node_id, ids[0]);  // loads 0.1 / 0
  EXPECT_EQ(Admit(s, 100).node_id, ids[1]);  // 0.1 / 0.05
  EXPECT_EQ(Admit(s, 100).node_id, ids[1]);  // 0.1 vs 0.05 -> B; now 0.1 / 0.1
  EXPECT_EQ(Admit(s, 100).node_id, ids[0]);  // 0.1 / 0.1 tie -> lower id
  s.Release(ids[0], 100);
  s.Release(ids[0], 100);
  EXPECT_EQ(Admit(s, 100).node_id, ids[0]);
}

TEST(ClusterState, NodesBehindThePublishedVersionGetNothing) {
  ClusterState s(AdmissionOptions{});
  const std::vector<uint64_t> ids = Serve(s, {1000, 1000});
  s.Publish(PublishedPlacement{2, {0}}, true);
  s.SetAttentionVersion(ids[1], 2);
  EXPECT_EQ(Admit(s, 10).node_id, ids[1]);
  EXPECT_EQ(Admit(s, 10).node_id, ids[1]);
}

TEST(ClusterState, QueueIsFifoBoundedAndWaitsForRoom) {
  AdmissionOptions o;
  o.max_queued = 2;
  ClusterState s(o);
  const std::vector<uint64_t> ids = Serve(s, {256});
  const NodeAssignment first = Admit(s, 200);
  EXPECT_EQ(first.node_id, ids[0]);
  // No room: the next two wait, a third is refused at once.
  absl::StatusOr<uint64_t> t1 = s.Enqueue(100);
  absl::StatusOr<uint64_t> t2 = s.Enqueue(10);
  ASSERT_TRUE(t1.ok() && t2.ok());
  EXPECT_EQ(s.Enqueue(1).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.queued(), 2);
  // FIFO: t2 would fit but waits behind t1.
  EXPECT_FALSE(s.WaitForNode(*t2, absl::Milliseconds(10))->has_value());
  EXPECT_FALSE(s.WaitForNode(*t1, absl::Milliseconds(10))->has_value());
  // Releasing wakes a waiter blocked in another thread: it is seen blocked
  // first, and it wakes long before its own timeout.
  EXPECT_EQ(s.blocked_waiters(), 0);
  std::optional<NodeAssignment> got;
  std::thread waiter([&] { got = *s.WaitForNode(*t1, absl::Minutes(5)); });
  EXPECT_TRUE(WaitFor([&] { return s.blocked_waiters() == 1; }, absl::Minutes(1)));
  s.Release(first.node_id, 200);
  EXPECT_TRUE(WaitFor([&] { return s.blocked_waiters() == 0; }, absl::Minutes(1)));
  waiter.join();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->node_id, ids[0]);
  EXPECT_TRUE(s.WaitForNode(*t2, absl::ZeroDuration())->has_value());
  EXPECT_EQ(s.queued(), 0);
}

TEST(ClusterState, SuspectNodeGetsNoWorkUntilTwoMoreHeartbeats) {
  ClusterState s(AdmissionOptions{});
  const std::vector<uint64_t> ids = Serve(s, {1000, 1000});
  s.Suspect(ids[0]);
  EXPECT_EQ(Admit(s, 10).node_id, ids[1]);
  EXPECT_EQ(Admit(s, 10).node_id, ids[1]);  // ids[0] is less loaded, but suspect
  ASSERT_TRUE(s.Heartbeat(ids[0], 1, 0, kT0 + absl::Seconds(1)).ok());
  EXPECT_EQ(Admit(s, 10).node_id, ids[1]);  // one heartbeat may have been in flight
  ASSERT_TRUE(s.Heartbeat(ids[0], 1, 0, kT0 + absl::Seconds(2)).ok());
  EXPECT_EQ(Admit(s, 10).node_id, ids[0]);
  s.Suspect(12345);  // unknown: no-op
  // The only node suspect: a request waits (it is not refused).
  ClusterState one(AdmissionOptions{});
  const uint64_t only = Serve(one, {1000})[0];
  one.Suspect(only);
  absl::StatusOr<uint64_t> t = one.Enqueue(10);
  ASSERT_TRUE(t.ok());
  absl::StatusOr<std::optional<NodeAssignment>> a = one.WaitForNode(*t, absl::Milliseconds(5));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_FALSE(a->has_value());
  // ... until the heartbeat timeout removes it: then Unavailable.
  one.ExpireDead(kT0 + absl::Seconds(10), absl::Seconds(3));
  EXPECT_EQ(one.WaitForNode(*t, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(ClusterState, ResumedRequestGoesFirstAndIgnoresTheQueueBound) {
  AdmissionOptions o;
  o.max_queued = 1;
  ClusterState s(o);
  Serve(s, {100});
  const NodeAssignment first = Admit(s, 100);
  absl::StatusOr<uint64_t> waiting = s.Enqueue(50);
  ASSERT_TRUE(waiting.ok());
  EXPECT_EQ(s.Enqueue(50).status().code(), absl::StatusCode::kResourceExhausted);
  absl::StatusOr<uint64_t> resumed = s.Enqueue(50, /*resumed=*/true);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(s.queued(), 2);
  s.Release(first.node_id, 100);
  EXPECT_FALSE(s.WaitForNode(*waiting, absl::ZeroDuration())->has_value());
  ASSERT_TRUE(s.WaitForNode(*resumed, absl::ZeroDuration())->has_value());
  EXPECT_TRUE(s.WaitForNode(*waiting, absl::ZeroDuration())->has_value());
}

TEST(ClusterState, NodeIdsCarryTheIncarnationSoARestartNeverAliasesThem) {
  ClusterState before(AdmissionOptions{}, 5);
  ClusterState after(AdmissionOptions{}, 6);  // the coordinator restarted
  const uint64_t old_a = before.RegisterAttentionNode("a", 100, 0, kT0);
  const uint64_t old_s = *before.RegisterShard(0, "s", "ucx", 0, kT0);
  EXPECT_EQ(old_a >> 32, 5u);
  EXPECT_EQ(old_s >> 32, 5u);
  EXPECT_NE(old_a, old_s);
  // The same registrations in the same order on the new incarnation.
  const uint64_t new_b = after.RegisterAttentionNode("b", 100, 0, kT0);
  const uint64_t new_s = *after.RegisterShard(0, "s", "ucx", 0, kT0);
  EXPECT_EQ(new_b >> 32, 6u);
  EXPECT_NE(new_b, old_a);
  EXPECT_NE(new_s, old_s);
  // A survivor's heartbeat with its old id is NotFound (it registers again);
  // it never refreshes the new node that took the same slot number.
  EXPECT_EQ(after.Heartbeat(old_a, 0, 0, kT0 + absl::Seconds(5)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(after.ExpireDead(kT0 + absl::Seconds(5), absl::Seconds(3)).size(), 2u);
  for (int i = 0; i < 1000; ++i) {
    const uint32_t inc = RandomIncarnation();
    ASSERT_GE(inc, 1u);
    ASSERT_LT(inc, uint32_t{1} << 31);
  }
}

TEST(ClusterState, ReportedVersionsFarAboveTheKnownOnesAreRefused) {
  ClusterState s(AdmissionOptions{});
  // A fresh coordinator: members report what they served before it restarted.
  EXPECT_TRUE(s.CheckReportedVersion(1000).ok());
  const uint64_t a = s.RegisterAttentionNode("a", 100, 1000, kT0);
  EXPECT_EQ(s.max_reported_version(), 1000u);
  EXPECT_TRUE(s.CheckReportedVersion(1000 + (uint64_t{1} << 20)).ok());
  EXPECT_EQ(s.CheckReportedVersion(1001 + (uint64_t{1} << 20)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.CheckReportedVersion(uint64_t{1} << 32).code(), absl::StatusCode::kInvalidArgument);
  // Versions above 2^32 are kept whole (64-bit), never wrapped.
  s.Publish(PublishedPlacement{(uint64_t{1} << 32) + 5, {}}, false);
  EXPECT_TRUE(s.CheckReportedVersion((uint64_t{1} << 32) + 6).ok());
  ASSERT_TRUE(s.Heartbeat(a, (uint64_t{1} << 32) + 5, 0, kT0).ok());
  EXPECT_EQ(s.max_reported_version(), (uint64_t{1} << 32) + 5);
}

TEST(ClusterState, MemberAddressesAreHostPortOrRefused) {
  for (const char* good :
       {"10.0.0.7:50100", "dsv2-attention-0.dsv2.svc:1", "[::1]:65535", "localhost:443"}) {
    EXPECT_TRUE(ValidateMemberAddress(good, "grpc_address").ok()) << good;
  }
  for (const char* bad :
       {"", "host", "host:", ":80", "host:0", "host:65536", "host:123456", "ho st:80", "host:80\n",
        "unix:/tmp/sock", "a:b:80", "[::1:80", "host:-1"}) {
    const absl::Status st = ValidateMemberAddress(bad, "grpc_address");
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(st.message().find("grpc_address"), absl::string_view::npos) << st;
  }
  EXPECT_FALSE(ValidateMemberAddress(std::string(250, 'a') + ":80000", "x").ok());
  EXPECT_FALSE(ValidateMemberAddress(std::string(260, 'a') + ":80", "x").ok());
}

TEST(ClusterState, ASmallNodeDoesNotCapRequestsThatALargerOneCanHold) {
  ClusterState s(AdmissionOptions{});
  const std::vector<uint64_t> ids = Serve(s, {100, 2000});
  ASSERT_TRUE(s.LargestCapacity().ok());
  EXPECT_EQ(*s.LargestCapacity(), 2000);
  EXPECT_EQ(Admit(s, 1500).node_id, ids[1]);  // only the large node can hold it
  EXPECT_EQ(Admit(s, 50).node_id, ids[0]);
}

TEST(ClusterState, ZeroQueueStillAdmitsWhatRunsAtOnce) {
  AdmissionOptions o;
  o.max_queued = 0;
  ClusterState s(o);
  Serve(s, {100});
  Admit(s, 60);
  EXPECT_EQ(s.Enqueue(60).status().code(), absl::StatusCode::kResourceExhausted);
  Admit(s, 40);
}

TEST(ClusterState, NothingIsHandedOutWhileThePlacementIsIncomplete) {
  ClusterState s(AdmissionOptions{});
  Serve(s, {1000});
  const uint64_t shard_node = s.shards()[0].node_id;
  ASSERT_TRUE(s.Remove(shard_node, /*dead=*/true));
  absl::StatusOr<uint64_t> t = s.Enqueue(10);
  ASSERT_TRUE(t.ok());
  EXPECT_FALSE(s.WaitForNode(*t, absl::Milliseconds(10))->has_value());
  // The shard is back and a new complete version published: it goes.
  ASSERT_TRUE(s.RegisterShard(0, "shard0", "ucx", 0, kT0).ok());
  s.Publish(PublishedPlacement{2, {0}}, true);
  s.SetAttentionVersion(s.attention_nodes()[0].node_id, 2);
  EXPECT_TRUE(s.WaitForNode(*t, absl::Milliseconds(10))->has_value());
}

TEST(ClusterState, HeadThatNoNodeCanHoldAnyMoreFailsInsteadOfBlocking) {
  ClusterState s(AdmissionOptions{});
  const std::vector<uint64_t> ids = Serve(s, {1000});
  Admit(s, 900);
  absl::StatusOr<uint64_t> big = s.Enqueue(800);
  absl::StatusOr<uint64_t> small = s.Enqueue(10);
  ASSERT_TRUE(big.ok() && small.ok());
  // The large node goes; a small one comes.
  s.Remove(ids[0], /*dead=*/true);
  const uint64_t small_node = s.RegisterAttentionNode("small", 100, 1, kT0);
  s.SetAttentionVersion(small_node, 1);
  absl::StatusOr<std::optional<NodeAssignment>> a = s.WaitForNode(*big, absl::ZeroDuration());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kUnavailable) << a.status();
  EXPECT_NE(std::string(a.status().message()).find("800"), std::string::npos);
  a = s.WaitForNode(*small, absl::ZeroDuration());
  ASSERT_TRUE(a.ok() && a->has_value());
  EXPECT_EQ((*a)->node_id, small_node);
}

TEST(ClusterState, AbandonedTicketLeavesTheQueue) {
  AdmissionOptions o;
  o.max_queued = 1;
  ClusterState s(o);
  Serve(s, {100});
  Admit(s, 100);
  absl::StatusOr<uint64_t> t = s.Enqueue(50);
  ASSERT_TRUE(t.ok());
  EXPECT_FALSE(s.Enqueue(50).ok());
  s.Abandon(*t);
  EXPECT_TRUE(s.Enqueue(50).ok());
}

TEST(ClusterState, LosingEveryAttentionNodeFailsWaiters) {
  ClusterState s(AdmissionOptions{});
  const std::vector<uint64_t> ids = Serve(s, {100});
  Admit(s, 100);
  absl::StatusOr<uint64_t> t = s.Enqueue(50);
  ASSERT_TRUE(t.ok());
  s.Remove(ids[0]);
  EXPECT_EQ(s.WaitForNode(*t, absl::Seconds(1)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.queued(), 0);
}

TEST(ClusterState, HeartbeatsKeepNodesAliveAndUnknownIdsAreNotFound) {
  ClusterState s(AdmissionOptions{});
  const uint64_t a = s.RegisterAttentionNode("a", 100, 0, kT0);
  absl::StatusOr<uint64_t> sh = s.RegisterShard(1, "s", "ucx", 7, kT0);
  ASSERT_TRUE(sh.ok());
  EXPECT_EQ(s.max_reported_version(), 7u);
  EXPECT_TRUE(s.Heartbeat(a, 0, 0, kT0 + absl::Seconds(2)).ok());
  EXPECT_EQ(s.Heartbeat(999, 0, 0, kT0).code(), absl::StatusCode::kNotFound);
  const std::vector<uint64_t> dead = s.ExpireDead(kT0 + absl::Seconds(4), absl::Seconds(3));
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0], *sh);
  EXPECT_EQ(s.attention_nodes().size(), 1u);
  EXPECT_TRUE(s.shards().empty());
  EXPECT_EQ(s.Heartbeat(*sh, 0, 0, kT0).code(), absl::StatusCode::kNotFound);
  // Dead until a shard with its id registers again; a node that leaves is
  // not dead.
  EXPECT_EQ(s.dead_counts().shards, 1);
  EXPECT_EQ(s.dead_counts().attention, 0);
  ASSERT_TRUE(s.RegisterShard(1, "s2", "ucx", 0, kT0).ok());
  EXPECT_EQ(s.dead_counts().shards, 0);
  EXPECT_TRUE(s.Remove(a));
  EXPECT_EQ(s.dead_counts().attention, 0);
}

TEST(ClusterState, ShardIdIsStableIdentityAndReRegistrationReplaces) {
  ClusterState s(AdmissionOptions{});
  const uint64_t gen0 = s.shard_generation();
  absl::StatusOr<uint64_t> first = s.RegisterShard(2, "old:1", "u1", 0, kT0);
  absl::StatusOr<uint64_t> second = s.RegisterShard(2, "new:2", "u2", 0, kT0);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_NE(*first, *second);
  ASSERT_EQ(s.shards().size(), 1u);
  EXPECT_EQ(s.shards()[0].address, "new:2");
  EXPECT_EQ(s.shard_generation(), gen0 + 2);
  EXPECT_EQ(s.Heartbeat(*first, 0, 0, kT0).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.RegisterShard(-1, "x", "u", 0, kT0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.RegisterShard(ClusterState::kMaxShardId, "x", "u", 0, kT0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dsv2::coordinator
