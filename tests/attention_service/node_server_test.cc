// AttentionNodeServer + AttentionEngine in one process: a real gRPC server
// on an OS-chosen loopback port, the in-process data plane to an
// ExpertDataPlaneServer. Covers what the cluster tests cannot reach cheaply:
// cancellation freeing cache blocks, draining, placement errors.
#include "attention_service/node_server.h"

#include <grpcpp/grpcpp.h>

#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "attention_service/layer_loop.h"
#include "attention_service/scheduler.h"
#include "expert_service/data_plane_server.h"
#include "gtest/gtest.h"
#include "service/service_common.h"
#include "tests/common/conformance_checkpoint.h"
#include "tests/common/hooked_expert_backend.h"
#include "tests/common/wait_for.h"
#include "transport/in_process_data_plane.h"

namespace dsv2 {
namespace {

using testing_util::WaitFor;

class NodeServerTest : public testing_util::ConformanceCheckpointTest {
 protected:
  void SetUp() override {
    ConformanceCheckpointTest::SetUp();
    if (HasFatalFailure()) return;
    const kernels::CpuContext ctx{kernels::BestCpuIsa(), nullptr};
    shard_ = std::make_unique<ExpertDataPlaneServer>(config_, *ckpt_, ctx, 0);
    auto p = router::DefaultPlacement(router::GateParams::FromConfig(config_), 1, 1);
    ASSERT_TRUE(p.ok());
    placement_ = *p;
    ASSERT_TRUE(shard_->LoadExperts(placement_).ok());
    plane_ = transport::CreateInProcessServer(
        [this](std::span<const std::byte> m) { return shard_->HandleMessage(m); });
    client_ = transport::CreateInProcessClient();
    backend_ = std::make_unique<DataPlaneExpertBackend>(*client_, RemoteExpertsOptions{});
    // The engine reaches the shard through the hook (holding it mid-step).
    hooked_ = std::make_unique<testing_util::HookedExpertBackend>(*backend_);
    auto cache = LatentCache::Create(config_.num_hidden_layers, config_.latent_dim(),
                                     weights_->activation_dtype(), 8);
    ASSERT_TRUE(cache.ok());
    cache_ = *std::move(cache);
    loop_ = std::make_unique<LayerLoop>(*weights_, *cache_, *hooked_, ctx);
    SchedulerOptions so;
    // ConcurrentRequestsEqualTheSameRequestsAlone's three requests may all
    // reach the engine before its next step: all three must fit the queue.
    so.max_waiting = 3;
    so.eos_token_ids = config_.eos_token_ids;
    scheduler_ = std::make_unique<Scheduler>(config_, *loop_, *cache_, so);
    engine_ = std::make_unique<AttentionEngine>(*scheduler_, *cache_);
    node_ = std::make_unique<AttentionNodeServer>(config_, *engine_, *backend_);
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(node_.get());
    server_ = b.BuildAndStart();
    ASSERT_NE(port, 0);
    stub_ = internal::AttentionNode::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    if (hooked_) hooked_->Release();  // a failed test may have left it held
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
    if (engine_) engine_->Shutdown();
  }

