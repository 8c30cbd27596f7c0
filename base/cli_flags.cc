#include "base/cli_flags.h"

#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace dsv2::cli {

std::string EnvName(const std::string& flag) {
  return "DSV2_" + absl::AsciiStrToUpper(absl::StrReplaceAll(flag, {{"-", "_"}}));
}

std::optional<std::string> ParsedFlags::Get(const std::string& name) const {
  auto it = values.find(name);
  if (it == values.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> ParsedFlags::GetAll(const std::string& name) const {
  auto it = repeated_values.find(name);
  if (it != repeated_values.end()) return it->second;
  if (auto v = Get(name)) return {*v};
  return {};
}

bool ParsedFlags::GetBool(const std::string& name) const {
  auto v = Get(name);
  return v && (*v == "true" || *v == "1" || *v == "yes");
}

absl::StatusOr<int64_t> ParsedFlags::GetInt(const std::string& name, int64_t dflt) const {
  auto v = Get(name);
  if (!v) return dflt;
  int64_t x;
  if (!absl::SimpleAtoi(*v, &x)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, "=", *v, " is not an integer"));
  }
  return x;
}

absl::StatusOr<double> ParsedFlags::GetDouble(const std::string& name, double dflt) const {
  auto v = Get(name);
  if (!v) return dflt;
  double x;
  if (!absl::SimpleAtod(*v, &x)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, "=", *v, " is not a number"));
  }
  return x;
}

absl::StatusOr<ParsedFlags> ParseFlags(int argc, char** argv, int first,
                                       const std::vector<FlagSpec>& specs) {
  ParsedFlags out;
  auto find = [&](const std::string& name) -> const FlagSpec* {
    for (const FlagSpec& s : specs) {
      if (s.name == name) return &s;
    }
    return nullptr;
  };
  // Environment first; the command line overwrites.
  for (const FlagSpec& s : specs) {
    const std::string env =
        EnvName(s.name);
    if (const char* v = std::getenv(env.c_str())) out.values[s.name] = v;
  }
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    arg = arg.substr(2);
    std::optional<std::string> value;
    if (auto eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    const FlagSpec* spec = find(arg);
    if (spec == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", arg));
    const bool first_on_command_line = !out.from_command_line.contains(arg);
    out.from_command_line.insert(arg);
    if (spec->is_bool) {
      out.values[arg] = value.value_or("true");
      continue;
    }
    if (!value) {
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", arg, " needs a value"));
      }
      value = argv[++i];
    }
    if (spec->repeated) {
      if (first_on_command_line) out.repeated_values.erase(arg);
      out.repeated_values[arg].push_back(*value);
    }
    out.values[arg] = *value;
  }
  return out;
}

void ParsedFlags::PreferCommandLine(const std::vector<std::string>& names) {
  bool any = false;
  for (const std::string& n : names) any = any || from_command_line.contains(n);
  if (!any) return;
  for (const std::string& n : names) {
    if (!from_command_line.contains(n)) values.erase(n);
  }
}

std::string FlagsHelp(const std::vector<FlagSpec>& specs) {
  std::string out;
  for (const FlagSpec& s : specs) {
    absl::StrAppend(&out, "  --", s.name, s.is_bool ? "" : " VALUE", "\n      ", s.help, "\n");
  }
  return out;
}

}  // namespace dsv2::cli
