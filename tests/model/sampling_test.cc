#include "model/sampling.h"

#include <map>

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

}  // namespace
}  // namespace dsv2
