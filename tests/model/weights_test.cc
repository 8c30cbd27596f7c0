#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include "gtest/gtest.h"
#include "kernels/quant.h"
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

// Load-time quantization (issue 13): which matrices are quantized, that a
// quantized row reads back as QuantizeRows + DequantizeRow of the stored
// row, that fused gate/up slices see the right rows, and the byte counts.
TEST(WeightsTest, LoadTimeQuantizationQuantizesTheLinearWeightsOnly) {
  for (const char* v : {"v2_bf16", "fused_bf16"}) {
    SCOPED_TRACE(v);
    auto cfg = LoadModelConfig(FixtureDir(v) + "/config.json");
    auto ckpt = Checkpoint::OpenDir(FixtureDir(v));
    ASSERT_TRUE(cfg.ok() && ckpt.ok());
    WeightQuantization q4;
    q4.format = WeightQuantization::Format::kInt4;
    auto plain = NonExpertWeights::Load(*cfg, **ckpt);
    auto quant = NonExpertWeights::Load(*cfg, **ckpt, std::nullopt, q4);
    ASSERT_TRUE(plain.ok() && quant.ok()) << quant.status();
    const NonExpertWeights& p = **plain;
    const NonExpertWeights& w = **quant;
    EXPECT_FALSE(w.embed().quant.has_value());
    ASSERT_TRUE(w.lm_head().quant.has_value());
    EXPECT_EQ(w.lm_head().quant->format, kernels::QuantFormat::kInt8);
    const int64_t moe = cfg->first_k_dense_replace;
    const LayerWeights& l0 = w.layer(0);
    const LayerWeights& lm = w.layer(moe);
    for (const WeightMatrix* m : {&l0.attn.q_b_proj, &l0.attn.kv_a_proj, &l0.attn.o_proj,
                                  &l0.dense.gate, &l0.dense.down, &lm.shared.up}) {
      ASSERT_TRUE(m->quant.has_value());
      EXPECT_EQ(m->quant->format, kernels::QuantFormat::kInt4);
    }
    EXPECT_FALSE(l0.attn.kv_b_proj.quant.has_value());
    EXPECT_FALSE(lm.router.quant.has_value());
    // A quantized row = the stored row through the quantizer.
    const WeightMatrix& sq = p.layer(0).attn.o_proj;
    const WeightMatrix& qq = l0.attn.o_proj;
    const size_t K = static_cast<size_t>(sq.cols);
    std::vector<float> row(K), back(K), want(K);
    std::vector<uint8_t> qb(kernels::QuantRowBytes(kernels::QuantFormat::kInt4, K));
    std::vector<uint16_t> sb(kernels::QuantGroupsPerRow(K));
    for (int64_t r = 0; r < sq.rows; ++r) {
      sq.RowToF32(r, row.data());
      ASSERT_TRUE(kernels::QuantizeRows(kernels::QuantFormat::kInt4, row.data(), K, 1, K, qb.data(),
                                        qb.size(), sb.data(), sb.size())
                      .ok());
      kernels::DequantizeRow(kernels::QuantFormat::kInt4, qb.data(), sb.data(), K, want.data());
      qq.RowToF32(r, back.data());
      EXPECT_EQ(back, want) << "row " << r;
    }
    // Experts, and experts_only / lm_head_bf16.
    WeightQuantization q8;
    q8.format = WeightQuantization::Format::kInt8;
    q8.experts_only = true;
    q8.lm_head_bf16 = true;
    auto eo = NonExpertWeights::Load(*cfg, **ckpt, std::nullopt, q8);
    ASSERT_TRUE(eo.ok());
    EXPECT_FALSE((*eo)->lm_head().quant.has_value());
    EXPECT_FALSE((*eo)->layer(0).attn.o_proj.quant.has_value());
    EXPECT_FALSE((*eo)->layer(0).dense.gate.quant.has_value());
    EXPECT_TRUE((*eo)->layer(moe).shared.gate.quant.has_value());
    auto pe = ExpertWeightSet::Load(*cfg, **ckpt, {{static_cast<int32_t>(moe), 3}});
    auto qe = ExpertWeightSet::Load(*cfg, **ckpt, {{static_cast<int32_t>(moe), 3}}, q8);
    ASSERT_TRUE(pe.ok() && qe.ok()) << qe.status();
    const ExpertWeights* x = (*pe)->Find(static_cast<int32_t>(moe), 3);
    const ExpertWeights* y = (*qe)->Find(static_cast<int32_t>(moe), 3);
    ASSERT_TRUE(x && y);
    EXPECT_EQ(x->gate_up.has_value(), y->gate_up.has_value());
    EXPECT_LT((*qe)->weight_bytes(), (*pe)->weight_bytes());
    for (const auto& [mx, my] :
         {std::pair{x->gate, y->gate}, std::pair{x->up, y->up}, std::pair{x->down, y->down}}) {
      ASSERT_TRUE(my.quant.has_value());
      std::vector<float> a(static_cast<size_t>(mx.cols)), b(a.size());
      for (int64_t r = 0; r < mx.rows; ++r) {
        mx.RowToF32(r, a.data());
        my.RowToF32(r, b.data());
        float amax = 0;
        for (float f : a) amax = std::max(amax, std::abs(f));
        for (size_t k = 0; k < a.size(); ++k) {
          // Within half a step of the row's coarsest group (+ f16 scale).
          EXPECT_NEAR(a[k], b[k], amax / 127 * 0.51f + 1e-7f) << "row " << r << " k " << k;
        }
      }
    }
  }
}

}  // namespace
}  // namespace dsv2
