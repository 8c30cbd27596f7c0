#include "model/config.h"

#include <cmath>

#include "absl/strings/str_replace.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

using nlohmann::json;

// DeepSeek-V2's released config.json (MODEL_SPEC section 1).
json ReleasedV2() {
  return json::parse(R"({
    "vocab_size": 102400, "hidden_size": 5120, "intermediate_size": 12288,
    "moe_intermediate_size": 1536, "num_hidden_layers": 60, "num_attention_heads": 128,
    "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "v_head_dim": 128, "n_routed_experts": 160, "n_shared_experts": 2, "num_experts_per_tok": 6,
    "topk_method": "group_limited_greedy", "n_group": 8, "topk_group": 3,
    "routed_scaling_factor": 16.0, "norm_topk_prob": false, "scoring_func": "softmax",
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "rms_norm_eps": 1e-6, "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
    "max_position_embeddings": 163840, "bos_token_id": 100000, "eos_token_id": 100001,
    "tie_word_embeddings": false, "hidden_act": "silu", "attention_bias": false})");
}

absl::StatusOr<ModelConfig> Parse(const json& j) { return ParseModelConfig(j.dump()); }

TEST(ConfigTest, ParsesReleasedDeepSeekV2) {
  auto c = Parse(ReleasedV2());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->latent_dim(), 576);
  EXPECT_EQ(c->qk_head_dim(), 192);
  EXPECT_EQ(c->topk_method, TopkMethod::kGroupLimitedGreedy);
  EXPECT_EQ(c->experts_per_group(), 20);
  EXPECT_EQ(c->rope.type, RopeConfig::Type::kYarn);
  EXPECT_EQ(c->rope.original_max_position_embeddings, 4096);
  EXPECT_EQ(*c->q_lora_rank, 1536);
  EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{100001});
  const double m = 0.1 * 0.707 * std::log(40.0) + 1.0;
  EXPECT_NEAR(c->softmax_scale(), std::pow(192.0, -0.5) * m * m, 1e-12);
  EXPECT_FALSE(c->is_moe_layer(0));
  EXPECT_TRUE(c->is_moe_layer(1));
}

// The config fingerprint: layout, key order, number spelling and
// bookkeeping keys do not count; any model field does.
TEST(ConfigTest, FingerprintIgnoresLayoutAndBookkeepingButNotTheModel) {
  auto base = Parse(ReleasedV2());
  ASSERT_TRUE(base.ok()) << base.status();
  EXPECT_EQ(base->fingerprint.size(), 16u);
  // The same content, written differently, with bookkeeping keys.
  json same = ReleasedV2();
  same["transformers_version"] = "4.99.0";
  same["_name_or_path"] = "/somewhere/else";
  same["architectures"] = {"DeepseekV2ForCausalLM"};
  same["torch_dtype"] = "bfloat16";
  same["use_cache"] = true;
  auto respaced = ParseModelConfig(same.dump(2));
  ASSERT_TRUE(respaced.ok()) << respaced.status();
  EXPECT_EQ(respaced->fingerprint, base->fingerprint);
  auto spelled = ParseModelConfig(absl::StrReplaceAll(
      ReleasedV2().dump(), {{"\"rms_norm_eps\":1e-06", "\"rms_norm_eps\":0.000001"}}));
  ASSERT_TRUE(spelled.ok()) << spelled.status();
  EXPECT_EQ(spelled->fingerprint, base->fingerprint);
  // A model field changed, even one dsv2 does not read.
  for (const auto& [key, value] : std::vector<std::pair<std::string, json>>{
           {"routed_scaling_factor", 15.0}, {"rope_theta", 20000}, {"pretraining_tp", 2}}) {
    json other = ReleasedV2();
    other[key] = value;
    auto c = Parse(other);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_NE(c->fingerprint, base->fingerprint) << key;
  }
}

TEST(ConfigTest, ParsesTransformersSpellingWithRopeParameters) {
  json j = ReleasedV2();
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j.erase("scoring_func");
  j.erase("moe_layer_freq");
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 5000.0}, {"factor", 4.0},
                          {"original_max_position_embeddings", 128}, {"mscale", 1.0},
                          {"mscale_all_dim", 0.5}};
  j["head_dim"] = 64;
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope.theta, 5000.0);
  EXPECT_EQ(c->rope.factor, 4.0);
  EXPECT_EQ(c->qk_head_dim(), 192);  // head_dim is never the attention width
}

TEST(ConfigTest, AcceptsNullRopeScalingAndGreedyNullGroups) {
  json j = ReleasedV2();
  j["rope_scaling"] = nullptr;
  j["topk_method"] = "greedy";
  j["n_group"] = nullptr;
  j["topk_group"] = nullptr;
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope.type, RopeConfig::Type::kDefault);
  EXPECT_EQ(c->n_group, 1);
  EXPECT_NEAR(c->softmax_scale(), std::pow(192.0, -0.5), 1e-12);
}

struct BadCase {
  const char* field;
  json value;
  const char* message;
};

class ConfigRejectTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(ConfigRejectTest, NamesFieldAndValue) {
  json j = ReleasedV2();
  const BadCase& b = GetParam();
  if (b.value.is_discarded()) {
    j.erase(b.field);
  } else {
    j[b.field] = b.value;
  }
  auto c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find(b.message), absl::string_view::npos) << c.status();
}

INSTANTIATE_TEST_SUITE_P(
    All, ConfigRejectTest,
    ::testing::Values(
        BadCase{"topk_method", "noaux_tc", "topk_method = \"noaux_tc\" is not supported"},
        BadCase{"scoring_func", "sigmoid", "scoring_func = \"sigmoid\""},
        BadCase{"n_group", 7, "n_group = 7 does not divide n_routed_experts = 160"},
        BadCase{"topk_group", 9, "topk_group = 9 exceeds n_group = 8"},
        BadCase{"attention_bias", true, "attention_bias = true is not supported"},
        BadCase{"mlp_bias", true, "mlp_bias = true"},
        BadCase{"hidden_act", "gelu", "hidden_act = \"gelu\" must be silu"},
        BadCase{"moe_layer_freq", 2, "moe_layer_freq = 2 must be 1"},
        BadCase{"hidden_size", -5, "hidden_size = -5 is below the minimum 1"},
        BadCase{"hidden_size", "big", "hidden_size = \"big\" is not an integer"},
        BadCase{"max_position_embeddings", int64_t{1} << 40, "exceeds 2^31"},
        BadCase{"num_experts_per_tok", 200, "num_experts_per_tok = 200 exceeds n_routed_experts"},
        BadCase{"vocab_size", json(json::value_t::discarded), "missing required field vocab_size"},
        BadCase{"rope_scaling",
                json{{"type", "yarn"}, {"factor", 40}},
                "original_max_position_embeddings (required by yarn)"},
        BadCase{"rope_scaling", json{{"type", "dynamic"}, {"factor", 2}},
                "rope_scaling.rope_type = \"dynamic\" is not supported"}));

TEST(ConfigTest, RejectsMalformedJson) {
  auto c = ParseModelConfig("{\"vocab_size\": ", "x/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("x/config.json: not valid JSON"), absl::string_view::npos);
  EXPECT_FALSE(ParseModelConfig("[1, 2]").ok());
}

TEST(ConfigTest, MissingFileIsNotFound) {
  EXPECT_EQ(LoadModelConfig("/nonexistent/config.json").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace dsv2
