#include "base/flags.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace dsv2::flags {
namespace {

using ::testing::HasSubstr;

// A fake environment for Parse.
struct Env {
  std::map<std::string, std::string> vars;
  EnvLookup lookup() const {
    return [this](const std::string& v) -> std::optional<std::string> {
      auto it = vars.find(v);
      if (it == vars.end()) return std::nullopt;
      return it->second;
    };
  }
};

// A set like a service binary's: one flag of each type.
struct Flags {
  std::string model;
  std::string host = "127.0.0.1";
  std::optional<std::string> coordinator;
  bool json = false;
  int threads = 1;
  int64_t max_queue = 256;
  uint64_t seed = 7;
  std::optional<int32_t> top_k;
  double top_p = 1.0;
  std::optional<float> temperature;
  absl::Duration heartbeat_interval = absl::Milliseconds(500);
  absl::Duration drain_timeout = absl::Seconds(30);
  std::optional<absl::Duration> timeout;
  std::string dtype = "bf16";
  std::vector<std::string> stop;

  FlagSet set{"dsv2-test", "1.2.3 (abc123)"};

  Flags() {
    set.String("model", &model, "checkpoint directory").Required();
    set.String("host", &host, "bind address");
    set.String("coordinator", &coordinator, "HOST:PORT of the coordinator");
    set.Bool("json", &json, "print JSON");
    set.Int("threads", &threads, "compute threads").Range(1, 1024);
    set.Int("max-queue", &max_queue, "queued requests").Min(0).Alias("queue-limit");
    set.Int("seed", &seed, "sampling seed");
    set.Int("top-k", &top_k, "top k").DefaultText("the server's");
    set.Double("top-p", &top_p, "nucleus mass").Above(0).Max(1);
    set.Double("temperature", &temperature, "sampling temperature").Min(0);
    set.Duration("heartbeat-interval", &heartbeat_interval, "how often nodes heartbeat")
        .Min(absl::Milliseconds(10))
        .LegacyAlias("heartbeat-interval-ms", absl::Milliseconds(1));
    set.Duration("drain-timeout", &drain_timeout, "drain time")
        .Min(absl::ZeroDuration())
        .LegacyAlias("drain-timeout-s", absl::Seconds(1));
    set.Duration("timeout", &timeout, "call deadline")
        .Above(absl::ZeroDuration())
        .LegacyAlias("timeout-s", absl::Seconds(1));
    set.Enum("dtype", &dtype, {"bf16", "f32"}, "weight dtype");
    set.Repeated("stop", &stop, "stop string");
  }

