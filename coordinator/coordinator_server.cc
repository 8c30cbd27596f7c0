#include "coordinator/coordinator_server.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <atomic>
#include <map>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "attention_node.grpc.pb.h"
#include "coordinator.grpc.pb.h"
#include "coordinator/text_stream.h"
#include "expert_shard.grpc.pb.h"
#include "inference.grpc.pb.h"
#include "metrics/metrics.h"
#include "router/gate.h"
#include "model/sampling.h"
#include "router/plan.h"
#include "service/service_common.h"

namespace dsv2::coordinator {
namespace {

std::chrono::system_clock::time_point Deadline(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

v1::FinishReason ToPublic(internal::FinishReason r) {
  switch (r) {
    case internal::FINISH_REASON_LENGTH:
      return v1::FINISH_REASON_LENGTH;
    case internal::FINISH_REASON_EOS:
      return v1::FINISH_REASON_EOS;
    case internal::FINISH_REASON_STOP:
      return v1::FINISH_REASON_STOP;
    default:
      return v1::FINISH_REASON_UNSPECIFIED;
  }
}

// One Generate in flight on an attention node (the cancellation thread
// reads it; the handler owns it).
struct LiveRequest {
  uint64_t id = 0;
  grpc::ServerContext* server_ctx = nullptr;
  grpc::ClientContext* node_ctx = nullptr;
  std::string node_address;
  // Tokens generated so far, recorded before they are streamed (the
  // failover of a later issue re-prefills prompt + these).
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> generated;
  // The detokenizer state (text returned so far, held-back text, stop
  // strings) that goes with `generated`.
  std::optional<TextStream> text;
};

}  // namespace

struct CoordinatorCore {
  CoordinatorCore(const ModelConfig& config, ServedModel model, CoordinatorOptions options)
      : config(config),
        model(std::move(model)),
        options(std::move(options)),
        state(this->options.admission),
        gate(router::GateParams::FromConfig(config)) {}

  // ---- channels -----------------------------------------------------------
  std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
    absl::MutexLock lock(&channels_mu);
    auto& ch = channels[address];
    if (ch == nullptr) {
      // Keepalive: a node whose host vanished breaks its streams in seconds.
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
      args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
      args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
      ch = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
    }
    return ch;
  }

  // ---- placement thread ---------------------------------------------------
  void PlacementLoop();
  // Builds, loads and publishes a placement over the live shards. False
  // when a shard failed (retried on the next tick).
  bool Republish();
  void PushToAttentionNodes();
  void UpdateServing();
  void Wake() {
    absl::MutexLock lock(&loop_mu);
    wake = true;
  }

  // ---- cancellation thread ------------------------------------------------
  void CancellationLoop();
  void CancelOnNode(const std::string& address, uint64_t request_id);

  const ModelConfig& config;
  const ServedModel model;
  const CoordinatorOptions options;
  ClusterState state;
  const router::GateParams gate;

  absl::Mutex channels_mu;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels ABSL_GUARDED_BY(channels_mu);

  // Placement thread state (only that thread touches table/last_generation).
  internal::PlacementTable table;
  uint64_t published_generation = ~uint64_t{0};
  bool serving = false;

  absl::Mutex loop_mu;
  bool stop ABSL_GUARDED_BY(loop_mu) = false;
  bool wake ABSL_GUARDED_BY(loop_mu) = false;
  std::function<void(bool)> serving_callback ABSL_GUARDED_BY(loop_mu);
  bool report_serving ABSL_GUARDED_BY(loop_mu) = false;

  absl::Mutex live_mu;
  absl::flat_hash_map<uint64_t, LiveRequest*> live ABSL_GUARDED_BY(live_mu);
  bool draining ABSL_GUARDED_BY(live_mu) = false;
  // Generate calls past the draining check (queued or running).
  int64_t active ABSL_GUARDED_BY(live_mu) = 0;
  // Request ids on nodes: random start (below 2^62; nodes pick ids with the
  // high bit for requests without one), so ids of a restarted coordinator do
  // not collide with requests still live from before.
  std::atomic<uint64_t> next_request_id{(RandomSeed() >> 2) | 1};

