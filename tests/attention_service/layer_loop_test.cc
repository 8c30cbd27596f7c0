#include "attention_service/layer_loop.h"

#include <cmath>
#include <filesystem>
#include <random>

#include "gtest/gtest.h"
#include "tools/dsv2/local_engine.h"
#include "tools/dsv2/random_model.h"

namespace dsv2 {
namespace {

std::string MakeModel(const std::string& preset, DType dtype) {
  const std::string dir = ::testing::TempDir() + "/dsv2_ll_" + preset + DTypeName(dtype);
  if (!std::filesystem::exists(dir + "/model.safetensors")) {
    RandomModelOptions o;
    o.out_dir = dir;
    o.preset = preset;
    o.seed = 5;
    o.dtype = dtype;
    o.tokenizer_dir = std::string(DSV2_SOURCE_DIR) + "/model/data/deepseek-v2";
    EXPECT_TRUE(MakeRandomModel(o).ok());
  }
  return dir;
}

struct MlaCase {
  std::string preset;
  DType dtype;
  double tolerance;  // relative to max |reference|
};

class AbsorbedMlaTest : public ::testing::TestWithParam<MlaCase> {};

// MODEL_SPEC section 5: the absorbed form over the latent cache equals the
// reference form of section 4, for every position of a 150-token sequence
// (three cache blocks), computed in chunks.
TEST_P(AbsorbedMlaTest, AgreesWithReferenceForm) {
  const MlaCase& mc = GetParam();
  LocalEngineOptions o;
  o.model_dir = MakeModel(mc.preset, mc.dtype);
  o.cache_tokens = 256;
  auto e = LocalEngine::Open(o);
  ASSERT_TRUE(e.ok()) << e.status();
  const ModelConfig& c = (*e)->config();
  const int64_t T = 150, D = c.hidden_size;
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> h(T * D);
  for (float& x : h) x = dist(rng);
  RoundInPlace(h.data(), h.size(), (*e)->weights().activation_dtype());
  for (int64_t layer : {int64_t{0}, c.num_hidden_layers - 1}) {
    std::vector<float> ref(T * D), ours(T * D);
    ReferenceMla(c, (*e)->weights().layer(layer).attn, MakeRopeTable(c),
                 (*e)->weights().activation_dtype(), h.data(), T, ref.data());
    SequenceCache seq;
    for (int64_t begin = 0; begin < T; begin += 37) {
      const int64_t n = std::min<int64_t>(37, T - begin);
      ASSERT_TRUE((*e)->loop().MlaForTest(layer, seq, &h[begin * D], n, &ours[begin * D]).ok());
      seq.num_tokens += n;
    }
    (*e)->cache().Release(seq);
    double scale = 0, diff = 0;
    for (int64_t i = 0; i < T * D; ++i) {
      scale = std::max(scale, std::fabs(double(ref[i])));
      diff = std::max(diff, std::fabs(double(ref[i]) - ours[i]));
    }
    EXPECT_GT(scale, 0.0);
    EXPECT_LE(diff, mc.tolerance * scale) << "layer " << layer;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, AbsorbedMlaTest,
                         ::testing::Values(MlaCase{"v2-tiny", DType::kF32, 1e-5},
                                           MlaCase{"v2-lite-tiny", DType::kF32, 1e-5},
                                           MlaCase{"v2-tiny", DType::kBF16, 3e-2}));

// Logits of every position of a 150-token sequence (three 64-token key
// blocks) are bitwise the same whether prefilled at once or in chunks that
// straddle the block boundaries, and with 1 or 2 threads.
TEST(LayerLoopTest, ChunkBoundariesAcrossKeyBlocksChangeNoBit) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    std::vector<std::vector<float>> results;
    for (int threads : {1, 2}) {
      LocalEngineOptions o;
      o.model_dir = MakeModel("v2-tiny", dtype);
      o.cache_tokens = 256;
      o.threads = threads;
      auto e = LocalEngine::Open(o);
      ASSERT_TRUE(e.ok()) << e.status();
      std::vector<int32_t> tokens(150);
      for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(7 + 13 * i);
      for (size_t chunk : {150, 1, 37, 64, 65}) {
        SequenceCache seq;
        std::vector<float> all;
        StepOutput out;
        for (size_t b = 0; b < tokens.size(); b += chunk) {
          StepSequence s{&seq, std::span<const int32_t>(tokens).subspan(
                                   b, std::min(chunk, tokens.size() - b)),
                         true};
          ASSERT_TRUE((*e)->loop().Step(std::span<StepSequence>(&s, 1), &out).ok());
          all.insert(all.end(), out.logits[0].begin(), out.logits[0].end());
        }
        (*e)->cache().Release(seq);
        results.push_back(std::move(all));
      }
    }
    for (size_t i = 1; i < results.size(); ++i) {
      EXPECT_TRUE(results[i] == results[0]) << DTypeName(dtype) << " variant " << i;
    }
  }
}

TEST(LayerLoopTest, RejectsBadTokensAndPositionsWithoutChangingTheCache) {
  LocalEngineOptions o;
  o.model_dir = MakeModel("v2-tiny", DType::kF32);
  o.cache_tokens = 64;
  auto e = LocalEngine::Open(o);
  ASSERT_TRUE(e.ok()) << e.status();
  SequenceCache seq;
  StepOutput out;
  EXPECT_EQ((*e)->loop().Step(std::span<StepSequence>(), &out).code(),
            absl::StatusCode::kInvalidArgument);  // empty batch
  const std::vector<int32_t> bad = {1, 102400};
  StepSequence s{&seq, bad, false};
  const absl::Status st = (*e)->loop().Step(std::span<StepSequence>(&s, 1), &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("102400"), absl::string_view::npos);
  EXPECT_EQ((*e)->cache().free_blocks(), (*e)->cache().num_blocks());
  // 65 tokens do not fit a 64-token cache: ResourceExhausted, nothing held.
  const std::vector<int32_t> many(65, 3);
  StepSequence s2{&seq, many, false};
  EXPECT_EQ((*e)->loop().Step(std::span<StepSequence>(&s2, 1), &out).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ((*e)->cache().free_blocks(), (*e)->cache().num_blocks());
  EXPECT_EQ(seq.num_tokens, 0);
}

}  // namespace
}  // namespace dsv2