  ParseResult Parse(std::vector<std::string> args, const Env& env = {}) {
    if (std::find(args.begin(), args.end(), "--model") == args.end() &&
        !env.vars.contains("DSV2_MODEL")) {
      args.insert(args.begin(), {"--model", "/m"});
    }
    return set.Parse(args, env.lookup());
  }
  // The usage error of `args` ("" when it parses).
  std::string Error(std::vector<std::string> args, const Env& env = {}) {
    const ParseResult r = Parse(std::move(args), env);
    if (r.ok()) return "";
    EXPECT_EQ(r.outcome, Outcome::kUsageError);
    EXPECT_EQ(r.exit_code, 2);
    return r.error;
  }
};

TEST(FlagsTest, DefaultsStayWhenNothingIsGiven) {
  Flags f;
  ParseResult r = f.Parse({});
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(f.model, "/m");
  EXPECT_EQ(f.host, "127.0.0.1");
  EXPECT_FALSE(f.coordinator);
  EXPECT_FALSE(f.json);
  EXPECT_EQ(f.threads, 1);
  EXPECT_EQ(f.max_queue, 256);
  EXPECT_FALSE(f.top_k);
  EXPECT_FALSE(f.temperature);
  EXPECT_EQ(f.heartbeat_interval, absl::Milliseconds(500));
  EXPECT_FALSE(f.timeout);
  EXPECT_EQ(f.dtype, "bf16");
  EXPECT_TRUE(f.stop.empty());
  EXPECT_EQ(f.set.source("threads"), Source::kDefault);
  EXPECT_FALSE(f.set.was_set("threads"));
  EXPECT_EQ(f.set.source("model"), Source::kCommandLine);
}

TEST(FlagsTest, EveryTypeParsesBothSpellings) {
  Flags f;
  ParseResult r = f.Parse({"--host=0.0.0.0",
                           "--coordinator",
                           "c:1",
                           "--json",
                           "--threads",
                           "8",
                           "--max-queue=0",
                           "--seed",
                           "18446744073709551615",
                           "--top-k",
                           "-3",
                           "--top-p",
                           "0.5",
                           "--temperature=0",
                           "--heartbeat-interval",
                           "1m30s",
                           "--drain-timeout=250ms",
                           "--timeout",
                           "2s",
                           "--dtype",
                           "f32"});
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(f.host, "0.0.0.0");
  EXPECT_EQ(f.coordinator, "c:1");
  EXPECT_TRUE(f.json);
  EXPECT_EQ(f.threads, 8);
  EXPECT_EQ(f.max_queue, 0);
  EXPECT_EQ(f.seed, UINT64_MAX);
  EXPECT_EQ(f.top_k, -3);
  EXPECT_EQ(f.top_p, 0.5);
  EXPECT_EQ(f.temperature, 0.0f);
  EXPECT_EQ(f.heartbeat_interval, absl::Seconds(90));
  EXPECT_EQ(f.drain_timeout, absl::Milliseconds(250));
  EXPECT_EQ(f.timeout, absl::Seconds(2));
  EXPECT_EQ(f.dtype, "f32");
  EXPECT_EQ(f.set.source("threads"), Source::kCommandLine);
  EXPECT_TRUE(f.set.was_set("json"));
}

TEST(FlagsTest, BoolTakesExplicitValues) {
  for (const char* v : {"true", "1", "yes", "TRUE"}) {
    Flags f;
    ASSERT_TRUE(f.Parse({absl::StrCat("--json=", v)}).ok()) << v;
    EXPECT_TRUE(f.json) << v;
  }
  for (const char* v : {"false", "0", "no"}) {
    Flags f;
    f.json = true;
    ASSERT_TRUE(f.Parse({absl::StrCat("--json=", v)}).ok()) << v;
    EXPECT_FALSE(f.json) << v;
  }
  Flags f;
  EXPECT_EQ(f.Error({"--json=maybe"}), "--json=maybe is not a boolean (true or false)");
  // A bare bool never takes the next argument as its value.
  EXPECT_EQ(f.Error({"--json", "true"}), "unexpected argument 'true'");
}

TEST(FlagsTest, TheLastOfARepeatedScalarWins) {
  Flags f;
  ASSERT_TRUE(f.Parse({"--threads=2", "--threads=3"}).ok());
  EXPECT_EQ(f.threads, 3);
}

TEST(FlagsTest, ValueMayStartWithDashes) {
  Flags f;
  ASSERT_TRUE(f.Parse({"--stop", "--x", "--top-k", "-1"}).ok());
  EXPECT_EQ(f.stop, (std::vector<std::string>{"--x"}));
  EXPECT_EQ(f.top_k, -1);
}

TEST(FlagsTest, SyntaxErrors) {
  Flags f;
  EXPECT_EQ(f.Error({"--nope"}), "unknown flag --nope");
  EXPECT_EQ(f.Error({"--nope=1"}), "unknown flag --nope");
  EXPECT_EQ(f.Error({"-h"}), "unexpected argument '-h'");
  EXPECT_EQ(f.Error({"positional"}), "unexpected argument 'positional'");
  EXPECT_EQ(f.Error({"--threads"}), "flag --threads needs a value");
  EXPECT_EQ(f.Error({"--version=perhaps"}), "--version=perhaps is not a boolean (true or false)");
}

TEST(FlagsTest, TypeErrors) {
  Flags f;
  EXPECT_EQ(f.Error({"--threads=abc"}), "--threads=abc is not an integer");
  EXPECT_EQ(f.Error({"--threads", "1.5"}), "--threads=1.5 is not an integer");
  EXPECT_EQ(f.Error({"--top-p=x"}), "--top-p=x is not a number");
  EXPECT_EQ(f.Error({"--top-p=nan"}), "--top-p=nan is not a number");
  EXPECT_EQ(f.Error({"--heartbeat-interval=500"}),
            "--heartbeat-interval=500 is not a duration (e.g. 10s, 250ms, 1m30s)");
  EXPECT_EQ(f.Error({"--heartbeat-interval=soon"}),
            "--heartbeat-interval=soon is not a duration (e.g. 10s, 250ms, 1m30s)");
  EXPECT_EQ(f.Error({"--heartbeat-interval-ms=1s"}),
            "--heartbeat-interval-ms=1s is not a number (of milliseconds)");
  EXPECT_EQ(f.Error({"--dtype=f16"}), "--dtype=f16 must be one of bf16, f32");
}

TEST(FlagsTest, RangeErrors) {
  Flags f;
  // [min, max]
  EXPECT_EQ(f.Error({"--threads=0"}), "--threads=0 must be in [1, 1024]");
  EXPECT_EQ(f.Error({"--threads=1025"}), "--threads=1025 must be in [1, 1024]");
  EXPECT_EQ(f.Error({"--threads=1024"}), "");
  // Min only.
  EXPECT_EQ(f.Error({"--max-queue=-1"}), "--max-queue=-1 must be >= 0");
  EXPECT_EQ(f.Error({"--max-queue=9223372036854775808"}),
            "--max-queue=9223372036854775808 must be <= 9223372036854775807");
  // The destination type's range when no bound is set.
  EXPECT_EQ(f.Error({"--seed=-1"}), "--seed=-1 must be in [0, 18446744073709551615]");
  EXPECT_EQ(f.Error({"--top-k=2147483648"}),
            "--top-k=2147483648 must be in [-2147483648, 2147483647]");
  // Exclusive lower bound.
  EXPECT_EQ(f.Error({"--top-p=0"}), "--top-p=0 must be in (0, 1]");
  EXPECT_EQ(f.Error({"--top-p=1.5"}), "--top-p=1.5 must be in (0, 1]");
  EXPECT_EQ(f.Error({"--temperature=-1"}), "--temperature=-1 must be >= 0");
  // Durations, in any spelling.
  EXPECT_EQ(f.Error({"--heartbeat-interval=5ms"}), "--heartbeat-interval=5ms must be >= 10ms");
  EXPECT_EQ(f.Error({"--heartbeat-interval-ms=5"}), "--heartbeat-interval-ms=5 must be >= 10ms");
  EXPECT_EQ(f.Error({"--drain-timeout=-1s"}), "--drain-timeout=-1s must be >= 0");
  EXPECT_EQ(f.Error({"--timeout-s=0"}), "--timeout-s=0 must be > 0");
  EXPECT_EQ(f.Error({"--timeout=0"}), "--timeout=0 must be > 0");
}

TEST(FlagsTest, RequiredFlagIsAUsageError) {
  FlagSet set("p", "v");
  std::string model;
  set.String("model", &model, "checkpoint").Required();
  ParseResult r = set.Parse({}, Env{}.lookup());
  EXPECT_EQ(r.outcome, Outcome::kUsageError);
  EXPECT_EQ(r.error, "--model is required");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("p: --model is required\n"));
  EXPECT_THAT(r.output, HasSubstr("--model STRING\n      checkpoint (required)\n"));
}

