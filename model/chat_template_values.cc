// Value semantics of the chat-template evaluator (declared in chat_template_internal.h):
// Python's string rules on UTF-8 (indexing, strip, repr), str() / repr() / truthiness /
// equality of values, iteration, and the render-time error every part reports.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "model/chat_template_internal.h"

namespace dsv2 {
namespace chat_template_internal {

// ---------------------------------------------------------------------------
// UTF-8 and Python string semantics. Python indexes, slices, measures and
// strips strings by code point; these helpers do the same on UTF-8 bytes.
// An invalid byte counts as one code point of its own.

char32_t DecodeUtf8(std::string_view s, size_t* i) {
  const unsigned char c = static_cast<unsigned char>(s[*i]);
  if (c < 0x80) {
    ++*i;
    return c;
  }
  int len = c >= 0xF8 ? 0 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
  if (len == 0 || *i + len > s.size()) {
    ++*i;
    return 0xDC00 + c;  // Python's surrogateescape value for a stray byte
  }
  char32_t cp = c & (0x7F >> len);
  for (int k = 1; k < len; ++k) {
    const unsigned char cc = static_cast<unsigned char>(s[*i + k]);
    if ((cc & 0xC0) != 0x80) {
      ++*i;
      return 0xDC00 + c;
    }
    cp = (cp << 6) | (cc & 0x3F);
  }
  *i += len;
  return cp;
}

// Byte offset of every code point, plus s.size() at the end.
std::vector<size_t> CodePointOffsets(std::string_view s) {
  std::vector<size_t> offsets;
  size_t i = 0;
  while (i < s.size()) {
    offsets.push_back(i);
    DecodeUtf8(s, &i);
  }
  offsets.push_back(s.size());
  return offsets;
}

// Python's str.isspace(), which is also what `\s` and str.strip() use.
bool IsPyWhitespace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Python's str.strip / lstrip / rstrip: `chars` null means whitespace.
std::string PyStrip(std::string_view s, StripSide side, const std::string* chars) {
  std::vector<char32_t> strip_set;
  if (chars != nullptr) {
    for (size_t i = 0; i < chars->size();) strip_set.push_back(DecodeUtf8(*chars, &i));
  }
  auto strippable = [&](char32_t cp) {
    return chars == nullptr ? IsPyWhitespace(cp)
                            : std::find(strip_set.begin(), strip_set.end(), cp) != strip_set.end();
  };
  const std::vector<size_t> offsets = CodePointOffsets(s);
  size_t first = 0;
  size_t last = offsets.size() - 1;  // code point indices [first, last)
  auto cp_at = [&](size_t k) {
    size_t pos = offsets[k];
    return DecodeUtf8(s, &pos);
  };
  if (side != StripSide::kRight) {
    while (first < last && strippable(cp_at(first))) ++first;
  }
  if (side != StripSide::kLeft) {
    while (last > first && strippable(cp_at(last - 1))) --last;
  }
  return std::string(s.substr(offsets[first], offsets[last] - offsets[first]));
}

// Python's repr() of a str: single quotes unless the text holds ' and no ".
std::string PyStrRepr(std::string_view s) {
  const bool has_single = s.find('\'') != std::string_view::npos;
  const bool has_double = s.find('"') != std::string_view::npos;
  const char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  for (size_t i = 0; i < s.size();) {
    const size_t start = i;
    const char32_t cp = DecodeUtf8(s, &i);
    if (cp == static_cast<char32_t>(quote) || cp == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(cp));
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp < 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD) {
      absl::StrAppend(&out, "\\x", absl::Hex(static_cast<uint32_t>(cp), absl::kZeroPad2));
    } else if ((cp >= 0x2000 && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202F) ||
               (cp >= 0x205F && cp <= 0x206F) || cp == 0x1680 || cp == 0x3000 || cp == 0xFEFF ||
               (cp >= 0xD800 && cp <= 0xDFFF)) {
      absl::StrAppend(&out, "\\u", absl::Hex(static_cast<uint32_t>(cp), absl::kZeroPad4));
    } else {
      out.append(s.substr(start, i - start));
    }
  }
  out.push_back(quote);
  return out;
}

// True when `s` holds a non-ASCII code point in a block with cased letters,
// where ASCII-only case mapping would differ from Python's.
bool HasNonAsciiCasedLetters(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const char32_t cp = DecodeUtf8(s, &i);
    if ((cp >= 0xB5 && cp <= 0x1FFF && cp != 0xD7 && cp != 0xF7) ||
        (cp >= 0x2C00 && cp <= 0x2D2F) || (cp >= 0xA640 && cp <= 0xA7FF) ||
        (cp >= 0xFF21 && cp <= 0xFF5A) || (cp >= 0x10400 && cp <= 0x1E9FF)) {
      return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------------------
// Values (the types are in chat_template_internal.h).

// Python's type names, in Value::Rep order.
std::string TypeName(const Value& v) {
  static constexpr const char* kNames[] = {"undefined", "NoneType", "bool", "int",
                                           "str",       "list",     "dict", "Namespace"};
  return kNames[v.rep.index()];
}

bool Truthy(const Value& v) {
  if (v.is_undefined() || v.is_none()) return false;
  if (v.is_number()) return v.number() != 0;
  if (v.is_str()) return !v.str().empty();
  if (v.is_list()) return !v.list().empty();
  if (v.is_map()) return !v.map().items.empty();
  return true;  // namespace
}

std::string Repr(const Value& v);

// Python's str() of a value, which is what {{ }} and ~ print.
std::string ToStr(const Value& v) {
  if (v.is_undefined()) return "";
  if (v.is_none()) return "None";
  if (v.is_bool()) return std::get<bool>(v.rep) ? "True" : "False";
  if (v.is_int()) return absl::StrCat(std::get<int64_t>(v.rep));
  if (v.is_str()) return v.str();
  std::string out;
  if (v.is_list()) {
    out = "[";
    for (size_t i = 0; i < v.list().size(); ++i) {
      if (i > 0) out += ", ";
      out += Repr(v.list()[i]);
    }
    return out + "]";
  }
  const ValueMap& map = v.is_map() ? v.map() : v.ns().attrs;
  out = v.is_map() ? "{" : "<Namespace {";
  for (size_t i = 0; i < map.items.size(); ++i) {
    if (i > 0) out += ", ";
    absl::StrAppend(&out, PyStrRepr(map.items[i].first), ": ", Repr(map.items[i].second));
  }
  return out + (v.is_map() ? "}" : "}>");
}

std::string Repr(const Value& v) {
  if (v.is_str()) return PyStrRepr(v.str());
  if (v.is_undefined()) return "Undefined";
  return ToStr(v);
}

bool Equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) return a.number() == b.number();
  if (a.rep.index() != b.rep.index()) return false;
  if (a.is_undefined() || a.is_none()) return true;
  if (a.is_str()) return a.str() == b.str();
  if (a.is_list()) {
    if (a.list().size() != b.list().size()) return false;
    for (size_t i = 0; i < a.list().size(); ++i) {
      if (!Equals(a.list()[i], b.list()[i])) return false;
    }
    return true;
  }
  if (a.is_map()) {  // dict equality ignores order
    if (a.map().items.size() != b.map().items.size()) return false;
    for (const auto& [k, v] : a.map().items) {
      const Value* other = b.map().Find(k);
      if (other == nullptr || !Equals(v, *other)) return false;
    }
    return true;
  }
  return &a.ns() == &b.ns();
}

// ---------------------------------------------------------------------------
// Render-time errors and iteration.

absl::Status RenderError(std::string_view what, size_t offset) {
  return absl::InvalidArgumentError(
      absl::StrCat("chat template render: ", AV(what), " (at offset ", offset, ")"));
}

// Jinja's default Undefined fails when used as an operand.
absl::Status CheckDefined(const Value& v, size_t offset) {
  if (v.is_undefined()) return RenderError(v.undefined_hint(), offset);
  return absl::OkStatus();
}

// Python's iteration: a list's items, a dict's keys, a str's code points.
absl::StatusOr<ValueList> Iterate(const Value& v, size_t offset) {
  if (v.is_undefined()) return ValueList{};  // Undefined iterates as empty
  if (v.is_list()) return v.list();
  if (v.is_map()) {
    ValueList keys;
    for (const auto& item : v.map().items) keys.push_back(Value::Str(item.first));
    return keys;
  }
  if (v.is_str()) {
    ValueList chars;
    const std::vector<size_t> offsets = CodePointOffsets(v.str());
    for (size_t k = 0; k + 1 < offsets.size(); ++k) {
      chars.push_back(Value::Str(v.str().substr(offsets[k], offsets[k + 1] - offsets[k])));
    }
    return chars;
  }
  return RenderError(absl::StrCat("'", TypeName(v), "' object is not iterable"), offset);
}

}  // namespace chat_template_internal
}  // namespace dsv2
