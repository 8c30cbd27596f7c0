// ExpertControlServer: the gRPC control edge of an expert shard
// (proto/expert_shard.proto) over an ExpertDataPlaneServer: status and
// counters, and LoadExperts (placement changes). absl::Status maps to gRPC
// codes here and nowhere else in the shard.
//
// Threads: gRPC's server threads call the handlers; the dispatch server is
// thread-safe and must outlive this object.
#ifndef DSV2_EXPERT_SERVICE_CONTROL_SERVER_H_
#define DSV2_EXPERT_SERVICE_CONTROL_SERVER_H_

#include <cstdint>
#include <string>

#include "expert_service/data_plane_server.h"
#include "expert_shard.grpc.pb.h"

namespace dsv2 {

class ExpertControlServer final : public internal::ExpertShardService::Service {
 public:
  // `ucx_address`: the data plane's address, reported by GetStatus.
  ExpertControlServer(ExpertDataPlaneServer& server, std::string ucx_address, int32_t num_experts);

  grpc::Status GetStatus(grpc::ServerContext* ctx, const internal::ShardStatusRequest* req,
                         internal::ShardStatus* out) override;
  grpc::Status LoadExperts(grpc::ServerContext* ctx, const internal::LoadExpertsRequest* req,
                           internal::LoadExpertsResponse* out) override;

 private:
  ExpertDataPlaneServer& server_;
  const std::string ucx_address_;
  const int32_t num_experts_;
};

}  // namespace dsv2

#endif  // DSV2_EXPERT_SERVICE_CONTROL_SERVER_H_