TEST(FlagsTest, EnvironmentFillsWhatTheCommandLineLeaves) {
  Flags f;
  Env env{{{"DSV2_THREADS", "4"},
           {"DSV2_HOST", "0.0.0.0"},
           {"DSV2_JSON", "1"},
           {"DSV2_HEARTBEAT_INTERVAL", "2s"},
           {"DSV2_STOP", "a,b"},
           {"DSV2_UNRELATED", "x"}}};
  ParseResult r = f.Parse({"--threads", "2"}, env);
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(f.threads, 2);  // the command line wins
  EXPECT_EQ(f.set.source("threads"), Source::kCommandLine);
  EXPECT_EQ(f.host, "0.0.0.0");
  EXPECT_EQ(f.set.source("host"), Source::kEnvironment);
  EXPECT_TRUE(f.json);
  EXPECT_EQ(f.heartbeat_interval, absl::Seconds(2));
  EXPECT_EQ(f.stop, (std::vector<std::string>{"a,b"}));  // one value from the environment
}

TEST(FlagsTest, RequiredFlagMayComeFromTheEnvironment) {
  Flags f;
  ASSERT_TRUE(f.set.Parse({}, Env{{{"DSV2_MODEL", "/env"}}}.lookup()).ok());
  EXPECT_EQ(f.model, "/env");
}

