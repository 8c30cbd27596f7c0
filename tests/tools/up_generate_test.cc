// `dsv2 up` and `dsv2 generate` as processes: usage errors, a missing
// binary, a real local cluster (coordinator + 1 attention node + 2 expert
// shards on loopback) compared with single-process `dsv2 run`, RPC errors,
// and the cluster's shutdown on SIGTERM and on SIGKILL of `dsv2 up`.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "service/certificates.h"
#include "tests/cluster/cluster_harness.h"
#include "tests/common/wait_for.h"

namespace dsv2::testing {
namespace {

namespace fs = std::filesystem;

std::string Dsv2() { return BinDir() + "/tools/dsv2"; }

std::string ShellQuote(const std::string& s) {
  // StrCat, not "'" + std::string: GCC 12 at -O3 reports a false -Wrestrict
  // in operator+(const char*, std::string&&).
  return absl::StrCat("'", absl::StrReplaceAll(s, {{"'", "'\\''"}}), "'");
}

struct Result {
  int exit_code = -1;  // -1 when killed by a signal
  std::string output;  // stdout and stderr together
};

// Runs argv to completion with stderr merged into stdout.
Result RunCapture(const std::vector<std::string>& argv) {
  std::vector<std::string> quoted;
  for (const std::string& a : argv) quoted.push_back(ShellQuote(a));
  auto child = StartChild(
      {"/bin/sh", "-c", absl::StrCat("exec ", absl::StrJoin(quoted, " "), " 2>&1 </dev/null")});
  Result r;
  if (!child.ok()) return r;
  while (true) {
    absl::StatusOr<std::string> line = (*child)->ReadLine(absl::Seconds(120));
    if (!line.ok()) break;
    absl::StrAppend(&r.output, *line, "\n");
  }
  absl::StatusOr<int> status = (*child)->Stop(0, absl::Seconds(60));  // signal 0: just wait
  if (status.ok() && WIFEXITED(*status)) r.exit_code = WEXITSTATUS(*status);
  return r;
}

// True once `pid` no longer runs (no such process, or a zombie nobody has
// reaped yet).
bool ProcessGone(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
  if (!f) return true;
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size()) return true;
  const char state = stat[paren + 2];
  return state == 'Z' || state == 'X';
}

::testing::AssertionResult WaitGone(pid_t pid, absl::Duration timeout) {
  return testing_util::WaitFor([pid] { return ProcessGone(pid); }, timeout);
}

std::vector<pid_t> ChildPids(const std::map<std::string, std::string>& fields) {
  std::vector<pid_t> pids;
  for (const auto& [k, v] : fields) {
    if (k == "endpoint" || k == "tls_ca" || absl::StrContains(k, ".")) continue;
    pid_t pid = 0;
    EXPECT_TRUE(absl::SimpleAtoi(v, &pid)) << k << "=" << v;
    pids.push_back(pid);
  }
  return pids;
}

std::string TempDir(const std::string& name) {
  const fs::path dir =
      fs::temp_directory_path() / absl::StrCat("dsv2_up_test_", getpid(), "_", name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

// Makes a random v2-tiny checkpoint (with the DeepSeek-V2 tokenizer) in
// dir/model.
std::string MakeModel(const std::string& dir);

// --- no cluster needed ----------------------------------------------------

TEST(UpCommandTest, UsageErrorsExitTwo) {
  EXPECT_EQ(RunCapture({Dsv2(), "up", "--no-such-flag"}).exit_code, 2);
  EXPECT_EQ(RunCapture({Dsv2(), "up", "--expert-shards", "0"}).exit_code, 2);
  EXPECT_EQ(RunCapture({Dsv2(), "up", "--attention-nodes", "x"}).exit_code, 2);
  EXPECT_EQ(RunCapture({Dsv2(), "up", "--threads", "0"}).exit_code, 2);
  EXPECT_EQ(RunCapture({Dsv2(), "up", "--port", "70000"}).exit_code, 2);
  EXPECT_EQ(RunCapture({Dsv2(), "up", "stray"}).exit_code, 2);
  EXPECT_EQ(RunCapture({Dsv2(), "up", "--ready-timeout", "0s"}).exit_code, 2);
  EXPECT_EQ(RunCapture({Dsv2(), "up", "--ready-timeout", "1s", "--ready-timeout-s", "1"}).exit_code,
            2);  // two spellings of one flag
  EXPECT_EQ(RunCapture({Dsv2(), "up", "--help"}).exit_code, 0);
  EXPECT_EQ(RunCapture({Dsv2(), "up", "--version"}).exit_code, 0);
}

TEST(UpCommandTest, MissingBinaryIsNamed) {
  const std::string empty = TempDir("empty_bin");
  const Result r = RunCapture({Dsv2(), "up", "--bin-dir", empty, "--model", empty});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "cannot find the executable dsv2-coordinator"))
      << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, empty)) << r.output;
}

