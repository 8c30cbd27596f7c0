// The builtins of the chat-template language (declared in chat_template_internal.h): which
// filters, tests, global functions and str / dict methods a template may call, with their
// argument counts (the parser checks calls against these), and what each computes, as
// jinja2 and Python do for the values the evaluator supports.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "base/status_macros.h"
#include "model/chat_template_internal.h"

namespace dsv2 {
namespace chat_template_internal {
namespace {

// What a template may call, with its argument counts (see Builtin).
constexpr Builtin kFilters[] = {{"trim", 0, 1},    {"length", 0, 0}, {"count", 0, 0},
                                {"string", 0, 0},  {"lower", 0, 0},  {"upper", 0, 0},
                                {"first", 0, 0},   {"last", 0, 0},   {"join", 0, 1},
                                {"default", 0, 2}, {"d", 0, 2}};
constexpr Builtin kTests[] = {{"defined", 0, 0},  {"undefined", 0, 0}, {"none", 0, 0},
                              {"string", 0, 0},   {"number", 0, 0},    {"integer", 0, 0},
                              {"boolean", 0, 0},  {"mapping", 0, 0},   {"sequence", 0, 0},
                              {"iterable", 0, 0}, {"true", 0, 0},      {"false", 0, 0},
                              {"even", 0, 0},     {"odd", 0, 0}};
constexpr Builtin kFunctions[] = {{"raise_exception", 1, 1}, {"range", 1, 3}, {"namespace", 0, 0}};
constexpr Builtin kMethods[] = {{"strip", 0, 1}, {"lstrip", 0, 1},     {"rstrip", 0, 1},
                                {"split", 0, 2}, {"startswith", 1, 1}, {"endswith", 1, 1},
                                {"upper", 0, 0}, {"lower", 0, 0},      {"get", 1, 2}};

absl::Span<const Builtin> Table(BuiltinKind kind) {
  switch (kind) {
    case BuiltinKind::kFilter:
      return kFilters;
    case BuiltinKind::kTest:
      return kTests;
    case BuiltinKind::kFunction:
      return kFunctions;
    case BuiltinKind::kMethod:
      return kMethods;
  }
  return {};
}

absl::StatusOr<Value> ChangeCase(const std::string& s, bool upper, size_t offset) {
  if (HasNonAsciiCasedLetters(s)) {
    return RenderError(
        absl::StrCat(upper ? "upper" : "lower", " of non-ASCII letters is unsupported"), offset);
  }
  std::string out = s;
  for (char& c : out) {
    if (upper && c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    if (!upper && c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return Value::Str(std::move(out));
}

// str.strip / lstrip / rstrip and the trim filter; `chars` is none for
// whitespace.
absl::StatusOr<Value> Strip(const std::string& s, StripSide side, const Value& chars,
                            size_t offset) {
  if (chars.is_none()) return Value::Str(PyStrip(s, side, nullptr));
  if (!chars.is_str()) return RenderError("strip characters must be a string or none", offset);
  return Value::Str(PyStrip(s, side, &chars.str()));
}

// Python's str.split(sep, maxsplit); sep none splits on whitespace runs.
absl::StatusOr<Value> Split(const std::string& s, const Value& sep, int64_t maxsplit,
                            size_t offset) {
  ValueList parts;
  if (sep.is_none()) {
    const std::vector<size_t> offsets = CodePointOffsets(s);
    const size_t n = offsets.size() - 1;
    auto space_at = [&](size_t k) {
      size_t p = offsets[k];
      return IsPyWhitespace(DecodeUtf8(s, &p));
    };
    for (size_t k = 0;;) {
      while (k < n && space_at(k)) ++k;
      if (k == n) break;
      if (maxsplit == 0) {  // the remainder keeps its trailing whitespace
        parts.push_back(Value::Str(s.substr(offsets[k])));
        break;
      }
      const size_t begin = k;
      while (k < n && !space_at(k)) ++k;
      parts.push_back(Value::Str(s.substr(offsets[begin], offsets[k] - offsets[begin])));
      if (maxsplit > 0) --maxsplit;
    }
    return Value::List(std::move(parts));
  }
  const std::string& delim = sep.str();
  if (delim.empty()) return RenderError("split() separator is empty", offset);
  size_t pos = 0;
  for (size_t hit; maxsplit != 0 && (hit = s.find(delim, pos)) != std::string::npos;) {
    parts.push_back(Value::Str(s.substr(pos, hit - pos)));
    pos = hit + delim.size();
    if (maxsplit > 0) --maxsplit;
  }
  parts.push_back(Value::Str(s.substr(pos)));
  return Value::List(std::move(parts));
}

}  // namespace

const Builtin* FindBuiltin(BuiltinKind kind, std::string_view name) {
  for (const Builtin& b : Table(kind)) {
    if (b.name == name) return &b;
  }
  return nullptr;
}

// Filters; v[0] is the filtered value. Argument counts were checked by Parse.
absl::StatusOr<Value> ApplyFilter(const std::string& f, const std::vector<Value>& v,
                                  size_t offset) {
  const Value& x = v[0];
  if (f == "default" || f == "d") {
    const bool use_default = x.is_undefined() || (v.size() == 3 && Truthy(v[2]) && !Truthy(x));
    if (!use_default) return x;
    return v.size() > 1 ? v[1] : Value::Str("");
  }
  if (f == "trim") {
    return Strip(ToStr(x), StripSide::kBoth, v.size() > 1 ? v[1] : Value::None(), offset);
  }
  if (f == "length" || f == "count") {
    if (x.is_undefined()) return Value::Int(0);
    if (x.is_str()) return Value::Int(static_cast<int64_t>(CodePointOffsets(x.str()).size() - 1));
    if (x.is_list()) return Value::Int(static_cast<int64_t>(x.list().size()));
    if (x.is_map()) return Value::Int(static_cast<int64_t>(x.map().items.size()));
    return RenderError(absl::StrCat("object of type '", TypeName(x), "' has no len()"), offset);
  }
  if (f == "string") return Value::Str(ToStr(x));
  if (f == "lower" || f == "upper") return ChangeCase(ToStr(x), f == "upper", offset);
  DSV2_ASSIGN_OR_RETURN(ValueList items, Iterate(x, offset));
  if (f == "first" || f == "last") {
    if (items.empty()) return Value::Undef(absl::StrCat("no ", f, " item, sequence was empty"));
    return f == "first" ? items.front() : items.back();
  }
  const std::string sep = v.size() > 1 ? ToStr(v[1]) : "";  // join
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += sep;
    out += ToStr(items[i]);
  }
  return Value::Str(std::move(out));
}

absl::StatusOr<bool> ApplyTest(const std::string& t, const Value& v, size_t offset) {
  if (t == "defined") return !v.is_undefined();
  if (t == "undefined") return v.is_undefined();
  if (t == "none") return v.is_none();
  if (t == "string") return v.is_str();
  if (t == "number") return v.is_number();
  if (t == "integer") return v.is_int();
  if (t == "boolean") return v.is_bool();
  if (t == "mapping") return v.is_map();
  if (t == "sequence" || t == "iterable") {
    return v.is_str() || v.is_list() || v.is_map() || v.is_undefined();
  }
  if (t == "true" || t == "false") return v.is_bool() && std::get<bool>(v.rep) == (t == "true");
  DSV2_RETURN_IF_ERROR(CheckDefined(v, offset));  // even, odd
  if (!v.is_number()) {
    return RenderError(absl::StrCat("test '", t, "' needs a number, got '", TypeName(v), "'"),
                       offset);
  }
  return (t == "even") == (v.number() % 2 == 0);
}

// raise_exception(message) and range([start,] stop[, step]).
absl::StatusOr<Value> CallFunction(const std::string& f, const std::vector<Value>& v,
                                   size_t offset) {
  if (f == "raise_exception") {
    return absl::InvalidArgumentError(
        absl::StrCat("chat template raised an exception: ", ToStr(v[0])));
  }
  for (const Value& x : v) {
    if (!x.is_number()) {
      return RenderError(absl::StrCat("range() needs integers, got '", TypeName(x), "'"), offset);
    }
  }
  const int64_t start = v.size() == 1 ? 0 : v[0].number();
  const int64_t stop = v.size() == 1 ? v[0].number() : v[1].number();
  const int64_t step = v.size() == 3 ? v[2].number() : 1;
  if (step == 0) return RenderError("range() step must not be zero", offset);
  ValueList items;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (static_cast<int64_t>(items.size()) >= kMaxRangeLength) {
      return RenderError(absl::StrCat("range() longer than ", kMaxRangeLength), offset);
    }
    items.push_back(Value::Int(i));
    if ((step > 0 && i > INT64_MAX - step) || (step < 0 && i < INT64_MIN - step)) break;
  }
  return Value::List(std::move(items));
}

// Methods; v[0] is the receiver. Argument counts were checked by Parse.
absl::StatusOr<Value> CallMethod(const std::string& m, const std::vector<Value>& v, size_t offset) {
  const Value& obj = v[0];
  DSV2_RETURN_IF_ERROR(CheckDefined(obj, offset));
  if (obj.is_map() && m == "get") {
    if (v[1].is_str()) {
      if (const Value* found = obj.map().Find(v[1].str())) return *found;
    }
    return v.size() == 3 ? v[2] : Value::None();
  }
  if (!obj.is_str() || m == "get") {
    return RenderError(absl::StrCat("'", TypeName(obj), "' object has no method '", m, "'"),
                       offset);
  }
  const std::string& s = obj.str();
  if (m == "strip" || m == "lstrip" || m == "rstrip") {
    const StripSide side = m == "strip"    ? StripSide::kBoth
                           : m == "lstrip" ? StripSide::kLeft
                                           : StripSide::kRight;
    return Strip(s, side, v.size() > 1 ? v[1] : Value::None(), offset);
  }
  if (m == "upper" || m == "lower") return ChangeCase(s, m == "upper", offset);
  for (size_t i = 1; i < v.size(); ++i) {
    const bool want_int = m == "split" && i == 2;
    const bool ok =
        want_int ? v[i].is_number() : (v[i].is_str() || (m == "split" && v[i].is_none()));
    if (!ok) return RenderError(absl::StrCat("bad argument ", i, " to ", m, "()"), offset);
  }
  if (m == "startswith" || m == "endswith") {
    const std::string& p = v[1].str();
    return Value::Bool(p.size() <= s.size() &&
                       s.compare(m == "startswith" ? 0 : s.size() - p.size(), p.size(), p) == 0);
  }
  return Split(s, v.size() > 1 ? v[1] : Value::None(), v.size() > 2 ? v[2].number() : -1, offset);
}

}  // namespace chat_template_internal
}  // namespace dsv2
