// `dsv2 run` and `dsv2 make-random-model` as a user runs them: the real
// binary, its exit codes, its stdout/stderr contract (README.md).
#include <sched.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/common/dsv2_command.h"
#include "nlohmann/json.hpp"

namespace {

using Result = ::dsv2::testing::Dsv2Result;
using ::dsv2::testing::RunDsv2;

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = ::testing::TempDir() + "/dsv2_cli_model";
    const Result r = RunDsv2("make-random-model --out " + model_ + " --preset v2-tiny --seed 3");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static std::string model_;
};
std::string CliTest::model_;

TEST_F(CliTest, JsonOutputIsExactlyOneObjectWithTheContractFields) {
  const Result r = RunDsv2("run --model " + model_ + " --prompt-ids 100000,5,6,7 --max-tokens 5 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);  // throws (fails) if not exactly JSON
  EXPECT_EQ(j["prompt_ids"], (std::vector<int>{100000, 5, 6, 7}));
  EXPECT_EQ(j["output_ids"].size(), 5u);
  EXPECT_TRUE(j["text"].is_string());
  ASSERT_EQ(j["first_logits_top10"].size(), 10u);
  for (size_t i = 1; i < 10; ++i) {
    const double a = j["first_logits_top10"][i - 1][1], b = j["first_logits_top10"][i][1];
    EXPECT_GE(a, b);
  }
  EXPECT_TRUE(j["seed"].is_number_unsigned());
  // Greedy: the first output id is the top logit.
  EXPECT_EQ(j["output_ids"][0], j["first_logits_top10"][0][0]);
}

TEST_F(CliTest, PromptAddsBosAndSameSeedSameOutput) {
  const std::string args = "run --model " + model_ +
                           " --prompt 'Hello, world' --max-tokens 6 --temperature 0.8 --top-p 0.9"
                           " --top-k 50 --seed 1234 --json";
  const Result a = RunDsv2(args), b = RunDsv2(args + " --threads 2 --prefill-chunk 2");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  const auto ja = nlohmann::json::parse(a.out), jb = nlohmann::json::parse(b.out);
  EXPECT_EQ(ja["prompt_ids"][0], 100000);
  EXPECT_EQ(ja["seed"], 1234u);
  EXPECT_EQ(ja["output_ids"], jb["output_ids"]);
  EXPECT_EQ(ja["text"], jb["text"]);
}

TEST_F(CliTest, ChatRendersTemplateWithOneBos) {
  const Result r = RunDsv2("run --model " + model_ + " --prompt hi --chat --max-tokens 1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["prompt_ids"][0], 100000);
  EXPECT_NE(j["prompt_ids"][1], 100000);
}

TEST_F(CliTest, StreamsTextToStdoutWithoutJsonAndReportsTheSeed) {
  const Result r =
      RunDsv2("run --model " + model_ + " --prompt-ids 100000,9 --max-tokens 8 --temperature 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The text of the 8 tokens, then one newline.
  ASSERT_GE(r.out.size(), 2u);
  EXPECT_NE(r.out.find_first_not_of(" \n"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.back(), '\n');
  EXPECT_NE(r.err.find("seed "), std::string::npos) << r.err;
}

// Without --threads, `dsv2 run` uses every core it may run on (its CPU
// affinity, inherited from this test); --threads overrides it.
TEST_F(CliTest, ThreadsDefaultToTheAvailableCores) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  const int cores = CPU_COUNT(&set);
  Result r = RunDsv2("run --model " + model_ + " --prompt-ids 5,6 --max-tokens 2 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["threads"], cores);
  EXPECT_NE(r.err.find(absl::StrCat("; ", cores, " threads;")), std::string::npos) << r.err;
  r = RunDsv2("run --model " + model_ + " --prompt-ids 5,6 --max-tokens 2 --json --threads 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["threads"], 1);
}

// The preset's config.json has every field DeepSeek-V2-Lite's released
// config.json has (but its auto_map: no remote code is shipped), so tools
// that read released configs (llama.cpp's converter) read ours.
TEST_F(CliTest, RandomModelConfigHasTheReleasedFields) {
  std::ifstream in(model_ + "/config.json");
  const nlohmann::json cfg = nlohmann::json::parse(in);
  for (const char* key :
       {"architectures", "attention_bias", "attention_dropout", "aux_loss_alpha", "bos_token_id",
        "eos_token_id", "first_k_dense_replace", "hidden_act", "hidden_size", "initializer_range",
        "intermediate_size", "kv_lora_rank", "max_position_embeddings", "model_type",
        "moe_intermediate_size", "moe_layer_freq", "n_group", "n_routed_experts",
        "n_shared_experts", "norm_topk_prob", "num_attention_heads", "num_experts_per_tok",
        "num_hidden_layers", "num_key_value_heads", "pretraining_tp", "q_lora_rank",
        "qk_nope_head_dim", "qk_rope_head_dim", "rms_norm_eps", "rope_scaling", "rope_theta",
        "routed_scaling_factor", "scoring_func", "seq_aux", "tie_word_embeddings", "topk_group",
        "topk_method", "torch_dtype", "use_cache", "v_head_dim", "vocab_size"}) {
    EXPECT_TRUE(cfg.contains(key)) << key;
  }
  EXPECT_EQ(cfg["num_key_value_heads"], cfg["num_attention_heads"]);
}

TEST_F(CliTest, NoTokenizerGivesEmptyTextAndZeroTokensIsValid) {
  const std::string notok = ::testing::TempDir() + "/dsv2_cli_notok_ok";
  std::filesystem::create_directories(notok);
  for (const char* f : {"config.json", "model.safetensors"}) {
    std::filesystem::copy(model_ + "/" + f, notok + "/" + f,
                          std::filesystem::copy_options::overwrite_existing);
  }
  Result r = RunDsv2("run --model " + notok + " --prompt-ids 5,6 --max-tokens 3 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["text"], "");
  EXPECT_EQ(j["output_ids"].size(), 3u);
  r = RunDsv2("run --model " + model_ + " --prompt-ids 5,6 --max-tokens 0 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j["output_ids"].empty());
  EXPECT_EQ(j["first_logits_top10"].size(), 10u);
}

// With EOS = the first greedy token, generation stops there: output_ids end
// with EOS and text excludes it (also with --ignore-eos, which keeps going).
TEST_F(CliTest, EosEndsGenerationAndIsNotInText) {
  Result r = RunDsv2("run --model " + model_ + " --prompt-ids 100000,5 --max-tokens 1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const int first = nlohmann::json::parse(r.out)["output_ids"][0];
  const std::string eos_model = ::testing::TempDir() + "/dsv2_cli_eos";
  std::filesystem::create_directories(eos_model);
  for (const char* f : {"model.safetensors", "tokenizer.json", "tokenizer_config.json"}) {
    std::filesystem::copy(model_ + "/" + f, eos_model + "/" + f,
                          std::filesystem::copy_options::overwrite_existing);
  }
  std::ifstream in(model_ + "/config.json");
  nlohmann::json cfg = nlohmann::json::parse(in);
  cfg["eos_token_id"] = first;
  std::ofstream(eos_model + "/config.json") << cfg.dump();
  r = RunDsv2("run --model " + eos_model + " --prompt-ids 100000,5 --max-tokens 4 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["output_ids"], (std::vector<int>{first}));
  EXPECT_EQ(j["text"], "");
  r = RunDsv2("run --model " + eos_model + " --prompt-ids 100000,5 --max-tokens 4 --ignore-eos "
              "--json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["output_ids"].size(), 4u);
}

TEST_F(CliTest, FlagsFromEnvironmentAndCommandLineWins) {
  Result r = RunDsv2("run --model " + model_ + " --prompt-ids 5,6 --max-tokens 2 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto base = nlohmann::json::parse(r.out);
  // DSV2_MAX_TOKENS from the environment; DSV2_PROMPT loses to --prompt-ids.
  r = RunDsv2("run --model " + model_ + " --prompt-ids 5,6 --json", "DSV2_MAX_TOKENS=2 DSV2_PROMPT=hi");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto env = nlohmann::json::parse(r.out);
  EXPECT_EQ(env["output_ids"], base["output_ids"]);
  EXPECT_EQ(env["prompt_ids"], base["prompt_ids"]);
  r = RunDsv2("run --model " + model_ + " --prompt-ids 5,6 --max-tokens 3 --json", "DSV2_MAX_TOKENS=2");
  EXPECT_EQ(nlohmann::json::parse(r.out)["output_ids"].size(), 3u);
}

TEST_F(CliTest, UsageErrorsExitTwo) {
  EXPECT_EQ(RunDsv2("").exit_code, 2);
  EXPECT_EQ(RunDsv2("frobnicate").exit_code, 2);
  EXPECT_EQ(RunDsv2("run --model " + model_).exit_code, 2);  // no prompt
  EXPECT_EQ(RunDsv2("run --model " + model_ + " --prompt a --prompt-ids 1").exit_code, 2);
  EXPECT_EQ(RunDsv2("run --model " + model_ + " --prompt-ids 1 --bogus").exit_code, 2);
  EXPECT_EQ(RunDsv2("run --model " + model_ + " --prompt-ids 1 --temperature -1").exit_code, 2);
  EXPECT_EQ(RunDsv2("run --model " + model_ + " --prompt-ids 1 --max-tokens").exit_code, 2);
  EXPECT_EQ(RunDsv2("run --model " + model_ + " --prompt-ids 1,,2").exit_code, 2);
  EXPECT_EQ(RunDsv2("run --model " + model_ + " --prompt-ids 1 --threads 200000").exit_code, 2);
  EXPECT_EQ(RunDsv2("run --model " + model_ + " --prompt-ids 1 --top-k 4294967297").exit_code, 2);
  EXPECT_EQ(RunDsv2("run --model /missing --prompt-ids 1 --cpu-isa bogus").exit_code, 2);
  EXPECT_EQ(RunDsv2("run --model /missing --prompt-ids 1,,2").exit_code, 2);
  // The weight flags mean the same in every command (model/weight_flags.h):
  // a modifier without a format is a usage error, never ignored.
  const std::string out = ::testing::TempDir() + "/dsv2_cli_never_written";
  for (const std::string& cmd :
       {"run --model " + model_ + " --prompt-ids 1 --experts-only",
        "make-random-model --out " + out + " --preset v2-tiny --experts-only",
        "make-random-model --out " + out + " --preset v2-tiny --weights int3",
        "eval-kld --model " + model_ + " --random-tokens 8 --lm-head-bf16",
        "quantize --model " + model_ + " --out " + out,
        "quantize --model " + model_ + " --out " + out + " --weights none",
        "up --model " + model_ + " --lm-head-bf16"}) {
    const Result r = RunDsv2(cmd);
    EXPECT_EQ(r.exit_code, 2) << cmd << "\n" << r.err;
    EXPECT_NE(r.err.find("--weights"), std::string::npos) << cmd << "\n" << r.err;
  }
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST_F(CliTest, OtherErrorsExitOneWithOneLine) {
  auto expect_error = [](const Result& r, const std::string& needle) {
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  };
  expect_error(RunDsv2("run --model /nonexistent --prompt-ids 1"), "/nonexistent");
  expect_error(RunDsv2("run --model " + model_ + " --prompt-ids 1,102400"), "102400");
  expect_error(RunDsv2("run --model " + model_ + " --prompt-ids 1 --max-tokens 200000"), "163840");
  expect_error(RunDsv2("run --model " + model_ + " --prompt-ids 1 --max-tokens 9223372036854775807"),
               "163840");
  expect_error(RunDsv2("run --model " + model_ + " --prompt-ids -1"), "-1");
  expect_error(RunDsv2("run --model " + model_ + " --prompt-ids 99999999999"), "99999999999");
  expect_error(RunDsv2("run --model /" + std::string(5000, 'a') + " --prompt-ids 1"), "not found");
  // --prompt without a tokenizer.
  const std::string notok = ::testing::TempDir() + "/dsv2_cli_notok";
  std::filesystem::create_directories(notok);
  std::filesystem::copy(model_ + "/config.json", notok + "/config.json",
                        std::filesystem::copy_options::overwrite_existing);
  std::filesystem::copy(model_ + "/model.safetensors", notok + "/model.safetensors",
                        std::filesystem::copy_options::overwrite_existing);
  expect_error(RunDsv2("run --model " + notok + " --prompt hi"), "tokenizer");
  // Corrupt checkpoint: truncated safetensors.
  std::filesystem::resize_file(notok + "/model.safetensors", 1000);
  expect_error(RunDsv2("run --model " + notok + " --prompt-ids 1"), "model.safetensors");
  // Bad config.
  std::ofstream(notok + "/config.json") << "{\"vocab_size\": 10";
  expect_error(RunDsv2("run --model " + notok + " --prompt-ids 1"), "config.json");
}

}  // namespace