  std::unique_ptr<grpc::Service> inference;
  std::unique_ptr<grpc::Service> membership;
  std::thread placement_thread;
  std::thread cancellation_thread;
};

// ============================ membership service ===========================

class MembershipService final : public internal::Coordinator::Service {
 public:
  explicit MembershipService(CoordinatorCore& c) : c_(c) {}

  grpc::Status Register(grpc::ServerContext*, const internal::RegisterRequest* req,
                        internal::RegisterResponse* out) override {
    if (req->grpc_address().empty()) {
      return grpc::Status(grpc::INVALID_ARGUMENT, "grpc_address: empty");
    }
    const ModelConfig& cfg = c_.config;
    if (req->vocab_size() != cfg.vocab_size || req->num_layers() != cfg.num_hidden_layers ||
        req->n_routed_experts() != cfg.n_routed_experts) {
      return grpc::Status(
          grpc::INVALID_ARGUMENT,
          absl::StrCat("model mismatch: the node serves vocab_size ", req->vocab_size(), ", ",
                       req->num_layers(), " layers, ", req->n_routed_experts(),
                       " routed experts; the coordinator's model has ", cfg.vocab_size, ", ",
                       cfg.num_hidden_layers, ", ", cfg.n_routed_experts));
    }
    const absl::Time now = absl::Now();
    uint64_t id = 0;
    switch (req->role()) {
      case internal::NODE_ROLE_ATTENTION:
        if (req->cache_capacity_tokens() < 1) {
          return grpc::Status(grpc::INVALID_ARGUMENT, "cache_capacity_tokens: must be >= 1");
        }
        id = c_.state.RegisterAttentionNode(req->grpc_address(), req->cache_capacity_tokens(),
                                            req->placement_version(), now);
        spdlog::info("attention node {} registered at {} ({} cache tokens)", id,
                     req->grpc_address(), req->cache_capacity_tokens());
        break;
      case internal::NODE_ROLE_EXPERT_SHARD: {
        if (req->ucx_address().empty() || req->ucx_address().size() > (64u << 10)) {
          return grpc::Status(grpc::INVALID_ARGUMENT,
                              "ucx_address: must hold 1 to 65536 bytes");
        }
        absl::StatusOr<uint64_t> r = c_.state.RegisterShard(
            req->shard_id(), req->grpc_address(), req->ucx_address(), req->placement_version(),
            now);
        if (!r.ok()) return service::ToGrpcStatus(r.status());
        id = *r;
        spdlog::info("expert shard {} registered at {} (node {})", req->shard_id(),
                     req->grpc_address(), id);
        break;
      }
      default:
        return grpc::Status(grpc::INVALID_ARGUMENT, "role: must be attention or expert shard");
    }
    out->set_node_id(id);
    out->set_heartbeat_interval_ms(absl::ToInt64Milliseconds(c_.options.heartbeat_interval));
    c_.Wake();
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext*, const internal::HeartbeatRequest* req,
                         internal::HeartbeatResponse* out) override {
    absl::Status st = c_.state.Heartbeat(req->node_id(), req->placement_version(),
                                         req->resident_bytes(), absl::Now());
    if (!st.ok()) return service::ToGrpcStatus(st);
    out->set_placement_version(c_.state.published().version);
    return grpc::Status::OK;
  }

  grpc::Status Leave(grpc::ServerContext*, const internal::LeaveRequest* req,
                     internal::LeaveResponse*) override {
    if (c_.state.Remove(req->node_id())) {
      spdlog::info("node {} left", req->node_id());
      c_.Wake();
    }
    return grpc::Status::OK;
  }

