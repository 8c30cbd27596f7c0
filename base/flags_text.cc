// What a FlagSet prints about itself: --help, --flags-json, and the
// wording of ranges and units that its error messages share.
#include <cstdio>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/flags.h"
#include "base/flags_internal.h"

namespace dsv2::flags {
namespace internal {

std::string FormatInt(absl::int128 v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

std::string FormatDouble(double v) { return absl::StrCat(v); }

std::string DurationText(absl::Duration d) { return absl::FormatDuration(d); }

namespace {

struct Unit {
  absl::Duration unit;
  const char* name;
  const char* words;
};
constexpr Unit kUnits[] = {
    {absl::Nanoseconds(1), "ns", "nanoseconds"},   {absl::Microseconds(1), "us", "microseconds"},
    {absl::Milliseconds(1), "ms", "milliseconds"}, {absl::Seconds(1), "s", "seconds"},
    {absl::Minutes(1), "min", "minutes"},          {absl::Hours(1), "h", "hours"}};

}  // namespace

std::string UnitName(absl::Duration unit) {
  for (const Unit& u : kUnits) {
    if (unit == u.unit) return u.name;
  }
  return DurationText(unit);
}

std::string UnitWords(absl::Duration unit) {
  for (const Unit& u : kUnits) {
    if (unit == u.unit) return u.words;
  }
  return absl::StrCat("times ", DurationText(unit));
}

RangeText Bounds(const FlagDef& d) {
  RangeText r;
  auto fill = [&r](const auto& lo, const auto& hi, auto format) {
    if (lo) {
      r.min = format(lo->value);
      r.min_exclusive = lo->exclusive;
    }
    if (hi) {
      r.max = format(hi->value);
      r.max_exclusive = hi->exclusive;
    }
  };
  switch (d.kind) {
    case Kind::kInt:
      fill(d.int_min, d.int_max, FormatInt);
      break;
    case Kind::kDouble:
      fill(d.double_min, d.double_max, FormatDouble);
      break;
    case Kind::kDuration:
      fill(d.duration_min, d.duration_max, DurationText);
      break;
    default:
      break;
  }
  return r;
}

std::string Describe(const RangeText& r) {
  if (r.min && r.max) {
    return absl::StrCat("in ", r.min_exclusive ? "(" : "[", *r.min, ", ", *r.max,
                        r.max_exclusive ? ")" : "]");
  }
  if (r.min) return absl::StrCat(r.min_exclusive ? "> " : ">= ", *r.min);
  if (r.max) return absl::StrCat(r.max_exclusive ? "< " : "<= ", *r.max);
  return "";
}

}  // namespace internal

namespace {

using internal::FlagDef;
using internal::Kind;

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

// What follows --name in the help: " INT", " bf16|f32", nothing for a bool.
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

// A JSON string literal (RFC 8259 escapes; bytes >= 0x80 pass through, so
// UTF-8 stays UTF-8).
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

// One JSON object from (key, already-encoded value) pairs, in order.
using JsonFields = std::vector<std::pair<std::string, std::string>>;
std::string JsonObject(const JsonFields& fields) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : fields) parts.push_back(absl::StrCat(JsonString(k), ":", v));
  return absl::StrCat("{", absl::StrJoin(parts, ","), "}");
}

const char* JsonBool(bool b) { return b ? "true" : "false"; }

constexpr std::pair<const char*, const char*> kBuiltinHelp[] = {
    {"help", "show this help and exit"},
    {"version", "print the version and exit"},
    {"flags-json",
     "print every flag as one line of JSON and exit (for tools that check manifests against "
     "the real flags)"}};

}  // namespace

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
    if (std::string range = internal::Describe(internal::Bounds(*d)); !range.empty()) {
      notes.push_back(std::move(range));
    }
    if (d->kind == Kind::kRepeated) notes.push_back("repeatable");
    if (!notes.empty()) absl::StrAppend(&out, " (", absl::StrJoin(notes, "; "), ")");
    absl::StrAppend(&out, "\n");
    for (const std::string& a : d->aliases) {
      absl::StrAppend(&out, "      also --", a, " / ", EnvName(a), "\n");
    }
    if (!d->legacy_alias.empty()) {
      absl::StrAppend(&out, "      also --", d->legacy_alias, " N / ", EnvName(d->legacy_alias),
                      "=N: N ", internal::UnitWords(d->legacy_unit), " (the older spelling)\n");
    }
  }
  for (const auto& [name, help] : kBuiltinHelp) {
    absl::StrAppend(&out, "  --", name, "\n      ", help, "\n");
  }
  return out;
}

std::string FlagSet::FlagsJson() const {
  std::vector<std::string> entries;
  for (const auto& d : defs_) {
    JsonFields f = {
        {"name", JsonString(d->name)},           {"bool", JsonBool(d->kind == Kind::kBool)},
        {"help", JsonString(d->help)},           {"env", JsonString(EnvName(d->name))},
        {"type", JsonString(TypeName(d->kind))}, {"required", JsonBool(d->required)},
    };
    if (d->default_value) f.push_back({"default", JsonString(*d->default_value)});
    const internal::RangeText range = internal::Bounds(*d);
    if (range.min) f.push_back({"min", JsonString(*range.min)});
    if (range.min && range.min_exclusive) f.push_back({"min_exclusive", "true"});
    if (range.max) f.push_back({"max", JsonString(*range.max)});
    if (range.max && range.max_exclusive) f.push_back({"max_exclusive", "true"});
    if (d->kind == Kind::kEnum) {
      std::vector<std::string> values;
      for (const std::string& v : d->enum_values) values.push_back(JsonString(v));
      f.push_back({"values", absl::StrCat("[", absl::StrJoin(values, ","), "]")});
    }
    entries.push_back(JsonObject(f));
    for (const std::string& a : d->aliases) {
      entries.push_back(JsonObject({{"name", JsonString(a)},
                                    {"bool", JsonBool(d->kind == Kind::kBool)},
                                    {"help", JsonString(absl::StrCat("alias of --", d->name))},
                                    {"env", JsonString(EnvName(a))},
                                    {"type", JsonString(TypeName(d->kind))},
                                    {"required", "false"},
                                    {"alias_of", JsonString(d->name)}}));
    }
    if (!d->legacy_alias.empty()) {
      entries.push_back(
          JsonObject({{"name", JsonString(d->legacy_alias)},
                      {"bool", "false"},
                      {"help", JsonString(absl::StrCat("--", d->name, " as a number of ",
                                                       internal::UnitWords(d->legacy_unit)))},
                      {"env", JsonString(EnvName(d->legacy_alias))},
                      {"type", JsonString("double")},
                      {"required", "false"},
                      {"alias_of", JsonString(d->name)},
                      {"unit", JsonString(internal::UnitName(d->legacy_unit))}}));
    }
  }
  // Built-ins come from the command line only: no environment variable.
  for (const auto& [name, help] : kBuiltinHelp) {
    entries.push_back(JsonObject({{"name", JsonString(name)},
                                  {"bool", "true"},
                                  {"help", JsonString(help)},
                                  {"env", "null"},
                                  {"type", JsonString("builtin")},
                                  {"required", "false"}}));
  }
  return absl::StrCat("[", absl::StrJoin(entries, ","), "]\n");
}

}  // namespace dsv2::flags