TEST(FlagsTest, EnvironmentValuesAreCheckedAndNamed) {
  Flags f;
  EXPECT_EQ(f.Error({}, Env{{{"DSV2_THREADS", "many"}}}), "DSV2_THREADS=many is not an integer");
  EXPECT_EQ(f.Error({}, Env{{{"DSV2_THREADS", "0"}}}), "DSV2_THREADS=0 must be in [1, 1024]");
  EXPECT_EQ(f.Error({}, Env{{{"DSV2_JSON", "maybe"}}}),
            "DSV2_JSON=maybe is not a boolean (true or false)");
  // A bad environment value is not looked at when the command line gives the flag.
  EXPECT_EQ(f.Error({"--threads=3"}, Env{{{"DSV2_THREADS", "many"}}}), "");
}

TEST(FlagsTest, LegacyAliasesTakeANumberInTheirUnit) {
  Flags f;
  ASSERT_TRUE(
      f.Parse({"--heartbeat-interval-ms", "200", "--drain-timeout-s=30", "--timeout-s", "0.5"})
          .ok());
  EXPECT_EQ(f.heartbeat_interval, absl::Milliseconds(200));
  EXPECT_EQ(f.drain_timeout, absl::Seconds(30));
  EXPECT_EQ(f.timeout, absl::Milliseconds(500));
  // Recorded under the flag's own name.
  EXPECT_EQ(f.set.source("heartbeat-interval"), Source::kCommandLine);
}

TEST(FlagsTest, LegacyAliasesComeFromTheEnvironmentToo) {
  Flags f;
  ASSERT_TRUE(
      f.Parse({}, Env{{{"DSV2_HEARTBEAT_INTERVAL_MS", "3000"}, {"DSV2_DRAIN_TIMEOUT_S", "10"}}})
          .ok());
  EXPECT_EQ(f.heartbeat_interval, absl::Seconds(3));
  EXPECT_EQ(f.drain_timeout, absl::Seconds(10));
  EXPECT_EQ(f.set.source("drain-timeout"), Source::kEnvironment);
}

TEST(FlagsTest, CommandLineInAnySpellingBeatsTheEnvironmentInAny) {
  Flags f;
  ASSERT_TRUE(
      f.Parse({"--heartbeat-interval=1s"}, Env{{{"DSV2_HEARTBEAT_INTERVAL_MS", "3000"}}}).ok());
  EXPECT_EQ(f.heartbeat_interval, absl::Seconds(1));
  Flags g;
  ASSERT_TRUE(
      g.Parse({"--heartbeat-interval-ms=100"}, Env{{{"DSV2_HEARTBEAT_INTERVAL", "3s"}}}).ok());
  EXPECT_EQ(g.heartbeat_interval, absl::Milliseconds(100));
}

TEST(FlagsTest, TwoSpellingsOfOneFlagAreAUsageError) {
  Flags f;
  EXPECT_EQ(f.Error({"--heartbeat-interval=1s", "--heartbeat-interval-ms=100"}),
            "--heartbeat-interval and --heartbeat-interval-ms are the same flag; give one");
  EXPECT_EQ(f.Error({"--queue-limit=1", "--max-queue=2"}),
            "--queue-limit and --max-queue are the same flag; give one");
  EXPECT_EQ(f.Error({}, Env{{{"DSV2_DRAIN_TIMEOUT", "1s"}, {"DSV2_DRAIN_TIMEOUT_S", "1"}}}),
            "DSV2_DRAIN_TIMEOUT and DSV2_DRAIN_TIMEOUT_S set the same flag; set one");
}

