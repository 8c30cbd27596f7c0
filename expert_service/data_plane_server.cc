#include "expert_service/data_plane_server.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "transport/wire.h"

namespace dsv2 {
namespace {

using transport::WireStatus;

// The activation dtypes the data plane carries.
absl::StatusOr<DType> FromWireDType(uint16_t code) {
  switch (static_cast<transport::WireDType>(code)) {
    case transport::WireDType::kF32: return DType::kF32;
    case transport::WireDType::kBf16: return DType::kBF16;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown wire dtype ", code));
}

}  // namespace

int64_t ResidentBytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<int64_t>(sysconf(_SC_PAGESIZE)) : 0;
}

ExpertDataPlaneServer::ExpertDataPlaneServer(const ModelConfig& config,
                                             const Checkpoint& checkpoint, kernels::CpuContext ctx,
                                             int32_t shard_id, WeightQuantization quantization)
    : config_(config),
      checkpoint_(checkpoint),
      ctx_(ctx),
      shard_id_(shard_id),
      quantization_(quantization) {
  counters_.expert_rows.assign(static_cast<size_t>(std::max<int64_t>(0, config.n_routed_experts)),
                               0);
}

absl::Status ExpertDataPlaneServer::LoadExperts(const router::Placement& placement) {
  absl::MutexLock load_lock(&load_mu_);
  DSV2_RETURN_IF_ERROR(
      router::ValidatePlacement(placement, static_cast<int32_t>(config_.n_routed_experts)));
  // Shard ids may be sparse (the coordinator keeps them stable across
  // failures): a shard id the table does not list, or past its largest id,
  // holds no experts (an empty set, not an error).
  std::vector<int32_t> wanted = placement.ExpertsOf(shard_id_);
  {
    absl::MutexLock lock(&mu_);
    DSV2_RETURN_IF_ERROR(router::CheckPlacementVersionJump(version_, placement.version));
    if (placement.version < version_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "placement version ", placement.version, " is older than the current ", version_));
    }
    if (placement.version == version_ && wanted == experts_ && shard_ != nullptr) {
      return absl::OkStatus();
    }
  }
  // Load outside mu_: requests keep being served by the current experts.
  // The checkpoint is memory-mapped, so unchanged experts cost nothing to
  // map again.
  DSV2_ASSIGN_OR_RETURN(
      std::unique_ptr<ExpertWeightSet> weights,
      ExpertWeightSet::Load(config_, checkpoint_, ExpertWeightSet::AllLayers(config_, wanted),
                            quantization_));
  weights->Prefault();
  auto shard = std::make_shared<const ExpertCompute>(config_, std::move(weights), ctx_);
  absl::MutexLock lock(&mu_);
  shard_ = std::move(shard);
  experts_ = std::move(wanted);
  version_ = placement.version;
  return absl::OkStatus();
}

uint64_t ExpertDataPlaneServer::placement_version() const {
  absl::MutexLock lock(&mu_);
  return version_;
}

std::vector<int32_t> ExpertDataPlaneServer::experts() const {
  absl::MutexLock lock(&mu_);
  return experts_;
}

int64_t ExpertDataPlaneServer::expert_weight_bytes() const {
  absl::MutexLock lock(&mu_);
  return shard_ ? static_cast<int64_t>(shard_->weights().weight_bytes()) : 0;
}

DispatchServerCounters ExpertDataPlaneServer::counters() const {
  absl::MutexLock lock(&counters_mu_);
  return counters_;
}

std::vector<std::byte> ExpertDataPlaneServer::Error(std::span<const std::byte> message,
                                                   int32_t wire_status,
                                                   const std::string& reason,
                                                   const std::string& text) {
  {
    absl::MutexLock lock(&counters_mu_);
    ++counters_.errors[reason];
  }
  return transport::EncodeErrorReply(transport::PeekHeader(message),
                                     static_cast<WireStatus>(wire_status), text);
}

std::vector<std::byte> ExpertDataPlaneServer::HandleMessage(std::span<const std::byte> message) {
  const auto malformed = [&](const absl::Status& st) {
    return Error(message, static_cast<int32_t>(WireStatus::kMalformed), "malformed",
                 std::string(st.message()));
  };
  absl::StatusOr<transport::RequestView> req = transport::ParseRequest(message);
  if (!req.ok()) return malformed(req.status());
  const transport::WireHeader& h = req->header;
  absl::StatusOr<DType> dtype = FromWireDType(h.dtype);
  if (!dtype.ok()) return malformed(dtype.status());

  std::shared_ptr<const ExpertCompute> shard;
  uint64_t version;
  {
    absl::MutexLock lock(&mu_);
    shard = shard_;
    version = version_;
  }
  const auto mismatch = [&](const std::string& why) {
    return Error(message, static_cast<int32_t>(WireStatus::kPlacementMismatch),
                 "placement_version", why);
  };
  if (absl::Status st = router::CheckPlacementVersionJump(version, h.placement_version); !st.ok()) {
    return malformed(st);
  }
  if (h.placement_version < version) {
    return mismatch(absl::StrCat("dispatch planned with placement version ",
                                 h.placement_version, "; shard ", shard_id_, " serves version ",
                                 version));
  }
  if (shard == nullptr) return mismatch(absl::StrCat("shard ", shard_id_, " holds no experts yet"));

  router::ExpertDispatch d;
  d.layer = static_cast<int32_t>(h.layer);
  d.num_rows = static_cast<int32_t>(h.num_rows);
  d.hidden = static_cast<int32_t>(h.hidden);
  d.dtype = *dtype;
  d.assignments.resize(req->assignments.size());
  for (size_t i = 0; i < req->assignments.size(); ++i) {
    d.assignments[i] = {req->assignments[i].row, req->assignments[i].expert};
  }
  d.activations.assign(req->activations.begin(), req->activations.end());
  absl::StatusOr<router::ExpertReply> reply = shard->Handle(d);
  if (!reply.ok()) {
    if (absl::IsNotFound(reply.status())) {
      // Planned with a newer table than this shard has loaded, or a stale
      // sender: either way the sender must re-plan.
      if (h.placement_version != version) return mismatch(std::string(reply.status().message()));
      return Error(message, static_cast<int32_t>(WireStatus::kNotFound), "not_found",
                   std::string(reply.status().message()));
    }
    if (absl::IsInvalidArgument(reply.status())) return malformed(reply.status());
    return Error(message, static_cast<int32_t>(WireStatus::kInternal), "internal",
                 std::string(reply.status().message()));
  }
  {
    absl::MutexLock lock(&counters_mu_);
    ++counters_.dispatches_total;
    counters_.rows_total += static_cast<int64_t>(d.assignments.size());
    for (const router::Assignment& a : d.assignments) {
      if (static_cast<size_t>(a.expert) < counters_.expert_rows.size()) {
        ++counters_.expert_rows[a.expert];
      }
    }
  }
  if (observer_) observer_(static_cast<int64_t>(d.assignments.size()));
  return transport::EncodeReply(h, reply->outputs);
}

void ExpertDataPlaneServer::SetDispatchObserver(std::function<void(int64_t rows)> observer) {
  observer_ = std::move(observer);
}

}  // namespace dsv2
