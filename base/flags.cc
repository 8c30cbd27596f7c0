// Parsing: argv + environment -> typed destinations, and the definitions
// that say how. --help / --flags-json text is in flags_text.cc.
#include "base/flags.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "base/flags_internal.h"

namespace dsv2::flags {
namespace {

using internal::Bound;
using internal::FlagDef;
using internal::Kind;
using internal::Value;

// A definition error is a bug in the binary, never a user's doing.
[[noreturn]] void DefinitionBug(const std::string& message) {
  std::fprintf(stderr, "dsv2::flags: %s\n", message.c_str());
  std::abort();
}

bool IsBuiltin(absl::string_view name) {
  for (const char* b : internal::kBuiltins) {
    if (name == b) return true;
  }
  return false;
}

std::optional<bool> ParseBool(absl::string_view s) {
  const std::string v = absl::AsciiStrToLower(s);
  if (v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no") return false;
  return std::nullopt;
}

template <typename T>
bool InRange(const T& v, const std::optional<Bound<T>>& lo, const std::optional<Bound<T>>& hi) {
  if (lo && (lo->exclusive ? !(v > lo->value) : !(v >= lo->value))) return false;
  if (hi && (hi->exclusive ? !(v < hi->value) : !(v <= hi->value))) return false;
  return true;
}

// "--a, --b and --c".
std::string ListFlags(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) absl::StrAppend(&out, i + 1 == names.size() ? " and " : ", ");
    absl::StrAppend(&out, "--", names[i]);
  }
  return out;
}

const FlagDef* FindDef(const std::vector<std::unique_ptr<FlagDef>>& defs,
                       absl::string_view any_name) {
  for (const auto& d : defs) {
    if (d->name == any_name || d->legacy_alias == any_name) return d.get();
    for (const std::string& a : d->aliases) {
      if (a == any_name) return d.get();
    }
  }
  return nullptr;
}

// ------------------------------------------------------------ parse steps

// One occurrence of a flag: how it was spelled and its text value.
struct Given {
  std::string spelling;  // "--name=V" or "DSV2_NAME=V", for messages
  std::string name;      // the name used (primary, alias or legacy alias)
  std::string value;
  bool legacy = false;  // the number-times-unit alias of a duration
};

// A flag's occurrences from one source (the command line's all, or the
// environment's one).
struct Chosen {
  std::vector<Given> given;
  Source source = Source::kDefault;
};
using Choice = std::map<const FlagDef*, Chosen>;

struct Builtins {
  bool help = false;
  bool version = false;
  bool flags_json = false;
};

// Step 1: the command line's tokens -> occurrences per flag.
absl::Status ReadArgs(const std::vector<std::unique_ptr<FlagDef>>& defs,
                      absl::Span<const std::string> args, Choice* out, Builtins* builtins) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    if (IsBuiltin(name)) {
      const std::optional<bool> on = value ? ParseBool(*value) : std::optional<bool>(true);
      if (!on) {
        return absl::InvalidArgumentError(absl::StrCat(arg, " is not a boolean (true or false)"));
      }
      bool& b = name == "help"      ? builtins->help
                : name == "version" ? builtins->version
                                    : builtins->flags_json;
      b = b || *on;
      continue;
    }
    const FlagDef* def = FindDef(defs, name);
    if (def == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    if (def->kind == Kind::kBool) {
      if (!value) value = "true";  // a bare bool never takes the next token
    } else if (!value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
      value = args[++i];
    }
    Chosen& c = (*out)[def];
    if (!c.given.empty() && c.given.front().name != name) {
      return absl::InvalidArgumentError(absl::StrCat("--", c.given.front().name, " and --", name,
                                                     " are the same flag; give one"));
    }
    c.source = Source::kCommandLine;
    c.given.push_back(
        Given{absl::StrCat("--", name, "=", *value), name, *value, name == def->legacy_alias});
  }
  return absl::OkStatus();
}