TEST(FlagsTest, PlainAliasNamesTheSameFlag) {
  Flags f;
  ASSERT_TRUE(f.Parse({"--queue-limit", "9"}).ok());
  EXPECT_EQ(f.max_queue, 9);
  Flags g;
  ASSERT_TRUE(g.Parse({}, Env{{{"DSV2_QUEUE_LIMIT", "5"}}}).ok());
  EXPECT_EQ(g.max_queue, 5);
  Flags h;
  EXPECT_EQ(h.Error({"--queue-limit=-1"}), "--queue-limit=-1 must be >= 0");
}

TEST(FlagsTest, RepeatedFlagKeepsEveryValueInOrder) {
  Flags f;
  ASSERT_TRUE(
      f.Parse({"--stop", "a", "--stop=b c", "--stop", ""}, Env{{{"DSV2_STOP", "from-env"}}}).ok());
  EXPECT_EQ(f.stop, (std::vector<std::string>{"a", "b c", ""}));
}

TEST(FlagsTest, RepeatedFlagReplacesItsDefault) {
  FlagSet set("p", "v");
  std::vector<std::string> v = {"d"};
  set.Repeated("x", &v, "xs");
  ASSERT_TRUE(set.Parse({}, Env{}.lookup()).ok());
  EXPECT_EQ(v, (std::vector<std::string>{"d"}));
  ASSERT_TRUE(set.Parse({"--x=1", "--x=2"}, Env{}.lookup()).ok());
  EXPECT_EQ(v, (std::vector<std::string>{"1", "2"}));
}

TEST(FlagsTest, NothingIsWrittenOnAUsageError) {
  Flags f;
  EXPECT_FALSE(f.Parse({"--threads=3", "--top-p=7"}).ok());
  EXPECT_EQ(f.threads, 1);
}

struct Group {
  std::optional<std::string> prompt, prompt_ids, chat;
  FlagSet set{"dsv2 generate", "v"};
  explicit Group(GroupRule rule) {
    set.String("prompt", &prompt, "text");
    set.String("prompt-ids", &prompt_ids, "ids");
    set.String("chat", &chat, "message");
    set.ExclusiveGroup({"prompt", "prompt-ids", "chat"}, rule);
  }
};

TEST(FlagsTest, ExclusiveGroupPrefersTheCommandLine) {
  Group g(GroupRule::kExactlyOne);
  ParseResult r = g.set.Parse({"--prompt-ids", "1,2"}, Env{{{"DSV2_PROMPT", "hi"}}}.lookup());
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(g.prompt_ids, "1,2");
  EXPECT_FALSE(g.prompt);  // the environment's value was dropped
  EXPECT_EQ(g.set.source("prompt"), Source::kDefault);
}

TEST(FlagsTest, ExclusiveGroupErrors) {
  Group one(GroupRule::kExactlyOne);
  EXPECT_EQ(one.set.Parse({}, Env{}.lookup()).error,
            "exactly one of --prompt, --prompt-ids and --chat is required");
  EXPECT_EQ(one.set.Parse({"--prompt=a", "--chat=b"}, Env{}.lookup()).error,
            "exactly one of --prompt, --prompt-ids and --chat is required");
  // Two from the environment and none on the command line clash too.
  EXPECT_EQ(one.set.Parse({}, Env{{{"DSV2_PROMPT", "a"}, {"DSV2_CHAT", "b"}}}.lookup()).error,
            "exactly one of --prompt, --prompt-ids and --chat is required");
  Group most(GroupRule::kAtMostOne);
  EXPECT_TRUE(most.set.Parse({}, Env{}.lookup()).ok());
  EXPECT_EQ(most.set.Parse({"--prompt=a", "--chat=b"}, Env{}.lookup()).error,
            "at most one of --prompt, --prompt-ids and --chat may be given (got --prompt and "
            "--chat)");
}

