#include "base/fingerprint.h"
#include "coordinator/coordinator_core_internal.h"

namespace dsv2::coordinator {

namespace {

class MembershipService final : public internal::Coordinator::Service {
 public:
  explicit MembershipService(CoordinatorCore& c) : c_(c) {}

  grpc::Status Register(grpc::ServerContext*, const internal::RegisterRequest* req,
                        internal::RegisterResponse* out) override {
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
        id = c_.state.RegisterAttentionNode(req->grpc_address(), req->cache_capacity_tokens(),
                                            req->placement_version(), now);
        spdlog::info("attention node {} registered at {} ({} cache tokens)", id,
                     req->grpc_address(), req->cache_capacity_tokens());
        break;
      case internal::NODE_ROLE_EXPERT_SHARD: {
        // The shard's data-plane listener, host:port (never UCX worker
        // bytes: attention nodes connect to it by address).
        if (absl::Status st = ValidateMemberAddress(req->ucx_address(), "ucx_address"); !st.ok()) {
          return Refused("register", service::ToGrpcStatus(st));
        }
        absl::StatusOr<uint64_t> r = c_.state.RegisterShard(
            req->shard_id(), req->grpc_address(), req->ucx_address(), req->placement_version(),
            now);
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
    c_.Wake();
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext*, const internal::HeartbeatRequest* req,
                         internal::HeartbeatResponse* out) override {
    absl::Status st = c_.state.CheckReportedVersion(req->placement_version());
    if (!st.ok()) return Refused("heartbeat", service::ToGrpcStatus(st));
    st = c_.state.Heartbeat(req->node_id(), req->placement_version(), req->resident_bytes(),
                            absl::Now());
    if (!st.ok()) return service::ToGrpcStatus(st);  // NotFound: register again
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
