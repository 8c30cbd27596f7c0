// `dsv2 run --weights int8|int4` (load-time quantization, issue 13) as a
// user runs it: the real binary on a random v2-tiny model.
//   - The quantized forward is a forward over the dequantized weights: a
//     checkpoint whose quantized linear weights are replaced by their
//     dequantized values (everything in f32, so activations are f32), run
//     unquantized, gives the quantized run's logits up to f32 summation
//     order.
//   - Row invariance: prefill chunking and the thread count change no bit.
//   - Peak resident memory is smaller than the unquantized run's.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/common/dsv2_command.h"
#include "kernels/dtype.h"
#include "kernels/quant.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

using Result = ::dsv2::testing::Dsv2Result;
using ::dsv2::testing::RunDsv2;

std::string Bin() { return ::dsv2::testing::Dsv2Binary(); }

nlohmann::json RunJson(const std::string& model, const std::string& flags) {
  const Result r = RunDsv2("run --model " + model +
                           " --prompt-ids 100000,5,6,7,8,9,10,11 --max-tokens 6 --json " + flags);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  if (r.exit_code != 0) return nlohmann::json::object();
  return nlohmann::json::parse(r.out);
}

// The tensors `dsv2 run --weights` quantizes (model/weights.h,
// WeightQuantization), and to which format: lm_head always int8.
std::optional<kernels::QuantFormat> QuantizedAs(const std::string& name,
                                                kernels::QuantFormat format) {
  if (name == "lm_head.weight") return kernels::QuantFormat::kInt8;
  for (const char* suffix :
       {"q_proj.weight", "q_a_proj.weight", "q_b_proj.weight", "kv_a_proj_with_mqa.weight",
        "o_proj.weight", "gate_proj.weight", "up_proj.weight", "down_proj.weight",
        "mlp.experts.gate_up_proj", "mlp.experts.down_proj"}) {
    if (absl::EndsWith(name, suffix)) return format;
  }
  return std::nullopt;
}

class QuantizedRunTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = ::testing::TempDir() + "/dsv2_quant_model";
    const Result r = RunDsv2("make-random-model --out " + model_ + " --preset v2-tiny --seed 5");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }

  // model_ rewritten in f32 with every quantized weight replaced by its
  // dequantized values. Also checks that quantizing those values again
  // gives the same bytes, so `--weights <format>` on this checkpoint runs
  // exactly the quantized weights of the original.
  static std::string DequantizedCopy(kernels::QuantFormat format) {
    const std::string dir =
        ::testing::TempDir() + "/dsv2_quant_deq_" + kernels::QuantFormatName(format);
    auto ckpt = Checkpoint::OpenDir(model_);
    EXPECT_TRUE(ckpt.ok()) << ckpt.status();
    if (!ckpt.ok()) return dir;
    std::vector<TensorToWrite> out;
    int quantized = 0;
    for (const std::string& name : (*ckpt)->Names()) {
      const TensorView* t = (*ckpt)->Find(name);
      const size_t n = static_cast<size_t>(t->num_elements());
      std::vector<uint8_t> raw(t->num_bytes);
      std::memcpy(raw.data(), t->data, t->num_bytes);
      std::vector<float> f(n);
      ToF32(raw.data(), t->dtype, n, f.data());
      if (const auto qf = QuantizedAs(name, format)) {
        ++quantized;
        const size_t K = static_cast<size_t>(t->shape.back()), N = n / K;
        const size_t ldq = kernels::QuantRowBytes(*qf, K), lds = kernels::QuantGroupsPerRow(K);
        std::vector<uint8_t> q(N * ldq), q2(N * ldq);
        std::vector<uint16_t> s(N * lds), s2(N * lds);
        EXPECT_TRUE(
            kernels::QuantizeRows(*qf, f.data(), K, N, K, q.data(), ldq, s.data(), lds).ok());
        for (size_t r = 0; r < N; ++r) {
          kernels::DequantizeRow(*qf, &q[r * ldq], &s[r * lds], K, &f[r * K]);
        }
        EXPECT_TRUE(
            kernels::QuantizeRows(*qf, f.data(), K, N, K, q2.data(), ldq, s2.data(), lds).ok());
        EXPECT_EQ(q, q2) << name;
        EXPECT_EQ(s, s2) << name;
      }
      out.push_back({name, DType::kF32, t->shape,
                     std::string(reinterpret_cast<const char*>(f.data()), n * sizeof(float))});
    }
    EXPECT_GT(quantized, 10);
    std::filesystem::create_directories(dir);
    for (const char* file : {"config.json", "tokenizer.json", "tokenizer_config.json"}) {
      std::filesystem::copy_file(model_ + "/" + file, dir + "/" + file,
                                 std::filesystem::copy_options::overwrite_existing);
    }
    EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", out).ok());
    return dir;
  }

  static std::string model_;
};
std::string QuantizedRunTest::model_;

