#include "base/flags.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace dsv2::flags {
namespace {

using internal::Bound;
using internal::FlagDef;
using internal::Kind;
using internal::Value;

constexpr const char* kBuiltins[] = {"help", "version", "flags-json"};

// A definition error is a bug in the binary, never a user's doing.
[[noreturn]] void DefinitionBug(const std::string& message) {
  std::fprintf(stderr, "dsv2::flags: %s\n", message.c_str());
  std::abort();
}

bool IsBuiltin(absl::string_view name) {
  for (const char* b : kBuiltins) {
    if (name == b) return true;
  }
  return false;
}

std::string DurationText(absl::Duration d) { return absl::FormatDuration(d); }

// "ms" for absl::Milliseconds(1), ...; else the duration ("10ms").
std::string UnitName(absl::Duration unit) {
  const std::pair<absl::Duration, const char*> kUnits[] = {
      {absl::Nanoseconds(1), "ns"}, {absl::Microseconds(1), "us"}, {absl::Milliseconds(1), "ms"},
      {absl::Seconds(1), "s"},      {absl::Minutes(1), "min"},     {absl::Hours(1), "h"}};
  for (const auto& [d, name] : kUnits) {
    if (unit == d) return name;
  }
  return DurationText(unit);
}

std::string UnitWords(absl::Duration unit) {
  const std::pair<absl::Duration, const char*> kUnits[] = {
      {absl::Nanoseconds(1), "nanoseconds"},   {absl::Microseconds(1), "microseconds"},
      {absl::Milliseconds(1), "milliseconds"}, {absl::Seconds(1), "seconds"},
      {absl::Minutes(1), "minutes"},           {absl::Hours(1), "hours"}};
  for (const auto& [d, name] : kUnits) {
    if (unit == d) return name;
  }
  return absl::StrCat("times ", DurationText(unit));
}

template <typename T, typename Format>
std::string DescribeRange(const std::optional<Bound<T>>& lo, const std::optional<Bound<T>>& hi,
                          Format format) {
  if (lo && hi) {
    return absl::StrCat("in ", lo->exclusive ? "(" : "[", format(lo->value), ", ",
                        format(hi->value), hi->exclusive ? ")" : "]");
  }
  if (lo) return absl::StrCat(lo->exclusive ? "> " : ">= ", format(lo->value));
  if (hi) return absl::StrCat(hi->exclusive ? "< " : "<= ", format(hi->value));
  return "";
}

template <typename T>
bool InRange(const T& v, const std::optional<Bound<T>>& lo, const std::optional<Bound<T>>& hi) {
  if (lo && (lo->exclusive ? !(v > lo->value) : !(v >= lo->value))) return false;
  if (hi && (hi->exclusive ? !(v < hi->value) : !(v <= hi->value))) return false;
  return true;
}

// The bounds a user sees for an integer flag: what Min/Max set, else the
// destination type's.
std::string IntRangeText(const FlagDef& d) {
  return DescribeRange<absl::int128>(d.int_min, d.int_max, internal::FormatInt);
}

std::optional<bool> ParseBool(absl::string_view s) {
  const std::string v = absl::AsciiStrToLower(s);
  if (v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no") return false;
  return std::nullopt;
}

const char* TypeName(Kind k) {
  switch (k) {
    case Kind::kString:
      return "string";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kDouble:
      return "double";
    case Kind::kDuration:
      return "duration";
    case Kind::kEnum:
      return "enum";
    case Kind::kRepeated:
      return "repeated";
  }
  return "string";
}

std::string ValuePlaceholder(const FlagDef& d) {
  switch (d.kind) {
    case Kind::kBool:
      return "";
    case Kind::kInt:
      return " INT";
    case Kind::kDouble:
      return " NUMBER";
    case Kind::kDuration:
      return " DURATION";
    case Kind::kEnum:
      return absl::StrCat(" ", absl::StrJoin(d.enum_values, "|"));
    case Kind::kString:
    case Kind::kRepeated:
      return " STRING";
  }
  return " VALUE";
}

// JSON string literal (RFC 8259 escapes).
std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

// One occurrence of a flag: how it was spelled and its text value.
struct Given {
  std::string spelling;  // "--name=V" or "DSV2_NAME=V", for messages
  std::string name;      // the name used (primary, alias or legacy alias)
  std::string value;
  bool legacy = false;  // the legacy (number x unit) alias of a duration
};

// Phrase "--a, --b and --c".
std::string ListFlags(const std::vector<std::string>& names, absl::string_view conjunction) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) absl::StrAppend(&out, i + 1 == names.size() ? conjunction : ", ");
    absl::StrAppend(&out, "--", names[i]);
  }
  return out;
}

}  // namespace