 private:
  CoordinatorCore& c_;
};

// ============================ placement thread =============================

bool CoordinatorCore::Republish() {
  const uint64_t generation = state.shard_generation();
  std::vector<ShardEntry> shards = state.shards();
  if (shards.empty()) {
    PublishedPlacement p = state.published();
    p.shard_ids.clear();
    state.Publish(p, /*complete=*/false);
    published_generation = generation;
    return true;
  }
  const uint32_t version =
      std::max(state.published().version, state.max_reported_version()) + 1;
  std::vector<int32_t> ids;
  for (const ShardEntry& s : shards) ids.push_back(s.shard_id);
  std::sort(ids.begin(), ids.end());
  absl::StatusOr<router::Placement> placement =
      router::DefaultPlacementOverShards(gate, ids, version);
  if (!placement.ok()) {
    spdlog::error("placement over {} shards: {}", shards.size(), placement.status().ToString());
    return false;
  }
  std::vector<internal::ShardEndpoint> endpoints;
  PublishedPlacement published;
  published.version = version;
  for (const ShardEntry& s : shards) {
    internal::ShardEndpoint& ep = endpoints.emplace_back();
    ep.set_shard_id(s.shard_id);
    ep.set_grpc_address(s.address);
    ep.set_ucx_address(s.ucx_address);
    published.shard_ids.push_back(s.shard_id);
  }
  internal::PlacementTable t = service::PlacementToProto(*placement, endpoints);
  // Every shard loads what it gains before any attention node sees the
  // version (DESIGN.md section 5).
  for (const ShardEntry& s : shards) {
    internal::ExpertShardService::Stub stub(Channel(s.address));
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(options.load_experts_timeout));
    internal::LoadExpertsRequest req;
    req.set_shard_id(s.shard_id);
    *req.mutable_table() = t;
    internal::LoadExpertsResponse resp;
    const grpc::Status st = stub.LoadExperts(&ctx, req, &resp);
    if (!st.ok()) {
      // Dead, hung or unable to load (e.g. out of memory): it cannot serve
      // this placement, so drop it; if alive it re-registers on its next
      // heartbeat (NOT_FOUND) and is tried again then.
      spdlog::warn("placement v{}: shard {} at {} failed LoadExperts: {} (code {}); dropped",
                   version, s.shard_id, s.address, st.error_message(),
                   static_cast<int>(st.error_code()));
      state.Remove(s.node_id, /*dead=*/true);
      return false;
    }
    {
      absl::MutexLock lock(&loop_mu);
      if (stop) return false;
    }
    state.SetShardLoaded(s.node_id, version, resp.experts_size());
  }
  table = std::move(t);
  state.Publish(std::move(published), /*complete=*/true);
  published_generation = generation;
  spdlog::info("placement v{} published over {} shards", version, shards.size());
  return true;
}

void CoordinatorCore::PushToAttentionNodes() {
  const PublishedPlacement p = state.published();
  if (p.version == 0 || table.version() != p.version) return;
  for (const AttentionNodeEntry& n : state.attention_nodes()) {
    if (n.placement_version == p.version) continue;
    internal::AttentionNode::Stub stub(Channel(n.address));
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(options.control_timeout));
    internal::SetPlacementResponse resp;
    const grpc::Status st = stub.SetPlacement(&ctx, table, &resp);
    if (st.ok()) {
      state.SetAttentionVersion(n.node_id, resp.placement_version());
    } else {
      spdlog::warn("placement v{}: attention node {} at {}: {}", p.version, n.node_id, n.address,
                   st.error_message());
    }
  }
}

void CoordinatorCore::UpdateServing() {
  const bool now_serving = state.SmallestCapacity().ok();
  std::function<void(bool)> cb;
  {
    absl::MutexLock lock(&loop_mu);
    if (now_serving == serving && !report_serving) return;
    report_serving = false;
    cb = serving_callback;
  }
  serving = now_serving;
  spdlog::info(serving ? "serving" : "not serving");
  if (cb) cb(serving);
}

void CoordinatorCore::PlacementLoop() {
  while (true) {
    {
      absl::MutexLock lock(&loop_mu);
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(loop_mu) { return stop || wake; };
      loop_mu.AwaitWithTimeout(absl::Condition(&woken), absl::Milliseconds(100));
      if (stop) return;
      wake = false;
    }
    for (uint64_t id : state.ExpireDead(absl::Now(), options.heartbeat_timeout)) {
      spdlog::warn("node {} missed its heartbeats for {}: removed", id,
                   absl::FormatDuration(options.heartbeat_timeout));
    }
    const bool behind = state.max_reported_version() > state.published().version;
    if (state.shard_generation() != published_generation || behind) {
      // A failed shard was dropped; the next tick republishes without it.
      // Attention nodes and health are kept current meanwhile.
      (void)Republish();
    }
    PushToAttentionNodes();
    UpdateServing();
  }
}

// ============================ cancellation thread ==========================

