// Cluster tests (DESIGN.md section 10): real dsv2-expert and dsv2-attention
// processes on loopback with real UCX and real gRPC, every process with
// --threads 1. Greedy output must be bitwise the single-process `dsv2 run`
// output, whatever the shard count, transport, placement, batch companions,
// chunking or preemption.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attention_node.grpc.pb.h"
#include "expert_shard.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/cluster/cluster_harness.h"
#include "tests/common/wait_for.h"

namespace dsv2::testing {
namespace {

using testing_util::WaitFor;

std::string ModelDir(const std::string& variant) {
  return SourceDir() + "/tests/data/conformance/" + variant;
}

struct Shard {
  std::unique_ptr<ChildProcess> process;
  int port = 0;
  std::string address() const { return absl::StrCat("127.0.0.1:", port); }
};

struct Node {
  std::unique_ptr<ChildProcess> process;
  int port = 0;
  std::unique_ptr<internal::AttentionNode::Stub> stub;
};

Shard StartShard(const std::string& model, int shard_id, int num_shards,
                 const std::string& transports, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv = {BinDir() + "/expert_service/dsv2-expert",
                                   "--model", model, "--shard-id", absl::StrCat(shard_id),
                                   "--num-shards", absl::StrCat(num_shards), "--threads", "1",
                                   "--ucx-transports", transports};
  argv.insert(argv.end(), extra.begin(), extra.end());
  Shard s;
  auto p = StartChild(argv);
  EXPECT_TRUE(p.ok()) << p.status();
  s.process = std::move(*p);
  auto line = s.process->ReadLine(absl::Seconds(60));
  EXPECT_TRUE(line.ok()) << line.status();
  auto f = ParseReadyLine(*line);
  EXPECT_EQ(line->rfind("dsv2-expert ready", 0), 0u) << *line;
  s.port = std::stoi(f["port"]);
  return s;
}

Node StartNode(const std::string& model, const std::vector<const Shard*>& shards,
               const std::string& transports, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> addrs;
  for (const Shard* s : shards) addrs.push_back(s->address());
  std::vector<std::string> argv = {BinDir() + "/attention_service/dsv2-attention",
                                   "--model", model, "--threads", "1",
                                   "--ucx-transports", transports};
  if (!addrs.empty()) {
    argv.push_back("--expert-shards");
    argv.push_back(absl::StrJoin(addrs, ","));
  }
  argv.insert(argv.end(), extra.begin(), extra.end());
  Node n;
  auto p = StartChild(argv);
  EXPECT_TRUE(p.ok()) << p.status();
  n.process = std::move(*p);
  auto line = n.process->ReadLine(absl::Seconds(60));
  EXPECT_TRUE(line.ok()) << line.status();
  EXPECT_EQ(line->rfind("dsv2-attention ready", 0), 0u) << *line;
  n.port = std::stoi(ParseReadyLine(*line)["port"]);
  n.stub = internal::AttentionNode::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", n.port), grpc::InsecureChannelCredentials()));
  return n;
}

struct Job {
  std::vector<int32_t> prompt;
  int max_tokens = 8;
  bool ignore_eos = false;
  absl::Duration delay;  // submitted this long after the start
};

struct Result {
  grpc::Status status;
  std::vector<int32_t> tokens;
  internal::FinishReason finish = internal::FINISH_REASON_UNSPECIFIED;
};

// `tokens` (may be null) counts the tokens received so far.
Result Generate(internal::AttentionNode::Stub& stub, const Job& job, uint64_t request_id,
                absl::Duration deadline = absl::Seconds(120), std::atomic<int>* tokens = nullptr) {
  internal::SubmitRequest req;
  req.set_request_id(request_id);
  for (int32_t t : job.prompt) req.add_prompt_ids(t);
  req.set_max_tokens(job.max_tokens);
  req.set_ignore_eos(job.ignore_eos);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  auto reader = stub.Submit(&ctx, req);
  Result r;
  internal::SubmitResponse resp;
  while (reader->Read(&resp)) {
    r.tokens.insert(r.tokens.end(), resp.token_ids().begin(), resp.token_ids().end());
    if (tokens != nullptr) *tokens += resp.token_ids_size();
    if (resp.finish_reason() != internal::FINISH_REASON_UNSPECIFIED) r.finish = resp.finish_reason();
  }
  r.status = reader->Finish();
  return r;
}

// Jobs of different prompt lengths and lengths, submitted at different
// times (deterministic per seed).
std::vector<Job> MakeJobs(int n, uint32_t seed, int vocab = 1024) {
  std::mt19937 rng(seed);
  std::vector<Job> jobs(n);
  for (int i = 0; i < n; ++i) {
    const int len = 1 + static_cast<int>(rng() % 40);
    for (int t = 0; t < len; ++t) jobs[i].prompt.push_back(2 + static_cast<int32_t>(rng() % (vocab - 2)));
    jobs[i].max_tokens = 4 + static_cast<int>(rng() % 12);
    jobs[i].delay = absl::Milliseconds(static_cast<int64_t>(rng() % 60));
  }
  return jobs;
}

// References from `dsv2 run`, cached per (model, prompt, max_tokens).
const std::vector<int32_t>& Reference(const std::string& model, const Job& job) {
  static std::map<std::string, std::vector<int32_t>> cache;
  const std::string key = absl::StrCat(model, "|", absl::StrJoin(job.prompt, ","), "|",
                                       job.max_tokens, "|", job.ignore_eos);
  auto it = cache.find(key);
  if (it == cache.end()) {
    auto ref = ReferenceOutput(model, job.prompt, job.max_tokens,
                               job.ignore_eos ? std::vector<std::string>{"--ignore-eos"}
                                              : std::vector<std::string>{});
    EXPECT_TRUE(ref.ok()) << ref.status();
    it = cache.emplace(key, ref.ok() ? *ref : std::vector<int32_t>{}).first;
  }
  return it->second;
}

// Jobs submitted concurrently, each after its delay (the delays only shape
// the arrivals: every output must equal `dsv2 run` whatever the timing),
// across `nodes` round-robin.
class JobRun {
 public:
  JobRun(const std::vector<Node*>& nodes, std::vector<Job> jobs, uint64_t id_base = 1)
      : jobs_(std::move(jobs)),
        results_(jobs_.size()),
        tokens_(std::make_unique<std::atomic<int>[]>(jobs_.size())) {
    for (size_t i = 0; i < jobs_.size(); ++i) {
      threads_.emplace_back([this, nodes, id_base, i] {
        absl::SleepFor(jobs_[i].delay);
        results_[i] = Generate(*nodes[i % nodes.size()]->stub, jobs_[i], id_base + i,
                               absl::Seconds(120), &tokens_[i]);
      });
    }
  }
  ~JobRun() { Join(); }

