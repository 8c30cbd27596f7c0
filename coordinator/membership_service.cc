#include "base/fingerprint.h"
#include "coordinator/coordinator_core_internal.h"
#include "service/tls.h"

namespace dsv2::coordinator {

namespace {

class MembershipService final : public internal::Coordinator::Service {
 public:
  explicit MembershipService(CoordinatorCore& c) : c_(c) {}

  grpc::Status Register(grpc::ServerContext* context, const internal::RegisterRequest* req,
                        internal::RegisterResponse* out) override {
    // Who is registering (mutual TLS): a member registers only in its
    // certificate's role, an expert certificate with an id only as that
    // shard; the identity is kept with the registration.
    absl::StatusOr<std::optional<service::MemberIdentity>> caller =
        service::CallerIdentity(*context);
    if (!caller.ok()) return Refused("register", service::ToGrpcStatus(caller.status()));
    std::string owner;
    if (caller->has_value()) {
      const service::MemberIdentity& who = **caller;
      owner = service::MemberIdentityUri(who);
      const bool role_ok =
          (req->role() == internal::NODE_ROLE_ATTENTION &&
           who.role == service::MemberRole::kAttention) ||
          (req->role() == internal::NODE_ROLE_EXPERT_SHARD &&
           who.role == service::MemberRole::kExpert &&
           (who.id.empty() || service::ExpertShardIdOf(who.id) == req->shard_id()));
      if (!role_ok) {
        return Refused(
            "register",
            grpc::Status(grpc::PERMISSION_DENIED,
                         absl::StrCat(owner, " may not register as ",
                                      req->role() == internal::NODE_ROLE_EXPERT_SHARD
                                          ? absl::StrCat("expert shard ", req->shard_id())
                                          : std::string("an attention node"))));
      }
    }
    if (absl::Status st = ValidateMemberAddress(req->grpc_address(), "grpc_address"); !st.ok()) {
      return Refused("register", service::ToGrpcStatus(st));
    }
    const ModelConfig& cfg = c_.config;
    if (req->vocab_size() != cfg.vocab_size || req->num_layers() != cfg.num_hidden_layers ||
        req->n_routed_experts() != cfg.n_routed_experts) {
      return Refused(
          "register",
          grpc::Status(
              grpc::INVALID_ARGUMENT,
              absl::StrCat("model mismatch: the node serves vocab_size ", req->vocab_size(), ", ",
                           req->num_layers(), " layers, ", req->n_routed_experts(),
                           " routed experts; the coordinator's model has ", cfg.vocab_size, ", ",
                           cfg.num_hidden_layers, ", ", cfg.n_routed_experts)));
    }
    if (absl::Status st = c_.state.CheckReportedVersion(req->placement_version()); !st.ok()) {
      return Refused("register", service::ToGrpcStatus(st));
    }
    for (const auto& [field, value] :
         {std::pair{"config_fingerprint", &req->config_fingerprint()},
          std::pair{"weights_fingerprint", &req->weights_fingerprint()}}) {
      if (!IsFingerprint(*value)) {
        return Refused("register", grpc::Status(grpc::INVALID_ARGUMENT,
                                                absl::StrCat(field,
                                                             ": not 16 lowercase hex digits "
                                                             "(a member of another version?)")));
      }
    }
    if (req->config_fingerprint() != cfg.fingerprint) {
      return Refused(
          "register",
          grpc::Status(grpc::INVALID_ARGUMENT,
                       absl::StrCat("model mismatch: the node's config.json (fingerprint ",
                                    req->config_fingerprint(), ") differs from the coordinator's (",
                                    cfg.fingerprint, ")")));
    }
    // The weights check and the registration as one step (see
    // ClusterState::AdmitWeightsFingerprint).
    absl::MutexLock registering(&registration_mu_);
    if (absl::Status st = c_.state.AdmitWeightsFingerprint(req->weights_fingerprint()); !st.ok()) {
      return Refused("register", service::ToGrpcStatus(st));
    }
    const absl::Time now = absl::Now();
    uint64_t id = 0;
    switch (req->role()) {
      case internal::NODE_ROLE_ATTENTION:
        // 2^40 tokens of latent cache would be petabytes: a larger number
        // is corrupt, not a machine.
        if (req->cache_capacity_tokens() < 1 || req->cache_capacity_tokens() > (int64_t{1} << 40)) {
          return Refused(
              "register",
              grpc::Status(grpc::INVALID_ARGUMENT,
                           absl::StrCat("cache_capacity_tokens: ", req->cache_capacity_tokens(),
                                        " is outside [1, 2^40]")));
        }
        if (absl::Status st = c_.state.CheckAttentionAddressOwner(req->grpc_address(), owner);
            !st.ok()) {
          return Refused("register", service::ToGrpcStatus(st));
        }
        id = c_.state.RegisterAttentionNode(req->grpc_address(), req->cache_capacity_tokens(),
                                            req->placement_version(), now, owner);
        spdlog::info("attention node {} registered at {} ({} cache tokens)", id,
                     req->grpc_address(), req->cache_capacity_tokens());
        break;
      case internal::NODE_ROLE_EXPERT_SHARD: {
        // The shard's data-plane listener, host:port (never UCX worker
        // bytes: attention nodes connect to it by address).
        if (absl::Status st = ValidateMemberAddress(req->ucx_address(), "ucx_address"); !st.ok()) {
          return Refused("register", service::ToGrpcStatus(st));
        }
        absl::StatusOr<uint64_t> r =
            c_.state.RegisterShard(req->shard_id(), req->grpc_address(), req->ucx_address(),
                                   req->placement_version(), now, owner);
        if (!r.ok()) return Refused("register", service::ToGrpcStatus(r.status()));
        id = *r;
        spdlog::info("expert shard {} registered at {} (node {})", req->shard_id(),
                     req->grpc_address(), id);
        break;
      }
      default:
        return Refused("register", grpc::Status(grpc::INVALID_ARGUMENT,
                                                "role: must be attention or expert shard"));
    }
    out->set_node_id(id);
    out->set_heartbeat_interval_ms(absl::ToInt64Milliseconds(c_.options.heartbeat_interval));
    if (c_.data_plane_key.ok()) {
      out->set_data_plane_key_id(c_.data_plane_key->id);
      out->set_data_plane_key(c_.data_plane_key->secret);
    }
    c_.Wake();
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext* context, const internal::HeartbeatRequest* req,
                         internal::HeartbeatResponse* out) override {
    if (grpc::Status st = CheckActsAs(*context, req->node_id(), "heartbeat"); !st.ok()) return st;
    absl::Status st = c_.state.CheckReportedVersion(req->placement_version());
    if (!st.ok()) return Refused("heartbeat", service::ToGrpcStatus(st));
    st = c_.state.Heartbeat(req->node_id(), req->placement_version(), req->resident_bytes(),
                            absl::Now());
    if (!st.ok()) return service::ToGrpcStatus(st);  // NotFound: register again
    out->set_placement_version(c_.state.published().version);
    return grpc::Status::OK;
  }

