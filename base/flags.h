// Typed command-line flags for every dsv2 binary and subcommand.
//
// Why the project's own parser and not Abseil flags: Abseil flags are
// process-global registrations (ABSL_FLAG at namespace scope) whose names are
// C++ identifiers, and absl::ParseCommandLine exits with status 1 on a usage
// error. Keeping what scripts and manifests rely on -- hyphenated names
// (--metrics-port), the DSV2_<FLAG> environment fallback with the command
// line winning, and exit code 2 for usage errors -- would need a pre-pass that
// rewrites argv and the environment around it anyway. A FlagSet instead is a
// plain object per binary or subcommand (no globals, so tests and the `dsv2`
// subcommands each get their own), typed, and small.
//
// Spelling (unchanged from the parser it replaces):
//   --name value | --name=value | --name (bool; also --name=true/false)
//   DSV2_<NAME> in the environment (upper case, '-' -> '_'): used when the
//   command line does not give the flag (any of its spellings).
//   Repeated flags: every occurrence is kept, in order.
//   Built in: --help, --version, --flags-json (command line only).
//
// Defaults are written once: a flag's default is the value its destination
// holds when the flag is defined (e.g. an options struct's field
// initializer); --help and --flags-json print it. A destination of type
// std::optional<T> has no default (it stays nullopt when the flag is unset).
//
// Durations are absl::Duration, parsed by absl::ParseDuration ("10s",
// "250ms", "1m30s"). A duration flag that replaced an integer flag keeps the
// old spelling as a legacy alias with a unit: Duration("dispatch-timeout",
// ...).LegacyAlias("dispatch-timeout-ms", absl::Milliseconds(1)) also takes
// --dispatch-timeout-ms=10000 and DSV2_DISPATCH_TIMEOUT_MS=10000.
//
// Errors a user can cause (unknown flag, missing value, bad type, out of
// range, positional argument, two spellings of one flag, a missing required
// flag) are usage errors: message + help on stderr, exit code 2. Mistakes in
// the definitions (a name defined twice, a bad name) are bugs: abort.
//
// Usage in a main (coordinator/main.cc):
//   coordinator::CoordinatorOptions options;   // its initializers are the defaults
//   flags::FlagSet flags("dsv2-coordinator", kVersion);
//   flags.String("model", &model_dir, "checkpoint directory").Required();
//   flags.Int("max-queue", &options.admission.max_queued, "...").Min(0);
//   flags.Duration("heartbeat-interval", &options.heartbeat_interval, "...")
//       .Min(absl::Milliseconds(10))
//       .LegacyAlias("heartbeat-interval-ms", absl::Milliseconds(1));
//   if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;
//   if (cross-flag check fails) return flags.UsageError("--a must be larger than --b");
//
// Thread-safety: one thread only. A FlagSet must outlive the handles its
// definitions return; destinations must outlive Parse / ParseCommandLine.
#ifndef DSV2_BASE_FLAGS_H_
#define DSV2_BASE_FLAGS_H_

#include <concepts>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/numeric/int128.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace dsv2::flags {

// The exit code of a usage error (bad flag, missing value, out of range).
inline constexpr int kUsageErrorExitCode = 2;

// The environment variable a flag also comes from: DSV2_<NAME>, upper case,
// '-' -> '_' (e.g. "metrics-port" -> "DSV2_METRICS_PORT").
std::string EnvName(absl::string_view flag);

// Where a flag's value came from.
enum class Source { kDefault, kEnvironment, kCommandLine };

enum class Outcome {
  kOk,          // destinations hold the parsed values: run the program
  kHelp,        // --help: `output` is the help text for stdout; exit 0
  kVersion,     // --version: `output` is "<program> <version>\n"; exit 0
  kFlagsJson,   // --flags-json: `output` is one line of JSON; exit 0
  kUsageError,  // `output` is "<program>: <error>\n" + help for stderr; exit 2
};

struct ParseResult {
  Outcome outcome = Outcome::kOk;
  std::string output;
  std::string error;  // kUsageError: the message alone
  int exit_code = 0;  // 0, or kUsageErrorExitCode for kUsageError
  bool ok() const { return outcome == Outcome::kOk; }
};

// Looks up an environment variable; nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string& variable)>;
// The process environment (getenv).
EnvLookup ProcessEnvironment();

// For ExclusiveGroup.
enum class GroupRule { kAtMostOne, kExactlyOne };

namespace internal {  // flags_internal.h
enum class Kind;
struct FlagDef;
struct Group;
}  // namespace internal

// Integer destinations: any integral type but bool.
template <typename T>
concept FlagInteger = std::integral<T> && !std::same_as<T, bool>;

class FlagSet;

