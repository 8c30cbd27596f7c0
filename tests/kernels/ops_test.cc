#include "kernels/ops.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu.h"
#include "nlohmann/json.hpp"
#include "tests/kernels/cpu_isa_test_support.h"

namespace dsv2::kernels {
namespace {

TEST(RmsNormTest, NormalisesThenScalesWithActivationRounding) {
  const std::vector<float> x = {1.f, 2.f, 3.f, 4.f};
  const std::vector<float> w = {1.f, 0.5f, 2.f, 1.f};
  std::vector<float> out(4);
  RmsNorm(x.data(), w.data(), 4, 1e-6f, DType::kF32, out.data());
  const float r = 1.0f / std::sqrt((1 + 4 + 9 + 16) / 4.0f + 1e-6f);
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(out[i], w[i] * x[i] * r);
  RmsNorm(x.data(), w.data(), 4, 1e-6f, DType::kBF16, out.data());
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(out[i], RoundToBf16(w[i] * RoundToBf16(x[i] * r)));
  }
}

TEST(RmsNormTest, EpsilonMatters) {
  const std::vector<float> x = {1e-3f, -1e-3f};
  const std::vector<float> w = {1.f, 1.f};
  float a[2], b[2];
  RmsNorm(x.data(), w.data(), 2, 1e-6f, DType::kF32, a);
  RmsNorm(x.data(), w.data(), 2, 1e-2f, DType::kF32, b);
  EXPECT_GT(std::fabs(a[0] - b[0]), 0.1f);
}

TEST(SoftmaxTest, SumsToOneAndIsShiftInvariant) {
  std::vector<float> a = {1.f, 2.f, 3.f}, b = {101.f, 102.f, 103.f};
  Softmax(a.data(), 3);
  Softmax(b.data(), 3);
  EXPECT_NEAR(a[0] + a[1] + a[2], 1.0f, 1e-6);
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(a[i], b[i], 1e-6);
  EXPECT_NEAR(a[2], std::exp(2.f) / (1 + std::exp(1.f) + std::exp(2.f)), 1e-6);
}

TEST(SwiGluTest, SiluTimesUp) {
  const std::vector<float> g = {-2.f, 0.f, 1.5f}, u = {3.f, 4.f, -1.f};
  std::vector<float> out(3);
  SwiGlu(g.data(), u.data(), 3, DType::kF32, out.data());
  for (int i = 0; i < 3; ++i) EXPECT_FLOAT_EQ(out[i], g[i] / (1 + std::exp(-g[i])) * u[i]);
}

// YaRN and default inverse frequencies equal the tables transformers used
// for the conformance fixtures (recorded in their reference.json).
TEST(RopeTest, InverseFrequenciesMatchTransformers) {
  for (const char* variant : {"v2_f32", "norope_f32"}) {
    std::ifstream in(std::string(DSV2_SOURCE_DIR) + "/tests/data/conformance/" + variant +
                     "/reference.json");
    const auto ref = nlohmann::json::parse(in);
    std::ifstream cin(std::string(DSV2_SOURCE_DIR) + "/tests/data/conformance/" + variant +
                      "/config.json");
    const auto cfg = nlohmann::json::parse(cin);
    const auto& rp = cfg.at("rope_parameters");
    const size_t R = cfg.at("qk_rope_head_dim").get<size_t>();
    RopeTable t;
    if (rp.at("rope_type") == "yarn") {
      YarnParams p;
      p.theta = rp.at("rope_theta").get<float>();
      p.factor = rp.at("factor").get<float>();
      p.original_max_position_embeddings = rp.at("original_max_position_embeddings").get<double>();
      p.beta_fast = rp.at("beta_fast").get<double>();
      p.beta_slow = rp.at("beta_slow").get<double>();
      p.mscale = rp.at("mscale").get<double>();
      p.mscale_all_dim = rp.at("mscale_all_dim").get<double>();
      t = YarnRopeTable(R, p);
    } else {
      t = DefaultRopeTable(R, rp.at("rope_theta").get<float>());
    }
    const auto want = ref.at("rope_inv_freq").get<std::vector<float>>();
    ASSERT_EQ(t.inv_freq.size(), want.size()) << variant;
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_NEAR(t.inv_freq[i], want[i], 1e-7 * std::fabs(want[i])) << variant << " " << i;
    }
    EXPECT_FLOAT_EQ(t.attention_scaling, ref.at("rope_attention_scaling").get<float>());
  }
}

