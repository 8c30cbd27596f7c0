// ExpertCompute: a set of routed experts (any layers, any expert ids) and the
// computation an expert-shard service performs on a dispatch (DESIGN.md
// section 2): rows are grouped by expert and each expert's SwiGLU FFN runs
// as one batched GEMM over its rows. Returns one unweighted output row per
// assignment in the activation dtype (exact mode, DESIGN.md section 7).
//
// Thread-safety: Handle may be called from one thread at a time per shard
// (it uses the shard's ThreadPool); the weights are immutable.
#ifndef DSV2_EXPERT_SERVICE_EXPERT_COMPUTE_H_
#define DSV2_EXPERT_SERVICE_EXPERT_COMPUTE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/cpu.h"
#include "model/config.h"
#include "model/weights.h"
#include "router/dispatch.h"

namespace dsv2 {

class ExpertCompute {
 public:
  // `weights` must hold every (layer, expert) this shard will be asked for.
  ExpertCompute(const ModelConfig& config, std::unique_ptr<ExpertWeightSet> weights,
              kernels::CpuContext ctx);

  // Validates the dispatch (layer, hidden size, dtype, row indices, expert
  // ids held here, activation byte count) and computes the expert outputs.
  // InvalidArgument for a malformed dispatch, NotFound for an expert this
  // shard does not hold.
  absl::StatusOr<router::ExpertReply> Handle(const router::ExpertDispatch& dispatch) const;

  const ExpertWeightSet& weights() const { return *weights_; }

 private:
  const ModelConfig config_;
  const std::unique_ptr<ExpertWeightSet> weights_;
  const kernels::CpuContext ctx_;
};

}  // namespace dsv2

#endif  // DSV2_EXPERT_SERVICE_EXPERT_COMPUTE_H_