// Options common to every flag, returned by each definition for chaining:
//   flags.Int("threads", &threads, "compute threads").Range(1, 1024);
template <typename Self>
class FlagHandle {
 public:
  // Missing (neither command line nor environment) is a usage error
  // "--name is required"; the help line says "(required)".
  Self& Required();
  // Another accepted name (a renamed flag): --old-name and DSV2_OLD_NAME.
  Self& Alias(absl::string_view old_name);
  // Replaces the generated "(default X)" text, e.g. "the server's".
  Self& DefaultText(absl::string_view text);

 protected:
  explicit FlagHandle(internal::FlagDef* def, FlagSet* set) : def_(def), set_(set) {}
  Self& self() { return static_cast<Self&>(*this); }
  internal::FlagDef* def_;
  FlagSet* set_;
};

class StringFlag : public FlagHandle<StringFlag> {
  using FlagHandle::FlagHandle;
  friend class FlagSet;
};

// Values: true/false, 1/0, yes/no; a bare --name is true.
class BoolFlag : public FlagHandle<BoolFlag> {
  using FlagHandle::FlagHandle;
  friend class FlagSet;
};

// A decimal integer. The range starts as the destination type's and may be
// narrowed: out of it, "--name=V must be in [min, max]" / "must be >= min" /
// "must be <= max".
class IntFlag : public FlagHandle<IntFlag> {
 public:
  IntFlag& Min(int64_t min);
  IntFlag& Max(int64_t max);
  IntFlag& Range(int64_t min, int64_t max) { return Min(min).Max(max); }

 private:
  using FlagHandle::FlagHandle;
  friend class FlagSet;
};

// A decimal number (absl::SimpleAtod: "0.5", "1e-3"; not nan). Range
// messages as IntFlag; Above(x) is an exclusive bound ("must be > x").
class DoubleFlag : public FlagHandle<DoubleFlag> {
 public:
  DoubleFlag& Min(double min);
  DoubleFlag& Max(double max);
  DoubleFlag& Above(double min);
  DoubleFlag& Range(double min, double max) { return Min(min).Max(max); }

 private:
  using FlagHandle::FlagHandle;
  friend class FlagSet;
};

// An absl::Duration in absl::ParseDuration syntax ("10s", "250ms", "1m30s",
// "0", "inf"); a bare number other than 0 is an error (which unit?).
class DurationFlag : public FlagHandle<DurationFlag> {
 public:
  DurationFlag& Min(absl::Duration min);
  DurationFlag& Max(absl::Duration max);
  DurationFlag& Above(absl::Duration min);
  DurationFlag& Range(absl::Duration min, absl::Duration max) { return Min(min).Max(max); }
  // The integer flag this one replaced: --`name`=N and DSV2_<NAME>=N mean N
  // times `unit` (a decimal number is accepted too: --ready-timeout-s=0.5).
  // Giving both spellings on the command line is a usage error.
  // REQUIRES: unit > 0; at most one legacy alias per flag.
  DurationFlag& LegacyAlias(absl::string_view name, absl::Duration unit);

 private:
  using FlagHandle::FlagHandle;
  friend class FlagSet;
};

// One of a fixed list of strings: "--name=V must be one of a, b, c".
class EnumFlag : public FlagHandle<EnumFlag> {
  using FlagHandle::FlagHandle;
  friend class FlagSet;
};

// May be given several times; the destination gets every value in
// command-line order, replacing its default. From the environment: one
// value (used only when the command line has none).
class RepeatedFlag : public FlagHandle<RepeatedFlag> {
  using FlagHandle::FlagHandle;
  friend class FlagSet;
};

// The flags of one binary or subcommand.
class FlagSet {
 public:
  // `program` names the binary or subcommand in messages ("dsv2-coordinator",
  // "dsv2 generate"); `version` is what --version prints after it.
  FlagSet(std::string program, std::string version);
  ~FlagSet();
  FlagSet(const FlagSet&) = delete;
  FlagSet& operator=(const FlagSet&) = delete;

  // A line or paragraph printed before the flag list in --help.
  void SetUsage(std::string usage) { usage_ = std::move(usage); }

  // Definitions. REQUIRES: `name` is new to this set (aliases included), of
  // [a-z0-9-], not help/version/flags-json; `out` outlives the parse. The
  // destination's value now is the default (std::optional: none).
  StringFlag String(absl::string_view name, std::string* out, absl::string_view help);
  StringFlag String(absl::string_view name, std::optional<std::string>* out,
                    absl::string_view help);
  BoolFlag Bool(absl::string_view name, bool* out, absl::string_view help);
  template <FlagInteger T>
  IntFlag Int(absl::string_view name, T* out, absl::string_view help);
  template <FlagInteger T>
  IntFlag Int(absl::string_view name, std::optional<T>* out, absl::string_view help);
  template <std::floating_point T>
  DoubleFlag Double(absl::string_view name, T* out, absl::string_view help);
  template <std::floating_point T>
  DoubleFlag Double(absl::string_view name, std::optional<T>* out, absl::string_view help);
  DurationFlag Duration(absl::string_view name, absl::Duration* out, absl::string_view help);
  DurationFlag Duration(absl::string_view name, std::optional<absl::Duration>* out,
                        absl::string_view help);
  // REQUIRES: *out is empty or one of `values`.
  EnumFlag Enum(absl::string_view name, std::string* out, std::vector<std::string> values,
                absl::string_view help);
  RepeatedFlag Repeated(absl::string_view name, std::vector<std::string>* out,
                        absl::string_view help);

