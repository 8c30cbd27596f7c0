#include "model/sampling.h"

#include <cmath>
#include <limits>
#include <map>
#include <random>

#include "gtest/gtest.h"

namespace dsv2 {
namespace {

TEST(SamplingTest, GreedyPicksArgmaxTiesToLowerId) {
  const std::vector<float> logits = {1.0f, 3.0f, 3.0f, -1.0f};
  SamplingParams p;
  EXPECT_EQ(SampleToken(logits, p, 0), 1);
}

TEST(SamplingTest, TopKOneIsGreedy) {
  const std::vector<float> logits = {1.0f, 2.0f, 5.0f};
  SamplingParams p{.temperature = 1.0f, .top_k = 1, .top_p = 1.0f, .seed = 7};
  for (uint64_t i = 0; i < 20; ++i) EXPECT_EQ(SampleToken(logits, p, i), 2);
}

// The selection-based sampler against the definition executed literally:
// vocabularies from 2 to DeepSeek's 102,400, logits with many ties (ties
// go to the lower id), flat and peaked, every top-k / top-p combination.
TEST(SamplingTest, SelectionEqualsSortingReference) {
  std::mt19937 rng(5);
  int compared = 0;
  for (size_t V : {size_t{2}, size_t{33}, size_t{1000}, size_t{102400}}) {
    for (int shape = 0; shape < 3; ++shape) {
      std::vector<float> logits(V);
      std::normal_distribution<float> normal(0.0f, shape == 2 ? 6.0f : 1.0f);
      for (float& x : logits) {
        x = normal(rng);
        if (shape == 1) x = std::round(x * 4.0f) / 4.0f;  // ties
      }
      for (float t : {0.3f, 1.0f, 1.7f}) {
        for (int top_k : {0, 2, 40, 5000}) {
          for (float top_p : {1.0f, 0.9f, 0.3f}) {
            const SamplingParams p{.temperature = t, .top_k = top_k, .top_p = top_p, .seed = 9};
            for (uint64_t pos = 0; pos < (V > 1000 ? 4u : 40u); ++pos) {
              ASSERT_EQ(SampleToken(logits, p, pos), SampleTokenBySorting(logits, p, pos))
                  << "V " << V << " shape " << shape << " T " << t << " top_k " << top_k
                  << " top_p " << top_p << " position " << pos;
              ++compared;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(compared, 1000);
}

TEST(SamplingTest, SameSeedAndPositionSameToken) {
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(i % 7) * 0.3f;
  SamplingParams p{.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 42};
  for (uint64_t pos = 0; pos < 10; ++pos) {
    EXPECT_EQ(SampleToken(logits, p, pos), SampleToken(logits, p, pos));
  }
  EXPECT_EQ(CounterUniform(42, 3), CounterUniform(42, 3));
  EXPECT_NE(CounterUniform(42, 3), CounterUniform(42, 4));
  EXPECT_NE(CounterUniform(42, 3), CounterUniform(43, 3));
}

TEST(SamplingTest, FrequenciesFollowTheDistribution) {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 0.25, 0.75
  SamplingParams p{.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 1};
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += SampleToken(logits, p, i);
  EXPECT_NEAR(ones / double(n), 0.75, 0.02);
}

TEST(SamplingTest, TopPKeepsShortestPrefixReachingMass) {
  // p = 0.5, 0.3, 0.2: top_p 0.6 keeps ids 0 and 1 only.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  SamplingParams p{.temperature = 1.0f, .top_k = 0, .top_p = 0.6f, .seed = 3};
  std::map<int32_t, int> seen;
  for (int i = 0; i < 2000; ++i) ++seen[SampleToken(logits, p, i)];
  EXPECT_EQ(seen.count(2), 0u);
  EXPECT_GT(seen[1], 0);
  p.top_p = 0.5f;  // the first token alone reaches 0.5
  for (int i = 0; i < 200; ++i) EXPECT_EQ(SampleToken(logits, p, i), 0);
}

TEST(SamplingTest, TopKLimitsCandidates) {
  const std::vector<float> logits = {0.f, 0.1f, 0.2f, 0.3f};
  SamplingParams p{.temperature = 5.0f, .top_k = 2, .top_p = 1.0f, .seed = 9};
  for (int i = 0; i < 500; ++i) EXPECT_GE(SampleToken(logits, p, i), 2);
}

TEST(SamplingTest, TinyTemperatureIsGreedyNotNaN) {
  std::vector<float> logits(100);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(static_cast<float>(i));
  const int32_t best = SampleToken(logits, SamplingParams{}, 0);
  SamplingParams p{.temperature = 1e-39f, .top_k = 0, .top_p = 0.9f, .seed = 1};
  for (uint64_t i = 0; i < 50; ++i) EXPECT_EQ(SampleToken(logits, p, i), best);
}

TEST(SamplingTest, TopLogitsSortedByLogitThenId) {
  const std::vector<float> logits = {1.f, 5.f, 5.f, 2.f};
  const auto top = TopLogits(logits, 3);
  ASSERT_EQ(top.size(), 3u);
  EXPECT_EQ(top[0].first, 1);
  EXPECT_EQ(top[1].first, 2);
  EXPECT_EQ(top[2].first, 3);
}

TEST(SamplingTest, ValidationNamesTheField) {
  EXPECT_NE(ValidateSamplingParams({.temperature = -1.f}).message().find("temperature"),
            absl::string_view::npos);
  EXPECT_NE(ValidateSamplingParams({.top_p = 0.f}).message().find("top_p"),
            absl::string_view::npos);
  EXPECT_NE(ValidateSamplingParams({.top_p = 1.5f}).message().find("top_p"),
            absl::string_view::npos);
  EXPECT_NE(ValidateSamplingParams({.top_k = -2}).message().find("top_k"),
            absl::string_view::npos);
  EXPECT_TRUE(ValidateSamplingParams({}).ok());
}

TEST(SamplingTest, LogprobsExpSumsToOneOverTheVocabulary) {
  std::vector<float> logits(1000);
  for (size_t i = 0; i < logits.size(); ++i) {
    logits[i] = static_cast<float>((i * 37) % 101) * 0.17f - 8.0f;
  }
  double sum = 0.0;
  for (int32_t t = 0; t < static_cast<int32_t>(logits.size()); ++t) {
    const TokenLogprobs lp = ComputeLogprobs(logits, t, 0);
    EXPECT_EQ(lp.token, t);
    EXPECT_LE(lp.logprob, 0.0f);
    sum += std::exp(static_cast<double>(lp.logprob));
  }
  EXPECT_NEAR(sum, 1.0, 1e-5);
}

TEST(SamplingTest, LogprobsMatchHandComputedValues) {
  // Two equal logits: log(1/2) each, whatever their magnitude.
  EXPECT_NEAR(ComputeLogprobs(std::vector<float>{5.0f, 5.0f}, 1, 0).logprob, -std::log(2.0), 1e-6);
  // softmax(0, ln 3) = (1/4, 3/4).
  const std::vector<float> logits = {0.0f, std::log(3.0f)};
  EXPECT_NEAR(ComputeLogprobs(logits, 0, 0).logprob, std::log(0.25), 1e-6);
  EXPECT_NEAR(ComputeLogprobs(logits, 1, 0).logprob, std::log(0.75), 1e-6);
  // (1, 2, 3): log Z = 3 + log(1 + e^-1 + e^-2).
  const double log_z = 3.0 + std::log(1.0 + std::exp(-1.0) + std::exp(-2.0));
  const TokenLogprobs lp = ComputeLogprobs(std::vector<float>{1.0f, 2.0f, 3.0f}, 0, 2);
  EXPECT_NEAR(lp.logprob, 1.0 - log_z, 1e-6);
  ASSERT_EQ(lp.top.size(), 2u);
  EXPECT_EQ(lp.top[0].first, 2);
  EXPECT_NEAR(lp.top[0].second, 3.0 - log_z, 1e-6);
  EXPECT_EQ(lp.top[1].first, 1);
  EXPECT_NEAR(lp.top[1].second, 2.0 - log_z, 1e-6);
}

TEST(SamplingTest, LogprobsTopOrdersTiesByLowerId) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, 2.0f};
  const TokenLogprobs lp = ComputeLogprobs(logits, 4, 4);
  ASSERT_EQ(lp.top.size(), 4u);
  EXPECT_EQ(lp.top[0].first, 1);
  EXPECT_EQ(lp.top[1].first, 3);
  EXPECT_EQ(lp.top[2].first, 2);
  EXPECT_EQ(lp.top[3].first, 4);
  EXPECT_EQ(lp.top[0].second, lp.top[1].second);
  EXPECT_EQ(lp.top[2].second, lp.top[3].second);
  EXPECT_EQ(lp.logprob, lp.top[3].second);  // the token itself may be in top
}

TEST(SamplingTest, LogprobsTopNZeroAndTwenty) {
  std::vector<float> logits(64);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(i % 9);
  EXPECT_TRUE(ComputeLogprobs(logits, 3, 0).top.empty());
  const TokenLogprobs lp = ComputeLogprobs(logits, 3, kMaxTopLogprobs);
  ASSERT_EQ(lp.top.size(), 20u);
  const auto expected = TopLogits(logits, 20);
  for (size_t i = 0; i < lp.top.size(); ++i) {
    EXPECT_EQ(lp.top[i].first, expected[i].first) << i;
    if (i > 0) {
      EXPECT_GE(lp.top[i - 1].second, lp.top[i].second) << i;
    }
  }
  // More than the vocabulary: every token once.
  EXPECT_EQ(ComputeLogprobs(std::vector<float>{0.0f, 1.0f}, 0, 20).top.size(), 2u);
}

TEST(SamplingTest, LogprobsOfHugeAndNegativeLogitsAreFinite) {
  const float big = std::numeric_limits<float>::max();
  const std::vector<std::vector<float>> cases = {
      {big, big, 0.0f}, {-big, -big}, {big, -big}, {1e30f, -1e30f, 1e30f}, {-1e4f, -1e4f - 1}};
  for (const auto& logits : cases) {
    for (int32_t t = 0; t < static_cast<int32_t>(logits.size()); ++t) {
      const TokenLogprobs lp = ComputeLogprobs(logits, t, 3);
      EXPECT_TRUE(std::isfinite(lp.logprob)) << logits[0] << " token " << t;
      EXPECT_LE(lp.logprob, 0.0f);
      for (const auto& [id, v] : lp.top) EXPECT_TRUE(std::isfinite(v)) << id;
    }
  }
  // Equal huge logits still share the mass: log(1/2), not 0.
  EXPECT_NEAR(ComputeLogprobs(std::vector<float>{big, big, 0.0f}, 0, 0).logprob, -std::log(2.0),
              1e-6);
  EXPECT_NEAR(ComputeLogprobs(std::vector<float>{-1e4f, -1e4f - 1}, 0, 0).logprob,
              -std::log(1.0 + std::exp(-1.0)), 1e-6);
}

}  // namespace
}  // namespace dsv2
