#include "coordinator/coordinator_core_internal.h"
#include "service/api_keys.h"

namespace dsv2::coordinator {

namespace {

class InferenceService final : public v1::Inference::Service {
 public:
  explicit InferenceService(CoordinatorCore& c) : c_(c) {}

  // Runs GenerateStream and counts its outcome.
  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;

  grpc::Status Tokenize(grpc::ServerContext* ctx, const v1::TokenizeRequest* req,
                        v1::TokenizeResponse* out) override {
    if (grpc::Status st = Authenticate(*ctx); !st.ok()) return st;
    if (c_.model.tokenizer == nullptr) {
      return grpc::Status(grpc::FAILED_PRECONDITION, "the model has no tokenizer.json");
    }
    const bool special = !req->has_add_special_tokens() || req->add_special_tokens();
    for (int32_t id : c_.model.tokenizer->Encode(req->text(), special)) out->add_token_ids(id);
    return grpc::Status::OK;
  }

  grpc::Status Detokenize(grpc::ServerContext* ctx, const v1::DetokenizeRequest* req,
                          v1::DetokenizeResponse* out) override {
    if (grpc::Status st = Authenticate(*ctx); !st.ok()) return st;
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

  grpc::Status GetModelInfo(grpc::ServerContext* ctx, const v1::GetModelInfoRequest*,
                            v1::ModelInfo* out) override {
    if (grpc::Status st = Authenticate(*ctx); !st.ok()) return st;
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
    out->set_weights_fingerprint(c_.state.weights_fingerprint());
    return grpc::Status::OK;
  }

 private:
  // OK without --api-key-file; else the call's "authorization" metadata
  // must carry a key of the file (UNAUTHENTICATED, counted by reason).
  grpc::Status Authenticate(const grpc::ServerContext& ctx) {
    if (c_.options.api_keys == nullptr) return grpc::Status::OK;
    absl::string_view authorization;
    const auto& metadata = ctx.client_metadata();
    if (auto it = metadata.find("authorization"); it != metadata.end()) {
      authorization = absl::string_view(it->second.data(), it->second.size());
    }
    service::AuthFailure why = service::AuthFailure::kNone;
    const absl::Status st = c_.options.api_keys->Check(authorization, &why);
    if (st.ok()) return grpc::Status::OK;
    if (metrics::CoordinatorMetrics* m = c_.options.metrics) {
      m->auth_failures.Add({{"reason", service::AuthFailureName(why)}}).Increment();
    }
    return service::ToGrpcStatus(st);
  }

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
  // Refused calls are counted in dsv2_auth_failures_total only.
  if (grpc::Status st = Authenticate(*ctx); !st.ok()) return st;
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
  absl::StatusOr<int64_t> capacity = c_.state.LargestCapacity();
  if (!capacity.ok()) return service::ToGrpcStatus(capacity.status());
  if (absl::Status st = ApplyLimits(c_.model, *capacity, *prepared); !st.ok()) return service::ToGrpcStatus(st);
  const int64_t need = static_cast<int64_t>(prepared->prompt_ids.size()) + *prepared->max_tokens;
  const uint64_t request_id = c_.next_request_id.fetch_add(1);

  LiveRequest live;
  live.id = request_id;
  live.server_ctx = ctx;
  live.prompt_ids = prepared->prompt_ids;
  live.text.emplace(c_.model.tokenizer, prepared->stop);
  {
    absl::MutexLock lock(&c_.live_mu);
    c_.live[request_id] = &live;
  }
  struct LiveGuard {
    CoordinatorCore& c;
    uint64_t id;
    ~LiveGuard() {
      absl::MutexLock lock(&c.live_mu);
      c.live.erase(id);
    }
  } live_guard{c_, request_id};

  const auto is_eos = [&](int32_t id) {
    return std::find(c_.model.eos_token_ids.begin(), c_.model.eos_token_ids.end(), id) !=
           c_.model.eos_token_ids.end();
  };
  const auto is_stop_token = [&](int32_t id) {
    return std::find(prepared->stop_token_ids.begin(), prepared->stop_token_ids.end(), id) !=
           prepared->stop_token_ids.end();
  };
  TextStream& text = *live.text;
  std::optional<absl::Time> t_first;
  std::optional<absl::Time> t_admitted;
  absl::Time t_last;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  bool client_gone = false;
  // The last response: the rest of the text, the finish reason and usage.
  const auto finish_response = [&](v1::GenerateResponse* out) {
    if (!text.stopped()) out->mutable_text()->append(text.Finish().text);
    out->set_finish_reason(finish);
    v1::Usage* u = out->mutable_usage();
    u->set_prompt_tokens(static_cast<int32_t>(prepared->prompt_ids.size()));
    {
      absl::MutexLock lock(&c_.live_mu);
      u->set_completion_tokens(static_cast<int32_t>(live.generated.size()));
    }
    u->set_queue_time_seconds(absl::ToDoubleSeconds(t_admitted.value_or(t_start) - t_start));
    u->set_time_to_first_token_seconds(t_first ? absl::ToDoubleSeconds(*t_first - t_start) : 0.0);
    u->set_total_time_seconds(absl::ToDoubleSeconds(absl::Now() - t_start));
    u->set_seed(prepared->sampling.seed);
    if (req->return_prompt_ids()) {
      for (int32_t id : prepared->prompt_ids) out->add_prompt_ids(id);
    }
  };

  // Failover (DESIGN.md section 9): when the node's stream breaks (the node
  // died, hung and was declared dead, or failed the request) or the node
  // hands the request back because it is leaving (ABORTED), the request is
  // resumed on another node: prompt + the tokens already streamed are
  // prefilled there and the sampler goes on at the next output position,
  // so the client's stream continues with no gap, no duplicate and the
  // undisturbed run's tokens. A request whose node failed
  // kMaxNodeFailures times ends UNAVAILABLE (a request that kills nodes
  // must not take the whole cluster down); hand-offs are bounded by
  // kMaxAttempts.
  constexpr int kMaxNodeFailures = 2;
  constexpr int kMaxAttempts = 8;
  int node_failures = 0;
  std::string last_failure;
  for (int attempt = 0;; ++attempt) {
    int64_t streamed = 0;
    {
      absl::MutexLock lock(&c_.live_mu);
      streamed = static_cast<int64_t>(live.generated.size());
    }
    const int64_t remaining = *prepared->max_tokens - streamed;
    if (attempt > 0 && streamed > 0) {
      // The stream broke after its final token but before the finish
      // reason reached us: finish here, as the node would have.
      const int32_t last = live.generated.back();
      if (!prepared->ignore_eos && is_eos(last)) {
        finish = v1::FINISH_REASON_EOS;
      } else if (is_stop_token(last)) {
        finish = v1::FINISH_REASON_STOP;
      } else if (remaining <= 0) {
        finish = v1::FINISH_REASON_LENGTH;
      }
      if (finish != v1::FINISH_REASON_UNSPECIFIED) {
        v1::GenerateResponse out;
        finish_response(&out);
        if (!writer->Write(out)) client_gone = true;
        break;
      }
    }
    if (attempt > 0 && (node_failures >= kMaxNodeFailures || attempt >= kMaxAttempts)) {
      spdlog::warn("request {}: not resumed again after {} node failures ({} attempts)", request_id,
                   node_failures, attempt);
      return grpc::Status(grpc::UNAVAILABLE,
                          absl::StrCat("the request's attention node failed ", node_failures,
                                       " times (it is not resumed again); last: ", last_failure));
    }

    // Admission: FIFO, bounded; wait for a node with room. A resumed
    // request goes first (its client is mid-stream).
    absl::StatusOr<uint64_t> ticket = c_.state.Enqueue(need, /*resumed=*/attempt > 0);
    if (!ticket.ok()) return service::ToGrpcStatus(ticket.status());
    NodeAssignment node;
    while (true) {
      absl::StatusOr<std::optional<NodeAssignment>> a =
          c_.state.WaitForNode(*ticket, absl::Milliseconds(50));
      if (!a.ok()) {
        if (attempt == 0) return service::ToGrpcStatus(a.status());
        return grpc::Status(grpc::UNAVAILABLE,
                            absl::StrCat("the request's attention node failed (", last_failure,
                                         ") and no other can resume it: ", a.status().message()));
      }
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
    if (!t_admitted) {
      t_admitted = absl::Now();
      if (metrics::CoordinatorMetrics* m = c_.options.metrics) {
        m->prompt_tokens.Increment(static_cast<double>(prepared->prompt_ids.size()));
      }
    }

    // Run on the node: the prompt, plus (resumed) what was streamed.
    internal::SubmitRequest sreq;
    sreq.set_request_id(request_id);
    for (int32_t id : prepared->prompt_ids) sreq.add_prompt_ids(id);
    {
      absl::MutexLock lock(&c_.live_mu);
      for (int32_t id : live.generated) sreq.add_prompt_ids(id);
    }
    internal::SamplingParams* sp = sreq.mutable_sampling();
    sp->set_temperature(prepared->sampling.temperature);
    sp->set_top_k(prepared->sampling.top_k);
    sp->set_top_p(prepared->sampling.top_p);
    sp->set_seed(prepared->sampling.seed);
    sreq.set_max_tokens(static_cast<int32_t>(remaining));
    sreq.set_output_offset(static_cast<int32_t>(streamed));
    sreq.set_ignore_eos(prepared->ignore_eos);
    for (int32_t id : prepared->stop_token_ids) sreq.add_stop_token_ids(id);
    if (prepared->logprobs >= 0) sreq.set_logprobs(prepared->logprobs);

    grpc::ClientContext node_ctx;
    node_ctx.set_deadline(ctx->deadline());
    {
      absl::MutexLock lock(&c_.live_mu);
      live.node_ctx = &node_ctx;
      live.node_address = node.address;
    }
    spdlog::debug("request {}: {} prompt + {} streamed tokens, {} to go, node {} (attempt {})",
                  request_id, prepared->prompt_ids.size(), streamed, remaining, node.node_id,
                  attempt + 1);

    internal::AttentionNode::Stub stub(c_.AttentionChannel(node.address));
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
      if (finish != v1::FINISH_REASON_UNSPECIFIED) finish_response(&out);
      if (!writer->Write(out)) {
        client_gone = true;
        break;
      }
    }
    if (finish == v1::FINISH_REASON_UNSPECIFIED || client_gone || text.stopped()) {
      // Ended early (stop string, client gone, error): free it on the node
      // now. A node whose stream broke is not called (it may be dead or
      // hung; cancelling the stream frees the request if it comes back).
      node_ctx.TryCancel();
      if (client_gone || text.stopped() || ctx->IsCancelled()) {
        c_.CancelOnNode(node.address, request_id);
      }
    }
    const grpc::Status node_status = reader->Finish();
    {
      absl::MutexLock lock(&c_.live_mu);
      live.node_ctx = nullptr;
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
      return std::chrono::system_clock::now() >= ctx->deadline()
                 ? grpc::Status(grpc::DEADLINE_EXCEEDED, "deadline exceeded")
                 : grpc::Status(grpc::CANCELLED, "cancelled by the client");
    }
    if (node_status.error_code() == grpc::INVALID_ARGUMENT) {
      return node_status;  // the node's own checks (e.g. its cache capacity)
    }
    // The node failed the request (died, was declared dead, its queue was
    // full, an expert shard unreachable, a stream without a finish) or
    // handed it back while leaving (ABORTED): resume it elsewhere.
    const bool handed_off =
        node_status.error_code() == grpc::ABORTED || c_.state.AttentionNodeLeft(node.node_id);
    last_failure = absl::StrCat("the attention node at ", node.address, " ",
                                handed_off ? "left" : "failed", ": ",
                                node_status.ok() ? "the stream ended without a finish reason"
                                                 : node_status.error_message());
    if (!handed_off) {
      ++node_failures;
      c_.state.Suspect(node.node_id);  // no new work there until it heartbeats again
    }
    if (metrics::CoordinatorMetrics* m = c_.options.metrics) {
      m->failovers.Add({{"reason", handed_off ? "handed_off" : "node_failed"}}).Increment();
    }
    spdlog::warn("request {}: {}; resuming it after {} streamed tokens", request_id, last_failure,
                 live.generated.size());
  }
  // Finished locally after a failover (see above).
  if (client_gone) return grpc::Status(grpc::CANCELLED, "cancelled by the client");
  *finish_out = finish;
  return grpc::Status::OK;
}

}  // namespace

std::unique_ptr<grpc::Service> MakeInferenceService(CoordinatorCore& core) {
  return std::make_unique<InferenceService>(core);
}

}  // namespace dsv2::coordinator