  // Mutually exclusive flags (e.g. --prompt / --prompt-ids / --chat). When
  // any of them is on the command line, the others' environment values are
  // ignored (a DSV2_PROMPT left in the environment does not clash with
  // --prompt-ids). Then more than one given is a usage error, and so is none
  // for kExactlyOne: "exactly one of --a, --b and --c is required" /
  // "at most one of --a and --b may be given". REQUIRES: names are defined.
  void ExclusiveGroup(std::vector<std::string> names, GroupRule rule);

  // Parses `args` (the arguments after the program / subcommand name) and
  // the environment. Writes the destinations only when the outcome is kOk.
  // Prints nothing.
  ParseResult Parse(absl::Span<const std::string> args, const EnvLookup& env);

  // For mains: parses argv[first..argc) and the process environment; prints
  // help / version / JSON to stdout and usage errors to stderr. Returns the
  // exit code when the program should stop now (0 or 2), nullopt to run on.
  std::optional<int> ParseCommandLine(int argc, char** argv, int first = 1);

  // After a successful parse: where a flag's value came from (any spelling).
  // REQUIRES: `name` is a defined flag's primary name.
  Source source(absl::string_view name) const;
  bool was_set(absl::string_view name) const { return source(name) != Source::kDefault; }

  // For checks across flags after parsing: prints "<program>: <message>"
  // and the help on stderr; returns kUsageErrorExitCode.
  int UsageError(absl::string_view message) const;
  std::string UsageErrorText(absl::string_view message) const;

  // Generated from the definitions.
  std::string HelpText() const;
  // One JSON array, one object per accepted name, in definition order, built-ins last:
  //   {"name", "bool", "help", "env" (null for built-ins), "type" (string |
  //    bool | int | double | duration | enum | repeated | builtin),
  //    "required", "default" (string, absent when none), "min"/"max"
  //    (strings, when bounded), "values" (enum), "alias_of" (aliases),
  //    "unit" (legacy duration aliases: "ms", "s", ...)}
  std::string FlagsJson() const;
  // Every DSV2_* variable this set reads (aliases included), e.g. for a
  // launcher that must not pass its own flags on to children.
  std::vector<std::string> EnvironmentVariables() const;

  const std::string& program() const { return program_; }

 private:
  template <typename T>
  friend class FlagHandle;
  friend class DurationFlag;

  internal::FlagDef* Define(internal::Kind kind, absl::string_view name, absl::string_view help);
  // The typed templates' common part; `set` writes the destination.
  IntFlag DefineInt(absl::string_view name, absl::string_view help, absl::int128 type_min,
                    absl::int128 type_max, std::optional<absl::int128> default_value,
                    std::function<void(absl::int128)> set);
  DoubleFlag DefineDouble(absl::string_view name, absl::string_view help,
                          std::optional<double> default_value, std::function<void(double)> set);
  void ClaimName(absl::string_view name);
  const internal::FlagDef* Find(absl::string_view any_name) const;

  std::string program_;
  std::string version_;
  std::string usage_;
  std::vector<std::unique_ptr<internal::FlagDef>> defs_;
  std::vector<internal::Group> groups_;
  std::vector<std::string> names_;                       // every claimed name
  std::vector<std::pair<std::string, Source>> sources_;  // after Parse
};

// ---------------------------------------------------------------- templates

template <FlagInteger T>
IntFlag FlagSet::Int(absl::string_view name, T* out, absl::string_view help) {
  return DefineInt(name, help, std::numeric_limits<T>::min(), std::numeric_limits<T>::max(),
                   absl::int128(*out), [out](absl::int128 v) { *out = static_cast<T>(v); });
}

template <FlagInteger T>
IntFlag FlagSet::Int(absl::string_view name, std::optional<T>* out, absl::string_view help) {
  return DefineInt(name, help, std::numeric_limits<T>::min(), std::numeric_limits<T>::max(),
                   std::nullopt, [out](absl::int128 v) { *out = static_cast<T>(v); });
}

template <std::floating_point T>
DoubleFlag FlagSet::Double(absl::string_view name, T* out, absl::string_view help) {
  return DefineDouble(name, help, static_cast<double>(*out),
                      [out](double v) { *out = static_cast<T>(v); });
}

template <std::floating_point T>
DoubleFlag FlagSet::Double(absl::string_view name, std::optional<T>* out, absl::string_view help) {
  return DefineDouble(name, help, std::nullopt, [out](double v) { *out = static_cast<T>(v); });
}

}  // namespace dsv2::flags

#endif  // DSV2_BASE_FLAGS_H_