TEST(FlagsTest, HelpIsGeneratedFromTheDefinitions) {
  Flags f;
  f.set.SetUsage("usage: dsv2-test --model DIR [flags]");
  ParseResult r = f.set.Parse({"--threads=bad", "--help"}, Env{}.lookup());
  EXPECT_EQ(r.outcome, Outcome::kHelp);  // --help wins over bad values and missing --model
  EXPECT_EQ(r.exit_code, 0);
  const std::string& h = r.output;
  EXPECT_EQ(h, f.set.HelpText());
  EXPECT_THAT(h, HasSubstr("usage: dsv2-test --model DIR [flags]\n"));
  EXPECT_THAT(h, HasSubstr("DSV2_<FLAG>"));
  EXPECT_THAT(h, HasSubstr("  --model STRING\n      checkpoint directory (required)\n"));
  EXPECT_THAT(h, HasSubstr("  --host STRING\n      bind address (default 127.0.0.1)\n"));
  EXPECT_THAT(h, HasSubstr("  --coordinator STRING\n      HOST:PORT of the coordinator\n"));
  EXPECT_THAT(h, HasSubstr("  --json\n      print JSON\n"));
  EXPECT_THAT(h, HasSubstr("  --threads INT\n      compute threads (default 1; in [1, 1024])\n"));
  EXPECT_THAT(h, HasSubstr("  --max-queue INT\n      queued requests (default 256; >= 0)\n"
                           "      also --queue-limit / DSV2_QUEUE_LIMIT\n"));
  EXPECT_THAT(h, HasSubstr("  --top-k INT\n      top k (default: the server's)\n"));
  EXPECT_THAT(h, HasSubstr("  --top-p NUMBER\n      nucleus mass (default 1; in (0, 1])\n"));
  EXPECT_THAT(h, HasSubstr("  --heartbeat-interval DURATION\n      how often nodes heartbeat "
                           "(default 500ms; >= 10ms)\n      also --heartbeat-interval-ms N / "
                           "DSV2_HEARTBEAT_INTERVAL_MS=N: N milliseconds (the older spelling)\n"));
  EXPECT_THAT(h, HasSubstr("  --drain-timeout DURATION\n      drain time (default 30s; >= 0)\n"));
  EXPECT_THAT(h, HasSubstr("  --dtype bf16|f32\n      weight dtype (default bf16)\n"));
  EXPECT_THAT(h, HasSubstr("  --stop STRING\n      stop string (repeatable)\n"));
  EXPECT_THAT(h, HasSubstr("  --help\n"));
  EXPECT_THAT(h, HasSubstr("  --version\n"));
  EXPECT_THAT(h, HasSubstr("  --flags-json\n"));
}

TEST(FlagsTest, UsageErrorCarriesMessageAndHelp) {
  Flags f;
  ParseResult r = f.Parse({"--nope"});
  EXPECT_EQ(r.outcome, Outcome::kUsageError);
  EXPECT_EQ(r.exit_code, kUsageErrorExitCode);
  EXPECT_EQ(r.output, "dsv2-test: unknown flag --nope\n" + f.set.HelpText());
  EXPECT_EQ(f.set.UsageErrorText("--a must be larger than --b"),
            "dsv2-test: --a must be larger than --b\n" + f.set.HelpText());
}

TEST(FlagsTest, VersionPrintsProgramAndVersion) {
  Flags f;
  ParseResult r = f.set.Parse({"--version"}, Env{}.lookup());
  EXPECT_EQ(r.outcome, Outcome::kVersion);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.output, "dsv2-test 1.2.3 (abc123)\n");
  FlagSet unknown("dsv2", "");
  EXPECT_EQ(unknown.Parse({"--version"}, Env{}.lookup()).output, "dsv2 (unknown version)\n");
}

TEST(FlagsTest, BuiltinsAreNotReadFromTheEnvironment) {
  Flags f;
  ParseResult r =
      f.Parse({}, Env{{{"DSV2_HELP", "1"}, {"DSV2_FLAGS_JSON", "1"}, {"DSV2_VERSION", "1"}}});
  EXPECT_TRUE(r.ok());
}