  grpc::Status Leave(grpc::ServerContext* context, const internal::LeaveRequest* req,
                     internal::LeaveResponse*) override {
    if (grpc::Status st = CheckActsAs(*context, req->node_id(), "leave"); !st.ok()) {
      // Leaving a node that is gone already is done.
      return st.error_code() == grpc::NOT_FOUND ? grpc::Status::OK : st;
    }
    if (c_.state.Remove(req->node_id())) {
      spdlog::info("node {} left", req->node_id());
      c_.Wake();
    }
    return grpc::Status::OK;
  }

 private:
  // OK when the caller registered `node_id` (always on a plaintext port);
  // NOT_FOUND when the node is not registered; PERMISSION_DENIED (counted)
  // when another identity did.
  grpc::Status CheckActsAs(const grpc::ServerContext& context, uint64_t node_id, const char* rpc) {
    absl::StatusOr<std::optional<service::MemberIdentity>> caller =
        service::CallerIdentity(context);
    if (!caller.ok()) return Refused(rpc, service::ToGrpcStatus(caller.status()));
    const std::string owner = caller->has_value() ? service::MemberIdentityUri(**caller) : "";
    absl::Status st = c_.state.CheckOwner(node_id, owner);
    if (absl::IsPermissionDenied(st)) return Refused(rpc, service::ToGrpcStatus(st));
    return service::ToGrpcStatus(st);
  }

  absl::Mutex registration_mu_;
  // Counts a refused (invalid) membership call and passes its status on.
  grpc::Status Refused(const char* rpc, grpc::Status status) {
    if (metrics::CoordinatorMetrics* m = c_.options.metrics) {
      m->refused_members.Add({{"rpc", rpc}}).Increment();
    }
    spdlog::warn("{} refused: {}", rpc, status.error_message());
    return status;
  }

  CoordinatorCore& c_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeMembershipService(CoordinatorCore& core) {
  return std::make_unique<MembershipService>(core);
}

}  // namespace dsv2::coordinator
