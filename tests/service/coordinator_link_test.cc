// CoordinatorLink against an in-process stand-in for the coordinator's
// membership service (a real gRPC server on loopback), and placement tables
// with sparse shard ids.
#include "service/coordinator_link.h"

#include <grpcpp/grpcpp.h>

#include <memory>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "coordinator.grpc.pb.h"
#include "gtest/gtest.h"
#include "service/service_common.h"
#include "tests/common/wait_for.h"

namespace dsv2::service {
namespace {

// Records calls; answers Heartbeat NOT_FOUND for ids in `forget`.
class FakeCoordinator final : public internal::Coordinator::Service {
 public:
  grpc::Status Register(grpc::ServerContext* ctx, const internal::RegisterRequest* req,
                        internal::RegisterResponse* out) override {
    absl::MutexLock lock(&mu);
    if (hang) {
      // Holds the call until the client cancels it (or 60 s pass).
      ++hung_calls;
      const absl::Time end = absl::Now() + absl::Seconds(60);
      while (!ctx->IsCancelled() && absl::Now() < end) {
        mu.AwaitWithTimeout(absl::Condition(&never), absl::Milliseconds(5));
      }
      if (ctx->IsCancelled()) ++cancelled_calls;
      return grpc::Status(grpc::UNAVAILABLE, "hung");
    }
    if (refuse) return grpc::Status(grpc::INVALID_ARGUMENT, "model mismatch");
    registrations.push_back(*req);
    out->set_node_id(next_id++);
    out->set_heartbeat_interval_ms(20);
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const internal::HeartbeatRequest* req,
                         internal::HeartbeatResponse*) override {
    absl::MutexLock lock(&mu);
    heartbeats.push_back(*req);
    if (forget == req->node_id()) return grpc::Status(grpc::NOT_FOUND, "unknown node");
    return grpc::Status::OK;
  }
  grpc::Status Leave(grpc::ServerContext*, const internal::LeaveRequest* req,
                     internal::LeaveResponse*) override {
    absl::MutexLock lock(&mu);
    left.push_back(req->node_id());
    return grpc::Status::OK;
  }

  // Waits up to 5 s for `cond` (called with mu held).
  template <typename F>
  bool WaitFor(F cond) {
    absl::MutexLock lock(&mu);
    return mu.AwaitWithTimeout(absl::Condition(&cond), absl::Seconds(5));
  }