TEST(UpCommandTest, DefaultModelFromTheEnvironmentMustBeAModel) {
  const std::string empty = TempDir("not_a_model");
  const Result r = RunCapture({"/usr/bin/env", absl::StrCat("DSV2_DEFAULT_MODEL=", empty), Dsv2(),
                               "up", "--ready-timeout-s", "30"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "DSV2_DEFAULT_MODEL=" + empty)) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "no config.json")) << r.output;
}

// A checkpoint without weights: the attention node and the shards exit at
// load; `dsv2 up` names the first one, kills the rest and exits 1.
TEST(UpCommandTest, ChildExitingBeforeReadyIsNamedAndExitsOne) {
  const std::string dir = TempDir("no_weights");
  const std::string model = MakeModel(dir);
  fs::remove(model + "/model.safetensors");
  const Result r = RunCapture({Dsv2(), "up", "--model", model, "--threads", "1"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(
      absl::StrContains(r.output, "exited before the cluster was ready: exited with status"))
      << r.output;
  fs::remove_all(dir);
}

TEST(UpCommandTest, ReadyTimeoutExitsOne) {
  const std::string dir = TempDir("timeout");
  const std::string model = MakeModel(dir);
  const Result r =
      RunCapture({Dsv2(), "up", "--model", model, "--threads", "1", "--ready-timeout-s", "0.001"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "not ready after 1ms")) << r.output;
  fs::remove_all(dir);
}

TEST(GenerateCommandTest, UsageErrorsExitTwo) {
  EXPECT_EQ(RunCapture({Dsv2(), "generate", "--prompt", "hi"}).exit_code,
            2);  // no endpoint
  EXPECT_EQ(RunCapture({Dsv2(), "generate", "--endpoint", "127.0.0.1:1"}).exit_code, 2);
  EXPECT_EQ(RunCapture({Dsv2(), "generate", "--endpoint", "127.0.0.1:1", "--prompt", "a",
                        "--prompt-ids", "1"})
                .exit_code,
            2);
  EXPECT_EQ(RunCapture(
                {Dsv2(), "generate", "--endpoint", "127.0.0.1:1", "--prompt", "a", "--system", "s"})
                .exit_code,
            2);
  EXPECT_EQ(RunCapture({Dsv2(), "generate", "--endpoint", "127.0.0.1:1", "--prompt-ids", "1,x"})
                .exit_code,
            2);
  EXPECT_EQ(RunCapture({Dsv2(), "generate", "--endpoint", "127.0.0.1:1", "--prompt", "a",
                        "--max-tokens", "many"})
                .exit_code,
            2);
  EXPECT_EQ(RunCapture({Dsv2(), "generate", "--endpoint", "127.0.0.1:1", "--prompt", "a",
                        "--timeout-s", "0"})
                .exit_code,
            2);
  EXPECT_EQ(RunCapture({Dsv2(), "generate", "--help"}).exit_code, 0);
}

TEST(GenerateCommandTest, UnreachableEndpointExitsOneWithCodeName) {
  // Port 1 on loopback: nothing listens; the deadline bounds the retries.
  const Result r = RunCapture(
      {Dsv2(), "generate", "--endpoint", "127.0.0.1:1", "--prompt", "a", "--timeout-s", "3"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "dsv2 generate: UNAVAILABLE: ") ||
              absl::StrContains(r.output, "dsv2 generate: DEADLINE_EXCEEDED: "))
      << r.output;
}

// --- a real cluster -------------------------------------------------------

// A `dsv2 up` process and its parsed ready line.
struct Cluster {
  std::unique_ptr<ChildProcess> up;
  std::string ready_line;
  std::map<std::string, std::string> fields;
};

std::string MakeModel(const std::string& dir) {
  const std::string model = dir + "/model";
  const Result r = RunCapture(
      {Dsv2(), "make-random-model", "--out", model, "--preset", "v2-tiny", "--seed", "0"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return model;
}

absl::StatusOr<Cluster> StartCluster(const std::string& model, const std::string& ready_file,
                                     const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv = {
      Dsv2(),   "up", "--model",      model,      "--expert-shards", "2",
      "--port", "0",  "--ready-file", ready_file, "--threads",       "1"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto up = StartChild(argv);
  if (!up.ok()) return up.status();
  auto line = (*up)->ReadLine(absl::Seconds(180));
  if (!line.ok()) return line.status();
  Cluster c;
  c.up = *std::move(up);
  c.ready_line = *line;
  c.fields = ParseReadyLine(*line);
  return c;
}

class UpClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(TempDir("cluster"));
    model_ = new std::string(MakeModel(*dir_));
    auto c = StartCluster(*model_, *dir_ + "/ready");
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = new Cluster(*std::move(c));
  }
  static void TearDownTestSuite() {
    if (cluster_ != nullptr) {
      (void)cluster_->up->Stop(SIGTERM, absl::Seconds(60));
      delete cluster_;
    }
    fs::remove_all(*dir_);
    delete model_;
    delete dir_;
  }
  static std::string* dir_;
  static std::string* model_;
  static Cluster* cluster_;
};
std::string* UpClusterTest::dir_ = nullptr;
std::string* UpClusterTest::model_ = nullptr;
Cluster* UpClusterTest::cluster_ = nullptr;

TEST_F(UpClusterTest, ReadyLineNamesEveryProcessAndEqualsTheReadyFile) {
  ASSERT_NE(cluster_, nullptr);
  EXPECT_TRUE(absl::StartsWith(cluster_->ready_line, "dsv2 ready endpoint=127.0.0.1:"))
      << cluster_->ready_line;
  for (const char* key :
       {"endpoint", "tls_ca", "coordinator", "attention-0", "expert-0", "expert-1"}) {
    EXPECT_TRUE(cluster_->fields.contains(key)) << key << " missing: " << cluster_->ready_line;
  }
  for (pid_t pid : ChildPids(cluster_->fields)) EXPECT_FALSE(ProcessGone(pid)) << pid;
  std::ifstream f(*dir_ + "/ready");
  std::stringstream content;
  content << f.rdbuf();
  EXPECT_EQ(content.str(), cluster_->ready_line + "\n");
}

TEST_F(UpClusterTest, GreedyGenerateMatchesSingleProcessRun) {
  ASSERT_NE(cluster_, nullptr);
  const std::string prompt = "The capital of France is";
  auto got = RunDsv2Json({"generate", "--endpoint", cluster_->fields["endpoint"], "--tls-ca",
                          cluster_->fields["tls_ca"], "--temperature", "0", "--prompt", prompt,
                          "--max-tokens", "8"});
  auto want = RunDsv2Json(
      {"run", "--model", *model_, "--prompt", prompt, "--max-tokens", "8", "--threads", "1"});
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(want.ok()) << want.status();
  const nlohmann::json g = nlohmann::json::parse(*got);
  const nlohmann::json w = nlohmann::json::parse(*want);
  EXPECT_EQ(g["output_ids"], w["output_ids"]) << *got << "\n" << *want;
  EXPECT_EQ(g["prompt_ids"], w["prompt_ids"]);
  EXPECT_EQ(g["text"], w["text"]);
  EXPECT_EQ(g["usage"]["completion_tokens"], g["output_ids"].size());
  EXPECT_EQ(g["usage"]["prompt_tokens"], g["prompt_ids"].size());
  EXPECT_EQ(g["usage"]["seed"], g["seed"]);
  const std::string finish = g["finish_reason"];
  EXPECT_TRUE(finish == "length" || finish == "eos") << finish;
  EXPECT_FALSE(g.contains("logprobs"));
}

TEST_F(UpClusterTest, GreedyPromptIdsMatchSingleProcessRun) {
  ASSERT_NE(cluster_, nullptr);
  const std::vector<int32_t> prompt = {5, 17, 99, 4, 250, 31};
  auto want = ReferenceOutput(*model_, prompt, 16);
  ASSERT_TRUE(want.ok()) << want.status();
  auto got = RunDsv2Json({"generate", "--endpoint", cluster_->fields["endpoint"], "--tls-ca",
                          cluster_->fields["tls_ca"], "--temperature", "0", "--prompt-ids",
                          absl::StrJoin(prompt, ","), "--max-tokens", "16"});
  ASSERT_TRUE(got.ok()) << got.status();
  const nlohmann::json g = nlohmann::json::parse(*got);
  EXPECT_EQ(g["output_ids"].get<std::vector<int32_t>>(), *want) << *got;
  EXPECT_EQ(g["prompt_ids"].get<std::vector<int32_t>>(), prompt);
}

TEST_F(UpClusterTest, LogprobsAndStopStringsReachTheServer) {
  ASSERT_NE(cluster_, nullptr);
  auto got = RunDsv2Json({"generate", "--endpoint", cluster_->fields["endpoint"], "--tls-ca",
                          cluster_->fields["tls_ca"], "--prompt-ids", "1,2,3", "--temperature", "0",
                          "--max-tokens", "4", "--logprobs", "2", "--stop", "\x01\x02never",
                          "--stop", "\x03also never", "--seed", "7"});
  ASSERT_TRUE(got.ok()) << got.status();
  const nlohmann::json g = nlohmann::json::parse(*got);
  EXPECT_EQ(g["prompt_ids"], nlohmann::json::array({1, 2, 3}));
  EXPECT_EQ(g["seed"], 7);
  ASSERT_TRUE(g.contains("logprobs"));
  ASSERT_EQ(g["logprobs"].size(), g["output_ids"].size());
  for (const auto& lp : g["logprobs"]) EXPECT_EQ(lp["top"].size(), 2u);
}

// Security is on by default: the public port speaks TLS only, with the
// certificate of the authority the ready line names.
TEST_F(UpClusterTest, PublicPortSpeaksTlsWithTheAuthorityOfTheReadyLine) {
  ASSERT_NE(cluster_, nullptr);
  const Result plain =
      RunCapture({Dsv2(), "generate", "--endpoint", cluster_->fields["endpoint"], "--prompt-ids",
                  "1,2", "--max-tokens", "2", "--timeout-s", "20"});
  EXPECT_EQ(plain.exit_code, 1) << plain.output;
  EXPECT_TRUE(absl::StrContains(plain.output, "dsv2 generate: UNAVAILABLE: ")) << plain.output;
  // Another authority's certificate file: the coordinator's is not trusted.
  const std::string other = *dir_ + "/other-ca.crt";
  {
    auto ca = service::CertificateAuthority::Create("another authority");
    ASSERT_TRUE(ca.ok()) << ca.status();
    std::ofstream(other) << ca->pem().cert;
  }
  const Result wrong =
      RunCapture({Dsv2(), "generate", "--endpoint", cluster_->fields["endpoint"], "--tls-ca", other,
                  "--prompt-ids", "1,2", "--max-tokens", "2", "--timeout-s", "20"});
  EXPECT_EQ(wrong.exit_code, 1) << wrong.output;
  EXPECT_TRUE(absl::StrContains(wrong.output, "dsv2 generate: UNAVAILABLE: ")) << wrong.output;
  const Result missing =
      RunCapture({Dsv2(), "generate", "--endpoint", cluster_->fields["endpoint"], "--tls-ca",
                  *dir_ + "/no-such.crt", "--prompt-ids", "1,2", "--max-tokens", "2"});
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
  EXPECT_TRUE(absl::StrContains(missing.output, "no-such.crt")) << missing.output;
  // The certificates live in a private directory: keys readable by the owner only.
  const fs::path tls_dir = fs::path(cluster_->fields["tls_ca"]).parent_path();
  EXPECT_EQ(fs::status(tls_dir / "coordinator.key").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  // What is there: the authority's certificate (never its key: nothing
  // else can be issued) and each process's certificate and key.
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(tls_dir)) files.insert(e.path().filename());
  EXPECT_EQ(files, (std::set<std::string>{"ca.crt", "coordinator.crt", "coordinator.key",
                                          "attention-0.crt", "attention-0.key", "expert-0.crt",
                                          "expert-0.key", "expert-1.crt", "expert-1.key"}));
}

TEST_F(UpClusterTest, InvalidArgumentExitsOneWithTheCodeName) {
  ASSERT_NE(cluster_, nullptr);
  const Result r = RunCapture({Dsv2(), "generate", "--endpoint", cluster_->fields["endpoint"],
                               "--tls-ca", cluster_->fields["tls_ca"], "--prompt", "hi",
                               "--temperature", "-1", "--timeout-s", "60"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "dsv2 generate: INVALID_ARGUMENT: ")) << r.output;
}

// `dsv2 up --weights int8` passes the flag to every attention node and
// expert shard: the cluster's greedy output is bitwise `dsv2 run --weights
// int8`'s (issue 13: same weights and flags, same output).
TEST(UpQuantizedTest, GreedyOutputEqualsSingleProcessRunWithTheSameWeights) {
  EXPECT_EQ(RunCapture({Dsv2(), "up", "--weights", "int3"}).exit_code, 2);
  EXPECT_EQ(RunCapture({Dsv2(), "up", "--lm-head-bf16"}).exit_code, 2);
  const std::string dir = TempDir("quantized");
  const std::string model = MakeModel(dir);
  // Also the main flow of an insecure cluster (--insecure: plaintext).
  auto c = StartCluster(model, dir + "/ready", {"--weights", "int8", "--insecure"});
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string prompt = "5,17,99,4,250,31";
  auto got = RunDsv2Json({"generate", "--endpoint", c->fields["endpoint"], "--temperature", "0",
                          "--prompt-ids", prompt, "--max-tokens", "12"});
  auto want = RunDsv2Json({"run", "--model", model, "--prompt-ids", prompt, "--max-tokens", "12",
                           "--threads", "1", "--weights", "int8"});
  auto plain = RunDsv2Json(
      {"run", "--model", model, "--prompt-ids", prompt, "--max-tokens", "12", "--threads", "1"});
  (void)c->up->Stop(SIGTERM, absl::Seconds(60));
  fs::remove_all(dir);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_TRUE(plain.ok()) << plain.status();
  const nlohmann::json g = nlohmann::json::parse(*got);
  const nlohmann::json w = nlohmann::json::parse(*want);
  EXPECT_EQ(w["weights"], "int8");
  EXPECT_EQ(g["output_ids"], w["output_ids"]) << *got << "\n" << *want;
  // Not vacuous: on this model int8 changes the greedy output.
  EXPECT_NE(nlohmann::json::parse(*plain)["output_ids"], w["output_ids"]);
}

// A checkpoint written by `dsv2 quantize` serves as it is: every attention
// node and shard loads the stored int4 weights (the shards only their
// experts), and the cluster's greedy output is bitwise `dsv2 run --weights
// int4` on the float checkpoint.
TEST(UpQuantizedTest, StoredQuantizedCheckpointServesLikeLoadTimeQuantization) {
  const std::string dir = TempDir("stored_int4");
  const std::string model = MakeModel(dir);
  const std::string quantized = dir + "/int4";
  const Result q =
      RunCapture({Dsv2(), "quantize", "--model", model, "--out", quantized, "--weights", "int4"});
  ASSERT_EQ(q.exit_code, 0) << q.output;
  auto c = StartCluster(quantized, dir + "/ready", {});
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string prompt = "5,17,99,4,250,31";
  auto got =
      RunDsv2Json({"generate", "--endpoint", c->fields["endpoint"], "--tls-ca", c->fields["tls_ca"],
                   "--temperature", "0", "--prompt-ids", prompt, "--max-tokens", "12"});
  auto want = RunDsv2Json({"run", "--model", model, "--prompt-ids", prompt, "--max-tokens", "12",
                           "--threads", "1", "--weights", "int4"});
  (void)c->up->Stop(SIGTERM, absl::Seconds(60));
  fs::remove_all(dir);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_EQ(nlohmann::json::parse(*got)["output_ids"], nlohmann::json::parse(*want)["output_ids"])
      << *got << "\n"
      << *want;
}

// SIGKILL of a shard is survived (reported on stderr, the cluster keeps
// serving); SIGTERM then stops every child and exits 0.
TEST(UpShutdownTest, ShardDeathIsSurvivedAndSigtermStopsEveryChild) {
  const std::string dir = TempDir("sigterm");
  const std::string model = MakeModel(dir);
  auto c = StartCluster(model, dir + "/ready", {"--log-dir", dir + "/logs"});
  ASSERT_TRUE(c.ok()) << c.status();
  const std::vector<pid_t> pids = ChildPids(c->fields);
  ASSERT_EQ(pids.size(), 4u) << c->ready_line;
  for (const char* name : {"coordinator", "attention-0", "expert-0", "expert-1"}) {
    EXPECT_TRUE(fs::exists(dir + "/logs/" + name + ".log")) << name;
  }
  pid_t shard = 0;
  ASSERT_TRUE(absl::SimpleAtoi(c->fields["expert-1"], &shard));
  ASSERT_EQ(kill(shard, SIGKILL), 0);
  EXPECT_TRUE(WaitGone(shard, absl::Seconds(30)));
  // The cluster serves again once the coordinator has moved the dead
  // shard's experts to the survivor (UNAVAILABLE meanwhile, "the expert
  // placement is incomplete"): `dsv2 up` did not stop it.
  absl::StatusOr<std::string> got;
  EXPECT_TRUE(testing_util::WaitFor(
      [&] {
        got = RunDsv2Json({"generate", "--endpoint", c->fields["endpoint"], "--tls-ca",
                           c->fields["tls_ca"], "--prompt-ids", "1,2,3", "--temperature", "0",
                           "--max-tokens", "4", "--timeout-s", "30"});
        return got.ok();
      },
      absl::Minutes(2)))
      << got.status();
  absl::StatusOr<int> status = c->up->Stop(SIGTERM, absl::Seconds(120));
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status)) << *status;
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  for (pid_t pid : pids) EXPECT_TRUE(ProcessGone(pid)) << pid;
  // The throw-away certificates went with it.
  EXPECT_FALSE(fs::exists(fs::path(c->fields["tls_ca"]).parent_path())) << c->fields["tls_ca"];
  fs::remove_all(dir);
}

// Without --model and DSV2_DEFAULT_MODEL: the shipped demo model,
// <data dir>/demo-stories, found relative to dsv2 (here a copy of dsv2 in a
// fresh tree whose share/dsv2 links the build tree's), and the children are
// found in the tree's sibling folders. dsv2 is copied so that its directory
// is a fresh one (/proc/self/exe resolves symlinks).
TEST(UpShutdownTest, DefaultModelIsTheShippedDemoModel) {
  const std::string dir = TempDir("default_model");
  fs::create_directories(dir + "/tools");
  fs::copy_file(Dsv2(), dir + "/tools/dsv2");
  std::ofstream(dir + "/CMakeCache.txt").flush();
  fs::create_directories(dir + "/share");
  fs::create_directory_symlink(fs::canonical(BinDir() + "/share/dsv2"), dir + "/share/dsv2");
  for (const auto& [folder, binary] :
       std::vector<std::pair<std::string, std::string>>{{"coordinator", "dsv2-coordinator"},
                                                        {"attention_service", "dsv2-attention"},
                                                        {"expert_service", "dsv2-expert"}}) {
    fs::create_directories(dir + "/" + folder);
    fs::create_symlink(fs::absolute(BinDir() + "/" + folder + "/" + binary),
                       dir + "/" + folder + "/" + binary);
  }
  auto up = StartChild({"/usr/bin/env", "-u", "DSV2_DEFAULT_MODEL", "-u", "DSV2_MODEL", "-u",
                        "DSV2_DATA_DIR", dir + "/tools/dsv2", "up", "--threads", "1", "--port",
                        "0"});
  ASSERT_TRUE(up.ok()) << up.status();
  auto line = (*up)->ReadLine(absl::Seconds(180));
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_FALSE(fs::exists(dir + "/default-model"));  // nothing is made any more
  auto fields = ParseReadyLine(*line);
  auto got = RunDsv2Json({"generate", "--endpoint", fields["endpoint"], "--tls-ca",
                          fields["tls_ca"], "--prompt", "Once upon a time", "--max-tokens", "8",
                          "--temperature", "0", "--ignore-eos", "--timeout-s", "60"});
  ASSERT_TRUE(got.ok()) << got.status();
  const nlohmann::json g = nlohmann::json::parse(*got);
  EXPECT_EQ(g["output_ids"].size(), g["usage"]["completion_tokens"]);
  // The same tokens as `dsv2 run` on the shipped model.
  auto run = RunDsv2Json({"run", "--model", BinDir() + "/share/dsv2/demo-stories", "--prompt",
                          "Once upon a time", "--max-tokens", "8", "--temperature", "0",
                          "--ignore-eos"});
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_EQ(g["output_ids"], nlohmann::json::parse(*run)["output_ids"]);
  absl::StatusOr<int> status = (*up)->Stop(SIGTERM, absl::Seconds(120));
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << *status;
  fs::remove_all(dir);
}

TEST(UpShutdownTest, SigkillOfUpKillsEveryChild) {
  const std::string dir = TempDir("sigkill");
  const std::string model = MakeModel(dir);
  auto c = StartCluster(model, dir + "/ready");
  ASSERT_TRUE(c.ok()) << c.status();
  const std::vector<pid_t> pids = ChildPids(c->fields);
  ASSERT_EQ(pids.size(), 4u) << c->ready_line;
  absl::StatusOr<int> status = c->up->Stop(SIGKILL, absl::Seconds(30));
  ASSERT_TRUE(status.ok()) << status.status();
  for (pid_t pid : pids) EXPECT_TRUE(WaitGone(pid, absl::Seconds(30))) << pid;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace dsv2::testing
