// The conformance checkpoints (tests/data/conformance/<variant>: tiny
// DeepSeek-V2-shaped models with reference outputs) as a test fixture: the
// config, the mapped checkpoint and the non-expert weights, loaded once per
// test. The service tests derive their fixtures from it:
//
//   class MyTest : public testing_util::ConformanceCheckpointTest {
//    protected:
//     MyTest() : ConformanceCheckpointTest("v2_f32") {}
//     void SetUp() override {
//       ConformanceCheckpointTest::SetUp();
//       if (HasFatalFailure()) return;
//       ...
//     }
//   };
#ifndef DSV2_TESTS_COMMON_CONFORMANCE_CHECKPOINT_H_
#define DSV2_TESTS_COMMON_CONFORMANCE_CHECKPOINT_H_

#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace dsv2::testing_util {

// tests/data/conformance/<variant> ("v2_bf16", "v2_f32", "lite_bf16", ...).
inline std::string FixtureDir(const std::string& variant) {
  return std::string(DSV2_SOURCE_DIR) + "/tests/data/conformance/" + variant;
}

class ConformanceCheckpointTest : public ::testing::Test {
 protected:
  // `load_weights` false leaves weights_ null (tests that need only the
  // experts).
  explicit ConformanceCheckpointTest(std::string variant = "v2_bf16", bool load_weights = true)
      : variant_(std::move(variant)), load_weights_(load_weights) {}

  // Loads config_, ckpt_ and weights_; a fatal failure when any is missing.
  void SetUp() override;

  const std::string& variant() const { return variant_; }
  // MoE layers (layers past first_k_dense_replace): one expert dispatch each
  // per micro-batch of a step.
  int64_t moe_layers() const { return config_.num_hidden_layers - config_.first_k_dense_replace; }

  ModelConfig config_;
  std::unique_ptr<Checkpoint> ckpt_;
  std::unique_ptr<NonExpertWeights> weights_;

 private:
  const std::string variant_;
  const bool load_weights_;
};

}  // namespace dsv2::testing_util

#endif  // DSV2_TESTS_COMMON_CONFORMANCE_CHECKPOINT_H_