  absl::Mutex mu;
  const bool never = false;
  bool refuse ABSL_GUARDED_BY(mu) = false;
  bool hang ABSL_GUARDED_BY(mu) = false;
  int hung_calls ABSL_GUARDED_BY(mu) = 0;
  int cancelled_calls ABSL_GUARDED_BY(mu) = 0;
  uint64_t forget ABSL_GUARDED_BY(mu) = 0;
  uint64_t next_id ABSL_GUARDED_BY(mu) = 1;
  std::vector<internal::RegisterRequest> registrations ABSL_GUARDED_BY(mu);
  std::vector<internal::HeartbeatRequest> heartbeats ABSL_GUARDED_BY(mu);
  std::vector<uint64_t> left ABSL_GUARDED_BY(mu);
};

struct Server {
  explicit Server(FakeCoordinator* service, int port = 0) {
    grpc::ServerBuilder b;
    b.AddListeningPort(absl::StrCat("127.0.0.1:", port), grpc::InsecureServerCredentials(),
                       &this->port);
    b.RegisterService(service);
    server = b.BuildAndStart();
  }
  ~Server() { server->Shutdown(std::chrono::system_clock::now()); }
  int port = 0;
  std::unique_ptr<grpc::Server> server;
};

CoordinatorLinkOptions Options(int port) {
  CoordinatorLinkOptions o;
  o.coordinator_address = absl::StrCat("127.0.0.1:", port);
  o.registration.set_role(internal::NODE_ROLE_EXPERT_SHARD);
  o.registration.set_grpc_address("127.0.0.1:1234");
  o.registration.set_shard_id(3);
  o.registration.set_ucx_address("ucx");
  o.load = [](internal::HeartbeatRequest* hb) {
    hb->set_placement_version(7);
    hb->set_resident_bytes(4096);
  };
  o.retry_interval = absl::Milliseconds(20);
  return o;
}

TEST(CoordinatorLink, RegistersHeartbeatsAndLeaves) {
  FakeCoordinator fake;
  Server server(&fake);
  CoordinatorLink link(Options(server.port));
  link.Start();
  ASSERT_TRUE(link.WaitRegistered(absl::Seconds(5)).ok());
  {
    absl::MutexLock lock(&fake.mu);
    ASSERT_EQ(fake.registrations.size(), 1u);
    EXPECT_EQ(fake.registrations[0].shard_id(), 3);
    EXPECT_EQ(fake.registrations[0].grpc_address(), "127.0.0.1:1234");
    EXPECT_EQ(fake.registrations[0].placement_version(), 7u);
  }
  ASSERT_TRUE(fake.WaitFor([&] { return fake.heartbeats.size() >= 3; }));
  {
    absl::MutexLock lock(&fake.mu);
    EXPECT_EQ(fake.heartbeats[0].node_id(), 1u);
    EXPECT_EQ(fake.heartbeats[0].placement_version(), 7u);
    EXPECT_EQ(fake.heartbeats[0].resident_bytes(), 4096);
  }
  link.Stop();
  link.Stop();  // idempotent
  absl::MutexLock lock(&fake.mu);
  EXPECT_EQ(fake.left, std::vector<uint64_t>{1});
  // No call after Stop returned.
  const size_t heartbeats = fake.heartbeats.size();
  fake.mu.AwaitWithTimeout(absl::Condition(&fake.never), absl::Milliseconds(100));
  EXPECT_EQ(fake.heartbeats.size(), heartbeats);
}

TEST(CoordinatorLink, AttentionRegistrationCarriesItsFields) {
  FakeCoordinator fake;
  Server server(&fake);
  CoordinatorLinkOptions o = Options(server.port);
  o.registration = internal::RegisterRequest();
  o.registration.set_role(internal::NODE_ROLE_ATTENTION);
  o.registration.set_grpc_address("node:7");
  o.registration.set_cache_capacity_tokens(16384);
  o.registration.set_vocab_size(1024);
  o.registration.set_num_layers(3);
  o.registration.set_n_routed_experts(160);
  o.load = [](internal::HeartbeatRequest* hb) {
    hb->set_placement_version(2);
    hb->set_cache_free_tokens(100);
    hb->set_running(3);
    hb->set_waiting(4);
  };
  CoordinatorLink link(std::move(o));
  link.Start();
  ASSERT_TRUE(link.WaitRegistered(absl::Seconds(5)).ok());
  ASSERT_TRUE(fake.WaitFor([&] { return !fake.heartbeats.empty(); }));
  absl::MutexLock lock(&fake.mu);
  const internal::RegisterRequest& r = fake.registrations.at(0);
  EXPECT_EQ(r.role(), internal::NODE_ROLE_ATTENTION);
  EXPECT_EQ(r.grpc_address(), "node:7");
  EXPECT_EQ(r.cache_capacity_tokens(), 16384);
  EXPECT_EQ(r.vocab_size(), 1024);
  EXPECT_EQ(r.num_layers(), 3);
  EXPECT_EQ(r.n_routed_experts(), 160);
  EXPECT_EQ(r.placement_version(), 2u);
  const internal::HeartbeatRequest& hb = fake.heartbeats.at(0);
  EXPECT_EQ(hb.cache_free_tokens(), 100);
  EXPECT_EQ(hb.running(), 3);
  EXPECT_EQ(hb.waiting(), 4);
}

TEST(CoordinatorLink, RegistersAgainWhenForgotten) {
  FakeCoordinator fake;
  Server server(&fake);
  CoordinatorLink link(Options(server.port));
  link.Start();
  ASSERT_TRUE(link.WaitRegistered(absl::Seconds(5)).ok());
  {
    absl::MutexLock lock(&fake.mu);
    fake.forget = 1;
  }
  ASSERT_TRUE(testing_util::WaitFor([&] { return link.registrations() == 2; }, absl::Seconds(30)));
  ASSERT_TRUE(fake.WaitFor(
      [&] { return !fake.heartbeats.empty() && fake.heartbeats.back().node_id() == 2; }));
  link.Stop();
  absl::MutexLock lock(&fake.mu);
  EXPECT_EQ(fake.registrations.size(), 2u);
  EXPECT_EQ(fake.left, std::vector<uint64_t>{2});  // the current registration
}

TEST(CoordinatorLink, WaitsForACoordinatorThatStartsLater) {
  // Reserve a port, then start the coordinator on it after the link.
  int port = 0;
  {
    FakeCoordinator probe;
    Server s(&probe);
    port = s.port;
  }
  CoordinatorLink link(Options(port));
  link.Start();
  // Long enough for several failed attempts (and gRPC reconnect backoffs).
  EXPECT_EQ(link.WaitRegistered(absl::Seconds(1)).code(), absl::StatusCode::kDeadlineExceeded);
  FakeCoordinator fake;
  Server server(&fake, port);
  ASSERT_NE(server.server, nullptr);
  EXPECT_TRUE(link.WaitRegistered(absl::Seconds(10)).ok());
}

TEST(CoordinatorLink, RefusalIsFatal) {
  FakeCoordinator fake;
  {
    absl::MutexLock lock(&fake.mu);
    fake.refuse = true;
  }
  Server server(&fake);
  CoordinatorLinkOptions o = Options(server.port);
  absl::Mutex mu;
  std::vector<absl::Status> reported;
  o.on_fatal = [&](const absl::Status& st) {
    absl::MutexLock lock(&mu);
    reported.push_back(st);
  };
  CoordinatorLink link(std::move(o));
  link.Start();
  const absl::Status st = link.WaitRegistered(absl::Seconds(5));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(st.message()).find("model mismatch"), std::string::npos);
  EXPECT_EQ(link.fatal().code(), absl::StatusCode::kInvalidArgument);
  link.Stop();  // joins a finished thread
  {
    absl::MutexLock lock(&mu);
    ASSERT_EQ(reported.size(), 1u);
    EXPECT_EQ(reported[0], st);
  }
  absl::MutexLock lock(&fake.mu);
  EXPECT_TRUE(fake.registrations.empty());
  EXPECT_TRUE(fake.left.empty());  // never registered: nothing to leave
}

TEST(CoordinatorLink, StopCancelsTheCallInFlight) {
  FakeCoordinator fake;
  {
    absl::MutexLock lock(&fake.mu);
    fake.hang = true;
  }
  Server server(&fake);
  CoordinatorLinkOptions o = Options(server.port);
  o.call_timeout = absl::Seconds(60);
  CoordinatorLink link(std::move(o));
  link.Start();
  ASSERT_TRUE(fake.WaitFor([&] { return fake.hung_calls > 0; }));
  link.Stop();
  EXPECT_EQ(link.WaitRegistered(absl::Seconds(1)).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(fake.WaitFor([&] { return fake.cancelled_calls > 0; }));
  absl::MutexLock lock(&fake.mu);
  EXPECT_TRUE(fake.left.empty());
}

TEST(CoordinatorLink, StopWithoutStartAndStartAfterStopDoNothing) {
  CoordinatorLink unused(Options(1));
  unused.Stop();
  unused.Start();
  EXPECT_EQ(unused.WaitRegistered(absl::Milliseconds(10)).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(PlacementFromProto, SparseStableShardIds) {
  // Shards 0 and 2 (1 died): experts split between them.
  internal::PlacementTable t;
  t.set_version(4);
  for (int e = 0; e < 4; ++e) t.add_experts()->add_shard_ids(e < 2 ? 0 : 2);
  for (int id : {2, 0}) {
    internal::ShardEndpoint* s = t.add_shards();
    s->set_shard_id(id);
    s->set_ucx_address("x");
  }
  absl::StatusOr<router::Placement> p = PlacementFromProto(t, 4);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_shards, 3);
  EXPECT_TRUE(p->ExpertsOf(1).empty());
  EXPECT_EQ(p->ExpertsOf(2), (std::vector<int32_t>{2, 3}));
  // An expert naming an unlisted shard, a duplicate, and an id past the bound.
  internal::PlacementTable bad = t;
  bad.mutable_experts(0)->set_shard_ids(0, 1);
  EXPECT_FALSE(PlacementFromProto(bad, 4).ok());
  bad = t;
  bad.mutable_shards(0)->set_shard_id(0);
  EXPECT_FALSE(PlacementFromProto(bad, 4).ok());
  bad = t;
  bad.mutable_shards(0)->set_shard_id(kMaxShardId);
  EXPECT_FALSE(PlacementFromProto(bad, 4).ok());
}

}  // namespace
}  // namespace dsv2::service
