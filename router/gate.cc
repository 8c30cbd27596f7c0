#include "router/gate.h"

#include <algorithm>
#include <numeric>

#include "kernels/ops.h"

namespace dsv2::router {

GateParams GateParams::FromConfig(const ModelConfig& c) {
  GateParams p;
  p.num_experts = static_cast<int32_t>(c.n_routed_experts);
  p.top_k = static_cast<int32_t>(c.num_experts_per_tok);
  p.method = c.topk_method;
  p.n_group = static_cast<int32_t>(c.n_group);
  p.topk_group = static_cast<int32_t>(c.topk_group);
  p.routed_scaling_factor = static_cast<float>(c.routed_scaling_factor);
  p.norm_topk_prob = c.norm_topk_prob;
  return p;
}

RowRoute Gate(const GateParams& p, std::span<const float> logits) {
  std::vector<float> scores(logits.begin(), logits.end());
  kernels::Softmax(scores.data(), scores.size());
  if (p.method == TopkMethod::kGroupLimitedGreedy) {
    const int32_t per_group = p.num_experts / p.n_group;
    std::vector<float> group_scores(p.n_group);
    for (int32_t g = 0; g < p.n_group; ++g) {
      group_scores[g] = *std::max_element(scores.begin() + g * per_group,
                                          scores.begin() + (g + 1) * per_group);
    }
    std::vector<bool> keep(p.n_group, false);
    for (int32_t g : kernels::TopKIndices(group_scores, p.topk_group)) keep[g] = true;
    // Masked experts score 0, not -inf (MODEL_SPEC section 7).
    for (int32_t e = 0; e < p.num_experts; ++e) {
      if (!keep[e / per_group]) scores[e] = 0.0f;
    }
  }
  std::vector<int32_t> picked = kernels::TopKIndices(scores, p.top_k);
  std::sort(picked.begin(), picked.end());
  RowRoute r;
  r.experts = picked;
  for (int32_t e : picked) r.weights.push_back(scores[e]);
  if (p.norm_topk_prob && p.top_k > 1) {
    float sum = 0.f;
    for (float w : r.weights) sum += w;
    const float denom = sum + 1e-20f;
    for (float& w : r.weights) w /= denom;
  } else {
    for (float& w : r.weights) w *= p.routed_scaling_factor;
  }
  return r;
}

void Combine(std::span<const float> weights, std::span<const float* const> expert_rows,
             size_t hidden, DType act, float* y) {
  std::fill(y, y + hidden, 0.0f);
  for (size_t k = 0; k < weights.size(); ++k) {
    const float w = weights[k];
    const float* row = expert_rows[k];
    for (size_t d = 0; d < hidden; ++d) y[d] += w * row[d];
  }
  RoundInPlace(y, hidden, act);
}

}  // namespace dsv2::router