  void SetPlacement() {
    internal::PlacementTable t = service::PlacementToProto(placement_);
    t.mutable_shards(0)->set_ucx_address(plane_->address());
    grpc::ClientContext ctx;
    internal::SetPlacementResponse resp;
    const grpc::Status st = stub_->SetPlacement(&ctx, t, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(resp.placement_version(), 1u);
  }

  struct Output {
    grpc::Status status;
    std::vector<int32_t> tokens;
  };
  Output Generate(std::vector<int32_t> prompt, int max_tokens, uint64_t id = 0) {
    internal::SubmitRequest req;
    req.set_request_id(id);
    for (int32_t t : prompt) req.add_prompt_ids(t);
    req.set_max_tokens(max_tokens);
    req.set_ignore_eos(true);
    grpc::ClientContext ctx;
    auto reader = stub_->Submit(&ctx, req);
    Output out;
    internal::SubmitResponse resp;
    while (reader->Read(&resp)) {
      out.tokens.insert(out.tokens.end(), resp.token_ids().begin(), resp.token_ids().end());
    }
    out.status = reader->Finish();
    return out;
  }

  internal::NodeStatus Status() {
    grpc::ClientContext ctx;
    internal::NodeStatus s;
    EXPECT_TRUE(stub_->GetStatus(&ctx, internal::NodeStatusRequest(), &s).ok());
    return s;
  }

  // Parks the engine at the start of its second step (after the first
  // step's events went out): a single sequence's step makes one dispatch per
  // MoE layer.
  void HoldFromSecondStep() { hooked_->HoldFrom(moe_layers()); }

  // The node's status once `done` holds for it (the engine publishes its
  // status after it delivered a step's events, so a client can see an event
  // before the status that goes with it).
  internal::NodeStatus StatusOnce(const std::function<bool(const internal::NodeStatus&)>& done) {
    internal::NodeStatus s;
    EXPECT_TRUE(WaitFor(
        [&] {
          s = Status();
          return done(s);
        },
        absl::Minutes(2)))
        << s.DebugString();
    return s;
  }
  static bool AllFree(const internal::NodeStatus& s) {
    return s.cache_free_tokens() == s.cache_capacity_tokens() && s.running() + s.waiting() == 0;
  }

  router::Placement placement_;
  std::unique_ptr<ExpertDataPlaneServer> shard_;
  std::unique_ptr<transport::DataPlaneServer> plane_;
  std::unique_ptr<transport::DataPlaneClient> client_;
  std::unique_ptr<DataPlaneExpertBackend> backend_;
  std::unique_ptr<testing_util::HookedExpertBackend> hooked_;
  std::unique_ptr<LatentCache> cache_;
  std::unique_ptr<LayerLoop> loop_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<AttentionEngine> engine_;
  std::unique_ptr<AttentionNodeServer> node_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<internal::AttentionNode::Stub> stub_;
};

TEST_F(NodeServerTest, UnavailableUntilAPlacementIsSet) {
  const Output before = Generate({5, 6, 7}, 4);
  EXPECT_EQ(before.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  SetPlacement();
  const Output after = Generate({5, 6, 7}, 4);
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.tokens.size(), 4u);
}

TEST_F(NodeServerTest, ConcurrentRequestsEqualTheSameRequestsAlone) {
  SetPlacement();
  const std::vector<std::vector<int32_t>> prompts = {{3, 4, 5}, {9}, {100, 200, 300, 400, 500}};
  std::vector<Output> alone;
  for (const auto& p : prompts) alone.push_back(Generate(p, 12));
  std::vector<Output> together(prompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] { together[i] = Generate(prompts[i], 12, 1000 + i); });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(together[i].status.ok()) << together[i].status.error_message();
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << i;
  }
  const internal::NodeStatus s =
      StatusOnce([](const internal::NodeStatus& s) { return s.requests_total() == 6; });
  EXPECT_EQ(s.requests_total(), 6);
  EXPECT_EQ(s.cache_free_tokens(), s.cache_capacity_tokens());
}

TEST_F(NodeServerTest, CancelledStreamFreesItsBlocksAtOnce) {
  SetPlacement();
  HoldFromSecondStep();
  internal::SubmitRequest req;
  req.set_request_id(7);
  for (int i = 0; i < 100; ++i) req.add_prompt_ids(10 + i);
  req.set_max_tokens(400);
  req.set_ignore_eos(true);
  grpc::ClientContext ctx;
  auto reader = stub_->Submit(&ctx, req);
  internal::SubmitResponse resp;
  ASSERT_TRUE(reader->Read(&resp));  // the first token
  // Held in its second step: the request runs and holds its blocks.
  ASSERT_TRUE(hooked_->WaitUntilHeld(absl::Minutes(2)));
  const internal::NodeStatus generating = Status();
  EXPECT_EQ(generating.running(), 1);
  EXPECT_LT(generating.cache_free_tokens(), generating.cache_capacity_tokens());
  EXPECT_EQ(generating.steps_total(), 1);
  ctx.TryCancel();
  while (reader->Read(&resp)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // The handler notices the cancelled stream (within one 50 ms poll) and
  // hands the cancel to the engine, which takes it after the held step.
  ASSERT_TRUE(WaitFor([&] { return engine_->stats().pending_commands == 1; }, absl::Minutes(2)));
  hooked_->Release();
  const internal::NodeStatus s = StatusOnce(AllFree);
  EXPECT_TRUE(AllFree(s)) << s.DebugString();
  // At once: right after the step that was running, long before the
  // request's 400 tokens; cancelled, never finished.
  EXPECT_EQ(s.steps_total(), 2);
  EXPECT_EQ(s.requests_total(), 0);
}

TEST_F(NodeServerTest, AdmissionErrorsKeepTheirCodes) {
  SetPlacement();
  // 8 blocks of 64 tokens: 500 + 100 can never fit.
  std::vector<int32_t> long_prompt(500, 3);
  const Output too_big = Generate(long_prompt, 100);
  EXPECT_EQ(too_big.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(too_big.status.error_message().find("512"), std::string::npos)
      << too_big.status.error_message();
  EXPECT_EQ(Generate({1, 2}, 0).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Generate({static_cast<int32_t>(config_.vocab_size)}, 3).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Generate({1, 2}, 3).status.ok());
}

TEST_F(NodeServerTest, LogprobsOnePerTokenWithTheRequestedAlternatives) {
  SetPlacement();
  internal::SubmitRequest req;
  for (int32_t t : {3, 4, 5}) req.add_prompt_ids(t);
  req.set_max_tokens(6);
  req.set_ignore_eos(true);
  req.set_logprobs(3);
  grpc::ClientContext ctx;
  auto reader = stub_->Submit(&ctx, req);
  internal::SubmitResponse resp;
  int tokens = 0;
  while (reader->Read(&resp)) {
    ASSERT_EQ(resp.logprobs_size(), resp.token_ids_size());
    for (int i = 0; i < resp.logprobs_size(); ++i) {
      const v1::TokenLogprob& lp = resp.logprobs(i);
      EXPECT_EQ(lp.token_id(), resp.token_ids(i));
      EXPECT_LE(lp.logprob(), 0.0f);
      ASSERT_EQ(lp.top_size(), 3);
      // Greedy (temperature 0): the token is the most likely one.
      EXPECT_EQ(lp.top(0).token_id(), lp.token_id());
      EXPECT_EQ(lp.top(0).logprob(), lp.logprob());
      for (int k = 1; k < lp.top_size(); ++k) {
        EXPECT_LE(lp.top(k).logprob(), lp.top(k - 1).logprob());
      }
      ++tokens;
    }
  }
  const grpc::Status st = reader->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(tokens, 6);
  // Unset: no logprobs at all.
  internal::SubmitRequest plain = req;
  plain.clear_logprobs();
  grpc::ClientContext ctx2;
  auto reader2 = stub_->Submit(&ctx2, plain);
  while (reader2->Read(&resp)) EXPECT_EQ(resp.logprobs_size(), 0);
  EXPECT_TRUE(reader2->Finish().ok());
}

TEST_F(NodeServerTest, LogprobsOutOfRangeIsInvalidArgumentNamingTheField) {
  SetPlacement();
  for (int32_t n : {21, -1}) {
    internal::SubmitRequest req;
    req.add_prompt_ids(3);
    req.set_max_tokens(2);
    req.set_logprobs(n);
    grpc::ClientContext ctx;
    auto reader = stub_->Submit(&ctx, req);
    internal::SubmitResponse resp;
    EXPECT_FALSE(reader->Read(&resp));
    const grpc::Status st = reader->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << n;
    EXPECT_NE(st.error_message().find("logprobs"), std::string::npos) << st.error_message();
  }
}

TEST_F(NodeServerTest, PlacementErrors) {
  SetPlacement();
  internal::PlacementTable older = service::PlacementToProto(placement_);
  older.set_version(0);
  grpc::ClientContext c1;
  internal::SetPlacementResponse resp;
  EXPECT_EQ(stub_->SetPlacement(&c1, older, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  internal::PlacementTable short_table = service::PlacementToProto(placement_);
  short_table.set_version(5);
  short_table.mutable_experts()->RemoveLast();
  short_table.mutable_shards(0)->set_ucx_address(plane_->address());
  grpc::ClientContext c2;
  EXPECT_EQ(stub_->SetPlacement(&c2, short_table, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Status().placement_version(), 1u);
}

TEST_F(NodeServerTest, CancelRpcEndsTheSubmitStream) {
  SetPlacement();
  HoldFromSecondStep();
  internal::SubmitRequest req;
  req.set_request_id(9);
  req.add_prompt_ids(4);
  req.set_max_tokens(400);
  req.set_ignore_eos(true);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(5));
  auto reader = stub_->Submit(&ctx, req);
  internal::SubmitResponse resp;
  ASSERT_TRUE(reader->Read(&resp));
  // Still running (held in its second step) when the Cancel RPC arrives.
  ASSERT_TRUE(hooked_->WaitUntilHeld(absl::Minutes(2)));
  internal::CancelResponse cresp;
  grpc::Status cancel_status;
  std::thread cancel([&] {
    grpc::ClientContext cctx;
    internal::CancelRequest creq;
    creq.set_request_id(9);
    cancel_status = stub_->Cancel(&cctx, creq, &cresp);
  });
  EXPECT_TRUE(WaitFor([&] { return engine_->stats().pending_commands == 1; }, absl::Minutes(2)));
  hooked_->Release();
  cancel.join();
  ASSERT_TRUE(cancel_status.ok()) << cancel_status.error_message();
  EXPECT_TRUE(cresp.found());
  while (reader->Read(&resp)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  const internal::NodeStatus s = StatusOnce(AllFree);
  EXPECT_TRUE(AllFree(s)) << s.DebugString();
  EXPECT_EQ(s.steps_total(), 2);
  EXPECT_EQ(s.requests_total(), 0);
}

TEST_F(NodeServerTest, ShardIdsMustBeBounded) {
  SetPlacement();
  internal::PlacementTable t = service::PlacementToProto(placement_);
  t.set_version(2);
  t.mutable_shards(0)->set_shard_id(5000000);
  t.mutable_shards(0)->set_ucx_address(plane_->address());
  grpc::ClientContext ctx;
  internal::SetPlacementResponse resp;
  EXPECT_EQ(stub_->SetPlacement(&ctx, t, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Status().placement_version(), 1u);
}

TEST_F(NodeServerTest, SparseShardIdsAreAccepted) {
  SetPlacement();
  const Output dense = Generate({5, 6, 7}, 4);
  ASSERT_TRUE(dense.status.ok()) << dense.status.error_message();
  // Version 2 lives on shard 2 alone (shards 0 and 1 gone; ids stay stable).
  ExpertDataPlaneServer shard2(config_, *ckpt_, kernels::CpuContext{kernels::BestCpuIsa(), nullptr},
                              2);
  auto plane2 = transport::CreateInProcessServer(
      [&shard2](std::span<const std::byte> m) { return shard2.HandleMessage(m); });
  internal::PlacementTable t;
  t.set_version(2);
  for (int64_t e = 0; e < config_.n_routed_experts; ++e) t.add_experts()->add_shard_ids(2);
  internal::ShardEndpoint* ep = t.add_shards();
  ep->set_shard_id(2);
  ep->set_ucx_address(plane2->address());
  auto p = service::PlacementFromProto(t, static_cast<int32_t>(config_.n_routed_experts));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_shards, 3);
  ASSERT_TRUE(shard2.LoadExperts(*p).ok());
  grpc::ClientContext ctx;
  internal::SetPlacementResponse resp;
  const grpc::Status st = stub_->SetPlacement(&ctx, t, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(Status().placement_version(), 2u);
  const Output sparse = Generate({5, 6, 7}, 4);
  ASSERT_TRUE(sparse.status.ok()) << sparse.status.error_message();
  EXPECT_EQ(sparse.tokens, dense.tokens);
  EXPECT_GT(shard2.counters().dispatches_total, 0);
  // Stop before shard2 and plane2 go away (TearDown's calls are no-ops then).
  server_->Shutdown(std::chrono::system_clock::now());
  engine_->Shutdown();
}

TEST_F(NodeServerTest, DrainWaitsForARequestThatJustArrived) {
  SetPlacement();
  HoldFromSecondStep();
  Output out;
  std::thread client([&] { out = Generate({7, 8, 9}, 150); });
  // Admitted and held mid-generation: the drain starts while it runs.
  EXPECT_TRUE(hooked_->WaitUntilHeld(absl::Minutes(2)));
  EXPECT_EQ(Status().running(), 1);
  bool drained = false;
  std::thread drain([&] { drained = engine_->Drain(absl::Minutes(5)); });
  EXPECT_TRUE(WaitFor([&] { return Status().draining(); }, absl::Minutes(2)));
  hooked_->Release();
  drain.join();
  client.join();
  EXPECT_TRUE(drained);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.tokens.size(), 150u);
}

TEST_F(NodeServerTest, DrainingRefusesNewRequests) {
  SetPlacement();
  EXPECT_TRUE(engine_->Drain(absl::Seconds(5)));
  EXPECT_EQ(Generate({1, 2}, 3).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(Status().draining());
}

}  // namespace
}  // namespace dsv2
