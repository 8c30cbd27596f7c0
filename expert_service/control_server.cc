#include "expert_service/control_server.h"

#include <spdlog/spdlog.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "service/service_common.h"
#include "service/tls.h"

namespace dsv2 {

ExpertControlServer::ExpertControlServer(ExpertDataPlaneServer& server, std::string ucx_address,
                                     int32_t num_experts)
    : server_(server), ucx_address_(std::move(ucx_address)), num_experts_(num_experts) {}

grpc::Status ExpertControlServer::GetStatus(grpc::ServerContext*, const internal::ShardStatusRequest*,
                                          internal::ShardStatus* out) {
  out->set_shard_id(server_.shard_id());
  out->set_ucx_address(ucx_address_);
  out->set_placement_version(server_.placement_version());
  for (int32_t e : server_.experts()) out->add_experts(e);
  out->set_resident_bytes(ResidentBytes());
  out->set_expert_weight_bytes(server_.expert_weight_bytes());
  const DispatchServerCounters c = server_.counters();
  out->set_dispatches_total(c.dispatches_total);
  out->set_rows_total(c.rows_total);
  for (const auto& [reason, n] : c.errors) (*out->mutable_dispatch_errors())[reason] = n;
  return grpc::Status::OK;
}

grpc::Status ExpertControlServer::LoadExperts(grpc::ServerContext* ctx,
                                              const internal::LoadExpertsRequest* req,
                                              internal::LoadExpertsResponse* out) {
  if (absl::Status st = service::CoordinatorOnly(*ctx, "LoadExperts"); !st.ok()) {
    return service::ToGrpcStatus(st);
  }
  if (req->shard_id() != server_.shard_id()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("request is for shard ", req->shard_id(), "; this is shard ",
                                     server_.shard_id()));
  }
  absl::StatusOr<router::Placement> p = service::PlacementFromProto(req->table(), num_experts_);
  if (!p.ok()) return service::ToGrpcStatus(p.status());
  if (absl::Status st = server_.LoadExperts(*p); !st.ok()) return service::ToGrpcStatus(st);
  spdlog::info("expert shard {}: placement version {}, {} experts", server_.shard_id(),
               server_.placement_version(), server_.experts().size());
  out->set_placement_version(server_.placement_version());
  for (int32_t e : server_.experts()) out->add_experts(e);
  out->set_resident_bytes(ResidentBytes());
  return grpc::Status::OK;
}

}  // namespace dsv2