TEST_F(QuantizedRunTest, QuantizedForwardIsTheForwardOverDequantizedWeights) {
  for (const char* format : {"int8", "int4"}) {
    SCOPED_TRACE(format);
    const std::string deq = DequantizedCopy(*kernels::ParseQuantFormat(format));
    const nlohmann::json plain = RunJson(deq, "--threads 1 --weights none");
    const nlohmann::json quant = RunJson(
        deq, std::string("--threads 1 --quant-activations f32 --weights ") + format);
    ASSERT_TRUE(plain.contains("first_logits_top10") && quant.contains("first_logits_top10"));
    EXPECT_EQ(quant["weights"], format);
    const auto& a = plain["first_logits_top10"];
    const auto& b = quant["first_logits_top10"];
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i][0], b[i][0]) << "rank " << i;
      // f32 activations; only the order of the f32 sums differs.
      EXPECT_NEAR(a[i][1].get<double>(), b[i][1].get<double>(), 1e-4) << "rank " << i;
    }
    EXPECT_EQ(plain["output_ids"], quant["output_ids"]);
  }
}

TEST_F(QuantizedRunTest, ChunkingAndThreadsChangeNoBit) {
  for (const char* format : {"int8", "int4"}) {
    SCOPED_TRACE(format);
    const std::string w = std::string(" --weights ") + format;
    const nlohmann::json base = RunJson(model_, "--threads 1" + w);
    ASSERT_TRUE(base.contains("output_ids"));
    for (const std::string& flags :
         {std::string("--threads 2"), std::string("--threads 1 --prefill-chunk 3"),
          std::string("--threads 2 --prefill-chunk 1")}) {
      const nlohmann::json other = RunJson(model_, flags + w);
      EXPECT_EQ(base["output_ids"], other["output_ids"]) << flags;
      EXPECT_EQ(base["first_logits_top10"], other["first_logits_top10"]) << flags;
    }
  }
}

TEST_F(QuantizedRunTest, QuantizationChangesTheLogitsAndFlagsCombine) {
  const nlohmann::json none = RunJson(model_, "--threads 1");
  const nlohmann::json int8 = RunJson(model_, "--threads 1 --weights int8");
  const nlohmann::json experts =
      RunJson(model_, "--threads 1 --weights int4 --experts-only --lm-head-bf16");
  EXPECT_EQ(none["weights"], "none");
  EXPECT_NE(none["first_logits_top10"], int8["first_logits_top10"]);
  EXPECT_NE(none["first_logits_top10"], experts["first_logits_top10"]);
  EXPECT_EQ(RunDsv2("run --model " + model_ + " --prompt-ids 1 --weights int3").exit_code, 2);
  EXPECT_EQ(RunDsv2("run --model " + model_ + " --prompt-ids 1 --experts-only").exit_code, 2);
}

