#include "attention_service/node_server.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "expert_shard.grpc.pb.h"
#include "inference.pb.h"
#include "service/service_common.h"
#include "service/tls.h"

namespace dsv2 {

namespace {

// Fills in missing UCX addresses by asking each shard (GetStatus), retrying
// until `deadline` while shards start up.
absl::Status ResolveShardAddresses(internal::PlacementTable& table, absl::Time deadline,
                                   const service::TlsContext& tls) {
  for (internal::ShardEndpoint& s : *table.mutable_shards()) {
    if (!s.ucx_address().empty()) continue;
    if (s.grpc_address().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("shard ", s.shard_id(), " has neither a gRPC nor a UCX address"));
    }
    auto stub = internal::ExpertShardService::NewStub(grpc::CreateChannel(
        s.grpc_address(), tls.MemberChannelCredentials({service::MemberRole::kExpert})));
    absl::Status last;
    while (true) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      internal::ShardStatus status;
      const grpc::Status st = stub->GetStatus(&ctx, internal::ShardStatusRequest(), &status);
      if (st.ok()) {
        if (status.shard_id() != s.shard_id()) {
          return absl::InvalidArgumentError(absl::StrCat(
              s.grpc_address(), " is shard ", status.shard_id(), ", not shard ", s.shard_id()));
        }
        s.set_ucx_address(status.ucx_address());
        break;
      }
      last = service::FromGrpcStatus(st);
      if (absl::Now() >= deadline) {
        return absl::UnavailableError(absl::StrCat("expert shard ", s.shard_id(), " at ",
                                                   s.grpc_address(), ": ", last.message()));
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ApplyPlacement(internal::PlacementTable table, int32_t num_experts,
                            absl::Time deadline, DataPlaneExpertBackend& backend,
                            const service::TlsContext& tls) {
  DSV2_RETURN_IF_ERROR(ResolveShardAddresses(table, deadline, tls));
  DSV2_ASSIGN_OR_RETURN(router::Placement p, service::PlacementFromProto(table, num_experts));
  std::vector<ShardTarget> shards(p.num_shards);
  for (const internal::ShardEndpoint& s : table.shards()) {
    shards[s.shard_id()] = ShardTarget{s.ucx_address(), s.node_id()};
  }
  DSV2_RETURN_IF_ERROR(backend.SetPlacement(p, shards));
  spdlog::info("placement version {} over {} shards", p.version, p.num_shards);
  return absl::OkStatus();
}

namespace {

internal::FinishReason ToProto(FinishReason r) {
  switch (r) {
    case FinishReason::kLength:
      return internal::FINISH_REASON_LENGTH;
    case FinishReason::kEos:
      return internal::FINISH_REASON_EOS;
    case FinishReason::kStop:
      return internal::FINISH_REASON_STOP;
    case FinishReason::kNone:
      break;
  }
  return internal::FINISH_REASON_UNSPECIFIED;
}

void ToProto(const TokenLogprobs& lp, v1::TokenLogprob* out) {
  out->set_token_id(lp.token);
  out->set_logprob(lp.logprob);
  for (const auto& [id, logprob] : lp.top) {
    v1::TopLogprob* t = out->add_top();
    t->set_token_id(id);
    t->set_logprob(logprob);
  }
}

}  // namespace

AttentionNodeServer::AttentionNodeServer(const ModelConfig& config, AttentionEngine& engine,
                                         DataPlaneExpertBackend& backend,
                                         std::shared_ptr<const service::TlsContext> tls)
    : config_(config),
      engine_(engine),
      backend_(backend),
      tls_(tls != nullptr ? std::move(tls) : service::TlsContext::Insecure()) {}

grpc::Status AttentionNodeServer::Submit(grpc::ServerContext* ctx,
                                         const internal::SubmitRequest* req,
                                         grpc::ServerWriter<internal::SubmitResponse>* writer) {
  if (absl::Status st = service::CoordinatorOnly(*ctx, "Submit"); !st.ok())
    return service::ToGrpcStatus(st);
  if (config_.first_k_dense_replace < config_.num_hidden_layers && !backend_.ready()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "no complete expert placement yet");
  }
  GenerationRequest r;
  r.id = req->request_id() != 0 ? req->request_id() : (uint64_t{1} << 63) | next_id_.fetch_add(1);
  r.prompt.assign(req->prompt_ids().begin(), req->prompt_ids().end());
  r.sampling.temperature = req->sampling().temperature();
  r.sampling.top_k = req->sampling().top_k();
  r.sampling.top_p = req->sampling().top_p() == 0.0f ? 1.0f : req->sampling().top_p();
  r.sampling.seed = req->sampling().seed();
  r.max_tokens = req->max_tokens();
  r.output_offset = req->output_offset();
  r.ignore_eos = req->ignore_eos();
  r.stop_token_ids.assign(req->stop_token_ids().begin(), req->stop_token_ids().end());
  if (req->has_logprobs()) {
    // Checked here too: -1 means "none" inside the node, never on the wire.
    if (req->logprobs() < 0 || req->logprobs() > kMaxTopLogprobs) {
      return service::ToGrpcStatus(absl::InvalidArgumentError(
          absl::StrCat("logprobs = ", req->logprobs(), " must be in [0, ", kMaxTopLogprobs, "]")));
    }
    r.logprobs = req->logprobs();
  }
  const uint64_t id = r.id;
  absl::StatusOr<std::shared_ptr<RequestStream>> stream = engine_.Submit(std::move(r));
  if (!stream.ok()) return service::ToGrpcStatus(stream.status());
  while (true) {
    if (ctx->IsCancelled()) {
      engine_.Cancel(id);
      return grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled");
    }
    for (SequenceEvent& e : (*stream)->Next(absl::Milliseconds(50))) {
      if (!e.error.ok()) {
        spdlog::warn("request {} failed: {}", id, e.error.ToString());
        return service::ToGrpcStatus(e.error);
      }
      internal::SubmitResponse out;
      for (int32_t t : e.tokens) out.add_token_ids(t);
      for (const TokenLogprobs& lp : e.logprobs) ToProto(lp, out.add_logprobs());
      out.set_preemptions(e.preemptions);
      out.set_finish_reason(ToProto(e.finish));
      if (!writer->Write(out)) {
        engine_.Cancel(id);
        return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      }
      if (e.finish != FinishReason::kNone) return grpc::Status::OK;
    }
  }
}

grpc::Status AttentionNodeServer::Cancel(grpc::ServerContext* ctx,
                                         const internal::CancelRequest* req,
                                         internal::CancelResponse* out) {
  if (absl::Status st = service::CoordinatorOnly(*ctx, "Cancel"); !st.ok())
    return service::ToGrpcStatus(st);
  out->set_found(engine_.Cancel(req->request_id()));
  return grpc::Status::OK;
}

grpc::Status AttentionNodeServer::GetStatus(grpc::ServerContext*,
                                            const internal::NodeStatusRequest*,
                                            internal::NodeStatus* out) {
  const EngineStats s = engine_.stats();
  out->set_cache_capacity_tokens(s.cache_capacity_tokens);
  out->set_cache_free_tokens(s.cache_free_tokens);
  out->set_cache_block_tokens(kLatentBlockTokens);
  out->set_running(static_cast<int32_t>(s.scheduler.running));
  out->set_waiting(static_cast<int32_t>(s.scheduler.waiting));
  out->set_placement_version(backend_.placement_version());
  out->set_preemptions_total(s.scheduler.preemptions_total);
  out->set_steps_total(s.scheduler.steps_total);
  out->set_requests_total(s.scheduler.finished_total);
  out->set_failed_steps_total(s.scheduler.failed_steps_total);
  out->set_draining(s.draining);
  return grpc::Status::OK;
}

grpc::Status AttentionNodeServer::SetPlacement(grpc::ServerContext* ctx,
                                               const internal::PlacementTable* table,
                                               internal::SetPlacementResponse* out) {
  if (absl::Status st = service::CoordinatorOnly(*ctx, "SetPlacement"); !st.ok()) {
    return service::ToGrpcStatus(st);
  }
  absl::Status st = ApplyPlacement(*table, static_cast<int32_t>(config_.n_routed_experts),
                                   absl::Now() + absl::Seconds(10), backend_, *tls_);
  if (!st.ok()) return service::ToGrpcStatus(st);
  out->set_placement_version(backend_.placement_version());
  return grpc::Status::OK;
}

}  // namespace dsv2