TEST(RopeTest, YarnAmplitudeFollowsMscaleRule) {
  YarnParams p;
  p.factor = 40;
  p.original_max_position_embeddings = 4096;
  p.mscale = 1.0;
  p.mscale_all_dim = 0.0;  // only one set: amplitude = 0.1 ln(factor) + 1
  EXPECT_NEAR(YarnRopeTable(64, p).attention_scaling, 0.1 * std::log(40.0) + 1, 1e-6);
  p.mscale_all_dim = 0.5;
  const double want = (0.1 * std::log(40.0) + 1) / (0.05 * std::log(40.0) + 1);
  EXPECT_NEAR(YarnRopeTable(64, p).attention_scaling, want, 1e-6);
  p.has_attention_factor = true;
  p.attention_factor = 1.25;
  EXPECT_FLOAT_EQ(YarnRopeTable(64, p).attention_scaling, 1.25f);
}

TEST(RopeTest, RotatesAdjacentPairs) {
  RopeTable t;
  t.inv_freq = {1.0f, 0.5f};
  std::vector<float> x = {1.f, 0.f, 0.f, 1.f};
  ApplyRope(t, 2, x.data(), 4, DType::kF32);
  EXPECT_NEAR(x[0], std::cos(2.f), 1e-6);
  EXPECT_NEAR(x[1], std::sin(2.f), 1e-6);
  EXPECT_NEAR(x[2], -std::sin(1.f), 1e-6);
  EXPECT_NEAR(x[3], std::cos(1.f), 1e-6);
}

TEST(WeightedRowSumTest, AccumulatesInPositionOrder) {
  const std::vector<float> p = {0.5f, 0.25f};  // 1 row, 2 positions
  const std::vector<float> v = {1.f, 2.f, 4.f, 8.f};  // 2 x 2
  std::vector<float> acc = {1.f, 1.f};
  WeightedRowSum(p.data(), 2, v.data(), DType::kF32, 2, acc.data(), 2, 1, 2, 2);
  EXPECT_FLOAT_EQ(acc[0], 1 + 0.5f + 1.0f);
  EXPECT_FLOAT_EQ(acc[1], 1 + 1.0f + 2.0f);
  std::vector<uint16_t> vb(4);
  for (int i = 0; i < 4; ++i) vb[i] = F32ToBf16(v[i]);
  std::vector<float> acc2 = {1.f, 1.f};
  WeightedRowSum(p.data(), 2, vb.data(), DType::kBF16, 2, acc2.data(), 2, 1, 2, 2);
  EXPECT_EQ(acc, acc2);
}

// The vector paths (AVX-512 / AVX2 where this CPU has them) give the
// reference's bits: rows and widths around the 8-row groups and the 8- and
// 16-lane chunks, strided operands, acc starting non-zero.
TEST(WeightedRowSumTest, BitwiseEqualToTheReference) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (size_t rows : {1, 2, 3, 5, 8, 9, 16, 17}) {
      for (size_t width : {1, 7, 8, 15, 16, 17, 64, 512}) {
        for (size_t n : {1, 5, 64}) {
          const size_t ldp = n + 3, ldv = width + 5, ldacc = width + 2;
          std::vector<float> p(rows * ldp), vf(n * ldv), acc(rows * ldacc);
          for (float& x : p) x = std::fabs(dist(rng));
          for (float& x : vf) x = dist(rng) * 4.0f;
          for (float& x : acc) x = dist(rng);
          std::vector<uint16_t> vb(vf.size());
          for (size_t i = 0; i < vf.size(); ++i) vb[i] = F32ToBf16(vf[i]);
          const void* v = dtype == DType::kF32 ? static_cast<const void*>(vf.data())
                                               : static_cast<const void*>(vb.data());
          std::vector<float> ref = acc;
          WeightedRowSumReference(p.data(), ldp, v, dtype, ldv, ref.data(), ldacc, rows, n, width);
          for (CpuIsa isa : kAllIsas) {
            if (!CpuSupports(isa)) continue;
            std::vector<float> got = acc;
            WeightedRowSumForIsa(isa, p.data(), ldp, v, dtype, ldv, got.data(), ldacc, rows, n,
                                 width);
            ASSERT_EQ(std::memcmp(got.data(), ref.data(), got.size() * sizeof(float)), 0)
                << CpuIsaName(isa) << " " << DTypeName(dtype) << " rows=" << rows
                << " width=" << width << " n=" << n;
          }
          WeightedRowSum(p.data(), ldp, v, dtype, ldv, acc.data(), ldacc, rows, n, width);
          ASSERT_EQ(std::memcmp(acc.data(), ref.data(), acc.size() * sizeof(float)), 0);
        }
      }
    }
  }
}

}  // namespace
}  // namespace dsv2::kernels