TEST_F(QuantizedRunTest, QuantizeCommandWritesWhatRunLoads) {
  for (const char* format : {"int8", "int4"}) {
    SCOPED_TRACE(format);
    const std::string out = ::testing::TempDir() + "/dsv2_quantize_cmd_" + format;
    std::filesystem::remove_all(out);
    const Result q =
        RunDsv2("quantize --model " + model_ + " --out " + out + " --weights " + format);
    ASSERT_EQ(q.exit_code, 0) << q.err;
    // The progress line, ending at every tensor written.
    EXPECT_TRUE(absl::StrContains(q.err, "quantize: ")) << q.err;
    EXPECT_TRUE(absl::StrContains(q.err, " GB written")) << q.err;
    const nlohmann::json stored = RunJson(out, "--threads 1");
    const nlohmann::json at_load = RunJson(model_, std::string("--threads 1 --weights ") + format);
    EXPECT_EQ(stored["weights"], format);
    EXPECT_EQ(stored["first_logits_top10"], at_load["first_logits_top10"]);
    EXPECT_EQ(stored["output_ids"], at_load["output_ids"]);
    // A stored checkpoint takes no other --weights; the output directory
    // must be new.
    const Result other = RunDsv2("run --model " + out + " --prompt-ids 1 --weights " +
                                 (std::string(format) == "int8" ? "int4" : "int8"));
    EXPECT_EQ(other.exit_code, 1) << other.err;
    EXPECT_TRUE(absl::StrContains(other.err, "stored quantized")) << other.err;
    const Result again =
        RunDsv2("quantize --model " + model_ + " --out " + out + " --weights int8");
    EXPECT_EQ(again.exit_code, 2) << again.err;
    EXPECT_TRUE(absl::StrContains(again.err, "not an empty directory")) << again.err;
  }
  for (const std::string& bad : {std::string("--weights int8"),  // no --model / --out
                                 "--model " + model_ + " --out /tmp/x --weights none",
                                 "--model " + model_ + " --out /tmp/x --weights int3",
                                 "--model " + model_ + " --out /tmp/x"}) {
    const Result r = RunDsv2("quantize " + bad);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, "dsv2 quantize")) << r.err;
  }
}

TEST_F(QuantizedRunTest, EvalKldCommand) {
  const Result r = RunDsv2("eval-kld --model " + model_ +
                           " --weights int4 --random-tokens 200 --context 64 --threads 1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["positions"], 31 * 3 + 5);  // chunks of BOS + 63, 63, 63, 11 tokens
  EXPECT_GT(j["kld_mean"].get<double>(), 0.0);
  EXPECT_TRUE(absl::StrContains(r.err, "same top-1")) << r.err;
  for (const std::string& bad :
       {std::string(" --random-tokens 10"),                                     // nothing quantized
        std::string(" --weights int8 --quantized-model x --random-tokens 10"),  // both
        std::string(" --weights int8"),                                         // no tokens
        std::string(" --weights int8 --random-tokens 10 --text f")}) {
    const Result u = RunDsv2("eval-kld --model " + model_ + bad);
    EXPECT_EQ(u.exit_code, 2) << bad << ": " << u.err;
  }
}

// Peak RSS (KiB) of one run, from wait4's rusage.
long PeakRssKib(const std::string& model, const std::string& flags) {
  const std::string cmd = Bin() + " run --model " + model +
                          " --prompt-ids 100000,5 --max-tokens 1 --threads 1 " + flags +
                          " >/dev/null 2>&1";
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  struct rusage ru;
  wait4(pid, &status, 0, &ru);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << cmd;
  return ru.ru_maxrss;
}

TEST_F(QuantizedRunTest, ResidentMemoryIsSmaller) {
  // The f32 copy makes the stored weights dominate the process's memory:
  // lm_head alone is 25 MiB in f32 (every row is read for the logits), 6.6
  // MiB in int8, and quantizing releases the mapped rows block by block.
  const std::string deq = DequantizedCopy(kernels::QuantFormat::kInt4);
  const long none = PeakRssKib(deq, "--weights none");
  const long int4 = PeakRssKib(deq, "--weights int4");
  EXPECT_LT(int4 + 10 * 1024, none) << "int4 " << int4 << " KiB, none " << none << " KiB";
}

}  // namespace
}  // namespace dsv2