namespace internal {

std::string FormatInt(absl::int128 v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

std::string FormatDouble(double v) { return absl::StrCat(v); }

}  // namespace internal

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
  for (const char* b : kBuiltins) names_.push_back(b);
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

FlagDef* FlagSet::DefineInt(absl::string_view name, absl::string_view help, absl::int128 type_min,
                            absl::int128 type_max) {
  FlagDef* def = Define(Kind::kInt, name, help);
  def->int_type_min = type_min;
  def->int_type_max = type_max;
  return def;
}

const FlagDef* FlagSet::Find(absl::string_view any_name) const {
  for (const auto& d : defs_) {
    if (d->name == any_name || d->legacy_alias == any_name) return d.get();
    for (const std::string& a : d->aliases) {
      if (a == any_name) return d.get();
    }
  }
  return nullptr;
}

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
  def->default_value = DurationText(*out);
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
  groups_.push_back(Group{std::move(names), rule});
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

std::string FlagSet::HelpText() const {
  std::string out =
      usage_.empty() ? absl::StrCat("usage: ", program_, " [flags]\n") : absl::StrCat(usage_, "\n");
  absl::StrAppend(&out,
                  "flags (each also from the environment as DSV2_<FLAG>, upper case, "
                  "'-' -> '_'; the command line wins):\n");
  for (const auto& d : defs_) {
    absl::StrAppend(&out, "  --", d->name, ValuePlaceholder(*d), "\n      ", d->help);
    std::vector<std::string> notes;
    if (d->required) {
      notes.push_back("required");
    } else if (d->default_text) {
      notes.push_back(absl::StrCat("default: ", *d->default_text));
    } else if (d->default_value && !(d->kind == Kind::kBool && *d->default_value == "false")) {
      notes.push_back(absl::StrCat("default ", *d->default_value));
    }
    std::string range;
    switch (d->kind) {
      case Kind::kInt:
        range = IntRangeText(*d);
        break;
      case Kind::kDouble:
        range = DescribeRange<double>(d->double_min, d->double_max, internal::FormatDouble);
        break;
      case Kind::kDuration:
        range = DescribeRange<absl::Duration>(d->duration_min, d->duration_max, DurationText);
        break;
      default:
        break;
    }
    if (!range.empty()) notes.push_back(range);
    if (d->kind == Kind::kRepeated) notes.push_back("repeatable");
    if (!notes.empty()) absl::StrAppend(&out, " (", absl::StrJoin(notes, "; "), ")");
    absl::StrAppend(&out, "\n");
    for (const std::string& a : d->aliases) {
      absl::StrAppend(&out, "      also --", a, " / ", EnvName(a), "\n");
    }
    if (!d->legacy_alias.empty()) {
      absl::StrAppend(&out, "      also --", d->legacy_alias, " N / ", EnvName(d->legacy_alias),
                      "=N: N ", UnitWords(d->legacy_unit), " (the older spelling)\n");
    }
  }
  absl::StrAppend(&out,
                  "  --help\n      show this help and exit\n"
                  "  --version\n      print the version and exit\n"
                  "  --flags-json\n      print every flag as one line of JSON and exit (for tools "
                  "that check manifests against the real flags)\n");
  return out;
}

std::string FlagSet::FlagsJson() const {
  std::vector<std::string> entries;
  auto entry = [&](const std::vector<std::pair<std::string, std::string>>& fields) {
    std::vector<std::string> parts;
    for (const auto& [k, v] : fields) parts.push_back(absl::StrCat(JsonString(k), ":", v));
    entries.push_back(absl::StrCat("{", absl::StrJoin(parts, ","), "}"));
  };
  for (const auto& d : defs_) {
    std::vector<std::pair<std::string, std::string>> f = {
        {"name", JsonString(d->name)},
        {"bool", d->kind == Kind::kBool ? "true" : "false"},
        {"help", JsonString(d->help)},
        {"env", JsonString(EnvName(d->name))},
        {"type", JsonString(TypeName(d->kind))},
        {"required", d->required ? "true" : "false"},
    };
    if (d->default_value) f.push_back({"default", JsonString(*d->default_value)});
    auto bounds = [&](const std::string& lo, bool lo_ex, const std::string& hi, bool hi_ex,
                      bool has_lo, bool has_hi) {
      if (has_lo) f.push_back({"min", JsonString(lo)});
      if (has_lo && lo_ex) f.push_back({"min_exclusive", "true"});
      if (has_hi) f.push_back({"max", JsonString(hi)});
      if (has_hi && hi_ex) f.push_back({"max_exclusive", "true"});
    };
    if (d->kind == Kind::kInt) {
      bounds(d->int_min ? internal::FormatInt(d->int_min->value) : "", false,
             d->int_max ? internal::FormatInt(d->int_max->value) : "", false,
             d->int_min.has_value(), d->int_max.has_value());
    } else if (d->kind == Kind::kDouble) {
      bounds(d->double_min ? internal::FormatDouble(d->double_min->value) : "",
             d->double_min && d->double_min->exclusive,
             d->double_max ? internal::FormatDouble(d->double_max->value) : "",
             d->double_max && d->double_max->exclusive, d->double_min.has_value(),
             d->double_max.has_value());
    } else if (d->kind == Kind::kDuration) {
      bounds(d->duration_min ? DurationText(d->duration_min->value) : "",
             d->duration_min && d->duration_min->exclusive,
             d->duration_max ? DurationText(d->duration_max->value) : "",
             d->duration_max && d->duration_max->exclusive, d->duration_min.has_value(),
             d->duration_max.has_value());
    } else if (d->kind == Kind::kEnum) {
      std::vector<std::string> values;
      for (const std::string& v : d->enum_values) values.push_back(JsonString(v));
      f.push_back({"values", absl::StrCat("[", absl::StrJoin(values, ","), "]")});
    }
    entry(f);
    for (const std::string& a : d->aliases) {
      entry({{"name", JsonString(a)},
             {"bool", d->kind == Kind::kBool ? "true" : "false"},
             {"help", JsonString(absl::StrCat("alias of --", d->name))},
             {"env", JsonString(EnvName(a))},
             {"type", JsonString(TypeName(d->kind))},
             {"required", "false"},
             {"alias_of", JsonString(d->name)}});
    }
    if (!d->legacy_alias.empty()) {
      entry({{"name", JsonString(d->legacy_alias)},
             {"bool", "false"},
             {"help", JsonString(absl::StrCat("--", d->name, " as a number of ",
                                              UnitWords(d->legacy_unit)))},
             {"env", JsonString(EnvName(d->legacy_alias))},
             {"type", JsonString("double")},
             {"required", "false"},
             {"alias_of", JsonString(d->name)},
             {"unit", JsonString(UnitName(d->legacy_unit))}});
    }
  }
  const std::pair<const char*, const char*> kBuiltinHelp[] = {
      {"help", "show this help and exit"},
      {"version", "print the version and exit"},
      {"flags-json", "print every flag as one line of JSON and exit"}};
  for (const auto& [name, help] : kBuiltinHelp) {
    entry({{"name", JsonString(name)},
           {"bool", "true"},
           {"help", JsonString(help)},
           {"env", "null"},
           {"type", JsonString("builtin")},
           {"required", "false"}});
  }
  return absl::StrCat("[", absl::StrJoin(entries, ","), "]\n");
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
  auto usage_error = [&](std::string message) {
    result.outcome = Outcome::kUsageError;
    result.output = UsageErrorText(message);
    result.error = std::move(message);
    result.exit_code = kUsageErrorExitCode;
    return result;
  };

  // 1. Tokens -> occurrences per flag (command line).
  std::map<const FlagDef*, std::vector<Given>> command_line;
  bool help = false, version = false, flags_json = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0)
      return usage_error(absl::StrCat("unexpected argument '", arg, "'"));
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    if (IsBuiltin(name)) {
      const std::optional<bool> on = value ? ParseBool(*value) : std::optional<bool>(true);
      if (!on) return usage_error(absl::StrCat(arg, " is not a boolean (true or false)"));
      if (name == "help") help = help || *on;
      if (name == "version") version = version || *on;
      if (name == "flags-json") flags_json = flags_json || *on;
      continue;
    }
    const FlagDef* def = Find(name);
    if (def == nullptr) return usage_error(absl::StrCat("unknown flag --", name));
    if (def->kind == Kind::kBool) {
      if (!value) value = "true";
    } else if (!value) {
      if (i + 1 >= args.size()) return usage_error(absl::StrCat("flag --", name, " needs a value"));
      value = args[++i];
    }
    command_line[def].push_back(
        Given{absl::StrCat("--", name, "=", *value), name, *value, name == def->legacy_alias});
  }

  // 2. Built-ins print and stop, whatever else is wrong with the values.
  if (help) {
    result.outcome = Outcome::kHelp;
    result.output = HelpText();
    return result;
  }
  if (version) {
    result.outcome = Outcome::kVersion;
    result.output =
        absl::StrCat(program_, " ", version_.empty() ? "(unknown version)" : version_, "\n");
    return result;
  }
  if (flags_json) {
    result.outcome = Outcome::kFlagsJson;
    result.output = FlagsJson();
    return result;
  }

  // 3. Each flag's occurrences: the command line's, else one from the
  // environment.
  struct Chosen {
    std::vector<Given> given;
    Source source = Source::kDefault;
  };
  std::map<const FlagDef*, Chosen> chosen;
  for (const auto& d : defs_) {
    Chosen& c = chosen[d.get()];
    if (auto it = command_line.find(d.get()); it != command_line.end()) {
      for (const Given& g : it->second) {
        if (g.name != it->second.front().name) {
          return usage_error(absl::StrCat("--", it->second.front().name, " and --", g.name,
                                          " are the same flag; give one"));
        }
      }
      c.given = it->second;
      c.source = Source::kCommandLine;
      continue;
    }
    std::vector<std::pair<std::string, bool>> spellings = {{d->name, false}};
    for (const std::string& a : d->aliases) spellings.push_back({a, false});
    if (!d->legacy_alias.empty()) spellings.push_back({d->legacy_alias, true});
    for (const auto& [name, legacy] : spellings) {
      const std::string var = EnvName(name);
      std::optional<std::string> v = env(var);
      if (!v) continue;
      if (!c.given.empty()) {
        return usage_error(absl::StrCat(EnvName(c.given.front().name), " and ", var,
                                        " set the same flag; set one"));
      }
      c.given.push_back(Given{absl::StrCat(var, "=", *v), name, *v, legacy});
      c.source = Source::kEnvironment;
    }
  }

  // 4. Exclusive groups: the command line overrides the environment.
  for (const Group& g : groups_) {
    bool any_command_line = false;
    for (const std::string& n : g.names) {
      any_command_line = any_command_line || chosen[Find(n)].source == Source::kCommandLine;
    }
    std::vector<std::string> set;
    for (const std::string& n : g.names) {
      Chosen& c = chosen[Find(n)];
      if (any_command_line && c.source == Source::kEnvironment) c = Chosen{};
      if (c.source != Source::kDefault) set.push_back(n);
    }
    if (g.rule == GroupRule::kExactlyOne && set.size() != 1) {
      return usage_error(
          absl::StrCat("exactly one of ", ListFlags(g.names, " and "), " is required"));
    }
    if (set.size() > 1) {
      return usage_error(absl::StrCat("at most one of ", ListFlags(g.names, " and "),
                                      " may be given (got ", ListFlags(set, " and "), ")"));
    }
  }

  // 5. Convert and check every value; write the destinations only when all
  // are good.
  std::vector<std::pair<const FlagDef*, Value>> values;
  for (const auto& d : defs_) {
    const Chosen& c = chosen[d.get()];
    if (c.source == Source::kDefault) {
      if (d->required) return usage_error(absl::StrCat("--", d->name, " is required"));
      continue;
    }
    const Given& g = c.given.back();  // the last one wins
    switch (d->kind) {
      case Kind::kString:
        values.push_back({d.get(), g.value});
        break;
      case Kind::kBool: {
        const std::optional<bool> b = ParseBool(g.value);
        if (!b) return usage_error(absl::StrCat(g.spelling, " is not a boolean (true or false)"));
        values.push_back({d.get(), *b});
        break;
      }
      case Kind::kInt: {
        absl::int128 v;
        if (!absl::SimpleAtoi(g.value, &v)) {
          return usage_error(absl::StrCat(g.spelling, " is not an integer"));
        }
        const absl::int128 lo = d->int_min ? d->int_min->value : d->int_type_min;
        const absl::int128 hi = d->int_max ? d->int_max->value : d->int_type_max;
        if (v < lo || v > hi) {
          std::string bound;
          if ((d->int_min && d->int_max) || (!d->int_min && !d->int_max)) {
            bound =
                absl::StrCat("in [", internal::FormatInt(lo), ", ", internal::FormatInt(hi), "]");
          } else if (v < lo) {
            bound = absl::StrCat(">= ", internal::FormatInt(lo));
          } else {
            bound = absl::StrCat("<= ", internal::FormatInt(hi));
          }
          return usage_error(absl::StrCat(g.spelling, " must be ", bound));
        }
        values.push_back({d.get(), v});
        break;
      }
      case Kind::kDouble: {
        double v;
        if (!absl::SimpleAtod(g.value, &v) || std::isnan(v)) {
          return usage_error(absl::StrCat(g.spelling, " is not a number"));
        }
        if (!InRange(v, d->double_min, d->double_max)) {
          return usage_error(absl::StrCat(
              g.spelling, " must be ",
              DescribeRange<double>(d->double_min, d->double_max, internal::FormatDouble)));
        }
        values.push_back({d.get(), v});
        break;
      }
      case Kind::kDuration: {
        absl::Duration v;
        if (g.legacy) {
          double n;
          if (!absl::SimpleAtod(g.value, &n) || std::isnan(n)) {
            return usage_error(
                absl::StrCat(g.spelling, " is not a number (of ", UnitWords(d->legacy_unit), ")"));
          }
          v = d->legacy_unit * n;
        } else if (!absl::ParseDuration(g.value, &v)) {
          return usage_error(
              absl::StrCat(g.spelling, " is not a duration (e.g. 10s, 250ms, 1m30s)"));
        }
        if (!InRange(v, d->duration_min, d->duration_max)) {
          return usage_error(absl::StrCat(
              g.spelling, " must be ",
              DescribeRange<absl::Duration>(d->duration_min, d->duration_max, DurationText)));
        }
        values.push_back({d.get(), v});
        break;
      }
      case Kind::kEnum: {
        bool known = false;
        for (const std::string& v : d->enum_values) known = known || v == g.value;
        if (!known) {
          return usage_error(
              absl::StrCat(g.spelling, " must be one of ", absl::StrJoin(d->enum_values, ", ")));
        }
        values.push_back({d.get(), g.value});
        break;
      }
      case Kind::kRepeated: {
        std::vector<std::string> all;
        for (const Given& each : c.given) all.push_back(each.value);
        values.push_back({d.get(), std::move(all)});
        break;
      }
    }
  }
  for (const auto& [def, value] : values) def->set(value);
  sources_.clear();
  for (const auto& d : defs_) sources_.push_back({d->name, chosen[d.get()].source});
  return result;
}

std::optional<int> FlagSet::ParseCommandLine(int argc, char** argv, int first) {
  std::vector<std::string> args;
  for (int i = first; i < argc; ++i) args.emplace_back(argv[i]);
  const ParseResult r = Parse(args, ProcessEnvironment());
  switch (r.outcome) {
    case Outcome::kOk:
      return std::nullopt;
    case Outcome::kUsageError:
      std::cerr << r.output << std::flush;
      return r.exit_code;
    case Outcome::kHelp:
    case Outcome::kVersion:
    case Outcome::kFlagsJson:
      std::cout << r.output << std::flush;
      return r.exit_code;
  }
  return r.exit_code;
}

}  // namespace dsv2::flags