void CoordinatorCore::CancelOnNode(const std::string& address, uint64_t request_id) {
  internal::AttentionNode::Stub stub(Channel(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(absl::Seconds(2)));
  internal::CancelRequest req;
  req.set_request_id(request_id);
  internal::CancelResponse resp;
  (void)stub.Cancel(&ctx, req, &resp);  // best effort: the stream's cancel also frees it
}

void CoordinatorCore::CancellationLoop() {
  while (true) {
    {
      absl::MutexLock lock(&loop_mu);
      auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(loop_mu) { return stop; };
      if (loop_mu.AwaitWithTimeout(absl::Condition(&stopped), absl::Milliseconds(20))) return;
    }
    // A request whose attention node was removed as dead (missed heartbeats)
    // is cancelled too: a hung node would otherwise hold it forever.
    absl::flat_hash_set<std::string> live_nodes;
    for (const AttentionNodeEntry& n : state.attention_nodes()) live_nodes.insert(n.address);
    absl::MutexLock lock(&live_mu);
    for (auto& [id, r] : live) {
      if (r->node_ctx == nullptr) continue;
      if (r->server_ctx->IsCancelled() || !live_nodes.contains(r->node_address)) {
        r->node_ctx->TryCancel();
      }
    }
  }
}

// ============================ inference service ============================

class InferenceService final : public v1::Inference::Service {
 public:
  explicit InferenceService(CoordinatorCore& c) : c_(c) {}

  // Runs GenerateStream and counts its outcome.
  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;

  grpc::Status Tokenize(grpc::ServerContext*, const v1::TokenizeRequest* req,
                        v1::TokenizeResponse* out) override {
    if (c_.model.tokenizer == nullptr) {
      return grpc::Status(grpc::FAILED_PRECONDITION, "the model has no tokenizer.json");
    }
    const bool special = !req->has_add_special_tokens() || req->add_special_tokens();
    for (int32_t id : c_.model.tokenizer->Encode(req->text(), special)) out->add_token_ids(id);
    return grpc::Status::OK;
  }

  grpc::Status Detokenize(grpc::ServerContext*, const v1::DetokenizeRequest* req,
                          v1::DetokenizeResponse* out) override {
    if (c_.model.tokenizer == nullptr) {
      return grpc::Status(grpc::FAILED_PRECONDITION, "the model has no tokenizer.json");
    }
    for (int32_t id : req->token_ids()) {
      if (id < 0 || id >= c_.model.vocab_size) {
        return grpc::Status(grpc::INVALID_ARGUMENT,
                            absl::StrCat("token_ids: ", id, " is outside [0, ",
                                         c_.model.vocab_size, ")"));
      }
    }
    std::vector<int32_t> ids(req->token_ids().begin(), req->token_ids().end());
    out->set_text(c_.model.tokenizer->Decode(ids, req->skip_special_tokens()));
    return grpc::Status::OK;
  }

  grpc::Status GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*,
                            v1::ModelInfo* out) override {
    const ModelConfig& cfg = c_.config;
    out->set_model_name(c_.options.model_name);
    out->set_model_type(c_.options.model_type);
    out->set_max_context_tokens(cfg.max_position_embeddings);
    out->set_vocab_size(cfg.vocab_size);
    out->set_hidden_size(cfg.hidden_size);
    out->set_num_layers(cfg.num_hidden_layers);
    out->set_kv_lora_rank(cfg.kv_lora_rank);
    out->set_qk_rope_head_dim(cfg.qk_rope_head_dim);
    out->set_num_attention_heads(cfg.num_attention_heads);
    out->set_n_routed_experts(cfg.n_routed_experts);
    out->set_n_shared_experts(cfg.n_shared_experts);
    out->set_num_experts_per_tok(cfg.num_experts_per_tok);
    out->set_n_group(cfg.n_group);
    out->set_topk_group(cfg.topk_group);
    for (int32_t id : c_.model.eos_token_ids) out->add_eos_token_ids(id);
    if (cfg.bos_token_id) out->set_bos_token_id(static_cast<int32_t>(*cfg.bos_token_id));
    out->set_has_chat_template(c_.model.chat_template != nullptr);
    for (const AttentionNodeEntry& n : c_.state.attention_nodes()) {
      v1::AttentionNodeInfo* a = out->add_attention_nodes();
      a->set_node_id(n.node_id);
      a->set_address(n.address);
      a->set_cache_capacity_tokens(n.capacity_tokens);
      a->set_cache_reserved_tokens(n.reserved_tokens);
      a->set_live_requests(n.live_requests);
      a->set_placement_version(n.placement_version);
    }
    const PublishedPlacement p = c_.state.published();
    for (const ShardEntry& s : c_.state.shards()) {
      v1::ExpertShardInfo* e = out->add_expert_shards();
      e->set_shard_id(s.shard_id);
      e->set_address(s.address);
      e->set_resident_bytes(s.resident_bytes);
      e->set_experts(s.experts);
    }
    out->set_placement_version(p.version);
    out->set_placement_complete(c_.state.placement_complete());
    out->set_queued_requests(c_.state.queued());
    out->set_max_queued_requests(static_cast<int32_t>(c_.state.max_queued()));
    return grpc::Status::OK;
  }

 private:
  // The whole Generate; *finish is set on success.
  grpc::Status GenerateStream(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                              grpc::ServerWriter<v1::GenerateResponse>* writer, absl::Time t_start,
                              v1::FinishReason* finish);

  CoordinatorCore& c_;
};

