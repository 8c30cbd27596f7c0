// A small command-line parser for the `dsv2` subcommands: `--name value`,
// `--name=value` and boolean `--name`; every flag can also come from the
// environment as DSV2_<NAME> (upper case, '-' -> '_'); the command line
// wins. Unknown flags and missing values are usage errors (exit code 2).
#ifndef DSV2_BASE_CLI_FLAGS_H_
#define DSV2_BASE_CLI_FLAGS_H_

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv2::cli {

struct FlagSpec {
  std::string name;   // without dashes
  bool is_bool = false;
  std::string help;
  // May be given more than once; every value is kept (GetAll). Get returns
  // the last one.
  bool repeated = false;
};

class ParsedFlags {
 public:
  std::optional<std::string> Get(const std::string& name) const;
  bool GetBool(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t dflt) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double dflt) const;
  // Every value of a repeated flag, in command-line order (or the single
  // DSV2_<NAME> value when the command line has none); empty when unset.
  std::vector<std::string> GetAll(const std::string& name) const;
  std::map<std::string, std::string> values;
  std::map<std::string, std::vector<std::string>> repeated_values;
  // Names given on the command line (the rest came from DSV2_* variables).
  std::set<std::string> from_command_line;

  // For mutually exclusive flags: when any of `names` is on the command
  // line, drops the others that came only from the environment.
  void PreferCommandLine(const std::vector<std::string>& names);
};

// Parses argv[first..argc). InvalidArgument (a usage error) for an unknown
// flag, a missing value, or a positional argument.
absl::StatusOr<ParsedFlags> ParseFlags(int argc, char** argv, int first,
                                       const std::vector<FlagSpec>& specs);

// The environment variable a flag also comes from: DSV2_<NAME>, upper case,
// '-' -> '_' (e.g. "metrics-port" -> "DSV2_METRICS_PORT").
std::string EnvName(const std::string& flag);

std::string FlagsHelp(const std::vector<FlagSpec>& specs);

}  // namespace dsv2::cli

#endif  // DSV2_BASE_CLI_FLAGS_H_
