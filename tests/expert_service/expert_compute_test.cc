#include "expert_service/expert_compute.h"

#include <filesystem>
#include <random>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "tools/dsv2/random_model.h"

namespace dsv2 {
namespace {

class ExpertComputeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = ::testing::TempDir() + "/dsv2_shard_model";
    RandomModelOptions o;
    o.out_dir = dir_;
    o.preset = "v2-tiny";
    o.seed = 11;
    o.dtype = DType::kF32;
    o.tokenizer_dir = std::string(DSV2_SOURCE_DIR) + "/model/data/deepseek-v2";
    ASSERT_TRUE(MakeRandomModel(o).ok());
  }

  void SetUp() override {
    auto c = LoadModelConfig(dir_ + "/config.json");
    ASSERT_TRUE(c.ok());
    config_ = *c;
    auto ck = Checkpoint::OpenDir(dir_);
    ASSERT_TRUE(ck.ok());
    ckpt_ = *std::move(ck);
    // This shard holds experts 3, 7 and 20 of every MoE layer.
    auto w = ExpertWeightSet::Load(config_, *ckpt_, ExpertWeightSet::AllLayers(config_, {3, 7, 20}));
    ASSERT_TRUE(w.ok()) << w.status();
    shard_ = std::make_unique<ExpertCompute>(config_, *std::move(w),
                                           kernels::CpuContext{kernels::BestCpuIsa(), nullptr});
  }

  router::ExpertDispatch MakeDispatch(int rows, std::vector<router::Assignment> a) {
    router::ExpertDispatch d;
    d.layer = 1;
    d.num_rows = rows;
    d.hidden = static_cast<int32_t>(config_.hidden_size);
    d.dtype = DType::kF32;
    d.assignments = std::move(a);
    std::mt19937 rng(rows);
    std::normal_distribution<float> dist;
    std::vector<float> x(rows * config_.hidden_size);
    for (float& v : x) v = dist(rng);
    d.activations.resize(x.size() * 4);
    std::memcpy(d.activations.data(), x.data(), d.activations.size());
    return d;
  }

  static std::string dir_;
  ModelConfig config_;
  std::unique_ptr<Checkpoint> ckpt_;
  std::unique_ptr<ExpertCompute> shard_;
};
std::string ExpertComputeTest::dir_;

TEST_F(ExpertComputeTest, LoadsOnlyItsExperts) {
  EXPECT_EQ(shard_->weights().size(), 3u * (config_.num_hidden_layers - 1));
  EXPECT_NE(shard_->weights().Find(1, 7), nullptr);
  EXPECT_EQ(shard_->weights().Find(1, 8), nullptr);
}

TEST_F(ExpertComputeTest, OutputsMatchScalarSwiGluPerAssignment) {
  const auto d = MakeDispatch(3, {{0, 7}, {1, 3}, {2, 7}, {0, 20}, {1, 7}});
  auto reply = shard_->Handle(d);
  ASSERT_TRUE(reply.ok()) << reply.status();
  const int64_t D = config_.hidden_size, I = config_.moe_intermediate_size;
  ASSERT_EQ(reply->outputs.size(), d.assignments.size() * D * 4);
  const float* x = reinterpret_cast<const float*>(d.activations.data());
  for (size_t i = 0; i < d.assignments.size(); ++i) {
    const ExpertWeights& w = *shard_->weights().Find(1, d.assignments[i].expert);
    const float* xr = x + d.assignments[i].row * D;
    std::vector<float> g(I), u(I), a(I), y(D);
    kernels::GemmReference(xr, D, w.gate.data, w.gate.dtype, w.gate.row_stride, g.data(), I, 1, I, D);
    kernels::GemmReference(xr, D, w.up.data, w.up.dtype, w.up.row_stride, u.data(), I, 1, I, D);
    kernels::SwiGlu(g.data(), u.data(), I, DType::kF32, a.data());
    kernels::GemmReference(a.data(), I, w.down.data, w.down.dtype, w.down.row_stride, y.data(), D,
                           1, D, I);
    const float* got = reinterpret_cast<const float*>(reply->outputs.data()) + i * D;
    for (int64_t j = 0; j < D; ++j) EXPECT_NEAR(got[j], y[j], 1e-4 * (1 + std::fabs(y[j])));
  }
}

TEST_F(ExpertComputeTest, RowResultDoesNotDependOnOtherAssignments) {
  auto alone = shard_->Handle(MakeDispatch(3, {{1, 7}}));
  auto crowd = shard_->Handle(MakeDispatch(3, {{0, 7}, {2, 3}, {1, 7}, {2, 7}, {0, 20}}));
  ASSERT_TRUE(alone.ok() && crowd.ok());
  const size_t row_bytes = config_.hidden_size * 4;
  EXPECT_EQ(0, std::memcmp(alone->outputs.data(), crowd->outputs.data() + 2 * row_bytes, row_bytes));
}

TEST_F(ExpertComputeTest, RejectsMalformedDispatches) {
  auto d = MakeDispatch(2, {{0, 7}, {2, 7}});
  EXPECT_EQ(shard_->Handle(d).status().code(), absl::StatusCode::kInvalidArgument);
  d = MakeDispatch(2, {{0, 8}});
  EXPECT_EQ(shard_->Handle(d).status().code(), absl::StatusCode::kNotFound);
  d = MakeDispatch(2, {{0, 7}});
  d.layer = 0;  // dense layer
  EXPECT_EQ(shard_->Handle(d).status().code(), absl::StatusCode::kInvalidArgument);
  d = MakeDispatch(2, {{0, 7}});
  d.activations.pop_back();
  EXPECT_EQ(shard_->Handle(d).status().code(), absl::StatusCode::kInvalidArgument);
  d = MakeDispatch(2, {{0, 7}});
  d.hidden = 3;
  EXPECT_EQ(shard_->Handle(d).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dsv2