grpc::Status InferenceService::Generate(grpc::ServerContext* ctx,
                                        const v1::GenerateRequest* req,
                                        grpc::ServerWriter<v1::GenerateResponse>* writer) {
  const absl::Time t_start = absl::Now();
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  const grpc::Status st = GenerateStream(ctx, req, writer, t_start, &finish);
  if (metrics::CoordinatorMetrics* m = c_.options.metrics) {
    if (st.ok()) {
      std::string reason = v1::FinishReason_Name(finish);
      reason = absl::AsciiStrToLower(absl::StripPrefix(reason, "FINISH_REASON_"));
      m->requests.Add({{"finish_reason", reason}}).Increment();
      m->request_duration.Observe(absl::ToDoubleSeconds(absl::Now() - t_start));
    } else {
      m->request_errors
          .Add({{"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(st.error_code()))}})
          .Increment();
    }
  }
  return st;
}

grpc::Status InferenceService::GenerateStream(grpc::ServerContext* ctx,
                                              const v1::GenerateRequest* req,
                                              grpc::ServerWriter<v1::GenerateResponse>* writer,
                                              absl::Time t_start, v1::FinishReason* finish_out) {
  absl::StatusOr<PreparedGenerate> prepared = PrepareGenerate(*req, c_.model);
  if (!prepared.ok()) return service::ToGrpcStatus(prepared.status());
  {
    absl::MutexLock lock(&c_.live_mu);
    if (c_.draining) return grpc::Status(grpc::UNAVAILABLE, "the coordinator is shutting down");
    ++c_.active;
  }
  struct ActiveGuard {
    CoordinatorCore& c;
    ~ActiveGuard() {
      absl::MutexLock lock(&c.live_mu);
      --c.active;
    }
  } active_guard{c_};
  absl::StatusOr<int64_t> capacity = c_.state.SmallestCapacity();
  if (!capacity.ok()) return service::ToGrpcStatus(capacity.status());
  if (absl::Status st = ApplyLimits(c_.model, *capacity, *prepared); !st.ok()) return service::ToGrpcStatus(st);
  const int64_t need = static_cast<int64_t>(prepared->prompt_ids.size()) + *prepared->max_tokens;
  const uint64_t request_id = c_.next_request_id.fetch_add(1);

  // Admission: FIFO, bounded; wait for a node with room.
  absl::StatusOr<uint64_t> ticket = c_.state.Enqueue(need);
  if (!ticket.ok()) return service::ToGrpcStatus(ticket.status());
  NodeAssignment node;
  while (true) {
    absl::StatusOr<std::optional<NodeAssignment>> a =
        c_.state.WaitForNode(*ticket, absl::Milliseconds(50));
    if (!a.ok()) return service::ToGrpcStatus(a.status());
    if (a->has_value()) {
      node = **a;
      break;
    }
    if (ctx->IsCancelled()) {
      c_.state.Abandon(*ticket);
      return std::chrono::system_clock::now() >= ctx->deadline()
                 ? grpc::Status(grpc::DEADLINE_EXCEEDED, "deadline exceeded while queued")
                 : grpc::Status(grpc::CANCELLED, "cancelled while queued");
    }
  }
  const absl::Time t_admitted = absl::Now();
  if (metrics::CoordinatorMetrics* m = c_.options.metrics) {
    m->prompt_tokens.Increment(static_cast<double>(prepared->prompt_ids.size()));
  }

  // Run on the node.
  internal::SubmitRequest sreq;
  sreq.set_request_id(request_id);
  for (int32_t id : prepared->prompt_ids) sreq.add_prompt_ids(id);
  internal::SamplingParams* sp = sreq.mutable_sampling();
  sp->set_temperature(prepared->sampling.temperature);
  sp->set_top_k(prepared->sampling.top_k);
  sp->set_top_p(prepared->sampling.top_p);
  sp->set_seed(prepared->sampling.seed);
  sreq.set_max_tokens(*prepared->max_tokens);
  sreq.set_ignore_eos(prepared->ignore_eos);
  for (int32_t id : prepared->stop_token_ids) sreq.add_stop_token_ids(id);
  if (prepared->logprobs >= 0) sreq.set_logprobs(prepared->logprobs);

  grpc::ClientContext node_ctx;
  node_ctx.set_deadline(ctx->deadline());
  LiveRequest live;
  live.id = request_id;
  live.server_ctx = ctx;
  live.node_ctx = &node_ctx;
  live.node_address = node.address;
  live.prompt_ids = prepared->prompt_ids;
  {
    absl::MutexLock lock(&c_.live_mu);
    c_.live[request_id] = &live;
  }
  spdlog::debug("request {}: {} prompt tokens, max_tokens {}, node {}", request_id,
                prepared->prompt_ids.size(), *prepared->max_tokens, node.node_id);

  const auto is_eos = [&](int32_t id) {
    return std::find(c_.model.eos_token_ids.begin(), c_.model.eos_token_ids.end(), id) !=
           c_.model.eos_token_ids.end();
  };
  const auto is_stop_token = [&](int32_t id) {
    return std::find(prepared->stop_token_ids.begin(), prepared->stop_token_ids.end(), id) !=
           prepared->stop_token_ids.end();
  };
  live.text.emplace(c_.model.tokenizer, prepared->stop);
  TextStream& text = *live.text;
  std::optional<absl::Time> t_first;
  absl::Time t_last;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  bool client_gone = false;
  grpc::Status result = grpc::Status::OK;

  internal::AttentionNode::Stub stub(c_.Channel(node.address));
  std::unique_ptr<grpc::ClientReader<internal::SubmitResponse>> reader =
      stub.Submit(&node_ctx, sreq);
  internal::SubmitResponse resp;
  while (finish == v1::FINISH_REASON_UNSPECIFIED && reader->Read(&resp)) {
    v1::GenerateResponse out;
    for (int i = 0; i < resp.token_ids_size(); ++i) {
      const int32_t id = resp.token_ids(i);
      const absl::Time now = absl::Now();
      if (metrics::CoordinatorMetrics* m = c_.options.metrics) {
        m->generated_tokens.Increment();
        if (t_first) {
          m->inter_token_latency.Observe(absl::ToDoubleSeconds(now - t_last));
        } else {
          m->time_to_first_token.Observe(absl::ToDoubleSeconds(now - t_start));
        }
      }
      if (!t_first) t_first = now;
      t_last = now;
      {
        absl::MutexLock lock(&c_.live_mu);
        live.generated.push_back(id);
      }
      out.add_token_ids(id);
      if (i < resp.logprobs_size()) *out.add_logprobs() = resp.logprobs(i);
      const bool render = !is_eos(id) && !is_stop_token(id);
      TextStream::Chunk chunk = text.Push(id, render);
      out.mutable_text()->append(chunk.text);
      if (chunk.stopped) {
        finish = v1::FINISH_REASON_STOP;
        break;
      }
    }
    if (finish == v1::FINISH_REASON_UNSPECIFIED) finish = ToPublic(resp.finish_reason());
    if (finish != v1::FINISH_REASON_UNSPECIFIED) {
      if (!text.stopped()) out.mutable_text()->append(text.Finish().text);
      out.set_finish_reason(finish);
      v1::Usage* u = out.mutable_usage();
      u->set_prompt_tokens(static_cast<int32_t>(prepared->prompt_ids.size()));
      {
        absl::MutexLock lock(&c_.live_mu);
        u->set_completion_tokens(static_cast<int32_t>(live.generated.size()));
      }
      u->set_queue_time_seconds(absl::ToDoubleSeconds(t_admitted - t_start));
      u->set_time_to_first_token_seconds(t_first ? absl::ToDoubleSeconds(*t_first - t_start)
                                                 : 0.0);
      u->set_total_time_seconds(absl::ToDoubleSeconds(absl::Now() - t_start));
      u->set_seed(prepared->sampling.seed);
      if (req->return_prompt_ids()) {
        for (int32_t id : prepared->prompt_ids) out.add_prompt_ids(id);
      }
    }
    if (!writer->Write(out)) {
      client_gone = true;
      break;
    }
  }
  if (finish == v1::FINISH_REASON_UNSPECIFIED || client_gone || text.stopped()) {
    // Ended early (stop string, client gone, error): free it on the node now.
    node_ctx.TryCancel();
    c_.CancelOnNode(node.address, request_id);
  }
  const grpc::Status node_status = reader->Finish();
  {
    absl::MutexLock lock(&c_.live_mu);
    c_.live.erase(request_id);
  }
  c_.state.Release(node.node_id, need);
  if (finish != v1::FINISH_REASON_UNSPECIFIED && !client_gone) {
    *finish_out = finish;
    spdlog::info("request {}: finished ({}) on node {}: {} prompt + {} generated tokens in {}",
                 request_id, v1::FinishReason_Name(finish), node.node_id,
                 prepared->prompt_ids.size(), live.generated.size(),
                 absl::FormatDuration(absl::Now() - t_start));
    return grpc::Status::OK;
  }
  if (ctx->IsCancelled() || client_gone) {
    result = std::chrono::system_clock::now() >= ctx->deadline()
                 ? grpc::Status(grpc::DEADLINE_EXCEEDED, "deadline exceeded")
                 : grpc::Status(grpc::CANCELLED, "cancelled by the client");
  } else if (node_status.error_code() == grpc::INVALID_ARGUMENT) {
    result = node_status;  // the node's own checks (e.g. its cache capacity)
  } else {
    // Any other failure of the node (dead, removed, its queue full, an
    // expert shard unreachable, a stream without a finish) is the public
    // API's "the request's attention node failed".
    result = grpc::Status(
        grpc::UNAVAILABLE,
        absl::StrCat("the attention node at ", node.address, " failed: ",
                     node_status.ok() ? "the stream ended without a finish reason"
                                      : node_status.error_message()));
  }
  spdlog::info("request {}: failed on node {} with code {}: {}", request_id, node.node_id,
               static_cast<int>(result.error_code()), result.error_message());
  return result;
}

// ============================ Coordinator ==================================

Coordinator::Coordinator(const ModelConfig& config, ServedModel model, CoordinatorOptions options)
    : core_(std::make_unique<CoordinatorCore>(config, std::move(model), std::move(options))) {
  core_->inference = std::make_unique<InferenceService>(*core_);
  core_->membership = std::make_unique<MembershipService>(*core_);
  core_->placement_thread = std::thread([this] { core_->PlacementLoop(); });
  core_->cancellation_thread = std::thread([this] { core_->CancellationLoop(); });
}

Coordinator::~Coordinator() { Shutdown(); }

grpc::Service* Coordinator::inference_service() { return core_->inference.get(); }
grpc::Service* Coordinator::membership_service() { return core_->membership.get(); }
ClusterState& Coordinator::state() { return core_->state; }

void Coordinator::SetServingCallback(std::function<void(bool)> callback) {
  absl::MutexLock lock(&core_->loop_mu);
  core_->serving_callback = std::move(callback);
  core_->report_serving = true;  // the next tick reports the current state
}

bool Coordinator::Drain(absl::Duration timeout) {
  absl::MutexLock lock(&core_->live_mu);
  core_->draining = true;
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(core_->live_mu) {
    return core_->active == 0;
  };
  return core_->live_mu.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

void Coordinator::Shutdown() {
  {
    absl::MutexLock lock(&core_->loop_mu);
    core_->stop = true;
  }
  if (core_->placement_thread.joinable()) core_->placement_thread.join();
  if (core_->cancellation_thread.joinable()) core_->cancellation_thread.join();
}

}  // namespace dsv2::coordinator
