#include "router/gate.h"

#include <cmath>
#include <set>

#include "gtest/gtest.h"

namespace dsv2::router {
namespace {

GateParams V2Like() {
  return GateParams{.num_experts = 16, .top_k = 4, .method = TopkMethod::kGroupLimitedGreedy,
                    .n_group = 4, .topk_group = 2, .routed_scaling_factor = 16.0f,
                    .norm_topk_prob = false};
}

std::vector<float> Softmaxed(std::vector<float> l) {
  float m = *std::max_element(l.begin(), l.end()), s = 0;
  for (float& x : l) s += (x = std::exp(x - m));
  for (float& x : l) x /= s;
  return l;
}

TEST(GateTest, GreedyPicksTopKSortedByExpertIdWithScaledWeights) {
  GateParams p{.num_experts = 6, .top_k = 2, .method = TopkMethod::kGreedy,
               .routed_scaling_factor = 2.0f};
  const std::vector<float> logits = {0.f, 3.f, 1.f, 5.f, 0.f, 0.f};
  const RowRoute r = Gate(p, logits);
  EXPECT_EQ(r.experts, (std::vector<int32_t>{1, 3}));
  const auto s = Softmaxed(logits);
  EXPECT_FLOAT_EQ(r.weights[0], s[1] * 2.0f);
  EXPECT_FLOAT_EQ(r.weights[1], s[3] * 2.0f);
}

TEST(GateTest, TiesGoToLowerExpertId) {
  GateParams p{.num_experts = 4, .top_k = 1, .method = TopkMethod::kGreedy};
  EXPECT_EQ(Gate(p, std::vector<float>{1.f, 2.f, 2.f, 2.f}).experts, std::vector<int32_t>{1});
}

TEST(GateTest, GroupLimitedStaysWithinTopkGroups) {
  // Group maxima: g0 = 9 (expert 0), g1 = 8, g2 = 1, g3 = 7.9. Experts 12-15
  // (group 3) have high scores but group 3 is not in the top 2 groups.
  std::vector<float> logits(16, 0.f);
  logits[0] = 9;
  logits[5] = 8;
  logits[4] = 6;
  logits[9] = 1;
  for (int e = 12; e < 16; ++e) logits[e] = 7.9f;
  const RowRoute r = Gate(V2Like(), logits);
  EXPECT_EQ(r.experts, (std::vector<int32_t>{0, 1, 4, 5}));
  std::set<int32_t> groups;
  for (int32_t e : r.experts) groups.insert(e / 4);
  EXPECT_LE(groups.size(), 2u);
}

TEST(GateTest, NormTopkProbNormalisesInsteadOfScaling) {
  GateParams p = V2Like();
  p.norm_topk_prob = true;
  std::vector<float> logits(16);
  for (int e = 0; e < 16; ++e) logits[e] = 0.1f * e;
  const RowRoute r = Gate(p, logits);
  float sum = 0;
  for (float w : r.weights) sum += w;
  EXPECT_NEAR(sum, 1.0f, 1e-6);
}

TEST(CombineTest, WeightedSumInFp32CastOnce) {
  const std::vector<float> w = {0.5f, 0.25f};
  const std::vector<float> a = {1.f, 2.f}, b = {4.f, 8.f};
  const float* rows[] = {a.data(), b.data()};
  float y[2];
  Combine(w, rows, 2, DType::kF32, y);
  EXPECT_FLOAT_EQ(y[0], 1.5f);
  EXPECT_FLOAT_EQ(y[1], 3.0f);
  // bf16: one rounding of the fp32 sum, not one per term.
  const std::vector<float> w2 = {1.f, 1.f};
  const std::vector<float> c = {1.0f}, d = {1.0f / 512};
  const float* rows2[] = {c.data(), d.data()};
  float z;
  Combine(w2, rows2, 1, DType::kBF16, &z);
  EXPECT_EQ(z, RoundToBf16(1.0f + 1.0f / 512));
}

}  // namespace
}  // namespace dsv2::router
