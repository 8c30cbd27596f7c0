#include "tests/common/conformance_checkpoint.h"

namespace dsv2::testing_util {

void ConformanceCheckpointTest::SetUp() {
  const std::string dir = FixtureDir(variant_);
  absl::StatusOr<ModelConfig> c = LoadModelConfig(dir + "/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  config_ = *c;
  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::OpenDir(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  ckpt_ = *std::move(ck);
  if (!load_weights_) return;
  absl::StatusOr<std::unique_ptr<NonExpertWeights>> w = NonExpertWeights::Load(config_, *ckpt_);
  ASSERT_TRUE(w.ok()) << w.status();
  weights_ = *std::move(w);
}

}  // namespace dsv2::testing_util