// Step 2: a flag the command line does not give comes from the environment
// (any one of its spellings).
absl::Status ReadEnvironment(const std::vector<std::unique_ptr<FlagDef>>& defs,
                             const EnvLookup& env, Choice* choice) {
  for (const auto& d : defs) {
    Chosen& c = (*choice)[d.get()];
    if (c.source == Source::kCommandLine) continue;
    std::vector<std::pair<std::string, bool>> spellings = {{d->name, false}};
    for (const std::string& a : d->aliases) spellings.push_back({a, false});
    if (!d->legacy_alias.empty()) spellings.push_back({d->legacy_alias, true});
    for (const auto& [name, legacy] : spellings) {
      const std::string var = EnvName(name);
      const std::optional<std::string> v = env(var);
      if (!v) continue;
      if (!c.given.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(EnvName(c.given.front().name), " and ", var,
                                                       " set the same flag; set one"));
      }
      c.given.push_back(Given{absl::StrCat(var, "=", *v), name, *v, legacy});
      c.source = Source::kEnvironment;
    }
  }
  return absl::OkStatus();
}

// Step 3: exclusive groups. The command line overrides the environment.
absl::Status ApplyGroups(const std::vector<std::unique_ptr<FlagDef>>& defs,
                         const std::vector<internal::Group>& groups, Choice* choice) {
  for (const internal::Group& g : groups) {
    bool any_command_line = false;
    for (const std::string& n : g.names) {
      any_command_line |= (*choice)[FindDef(defs, n)].source == Source::kCommandLine;
    }
    std::vector<std::string> given;
    for (const std::string& n : g.names) {
      Chosen& c = (*choice)[FindDef(defs, n)];
      if (any_command_line && c.source == Source::kEnvironment) c = Chosen{};
      if (c.source != Source::kDefault) given.push_back(n);
    }
    if (g.rule == GroupRule::kExactlyOne && given.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("exactly one of ", ListFlags(g.names), " is required"));
    }
    if (given.size() > 1) {
      return absl::InvalidArgumentError(absl::StrCat("at most one of ", ListFlags(g.names),
                                                     " may be given (got ", ListFlags(given), ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status OutOfRange(const Given& g, const FlagDef& d) {
  return absl::InvalidArgumentError(
      absl::StrCat(g.spelling, " must be ", internal::Describe(internal::Bounds(d))));
}

absl::StatusOr<Value> ConvertInt(const FlagDef& d, const Given& g) {
  absl::int128 v;
  if (!absl::SimpleAtoi(g.value, &v)) {
    return absl::InvalidArgumentError(absl::StrCat(g.spelling, " is not an integer"));
  }
  const absl::int128 lo = d.int_min ? d.int_min->value : d.int_type_min;
  const absl::int128 hi = d.int_max ? d.int_max->value : d.int_type_max;
  if (v >= lo && v <= hi) return v;
  // With a bound on one side only, the other side is the destination type's.
  std::string bound;
  if (d.int_min.has_value() == d.int_max.has_value()) {
    bound = absl::StrCat("in [", internal::FormatInt(lo), ", ", internal::FormatInt(hi), "]");
  } else if (v < lo) {
    bound = absl::StrCat(">= ", internal::FormatInt(lo));
  } else {
    bound = absl::StrCat("<= ", internal::FormatInt(hi));
  }
  return absl::InvalidArgumentError(absl::StrCat(g.spelling, " must be ", bound));
}

absl::StatusOr<Value> ConvertDuration(const FlagDef& d, const Given& g) {
  absl::Duration v;
  if (g.legacy) {
    double n;
    if (!absl::SimpleAtod(g.value, &n) || std::isnan(n)) {
      return absl::InvalidArgumentError(absl::StrCat(g.spelling, " is not a number (of ",
                                                     internal::UnitWords(d.legacy_unit), ")"));
    }
    v = d.legacy_unit * n;
  } else if (!absl::ParseDuration(g.value, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat(g.spelling, " is not a duration (e.g. 10s, 250ms, 1m30s)"));
  }
  if (!InRange(v, d.duration_min, d.duration_max)) return OutOfRange(g, d);
  return v;
}

// Step 4: text -> typed value, checked. The last occurrence wins (a
// repeated flag keeps them all).
absl::StatusOr<Value> Convert(const FlagDef& d, const Chosen& c) {
  const Given& g = c.given.back();
  switch (d.kind) {
    case Kind::kString:
      return g.value;
    case Kind::kBool: {
      const std::optional<bool> b = ParseBool(g.value);
      if (!b) {
        return absl::InvalidArgumentError(
            absl::StrCat(g.spelling, " is not a boolean (true or false)"));
      }
      return *b;
    }
    case Kind::kInt:
      return ConvertInt(d, g);
    case Kind::kDouble: {
      double v;
      if (!absl::SimpleAtod(g.value, &v) || std::isnan(v)) {
        return absl::InvalidArgumentError(absl::StrCat(g.spelling, " is not a number"));
      }
      if (!InRange(v, d.double_min, d.double_max)) return OutOfRange(g, d);
      return v;
    }
    case Kind::kDuration:
      return ConvertDuration(d, g);
    case Kind::kEnum:
      if (std::find(d.enum_values.begin(), d.enum_values.end(), g.value) == d.enum_values.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(g.spelling, " must be one of ", absl::StrJoin(d.enum_values, ", ")));
      }
      return g.value;
    case Kind::kRepeated: {
      std::vector<std::string> all;
      for (const Given& each : c.given) all.push_back(each.value);
      return all;
    }
  }
  return absl::InternalError("unknown flag kind");
}

}  // namespace

std::string EnvName(absl::string_view flag) {
  return "DSV2_" + absl::AsciiStrToUpper(absl::StrReplaceAll(flag, {{"-", "_"}}));
}

EnvLookup ProcessEnvironment() {
  return [](const std::string& variable) -> std::optional<std::string> {
    const char* v = std::getenv(variable.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

// ---------------------------------------------------------------- handles

template <typename Self>
Self& FlagHandle<Self>::Required() {
  def_->required = true;
  return self();
}

template <typename Self>
Self& FlagHandle<Self>::Alias(absl::string_view old_name) {
  set_->ClaimName(old_name);
  def_->aliases.emplace_back(old_name);
  return self();
}

template <typename Self>
Self& FlagHandle<Self>::DefaultText(absl::string_view text) {
  def_->default_text = std::string(text);
  return self();
}

template class FlagHandle<StringFlag>;
template class FlagHandle<BoolFlag>;
template class FlagHandle<IntFlag>;
template class FlagHandle<DoubleFlag>;
template class FlagHandle<DurationFlag>;
template class FlagHandle<EnumFlag>;
template class FlagHandle<RepeatedFlag>;

IntFlag& IntFlag::Min(int64_t min) {
  def_->int_min = Bound<absl::int128>{std::max(absl::int128(min), def_->int_type_min)};
  return *this;
}
IntFlag& IntFlag::Max(int64_t max) {
  def_->int_max = Bound<absl::int128>{std::min(absl::int128(max), def_->int_type_max)};
  return *this;
}

DoubleFlag& DoubleFlag::Min(double min) {
  def_->double_min = Bound<double>{min, false};
  return *this;
}
DoubleFlag& DoubleFlag::Max(double max) {
  def_->double_max = Bound<double>{max, false};
  return *this;
}
DoubleFlag& DoubleFlag::Above(double min) {
  def_->double_min = Bound<double>{min, true};
  return *this;
}

DurationFlag& DurationFlag::Min(absl::Duration min) {
  def_->duration_min = Bound<absl::Duration>{min, false};
  return *this;
}
DurationFlag& DurationFlag::Max(absl::Duration max) {
  def_->duration_max = Bound<absl::Duration>{max, false};
  return *this;
}
DurationFlag& DurationFlag::Above(absl::Duration min) {
  def_->duration_min = Bound<absl::Duration>{min, true};
  return *this;
}
DurationFlag& DurationFlag::LegacyAlias(absl::string_view name, absl::Duration unit) {
  if (!def_->legacy_alias.empty()) DefinitionBug("--" + def_->name + ": a second legacy alias");
  if (unit <= absl::ZeroDuration()) DefinitionBug("--" + def_->name + ": legacy unit <= 0");
  set_->ClaimName(name);
  def_->legacy_alias = std::string(name);
  def_->legacy_unit = unit;
  return *this;
}

// ---------------------------------------------------------------- FlagSet

FlagSet::FlagSet(std::string program, std::string version)
    : program_(std::move(program)), version_(std::move(version)) {
  for (const char* b : internal::kBuiltins) names_.push_back(b);
}

FlagSet::~FlagSet() = default;

void FlagSet::ClaimName(absl::string_view name) {
  bool ok = !name.empty() && absl::ascii_islower(static_cast<unsigned char>(name[0]));
  for (const char c : name) {
    ok = ok && (absl::ascii_islower(static_cast<unsigned char>(c)) ||
                absl::ascii_isdigit(static_cast<unsigned char>(c)) || c == '-');
  }
  if (!ok) DefinitionBug(absl::StrCat("bad flag name '", name, "' (want [a-z][a-z0-9-]*)"));
  for (const std::string& n : names_) {
    if (n == name) DefinitionBug(absl::StrCat("flag --", name, " defined twice"));
  }
  names_.emplace_back(name);
}

FlagDef* FlagSet::Define(Kind kind, absl::string_view name, absl::string_view help) {
  ClaimName(name);
  auto def = std::make_unique<FlagDef>();
  def->kind = kind;
  def->name = std::string(name);
  def->help = std::string(help);
  defs_.push_back(std::move(def));
  return defs_.back().get();
}

IntFlag FlagSet::DefineInt(absl::string_view name, absl::string_view help, absl::int128 type_min,
                           absl::int128 type_max, std::optional<absl::int128> default_value,
                           std::function<void(absl::int128)> set) {
  FlagDef* def = Define(Kind::kInt, name, help);
  def->int_type_min = type_min;
  def->int_type_max = type_max;
  if (default_value) def->default_value = internal::FormatInt(*default_value);
  def->set = [set = std::move(set)](const Value& v) { set(std::get<absl::int128>(v)); };
  return IntFlag(def, this);
}

DoubleFlag FlagSet::DefineDouble(absl::string_view name, absl::string_view help,
                                 std::optional<double> default_value,
                                 std::function<void(double)> set) {
  FlagDef* def = Define(Kind::kDouble, name, help);
  if (default_value) def->default_value = internal::FormatDouble(*default_value);
  def->set = [set = std::move(set)](const Value& v) { set(std::get<double>(v)); };
  return DoubleFlag(def, this);
}

const FlagDef* FlagSet::Find(absl::string_view any_name) const { return FindDef(defs_, any_name); }

StringFlag FlagSet::String(absl::string_view name, std::string* out, absl::string_view help) {
  FlagDef* def = Define(Kind::kString, name, help);
  if (!out->empty()) def->default_value = *out;
  def->set = [out](const Value& v) { *out = std::get<std::string>(v); };
  return StringFlag(def, this);
}

StringFlag FlagSet::String(absl::string_view name, std::optional<std::string>* out,
                           absl::string_view help) {
  FlagDef* def = Define(Kind::kString, name, help);
  def->set = [out](const Value& v) { *out = std::get<std::string>(v); };
  return StringFlag(def, this);
}

BoolFlag FlagSet::Bool(absl::string_view name, bool* out, absl::string_view help) {
  FlagDef* def = Define(Kind::kBool, name, help);
  def->default_value = *out ? "true" : "false";
  def->set = [out](const Value& v) { *out = std::get<bool>(v); };
  return BoolFlag(def, this);
}

DurationFlag FlagSet::Duration(absl::string_view name, absl::Duration* out,
                               absl::string_view help) {
  FlagDef* def = Define(Kind::kDuration, name, help);
  def->default_value = internal::DurationText(*out);
  def->set = [out](const Value& v) { *out = std::get<absl::Duration>(v); };
  return DurationFlag(def, this);
}

DurationFlag FlagSet::Duration(absl::string_view name, std::optional<absl::Duration>* out,
                               absl::string_view help) {
  FlagDef* def = Define(Kind::kDuration, name, help);
  def->set = [out](const Value& v) { *out = std::get<absl::Duration>(v); };
  return DurationFlag(def, this);
}

EnumFlag FlagSet::Enum(absl::string_view name, std::string* out, std::vector<std::string> values,
                       absl::string_view help) {
  FlagDef* def = Define(Kind::kEnum, name, help);
  if (values.empty()) DefinitionBug(absl::StrCat("--", name, ": no enum values"));
  if (!out->empty()) {
    bool known = false;
    for (const std::string& v : values) known = known || v == *out;
    if (!known) DefinitionBug(absl::StrCat("--", name, ": default '", *out, "' not a value"));
    def->default_value = *out;
  }
  def->enum_values = std::move(values);
  def->set = [out](const Value& v) { *out = std::get<std::string>(v); };
  return EnumFlag(def, this);
}

RepeatedFlag FlagSet::Repeated(absl::string_view name, std::vector<std::string>* out,
                               absl::string_view help) {
  FlagDef* def = Define(Kind::kRepeated, name, help);
  if (!out->empty()) def->default_value = absl::StrJoin(*out, ",");
  def->set = [out](const Value& v) { *out = std::get<std::vector<std::string>>(v); };
  return RepeatedFlag(def, this);
}

void FlagSet::ExclusiveGroup(std::vector<std::string> names, GroupRule rule) {
  for (const std::string& n : names) {
    const FlagDef* d = Find(n);
    if (d == nullptr || d->name != n) DefinitionBug("exclusive group names no flag --" + n);
  }
  groups_.push_back(internal::Group{std::move(names), rule});
}

Source FlagSet::source(absl::string_view name) const {
  for (const auto& [n, s] : sources_) {
    if (n == name) return s;
  }
  if (Find(name) == nullptr) DefinitionBug(absl::StrCat("source(): no flag --", name));
  return Source::kDefault;
}

std::string FlagSet::UsageErrorText(absl::string_view message) const {
  return absl::StrCat(program_, ": ", message, "\n", HelpText());
}

int FlagSet::UsageError(absl::string_view message) const {
  std::cerr << UsageErrorText(message) << std::flush;
  return kUsageErrorExitCode;
}

std::vector<std::string> FlagSet::EnvironmentVariables() const {
  std::vector<std::string> out;
  for (const auto& d : defs_) {
    out.push_back(EnvName(d->name));
    for (const std::string& a : d->aliases) out.push_back(EnvName(a));
    if (!d->legacy_alias.empty()) out.push_back(EnvName(d->legacy_alias));
  }
  return out;
}

ParseResult FlagSet::Parse(absl::Span<const std::string> args, const EnvLookup& env) {
  ParseResult result;
  auto usage_error = [&](const absl::Status& st) {
    result.outcome = Outcome::kUsageError;
    result.error = std::string(st.message());
    result.output = UsageErrorText(result.error);
    result.exit_code = kUsageErrorExitCode;
    return result;
  };
  Choice choice;
  Builtins builtins;
  if (absl::Status st = ReadArgs(defs_, args, &choice, &builtins); !st.ok()) {
    return usage_error(st);
  }
  // Built-ins print and stop, whatever else is wrong with the values.
  if (builtins.help || builtins.version || builtins.flags_json) {
    result.outcome = builtins.help      ? Outcome::kHelp
                     : builtins.version ? Outcome::kVersion
                                        : Outcome::kFlagsJson;
    result.output =
        builtins.help ? HelpText()
        : builtins.version
            ? absl::StrCat(program_, " ", version_.empty() ? "(unknown version)" : version_, "\n")
            : FlagsJson();
    return result;
  }
  if (absl::Status st = ReadEnvironment(defs_, env, &choice); !st.ok()) return usage_error(st);
  if (absl::Status st = ApplyGroups(defs_, groups_, &choice); !st.ok()) return usage_error(st);
  // Every value is checked before any destination is written.
  std::vector<std::pair<const FlagDef*, Value>> values;
  for (const auto& d : defs_) {
    const Chosen& c = choice[d.get()];
    if (c.source == Source::kDefault) {
      if (d->required) {
        return usage_error(absl::InvalidArgumentError(absl::StrCat("--", d->name, " is required")));
      }
      continue;
    }
    absl::StatusOr<Value> v = Convert(*d, c);
    if (!v.ok()) return usage_error(v.status());
    values.push_back({d.get(), *std::move(v)});
  }
  for (const auto& [def, value] : values) def->set(value);
  sources_.clear();
  for (const auto& d : defs_) sources_.push_back({d->name, choice[d.get()].source});
  return result;
}

std::optional<int> FlagSet::ParseCommandLine(int argc, char** argv, int first) {
  std::vector<std::string> args;
  for (int i = first; i < argc; ++i) args.emplace_back(argv[i]);
  const ParseResult r = Parse(args, ProcessEnvironment());
  if (r.ok()) return std::nullopt;
  (r.outcome == Outcome::kUsageError ? std::cerr : std::cout) << r.output << std::flush;
  return r.exit_code;
}

}  // namespace dsv2::flags
