#include "model/weight_flags.h"

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace dsv2 {
namespace {

// Parses argv (program name first) with the three flags defined.
absl::StatusOr<WeightQuantization> Parse(std::vector<std::string> args,
                                         bool require_format = false) {
  flags::FlagSet flags("test", "v");
  WeightFlags f;
  DefineWeightFlags(flags, "what --weights does", "as stored", &f);
  DefineQuantActivationsFlag(flags, &f);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  if (std::optional<int> exit_code =
          flags.ParseCommandLine(static_cast<int>(argv.size()), argv.data())) {
    return absl::InternalError(absl::StrCat("parse exited ", *exit_code));
  }
  return WeightQuantizationFromFlags(f, require_format);
}

TEST(WeightFlagsTest, DefaultIsUnquantized) {
  absl::StatusOr<WeightQuantization> q = Parse({"test"});
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->format, WeightQuantization::Format::kNone);
  EXPECT_FALSE(q->experts_only);
  EXPECT_FALSE(q->lm_head_bf16);
  EXPECT_TRUE(q->int8_activations);
}

TEST(WeightFlagsTest, QuantActivations) {
  absl::StatusOr<WeightQuantization> q =
      Parse({"test", "--weights", "int8", "--quant-activations", "f32"});
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_FALSE(q->int8_activations);
  // Meaningful without --weights too (a checkpoint stored quantized).
  q = Parse({"test", "--quant-activations", "int8"});
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_TRUE(q->int8_activations);
  q = Parse({"test", "--quant-activations", "bf16"});
  ASSERT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(q.status().message().find("--quant-activations"), std::string::npos) << q.status();
}

TEST(WeightFlagsTest, FormatAndModifiers) {
  absl::StatusOr<WeightQuantization> q =
      Parse({"test", "--weights", "int4", "--experts-only", "--lm-head-bf16"});
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->format, WeightQuantization::Format::kInt4);
  EXPECT_TRUE(q->experts_only);
  EXPECT_TRUE(q->lm_head_bf16);
  q = Parse({"test", "--weights", "int8"}, /*require_format=*/true);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->format, WeightQuantization::Format::kInt8);
}

TEST(WeightFlagsTest, UnknownFormatNamesTheFlag) {
  absl::StatusOr<WeightQuantization> q = Parse({"test", "--weights", "q4_k"});
  ASSERT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(q.status().message().find("--weights"), std::string::npos) << q.status();
}

// The modifiers mean nothing without a format: an error, never ignored.
TEST(WeightFlagsTest, ModifiersWithoutAFormatAreErrors) {
  for (const char* modifier : {"--experts-only", "--lm-head-bf16"}) {
    absl::StatusOr<WeightQuantization> q = Parse({"test", modifier});
    ASSERT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument) << modifier;
    EXPECT_NE(q.status().message().find("need --weights int8 or int4"), std::string::npos)
        << q.status();
    q = Parse({"test", "--weights", "none", modifier});
    EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument) << modifier;
  }
}

TEST(WeightFlagsTest, RequiredFormat) {
  for (std::vector<std::string> args :
       {std::vector<std::string>{"test"}, std::vector<std::string>{"test", "--weights", "none"}}) {
    absl::StatusOr<WeightQuantization> q = Parse(args, /*require_format=*/true);
    ASSERT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(q.status().message(), "--weights must be int8 or int4");
  }
}

}  // namespace
}  // namespace dsv2