TEST(FlagsTest, FlagsJsonListsEveryNameWithItsEnvironmentVariable) {
  Flags f;
  ParseResult r = f.set.Parse({"--flags-json"}, Env{}.lookup());
  EXPECT_EQ(r.outcome, Outcome::kFlagsJson);
  EXPECT_EQ(r.exit_code, 0);
  ASSERT_EQ(r.output.back(), '\n');
  EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << "one line";
  const nlohmann::json all = nlohmann::json::parse(r.output);
  std::map<std::string, nlohmann::json> by_name;
  for (const nlohmann::json& e : all) {
    // The fields deploy_test.py reads are in every entry.
    ASSERT_TRUE(e.contains("name") && e.contains("bool") && e.contains("help") && e.contains("env"))
        << e.dump();
    by_name[e["name"].get<std::string>()] = e;
  }
  EXPECT_EQ(by_name["model"]["env"], "DSV2_MODEL");
  EXPECT_EQ(by_name["model"]["required"], true);
  EXPECT_FALSE(by_name["model"].contains("default"));
  EXPECT_EQ(by_name["json"]["bool"], true);
  EXPECT_EQ(by_name["json"]["default"], "false");
  EXPECT_EQ(by_name["threads"]["bool"], false);
  EXPECT_EQ(by_name["threads"]["type"], "int");
  EXPECT_EQ(by_name["threads"]["default"], "1");
  EXPECT_EQ(by_name["threads"]["min"], "1");
  EXPECT_EQ(by_name["threads"]["max"], "1024");
  EXPECT_EQ(by_name["threads"]["help"], "compute threads");
  EXPECT_EQ(by_name["top-p"]["min_exclusive"], true);
  EXPECT_EQ(by_name["top-k"].contains("default"), false);  // DefaultText is for people only
  EXPECT_EQ(by_name["heartbeat-interval"]["type"], "duration");
  EXPECT_EQ(by_name["heartbeat-interval"]["default"], "500ms");
  EXPECT_EQ(by_name["heartbeat-interval"]["min"], "10ms");
  EXPECT_EQ(by_name["heartbeat-interval-ms"]["alias_of"], "heartbeat-interval");
  EXPECT_EQ(by_name["heartbeat-interval-ms"]["env"], "DSV2_HEARTBEAT_INTERVAL_MS");
  EXPECT_EQ(by_name["heartbeat-interval-ms"]["unit"], "ms");
  EXPECT_EQ(by_name["heartbeat-interval-ms"]["bool"], false);
  EXPECT_EQ(by_name["drain-timeout-s"]["unit"], "s");
  EXPECT_EQ(by_name["queue-limit"]["alias_of"], "max-queue");
  EXPECT_EQ(by_name["queue-limit"]["env"], "DSV2_QUEUE_LIMIT");
  EXPECT_EQ(by_name["dtype"]["values"], nlohmann::json::array({"bf16", "f32"}));
  EXPECT_EQ(by_name["stop"]["type"], "repeated");
  for (const char* b : {"help", "version", "flags-json"}) {
    EXPECT_EQ(by_name[b]["bool"], true) << b;
    EXPECT_TRUE(by_name[b]["env"].is_null()) << b;
  }
  EXPECT_EQ(all.back()["name"], "flags-json");
  EXPECT_EQ(all.front()["name"], "model");  // definition order
}

TEST(FlagsTest, FlagsJsonEscapesStrings) {
  FlagSet set("p", "v");
  std::string s = "a\"b\\c";
  set.String("x", &s, "line1\nline2\t\x01");
  const nlohmann::json all = nlohmann::json::parse(set.FlagsJson());
  EXPECT_EQ(all[0]["help"], "line1\nline2\t\x01");
  EXPECT_EQ(all[0]["default"], "a\"b\\c");
}

TEST(FlagsTest, EnvironmentVariablesIncludeAliases) {
  Flags f;
  const std::vector<std::string> vars = f.set.EnvironmentVariables();
  for (const char* v : {"DSV2_MODEL", "DSV2_MAX_QUEUE", "DSV2_QUEUE_LIMIT",
                        "DSV2_HEARTBEAT_INTERVAL", "DSV2_HEARTBEAT_INTERVAL_MS"}) {
    EXPECT_NE(std::find(vars.begin(), vars.end(), v), vars.end()) << v;
  }
  EXPECT_EQ(std::find(vars.begin(), vars.end(), "DSV2_HELP"), vars.end());
}

TEST(FlagsTest, EnvName) {
  EXPECT_EQ(EnvName("metrics-port"), "DSV2_METRICS_PORT");
  EXPECT_EQ(EnvName("drain-timeout-s"), "DSV2_DRAIN_TIMEOUT_S");
}

