#include "model/weights.h"

#include <filesystem>
#include <fstream>
#include <functional>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/checkpoint_rewrite.h"

namespace dsv2 {
namespace {

using testing_util::FixtureDir;
using testing_util::RewriteCheckpoint;

absl::Status LoadAll(const std::string& dir) {
  auto config = LoadModelConfig(dir + "/config.json");
  if (!config.ok()) return config.status();
  auto ckpt = Checkpoint::OpenDir(dir);
  if (!ckpt.ok()) return ckpt.status();
  auto w = NonExpertWeights::Load(*config, **ckpt);
  if (!w.ok()) return w.status();
  std::vector<int32_t> all(config->n_routed_experts);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int32_t>(i);
  return ExpertWeightSet::Load(*config, **ckpt, ExpertWeightSet::AllLayers(*config, all)).status();
}

TEST(WeightsTest, LoadsEveryFixtureLayout) {
  for (const char* v : {"v2_f32", "v2_bf16", "lite_f32", "sharded_bf16", "fused_f32", "fused_bf16"}) {
    EXPECT_TRUE(LoadAll(FixtureDir(v)).ok()) << v << ": " << LoadAll(FixtureDir(v));
  }
}

TEST(WeightsTest, FusedAndPerExpertLayoutsGiveTheSameExpertRows) {
  auto cfg = LoadModelConfig(FixtureDir("fused_f32") + "/config.json");
  ASSERT_TRUE(cfg.ok());
  auto fused = Checkpoint::OpenDir(FixtureDir("fused_f32"));
  auto split = Checkpoint::OpenDir(FixtureDir("v2_f32"));
  ASSERT_TRUE(fused.ok() && split.ok());
  auto a = ExpertWeightSet::Load(*cfg, **fused, {{1, 17}, {2, 159}});
  auto b = ExpertWeightSet::Load(*cfg, **split, {{1, 17}, {2, 159}});
  ASSERT_TRUE(a.ok() && b.ok());
  for (auto [l, e] : {std::pair{1, 17}, std::pair{2, 159}}) {
    const ExpertWeights* x = (*a)->Find(l, e);
    const ExpertWeights* y = (*b)->Find(l, e);
    ASSERT_TRUE(x && y);
    EXPECT_TRUE(x->gate_up.has_value());
    std::vector<float> rx(x->gate.cols), ry(y->gate.cols);
    for (const auto& [mx, my] : {std::pair{x->gate, y->gate}, std::pair{x->up, y->up},
                                 std::pair{x->down, y->down}}) {
      ASSERT_EQ(mx.rows, my.rows);
      for (int64_t r = 0; r < mx.rows; ++r) {
        rx.resize(mx.cols);
        ry.resize(my.cols);
        mx.RowToF32(r, rx.data());
        my.RowToF32(r, ry.data());
        EXPECT_EQ(rx, ry);
      }
    }
  }
}

// A fused f16 checkpoint converts only the requested expert's rows to f32.
TEST(WeightsTest, FusedF16ExpertsConvertOnlyTheirRows) {
  const std::string dir =
      RewriteCheckpoint("fused_f32", "fused_f16", testing_util::ConvertF32ToF16);
  auto cfg = LoadModelConfig(dir + "/config.json");
  auto f16 = Checkpoint::OpenDir(dir);
  auto f32 = Checkpoint::OpenDir(FixtureDir("fused_f32"));
  ASSERT_TRUE(cfg.ok() && f16.ok() && f32.ok());
  auto a = ExpertWeightSet::Load(*cfg, **f16, {{2, 101}});
  auto b = ExpertWeightSet::Load(*cfg, **f32, {{2, 101}});
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  const ExpertWeights& x = *(*a)->Find(2, 101);
  const ExpertWeights& y = *(*b)->Find(2, 101);
  EXPECT_EQ(x.down.dtype, DType::kF32);
  for (const auto& [mx, my] : {std::pair{x.gate, y.gate}, std::pair{x.up, y.up},
                               std::pair{x.down, y.down}}) {
    std::vector<float> rx(mx.cols), ry(my.cols);
    for (int64_t r = 0; r < mx.rows; ++r) {
      mx.RowToF32(r, rx.data());
      my.RowToF32(r, ry.data());
      for (int64_t c = 0; c < mx.cols; ++c) {
        EXPECT_EQ(rx[c], testing_util::F16BitsToF32(testing_util::F32ToF16Bits(ry[c])));
      }
    }
  }
}

TEST(WeightsTest, ExpertSetHoldsOnlyWhatWasAsked) {
  auto cfg = LoadModelConfig(FixtureDir("v2_f32") + "/config.json");
  auto ckpt = Checkpoint::OpenDir(FixtureDir("v2_f32"));
  ASSERT_TRUE(cfg.ok() && ckpt.ok());
  auto set = ExpertWeightSet::Load(*cfg, **ckpt, ExpertWeightSet::AllLayers(*cfg, {0, 5}));
  ASSERT_TRUE(set.ok());
  EXPECT_EQ((*set)->size(), 2u * (cfg->num_hidden_layers - cfg->first_k_dense_replace));
  EXPECT_EQ((*set)->Find(1, 6), nullptr);
  EXPECT_EQ(ExpertWeightSet::Load(*cfg, **ckpt, {{0, 1}}).status().code(),
            absl::StatusCode::kInvalidArgument);  // layer 0 is dense
  EXPECT_EQ(ExpertWeightSet::Load(*cfg, **ckpt, {{1, 160}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WeightsTest, MissingTensorIsNamed) {
  const std::string dir = RewriteCheckpoint("v2_f32", "missing", [](auto& t) {
    std::erase_if(t, [](const TensorToWrite& x) {
      return x.name == "model.layers.1.self_attn.kv_a_layernorm.weight";
    });
  });
  const absl::Status st = LoadAll(dir);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(st.message().find("model.layers.1.self_attn.kv_a_layernorm.weight"),
            absl::string_view::npos)
      << st;
}

TEST(WeightsTest, MissingExpertIsNamed) {
  const std::string dir = RewriteCheckpoint("v2_f32", "missing_expert", [](auto& t) {
    std::erase_if(t, [](const TensorToWrite& x) {
      return x.name == "model.layers.2.mlp.experts.42.down_proj.weight";
    });
  });
  const absl::Status st = LoadAll(dir);
  EXPECT_NE(st.message().find("model.layers.2.mlp.experts.42.down_proj.weight"),
            absl::string_view::npos)
      << st;
}

TEST(WeightsTest, WrongShapeNamesFileTensorAndShapes) {
  const std::string dir = RewriteCheckpoint("v2_f32", "shape", [](auto& t) {
    for (TensorToWrite& x : t) {
      if (x.name == "model.layers.0.self_attn.o_proj.weight") {
        std::swap(x.shape[0], x.shape[1]);
      }
    }
  });
  const absl::Status st = LoadAll(dir);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("model.safetensors"), absl::string_view::npos) << st;
  EXPECT_NE(st.message().find("model.layers.0.self_attn.o_proj.weight"), absl::string_view::npos);
  EXPECT_NE(st.message().find("expected [64, 96]"), absl::string_view::npos) << st;
}

TEST(WeightsTest, F16IsConvertedToF32AtLoad) {
  const std::string dir = RewriteCheckpoint("v2_f32", "f16", testing_util::ConvertF32ToF16);
  auto cfg = LoadModelConfig(dir + "/config.json");
  auto ckpt = Checkpoint::OpenDir(dir);
  ASSERT_TRUE(cfg.ok() && ckpt.ok());
  auto w = NonExpertWeights::Load(*cfg, **ckpt);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->activation_dtype(), DType::kF32);
  EXPECT_EQ((*w)->embed().dtype, DType::kF32);
  EXPECT_EQ((*w)->layer(1).attn.q_b_proj.dtype, DType::kF32);
  EXPECT_TRUE(LoadAll(dir).ok());
}

}  // namespace
}  // namespace dsv2