  // Tokens job i has received so far.
  int tokens(size_t i) const { return tokens_[i].load(); }
  const std::vector<Job>& jobs() const { return jobs_; }
  // Waits for every job; then results() holds their outcomes.
  void Join() {
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  const std::vector<Result>& results() const { return results_; }

 private:
  const std::vector<Job> jobs_;
  std::vector<Result> results_;
  std::unique_ptr<std::atomic<int>[]> tokens_;
  std::vector<std::thread> threads_;
};

// Every job of a joined run succeeded with the tokens of `dsv2 run`.
void ExpectReferenceOutputs(const std::string& model, const JobRun& run) {
  for (size_t i = 0; i < run.jobs().size(); ++i) {
    const Result& r = run.results()[i];
    ASSERT_TRUE(r.status.ok()) << "job " << i << ": " << r.status.error_message();
    EXPECT_EQ(r.tokens, Reference(model, run.jobs()[i])) << "job " << i;
    EXPECT_NE(r.finish, internal::FINISH_REASON_UNSPECIFIED);
  }
}

// Submits every job concurrently and checks each output against `dsv2 run`.
void RunAndCompare(const std::string& model, const std::vector<Node*>& nodes,
                   const std::vector<Job>& jobs, uint64_t id_base = 1) {
  JobRun run(nodes, jobs, id_base);
  run.Join();
  ExpectReferenceOutputs(model, run);
}

internal::NodeStatus Status(Node& n) {
  grpc::ClientContext ctx;
  internal::NodeStatus s;
  EXPECT_TRUE(n.stub->GetStatus(&ctx, internal::NodeStatusRequest(), &s).ok());
  return s;
}

// grpc.health.v1 Check on a process's gRPC port.
grpc::health::v1::HealthCheckResponse::ServingStatus Health(int port) {
  auto stub = grpc::health::v1::Health::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  grpc::health::v1::HealthCheckResponse resp;
  const grpc::Status st = stub->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return resp.status();
}

void ExpectCleanExit(ChildProcess& p) {
  auto st = p.Stop(SIGTERM, absl::Seconds(30));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << "status " << *st;
}

struct EquivalenceCase {
  std::string variant;
  int shards;
  std::string transports;
};

class ClusterEquivalence : public ::testing::TestWithParam<EquivalenceCase> {};

TEST_P(ClusterEquivalence, GreedyIdsEqualSingleProcess) {
  const EquivalenceCase& c = GetParam();
  const std::string model = ModelDir(c.variant);
  std::vector<Shard> shards;
  for (int s = 0; s < c.shards; ++s) shards.push_back(StartShard(model, s, c.shards, c.transports));
  std::vector<const Shard*> ptrs;
  for (const Shard& s : shards) ptrs.push_back(&s);
  Node node = StartNode(model, ptrs, c.transports, {"--micro-batch-min-rows", "8"});
  EXPECT_EQ(Health(node.port), grpc::health::v1::HealthCheckResponse::SERVING);
  for (const Shard& s : shards) {
    EXPECT_EQ(Health(s.port), grpc::health::v1::HealthCheckResponse::SERVING);
  }
  RunAndCompare(model, {&node}, MakeJobs(10, 7 + c.shards));
  const internal::NodeStatus st = Status(node);
  EXPECT_EQ(st.failed_steps_total(), 0);
  EXPECT_EQ(st.cache_free_tokens(), st.cache_capacity_tokens());
  ExpectCleanExit(*node.process);
  for (Shard& s : shards) ExpectCleanExit(*s.process);
}

INSTANTIATE_TEST_SUITE_P(
    Shards, ClusterEquivalence,
    ::testing::Values(EquivalenceCase{"v2_bf16", 1, "tcp"}, EquivalenceCase{"v2_bf16", 2, "tcp"},
                      EquivalenceCase{"v2_bf16", 4, "tcp"}, EquivalenceCase{"v2_bf16", 4, "sm"},
                      EquivalenceCase{"v2_f32", 2, "sm"}, EquivalenceCase{"lite_bf16", 3, "tcp"}),
    [](const ::testing::TestParamInfo<EquivalenceCase>& info) {
      return absl::StrCat(info.param.variant, "_", info.param.shards, "shards_",
                          info.param.transports);
    });

TEST(Cluster, TwoAttentionNodesShareShards) {
  const std::string model = ModelDir("v2_bf16");
  Shard s0 = StartShard(model, 0, 2, "tcp"), s1 = StartShard(model, 1, 2, "tcp");
  Node a = StartNode(model, {&s0, &s1}, "tcp");
  Node b = StartNode(model, {&s0, &s1}, "tcp");
  RunAndCompare(model, {&a, &b}, MakeJobs(10, 21));
}

TEST(Cluster, PreemptionAndChunkedPrefillKeepOutputs) {
  const std::string model = ModelDir("v2_bf16");
  Shard s0 = StartShard(model, 0, 2, "sm"), s1 = StartShard(model, 1, 2, "sm");
  // 4 blocks of 64 tokens: the 10 jobs (up to 55 tokens each) cannot all fit.
  // A budget of 1 token runs one sequence at a time (nothing to preempt);
  // 5 and 64 batch several, which outgrow the cache.
  for (const char* budget : {"1", "5", "64"}) {
    SCOPED_TRACE(absl::StrCat("max-step-tokens ", budget));
    Node n = StartNode(model, {&s0, &s1}, "sm",
                       {"--cache-tokens", "256", "--max-step-tokens", budget});
    // All at once and long enough that sequences outgrow their first block.
    std::vector<Job> jobs = MakeJobs(10, 33);
    for (Job& j : jobs) {
      j.delay = absl::ZeroDuration();
      j.max_tokens += 60;
      j.ignore_eos = true;
    }
    RunAndCompare(model, {&n}, jobs);
    const internal::NodeStatus st = Status(n);
    if (std::string(budget) != "1") {
      EXPECT_GT(st.preemptions_total(), 0);
    }
    EXPECT_EQ(st.cache_free_tokens(), st.cache_capacity_tokens());
  }
}

TEST(Cluster, RequestThatCanNeverFitIsRejected) {
  const std::string model = ModelDir("v2_bf16");
  Shard s0 = StartShard(model, 0, 1, "tcp");
  Node n = StartNode(model, {&s0}, "tcp", {"--cache-tokens", "128"});
  Job big;
  big.prompt.assign(100, 5);
  big.max_tokens = 100;
  const Result r = Generate(*n.stub, big, 1);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("128"), std::string::npos) << r.status.error_message();
  Job ok = MakeJobs(1, 3)[0];
  RunAndCompare(model, {&n}, {ok}, 10);
}

// Dispatches the shards refused for naming another placement version.
int64_t VersionRefusals(const std::vector<const Shard*>& shards) {
  int64_t n = 0;
  for (const Shard* s : shards) {
    auto stub = internal::ExpertShardService::NewStub(
        grpc::CreateChannel(s->address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    internal::ShardStatus st;
    EXPECT_TRUE(stub->GetStatus(&ctx, internal::ShardStatusRequest(), &st).ok());
    const auto it = st.dispatch_errors().find("placement_version");
    if (it != st.dispatch_errors().end()) n += it->second;
  }
  return n;
}

// Writes a placement file where every expert group lives on two of three
// shards (replicas), version `version`.
std::string WriteReplicatedPlacement(const std::vector<const Shard*>& shards, int version,
                                     int rotate) {
  std::string experts;
  for (int e = 0; e < 160; ++e) {
    const int g = e / 20;
    int a = (g + rotate) % 3, b = (g + rotate + 1) % 3;
    if (a > b) std::swap(a, b);
    absl::StrAppend(&experts, e ? "," : "", "{\"shardIds\":[", a, ",", b, "]}");
  }
  std::string shard_list;
  for (size_t s = 0; s < shards.size(); ++s) {
    absl::StrAppend(&shard_list, s ? "," : "", "{\"shardId\":", s, ",\"grpcAddress\":\"",
                    shards[s]->address(), "\"}");
  }
  const std::string path = absl::StrCat(::testing::TempDir(), "/placement_v", version, "_",
                                        rotate, ".json");
  std::ofstream(path) << "{\"version\":" << version << ",\"experts\":[" << experts
                      << "],\"shards\":[" << shard_list << "]}";
  return path;
}

TEST(Cluster, ReplicatedPlacementAndVersionChangeMidStream) {
  const std::string model = ModelDir("v2_bf16");
  // Shards start empty; the placement file gives each its experts.
  Shard s0 = StartShard(model, 0, 0, "tcp"), s1 = StartShard(model, 1, 0, "tcp"),
        s2 = StartShard(model, 2, 0, "tcp");
  const std::vector<const Shard*> all = {&s0, &s1, &s2};
  const std::string v1 = WriteReplicatedPlacement(all, 1, 0);
  // Load v1 on the shards through their control API, as a coordinator would.
  const auto load = [&](const std::string& path, internal::PlacementTable* out) {
    std::ifstream in(path);
    std::string json((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    internal::PlacementTable table;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &table).ok());
    for (size_t s = 0; s < all.size(); ++s) {
      auto stub = internal::ExpertShardService::NewStub(
          grpc::CreateChannel(all[s]->address(), grpc::InsecureChannelCredentials()));
      grpc::ClientContext ctx;
      internal::LoadExpertsRequest req;
      req.set_shard_id(static_cast<int32_t>(s));
      *req.mutable_table() = table;
      internal::LoadExpertsResponse resp;
      const grpc::Status st = stub->LoadExperts(&ctx, req, &resp);
      ASSERT_TRUE(st.ok()) << st.error_message();
      EXPECT_GT(resp.experts_size(), 0) << "shard " << s;
    }
    *out = table;
  };
  internal::PlacementTable t1;
  load(v1, &t1);
  // A dispatch deadline no wait below can reach on a loaded machine.
  Node n = StartNode(model, {}, "tcp", {"--placement", v1, "--dispatch-timeout-ms", "300000"});
  RunAndCompare(model, {&n}, MakeJobs(8, 55), 1);

  // Version 2 moves every group. The shards adopt it first (as the
  // coordinator orders it) while requests run; the node still plans with
  // version 1, so the shards refuse its dispatches ("placement_version")
  // and it re-sends them until it adopts version 2 and re-plans.
  std::vector<Job> jobs = MakeJobs(8, 56);
  for (Job& j : jobs) j.max_tokens = 16;
  JobRun running({&n}, jobs, 100);
  // Every job under way on version 1 ...
  ASSERT_TRUE(WaitFor(
      [&] {
        for (size_t i = 0; i < jobs.size(); ++i) {
          if (running.tokens(i) == 0) return false;
        }
        return true;
      },
      absl::Minutes(2)));
  internal::PlacementTable t2;
  load(WriteReplicatedPlacement(all, 2, 1), &t2);
  // ... and one more submitted after the shards moved: its steps are
  // refused for certain (the others may have finished by now) and it cannot
  // produce a token until the node has version 2.
  Job late = MakeJobs(1, 57)[0];
  late.delay = absl::ZeroDuration();
  JobRun late_run({&n}, {late}, 200);
  ASSERT_TRUE(WaitFor([&] { return VersionRefusals(all) > 0; }, absl::Minutes(2)));
  EXPECT_EQ(late_run.tokens(0), 0);
  {
    for (internal::ShardEndpoint& s : *t2.mutable_shards()) s.clear_ucx_address();
    grpc::ClientContext ctx;
    internal::SetPlacementResponse resp;
    const grpc::Status st = n.stub->SetPlacement(&ctx, t2, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(resp.placement_version(), 2u);
  }
  running.Join();
  late_run.Join();
  ExpectReferenceOutputs(model, running);
  ExpectReferenceOutputs(model, late_run);
  EXPECT_EQ(Status(n).placement_version(), 2u);
}

TEST(Cluster, KilledShardFailsOnlyAffectedRequestsThenRecovers) {
  const std::string model = ModelDir("v2_bf16");
  Shard s0 = StartShard(model, 0, 2, "tcp"), s1 = StartShard(model, 1, 2, "tcp");
  Node n = StartNode(model, {&s0, &s1}, "tcp", {"--dispatch-timeout-ms", "2000"});
  // Long requests; kill shard 1 while they run.
  std::vector<Job> jobs = MakeJobs(4, 77);
  for (Job& j : jobs) {
    j.max_tokens = 400;
    j.delay = absl::ZeroDuration();
  }
  JobRun running({&n}, jobs, 1);
  ASSERT_TRUE(WaitFor(
      [&] {
        for (size_t i = 0; i < jobs.size(); ++i) {
          if (running.tokens(i) == 0) return false;
        }
        return true;
      },
      absl::Minutes(2)));
  const int killed = s1.process->Kill();
  ASSERT_TRUE(WIFSIGNALED(killed) && WTERMSIG(killed) == SIGKILL) << killed;
  // Submitted after the kill: its steps need shard 1, so it fails for
  // certain (the long ones may have finished before the kill).
  Job late = MakeJobs(1, 79)[0];
  late.delay = absl::ZeroDuration();
  const Result after_kill = Generate(*n.stub, late, 50);
  running.Join();
  int unavailable = 0;
  std::vector<Result> results = running.results();
  results.push_back(after_kill);
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    if (r.status.ok()) {  // finished before the kill, whole
      EXPECT_EQ(r.tokens.size(), 400u) << "job " << i;
      continue;
    }
    // Failed by the node's dispatch deadline (2 s), naming the dead shard:
    // not a hang ended by the client's deadline.
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
    EXPECT_TRUE(absl::StrContains(r.status.error_message(), "unreachable within 2s"))
        << r.status.error_message();
    EXPECT_TRUE(absl::StrContains(r.status.error_message(), "shards 1 "))
        << r.status.error_message();
    ++unavailable;
  }
  EXPECT_GT(unavailable, 0);
  EXPECT_EQ(after_kill.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  // The node is healthy: health and status answer, no hang.
  EXPECT_EQ(Health(n.port), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_GT(Status(n).failed_steps_total(), 0);

  // A placement without shard 1 (shard 0 holds everything) restores service.
  internal::PlacementTable t2;
  t2.set_version(2);
  for (int e = 0; e < 160; ++e) t2.add_experts()->add_shard_ids(0);
  internal::ShardEndpoint* ep = t2.add_shards();
  ep->set_shard_id(0);
  ep->set_grpc_address(s0.address());
  {
    auto stub = internal::ExpertShardService::NewStub(
        grpc::CreateChannel(s0.address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    internal::LoadExpertsRequest req;
    req.set_shard_id(0);
    *req.mutable_table() = t2;
    internal::LoadExpertsResponse resp;
    ASSERT_TRUE(stub->LoadExperts(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.experts_size(), 160);
  }
  {
    grpc::ClientContext ctx;
    internal::SetPlacementResponse resp;
    const grpc::Status st = n.stub->SetPlacement(&ctx, t2, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  RunAndCompare(model, {&n}, MakeJobs(8, 78), 100);
  ExpectCleanExit(*n.process);
}

// Shard ids stay stable (the coordinator's tables keep a dead shard's id
// out rather than renumbering): a table over shards {0, 2} serves like a
// dense one. The processes also take --coordinator with no coordinator
// listening: they print their ready line, take control calls, and exit 0 on
// SIGTERM; but their data planes prove membership with the key a
// registration brings (transport/handshake.h), so until one succeeds a node
// connects to no shard: its SetPlacement is UNAVAILABLE and says why.
TEST(Cluster, SparseShardIdsAndAnAbsentCoordinator) {
  const std::string model = ModelDir("v2_bf16");
  const std::vector<std::string> coord = {"--coordinator", "127.0.0.1:1"};
  {
    Shard lone = StartShard(model, 1, 0, "tcp", coord);
    internal::PlacementTable t;
    t.set_version(1);
    for (int e = 0; e < 160; ++e) t.add_experts()->add_shard_ids(1);
    internal::ShardEndpoint* ep = t.add_shards();
    ep->set_shard_id(1);
    ep->set_grpc_address(lone.address());
    auto stub = internal::ExpertShardService::NewStub(
        grpc::CreateChannel(lone.address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    internal::LoadExpertsRequest req;
    req.set_shard_id(1);
    *req.mutable_table() = t;
    internal::LoadExpertsResponse resp;
    ASSERT_TRUE(stub->LoadExperts(&ctx, req, &resp).ok());
    Node unregistered = StartNode(model, {}, "tcp", coord);
    grpc::ClientContext pctx;
    internal::SetPlacementResponse presp;
    const grpc::Status st = unregistered.stub->SetPlacement(&pctx, t, &presp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
    EXPECT_TRUE(absl::StrContains(st.error_message(), "no data-plane key yet"))
        << st.error_message();
    ExpectCleanExit(*unregistered.process);
    ExpectCleanExit(*lone.process);
  }
  // Without a coordinator (standalone: no keys on either side).
  Shard s0 = StartShard(model, 0, 0, "tcp"), s2 = StartShard(model, 2, 0, "tcp");
  internal::PlacementTable t;
  t.set_version(1);
  for (int e = 0; e < 160; ++e) t.add_experts()->add_shard_ids((e / 20) % 2 ? 2 : 0);
  for (const auto& [id, shard] : {std::pair{2, &s2}, std::pair{0, &s0}}) {
    internal::ShardEndpoint* ep = t.add_shards();
    ep->set_shard_id(id);
    ep->set_grpc_address(shard->address());
  }
  for (const auto& [id, shard] : {std::pair{0, &s0}, std::pair{2, &s2}}) {
    auto stub = internal::ExpertShardService::NewStub(
        grpc::CreateChannel(shard->address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    internal::LoadExpertsRequest req;
    req.set_shard_id(id);
    *req.mutable_table() = t;
    internal::LoadExpertsResponse resp;
    const grpc::Status st = stub->LoadExperts(&ctx, req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(resp.experts_size(), 80) << "shard " << id;
  }
  Node n = StartNode(model, {}, "tcp");
  {
    grpc::ClientContext ctx;
    internal::SetPlacementResponse resp;
    const grpc::Status st = n.stub->SetPlacement(&ctx, t, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  RunAndCompare(model, {&n}, MakeJobs(6, 91), 1);
  ExpectCleanExit(*n.process);
  ExpectCleanExit(*s0.process);
  ExpectCleanExit(*s2.process);
}

TEST(Cluster, UnavailableWithoutPlacementAndBadRequests) {
  const std::string model = ModelDir("v2_bf16");
  Node n = StartNode(model, {}, "tcp");
  Job j = MakeJobs(1, 1)[0];
  EXPECT_EQ(Generate(*n.stub, j, 1).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  Shard s0 = StartShard(model, 0, 1, "tcp");
  internal::PlacementTable t;
  t.set_version(1);
  for (int e = 0; e < 160; ++e) t.add_experts()->add_shard_ids(0);
  t.add_shards()->set_grpc_address(s0.address());
  {
    grpc::ClientContext ctx;
    internal::SetPlacementResponse resp;
    ASSERT_TRUE(n.stub->SetPlacement(&ctx, t, &resp).ok());
  }
  Job bad = j;
  bad.prompt = {5, 1 << 20};
  EXPECT_EQ(Generate(*n.stub, bad, 2).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad = j;
  bad.prompt.clear();
  EXPECT_EQ(Generate(*n.stub, bad, 3).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad = j;
  bad.max_tokens = 6000;
  EXPECT_EQ(Generate(*n.stub, bad, 4).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  RunAndCompare(model, {&n}, {j}, 5);
}

}  // namespace
}  // namespace dsv2::testing