// ParseCommandLine: what a main sees (exit codes, stdout / stderr).
struct CommandLine {
  std::vector<std::string> storage;
  std::vector<char*> argv;
  explicit CommandLine(std::vector<std::string> args) : storage(std::move(args)) {
    for (std::string& s : storage) argv.push_back(s.data());
  }
  int argc() const { return static_cast<int>(argv.size()); }
};

TEST(FlagsTest, ParseCommandLineReturnsTheExitCode) {
  for (const auto& [args, expected] : std::vector<std::pair<std::vector<std::string>, int>>{
           {{"prog", "--help"}, 0},
           {{"prog", "--version"}, 0},
           {{"prog", "--flags-json"}, 0},
           {{"prog", "--bad"}, 2},
           {{"prog", "--threads=0"}, 2},
           {{"prog"}, 2},  // --model missing
       }) {
    Flags f;
    CommandLine cl(args);
    testing::internal::CaptureStdout();
    testing::internal::CaptureStderr();
    const std::optional<int> code = f.set.ParseCommandLine(cl.argc(), cl.argv.data());
    const std::string out = testing::internal::GetCapturedStdout();
    const std::string err = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(code.has_value()) << args.back();
    EXPECT_EQ(*code, expected) << args.back();
    // Requested output goes to stdout; usage errors to stderr.
    EXPECT_EQ(out.empty(), expected == 2) << args.back();
    EXPECT_EQ(err.empty(), expected == 0) << args.back();
  }
}

TEST(FlagsTest, ParseCommandLineSkipsTheSubcommand) {
  Flags f;
  CommandLine cl({"dsv2", "generate", "--model", "/x", "--threads", "5"});
  testing::internal::CaptureStderr();
  const std::optional<int> code = f.set.ParseCommandLine(cl.argc(), cl.argv.data(), 2);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_FALSE(code.has_value()) << err;
  EXPECT_EQ(f.threads, 5);
  EXPECT_EQ(f.model, "/x");
}

TEST(FlagsTest, ParseCommandLineReadsTheProcessEnvironment) {
  ::setenv("DSV2_THREADS", "6", 1);
  ::setenv("DSV2_DRAIN_TIMEOUT_S", "12", 1);
  Flags f;
  CommandLine cl({"prog", "--model=/m"});
  const std::optional<int> code = f.set.ParseCommandLine(cl.argc(), cl.argv.data());
  ::unsetenv("DSV2_THREADS");
  ::unsetenv("DSV2_DRAIN_TIMEOUT_S");
  EXPECT_FALSE(code.has_value());
  EXPECT_EQ(f.threads, 6);
  EXPECT_EQ(f.drain_timeout, absl::Seconds(12));
}

TEST(FlagsTest, UsageErrorReturnsTwo) {
  Flags f;
  testing::internal::CaptureStderr();
  EXPECT_EQ(f.set.UsageError("--a must be larger than --b"), 2);
  EXPECT_THAT(testing::internal::GetCapturedStderr(),
              HasSubstr("dsv2-test: --a must be larger than --b\n"));
}

TEST(FlagsDeathTest, DefinitionBugsAbort) {
  EXPECT_DEATH(
      {
        FlagSet set("p", "v");
        int a = 0;
        int b = 0;
        set.Int("x", &a, "");
        set.Int("x", &b, "");
      },
      "defined twice");
  EXPECT_DEATH(
      {
        FlagSet set("p", "v");
        bool h = false;
        set.Bool("help", &h, "");
      },
      "defined twice");
  EXPECT_DEATH(
      {
        FlagSet set("p", "v");
        int a = 0;
        set.Int("Bad_Name", &a, "");
      },
      "bad flag name");
  EXPECT_DEATH(
      {
        FlagSet set("p", "v");
        absl::Duration d;
        set.Duration("t", &d, "")
            .LegacyAlias("t-ms", absl::Milliseconds(1))
            .LegacyAlias("t-s", absl::Seconds(1));
      },
      "second legacy alias");
}

}  // namespace
}  // namespace dsv2::flags
