// The MoE gate (MODEL_SPEC.md section 7) and the combine of expert outputs
// (DESIGN.md section 7). Pure functions, no I/O; thread-safe.
#ifndef DSV2_ROUTER_GATE_H_
#define DSV2_ROUTER_GATE_H_

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/dtype.h"
#include "model/config.h"

namespace dsv2::router {

struct GateParams {
  int32_t num_experts = 0;     // E
  int32_t top_k = 0;           // K
  TopkMethod method = TopkMethod::kGreedy;
  int32_t n_group = 1;
  int32_t topk_group = 1;
  float routed_scaling_factor = 1.0f;
  bool norm_topk_prob = false;

  static GateParams FromConfig(const ModelConfig& c);
};

// One row's routing: K experts in ascending expert id with their fp32
// weights.
struct RowRoute {
  std::vector<int32_t> experts;
  std::vector<float> weights;
};

// Routes one row from its gate logits [E] (fp32: h @ gate.weight^T with both
// cast to fp32). scores = softmax(logits); greedy: top-K scores;
// group_limited_greedy: group score = max of its scores, keep the top
// topk_group groups, zero the other scores, then top-K. Ties go to the lower
// group / expert id. weights = chosen scores, then normalised (norm_topk_prob
// and K > 1: w / (sum + 1e-20)) or multiplied by routed_scaling_factor.
// The result is sorted by expert id, so the order of the K picks never
// matters downstream.
// REQUIRES: logits.size() == p.num_experts.
RowRoute Gate(const GateParams& p, std::span<const float> logits);

// y[d] = act( sum_k weights[k] * expert_rows[k][d] ), k in the given order
// (ascending expert id, as Gate returns), fp32 accumulation, one cast.
// expert_rows[k] points at the k-th expert's unweighted output row [D] in
// f32 (holding act-dtype values).
void Combine(std::span<const float> weights, std::span<const float* const> expert_rows,
             size_t hidden, DType act, float* y);

}  // namespace dsv2::router

#endif  // DSV2_ROUTER_GATE_H_
