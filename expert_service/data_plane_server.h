// ExpertDataPlaneServer: the data-plane side of an expert-shard service
// (DESIGN.md sections 2, 4 and 9). It turns each wire request
// (transport/wire.h) into an ExpertCompute::Handle call and the result into a
// wire reply; every field is validated, and a bad message gets an error
// reply and a counted reason, never a crash. It also holds the shard's
// placement: LoadExperts swaps in the experts a new table assigns to this
// shard (memory-mapped from the checkpoint) before adopting its version.
//
// Placement-version rule: a request planned with a version older than the
// shard's is answered kPlacementMismatch (its sender must re-plan); a newer
// version is served when the shard holds every expert it asks for (the
// coordinator publishes a table only after the shards loaded it) and is
// kPlacementMismatch otherwise.
//
// Thread-safety: HandleMessage runs on the data plane's handler thread;
// LoadExperts and the accessors may be called from any thread (gRPC). The
// held ExpertCompute is immutable and swapped under a mutex, so a request in
// progress finishes on the experts it started with.
#ifndef DSV2_EXPERT_SERVICE_DATA_PLANE_SERVER_H_
#define DSV2_EXPERT_SERVICE_DATA_PLANE_SERVER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "expert_service/expert_compute.h"
#include "kernels/cpu.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "router/plan.h"

namespace dsv2 {

struct DispatchServerCounters {
  int64_t dispatches_total = 0;  // answered OK
  int64_t rows_total = 0;        // assignment rows computed
  // Error replies by reason: malformed, placement_version, not_found,
  // internal.
  std::map<std::string, int64_t> errors;
  // Rows computed per expert id (the shard's load, all layers).
  std::vector<int64_t> expert_rows;
};

class ExpertDataPlaneServer {
 public:
  // `checkpoint` must outlive the server. Holds no experts until
  // LoadExperts.
  // `quantization`: how LoadExperts loads the experts (none: as stored).
  ExpertDataPlaneServer(const ModelConfig& config, const Checkpoint& checkpoint,
                        kernels::CpuContext ctx, int32_t shard_id,
                        WeightQuantization quantization = {});

  // Holds exactly placement.ExpertsOf(shard_id) (every MoE layer; none for
  // a shard id the table does not use), loading what it gains first, then
  // adopts placement.version. InvalidArgument for a placement that does
  // not fit the model; FailedPrecondition for a version older than the
  // current one (the same version reloads nothing).
  absl::Status LoadExperts(const router::Placement& placement);

  // A wire request in, a wire reply out (never empty, never throws).
  std::vector<std::byte> HandleMessage(std::span<const std::byte> message);

  int32_t shard_id() const { return shard_id_; }
  uint64_t placement_version() const;
  std::vector<int32_t> experts() const;
  // Bytes of the held experts' weights (mapped or converted).
  int64_t expert_weight_bytes() const;
  DispatchServerCounters counters() const;
  // Called after every answered dispatch with its assignment rows (metrics);
  // set before the first message arrives. Runs on the handling thread.
  void SetDispatchObserver(std::function<void(int64_t rows)> observer);

 private:
  std::vector<std::byte> Error(const std::span<const std::byte> message, int32_t wire_status,
                               const std::string& reason, const std::string& text);

  const ModelConfig config_;
  const Checkpoint& checkpoint_;
  const kernels::CpuContext ctx_;
  const int32_t shard_id_;
  const WeightQuantization quantization_;

  mutable absl::Mutex mu_;
  std::shared_ptr<const ExpertCompute> shard_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> experts_ ABSL_GUARDED_BY(mu_);
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  // Serialises LoadExperts calls (loading happens outside mu_).
  absl::Mutex load_mu_;

  std::function<void(int64_t rows)> observer_;  // set before serving
  mutable absl::Mutex counters_mu_;
  DispatchServerCounters counters_ ABSL_GUARDED_BY(counters_mu_);
};

// Resident set size of this process in bytes (/proc/self/statm), 0 if it
// cannot be read.
int64_t ResidentBytes();

}  // namespace dsv2

#endif  // DSV2_EXPERT_SERVICE_DATA_PLANE_SERVER_H_
