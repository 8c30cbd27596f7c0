#include "model/chat_template.h"

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace dsv2 {
namespace chat_template_internal {

// The pinned Abseil (20220623, ABSL_OPTION_USE_STD_STRING_VIEW 0) has its own
// string_view type, so std::string_view must be converted for StrCat.
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Limits that keep a hostile template from exhausting the stack or the CPU.
constexpr int kMaxNestingDepth = 200;              // expressions and blocks
constexpr int64_t kMaxLoopIterations = 1'000'000;  // per Render, all loops
constexpr int64_t kMaxRangeLength = 1'000'000;
constexpr size_t kMaxStringBytes = size_t{1} << 28;  // results of * and +

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

enum class StripSide { kLeft, kRight, kBoth };

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

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
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
// Values: Python's None, bool, int, str, list, dict (string keys, insertion
// order), jinja2's Namespace and Undefined.

struct Value;
struct ValueMap;
struct Namespace;
using ValueList = std::vector<Value>;

struct Undefined {
  std::string hint;  // what Jinja would say on use, e.g. "'foo' is undefined"
};
struct NoneValue {};

struct Value {
  using Rep = std::variant<Undefined, NoneValue, bool, int64_t, std::string,
                           std::shared_ptr<const ValueList>, std::shared_ptr<const ValueMap>,
                           std::shared_ptr<Namespace>>;
  Rep rep;

  static Value Undef(std::string hint) { return Value{Undefined{std::move(hint)}}; }
  static Value None() { return Value{NoneValue{}}; }
  static Value Bool(bool b) { return Value{b}; }
  static Value Int(int64_t i) { return Value{i}; }
  static Value Str(std::string s) { return Value{std::move(s)}; }
  static Value List(ValueList items) {
    return Value{std::make_shared<const ValueList>(std::move(items))};
  }
  static Value Map(ValueMap map);

  bool is_undefined() const { return std::holds_alternative<Undefined>(rep); }
  bool is_none() const { return std::holds_alternative<NoneValue>(rep); }
  bool is_bool() const { return std::holds_alternative<bool>(rep); }
  bool is_int() const { return std::holds_alternative<int64_t>(rep); }
  // Python treats bool as an int subtype in arithmetic and comparisons.
  bool is_number() const { return is_bool() || is_int(); }
  bool is_str() const { return std::holds_alternative<std::string>(rep); }
  bool is_list() const { return std::holds_alternative<std::shared_ptr<const ValueList>>(rep); }
  bool is_map() const { return std::holds_alternative<std::shared_ptr<const ValueMap>>(rep); }
  bool is_namespace() const { return std::holds_alternative<std::shared_ptr<Namespace>>(rep); }

  int64_t number() const {
    return is_bool() ? (std::get<bool>(rep) ? 1 : 0) : std::get<int64_t>(rep);
  }
  const std::string& str() const { return std::get<std::string>(rep); }
  const ValueList& list() const { return *std::get<std::shared_ptr<const ValueList>>(rep); }
  const ValueMap& map() const { return *std::get<std::shared_ptr<const ValueMap>>(rep); }
  Namespace& ns() const { return *std::get<std::shared_ptr<Namespace>>(rep); }
  const std::string& undefined_hint() const { return std::get<Undefined>(rep).hint; }
};

struct ValueMap {
  std::vector<std::pair<std::string, Value>> items;

  const Value* Find(std::string_view key) const {
    for (const auto& [k, v] : items) {
      if (k == key) return &v;
    }
    return nullptr;
  }
  void Set(std::string key, Value value) {
    for (auto& [k, v] : items) {
      if (k == key) {
        v = std::move(value);
        return;
      }
    }
    items.emplace_back(std::move(key), std::move(value));
  }
};

struct Namespace {
  ValueMap attrs;
};

Value Value::Map(ValueMap map) { return Value{std::make_shared<const ValueMap>(std::move(map))}; }

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
// Lexer. Mirrors jinja2's lexer with trim_blocks and lstrip_blocks on: a block
// or comment end eats one following newline; spaces and tabs between a line
// start and a block or comment tag are dropped; '-' next to a delimiter strips
// all whitespace on that side; '+' keeps it.

enum class Tok {
  kData,
  kVarBegin,
  kVarEnd,
  kBlockBegin,
  kBlockEnd,
  kName,
  kString,
  kInt,
  kOp,
  kEof
};

struct Token {
  Tok kind = Tok::kEof;
  std::string text;  // data, name, string value or operator
  int64_t int_value = 0;
  size_t offset = 0;
};

absl::Status SyntaxError(std::string_view what, size_t offset) {
  return absl::InvalidArgumentError(
      absl::StrCat("chat template: ", AV(what), " at offset ", offset));
}

// Jinja splits lines on \r\n, \r and \n, joins them with \n and drops one
// trailing newline (keep_trailing_newline is off).
std::string NormalizeNewlines(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string_view src) : src_(src) {}

  absl::StatusOr<std::vector<Token>> Run() {
    bool line_starting = true;  // the previous match ended with '\n'
    size_t pos = 0;
    while (pos < src_.size()) {
      size_t tag = src_.find('{', pos);
      while (tag != std::string_view::npos && tag + 1 < src_.size() && src_[tag + 1] != '{' &&
             src_[tag + 1] != '%' && src_[tag + 1] != '#') {
        tag = src_.find('{', tag + 1);
      }
      if (tag == std::string_view::npos || tag + 1 >= src_.size()) {
        Emit(Tok::kData, std::string(src_.substr(pos)), pos);
        break;
      }
      const char kind = src_[tag + 1];
      size_t after = tag + 2;
      char sign = 0;
      if (after < src_.size() && (src_[after] == '-' || src_[after] == '+')) sign = src_[after++];

      std::string text(src_.substr(pos, tag - pos));
      if (sign == '-') {
        text = PyStrip(text, StripSide::kRight, nullptr);
      } else if (sign != '+' && kind != '{') {         // lstrip_blocks: blocks and comments
        const size_t line_pos = text.rfind('\n') + 1;  // npos + 1 == 0
        if ((line_pos > 0 || line_starting) && line_pos < text.size() &&
            PyStrip(std::string_view(text).substr(line_pos), StripSide::kBoth, nullptr).empty()) {
          text.resize(line_pos);
        }
      }
      if (!text.empty()) Emit(Tok::kData, std::move(text), pos);
      pos = after;

      if (kind == '#') {
        DSV2_ASSIGN_OR_RETURN(pos, SkipComment(tag, pos));
      } else {
        DSV2_ASSIGN_OR_RETURN(pos, LexTag(kind == '%', tag, pos));
      }
      line_starting = src_[pos - 1] == '\n';
    }
    Emit(Tok::kEof, "", src_.size());
    return std::move(tokens_);
  }

 private:
  void Emit(Tok kind, std::string text, size_t offset) {
    tokens_.push_back(Token{kind, std::move(text), 0, offset});
  }

  bool At(size_t pos, std::string_view s) const { return src_.substr(pos, s.size()) == s; }

  size_t SkipWhitespace(size_t pos) const {
    while (pos < src_.size()) {
      size_t next = pos;
      if (!IsPyWhitespace(DecodeUtf8(src_, &next))) break;
      pos = next;
    }
    return pos;
  }

  // Returns the position after the comment's end marker.
  absl::StatusOr<size_t> SkipComment(size_t open, size_t pos) const {
    for (size_t p = pos; p + 1 < src_.size(); ++p) {
      if (At(p, "+#}")) return p + 3;
      if (At(p, "-#}")) return SkipWhitespace(p + 3);
      if (At(p, "#}")) return (p + 2 < src_.size() && src_[p + 2] == '\n') ? p + 3 : p + 2;
    }
    return SyntaxError("unclosed comment '{#'", open);
  }

  // Lexes the inside of {{ }} or {% %}; returns the position after the end.
  absl::StatusOr<size_t> LexTag(bool block, size_t open, size_t pos) {
    Emit(block ? Tok::kBlockBegin : Tok::kVarBegin, "", open);
    std::vector<char> brackets;  // expected closers; tag ends only when empty
    while (true) {
      if (pos >= src_.size()) {
        return SyntaxError(block ? "unclosed '{%' tag" : "unclosed '{{' tag", open);
      }
      if (brackets.empty()) {
        const Tok end = block ? Tok::kBlockEnd : Tok::kVarEnd;
        if (block && At(pos, "+%}")) {
          Emit(end, "", pos);
          return pos + 3;
        }
        if (At(pos, block ? "-%}" : "-}}")) {
          Emit(end, "", pos);
          return SkipWhitespace(pos + 3);
        }
        if (At(pos, block ? "%}" : "}}")) {
          Emit(end, "", pos);
          pos += 2;
          if (block && pos < src_.size() && src_[pos] == '\n') ++pos;  // trim_blocks
          return pos;
        }
      }
      const unsigned char c = static_cast<unsigned char>(src_[pos]);
      const size_t ws_end = SkipWhitespace(pos);
      if (ws_end > pos) {
        pos = ws_end;
      } else if (c >= '0' && c <= '9') {
        DSV2_ASSIGN_OR_RETURN(pos, LexNumber(pos));
      } else if (c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        size_t end = pos;
        while (end < src_.size() &&
               (src_[end] == '_' || std::isalnum(static_cast<unsigned char>(src_[end])))) {
          ++end;
        }
        Emit(Tok::kName, std::string(src_.substr(pos, end - pos)), pos);
        pos = end;
      } else if (c == '\'' || c == '"') {
        DSV2_ASSIGN_OR_RETURN(pos, LexString(pos));
      } else {
        DSV2_ASSIGN_OR_RETURN(pos, LexOperator(pos, &brackets));
      }
    }
  }

  absl::StatusOr<size_t> LexNumber(size_t pos) {
    size_t end = pos;
    std::string digits;
    for (; end < src_.size() &&
           (std::isdigit(static_cast<unsigned char>(src_[end])) || src_[end] == '_');
         ++end) {
      if (src_[end] != '_') digits.push_back(src_[end]);
    }
    // Floats (1.5, 1e3) and 0x/0o/0b literals.
    if (end < src_.size() && (std::isalpha(static_cast<unsigned char>(src_[end])) ||
                              (src_[end] == '.' && end + 1 < src_.size() &&
                               std::isdigit(static_cast<unsigned char>(src_[end + 1]))))) {
      return SyntaxError("unsupported number literal", pos);
    }
    int64_t value = 0;
    for (char d : digits) {
      if (__builtin_mul_overflow(value, 10, &value) ||
          __builtin_add_overflow(value, d - '0', &value)) {
        return SyntaxError("integer literal out of range", pos);
      }
    }
    Emit(Tok::kInt, std::string(src_.substr(pos, end - pos)), pos);
    tokens_.back().int_value = value;
    return end;
  }

  // Python string-literal escapes, as jinja2 decodes them ("unicode-escape");
  // unknown escapes keep their backslash.
  absl::StatusOr<size_t> LexString(size_t pos) {
    const char quote = src_[pos];
    std::string value;
    size_t p = pos + 1;
    auto hex = [&](size_t at, int n, uint32_t* out) {
      if (at + n > src_.size()) return false;
      *out = 0;
      for (int k = 0; k < n; ++k) {
        const char h = src_[at + k];
        if (!std::isxdigit(static_cast<unsigned char>(h))) return false;
        *out =
            *out * 16 +
            (std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
      }
      return true;
    };
    while (true) {
      if (p >= src_.size()) return SyntaxError("unterminated string literal", pos);
      const char c = src_[p];
      if (c == quote) break;
      if (c != '\\') {
        value.push_back(c);
        ++p;
        continue;
      }
      if (p + 1 >= src_.size()) return SyntaxError("unterminated string literal", pos);
      const char e = src_[p + 1];
      p += 2;
      static constexpr std::string_view kFrom = "\\'\"abfnrtv";
      static constexpr std::string_view kTo = "\\'\"\a\b\f\n\r\t\v";
      uint32_t cp = 0;
      if (const size_t k = kFrom.find(e); k != std::string_view::npos) {
        value.push_back(kTo[k]);
      } else if (e == '\n') {
        // line continuation: both characters vanish
      } else if (e == 'x' || e == 'u' || e == 'U') {
        const int n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
        if (!hex(p, n, &cp) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
          return SyntaxError("invalid escape in string literal", p - 2);
        }
        AppendUtf8(cp, &value);
        p += n;
      } else if (e == 'N') {
        return SyntaxError("unsupported \\N{...} escape in string literal", p - 2);
      } else if (e >= '0' && e <= '7') {  // up to three octal digits
        cp = e - '0';
        for (int k = 0; k < 2 && p < src_.size() && src_[p] >= '0' && src_[p] <= '7'; ++k) {
          cp = cp * 8 + (src_[p++] - '0');
        }
        AppendUtf8(cp, &value);
      } else {  // unknown escapes keep their backslash
        value.push_back('\\');
        value.push_back(e);
      }
    }
    Emit(Tok::kString, std::move(value), pos);
    return p + 1;
  }

  absl::StatusOr<size_t> LexOperator(size_t pos, std::vector<char>* brackets) {
    static constexpr std::string_view kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/",
                                                "*",  "%",  "~",  "[",  "]",  "(",  ")", "{", "}",
                                                ">",  "<",  "=",  ".",  ":",  "|",  ",", ";"};
    for (std::string_view op : kOps) {
      if (!At(pos, op)) continue;
      if (op == "(" || op == "[" || op == "{") {
        brackets->push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
      } else if (op == ")" || op == "]" || op == "}") {
        if (brackets->empty()) return SyntaxError(absl::StrCat("unexpected '", AV(op), "'"), pos);
        if (brackets->back() != op[0]) {
          return SyntaxError(absl::StrCat("unexpected '", AV(op), "', expected '",
                                          std::string(1, brackets->back()), "'"),
                             pos);
        }
        brackets->pop_back();
      }
      Emit(Tok::kOp, std::string(op), pos);
      return pos + op.size();
    }
    size_t next = pos;  // name the code point: quoting one byte could split it
    std::string hex = absl::StrCat(absl::Hex(DecodeUtf8(src_, &next), absl::kZeroPad4));
    for (char& h : hex) h = static_cast<char>(std::toupper(static_cast<unsigned char>(h)));
    return SyntaxError(absl::StrCat("unexpected character U+", hex), pos);
  }

  std::string_view src_;
  std::vector<Token> tokens_;
};

// ---------------------------------------------------------------------------
// Syntax tree.

enum class ExprKind {
  kLiteral,
  kName,
  kGetAttr,
  kGetItem,
  kSlice,
  kNot,
  kNeg,
  kPos,
  kBinary,
  kCompare,
  kAnd,
  kOr,
  kCondExpr,
  kConcat,
  kFilter,
  kTest,
  kCall,
  kMethodCall,
  kList,
  kDict
};
enum class BinOp { kAdd, kSub, kMul, kFloorDiv, kMod };
enum class CmpOp { kEq, kNe, kLt, kLe, kGt, kGe, kIn, kNotIn };

struct Expr {
  ExprKind kind = ExprKind::kLiteral;
  size_t offset = 0;
  Value literal;     // kLiteral
  std::string name;  // variable, attribute, filter, test, function or method
  BinOp bin_op = BinOp::kAdd;
  std::vector<CmpOp> cmp_ops;  // kCompare: args[i] op[i] args[i + 1]
  bool negated = false;        // kTest: `is not`
  // Operands. kGetAttr/kFilter/kTest/kMethodCall: args[0] is the subject.
  // kSlice: object, start, stop, step (null when omitted). kCondExpr: value,
  // condition, else-value (null when omitted). kDict: key, value, key, ...
  std::vector<std::unique_ptr<Expr>> args;
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;  // kCall
};

enum class NodeKind { kText, kOutput, kIf, kFor, kSet, kBreak, kContinue };

struct Node;
struct IfBranch {
  std::unique_ptr<Expr> condition;
  std::vector<Node> body;
};

struct Node {
  Node(NodeKind k, size_t off) : kind(k), offset(off) {}

  NodeKind kind;
  size_t offset;
  std::string text;                // kText: the text; kSet: target name; kFor: loop variable
  std::string attr;                // kSet: `ns.attr` target attribute, else empty
  std::unique_ptr<Expr> expr;      // kOutput, kSet: value; kFor: iterable
  std::unique_ptr<Expr> filter;    // kFor: `if` condition or null
  std::vector<IfBranch> branches;  // kIf
  std::vector<Node> body;          // kFor
  std::vector<Node> else_body;     // kIf, kFor
};

// ---------------------------------------------------------------------------
// Parser: jinja2's grammar, restricted to the supported subset.

// Supported filters, tests, functions and methods with how many arguments
// they take, not counting the filtered or tested value or the receiver.
struct Builtin {
  std::string_view name;
  size_t min_args;
  size_t max_args;
};
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

template <size_t N>
const Builtin* FindBuiltin(const Builtin (&table)[N], std::string_view name) {
  for (const Builtin& b : table) {
    if (b.name == name) return &b;
  }
  return nullptr;
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  absl::StatusOr<std::vector<Node>> ParseTemplate() {
    DSV2_ASSIGN_OR_RETURN(std::vector<Node> body, ParseStatements({}, "", 0));
    return body;
  }

 private:
  using ExprPtr = std::unique_ptr<Expr>;

  const Token& Cur() const { return tokens_[pos_]; }
  const Token& Peek(size_t k = 1) const { return tokens_[std::min(pos_ + k, tokens_.size() - 1)]; }
  void Advance() {
    if (pos_ + 1 < tokens_.size()) ++pos_;
  }
  bool IsOp(std::string_view op) const { return Cur().kind == Tok::kOp && Cur().text == op; }
  bool IsName(std::string_view name) const {
    return Cur().kind == Tok::kName && Cur().text == name;
  }

  static std::string Describe(const Token& t) {
    if (t.kind == Tok::kName || t.kind == Tok::kInt || t.kind == Tok::kOp) {
      return absl::StrCat("'", t.text, "'");
    }
    static constexpr const char* kNames[] = {
        "text", "'{{'", "'}}'", "'{%'", "'%}'", "", "string literal", "", "", "end of template"};
    return kNames[static_cast<int>(t.kind)];
  }

  absl::Status Unexpected(std::string_view expected) const {
    return SyntaxError(absl::StrCat("expected ", AV(expected), ", got ", Describe(Cur())),
                       Cur().offset);
  }
  absl::Status ExpectOp(std::string_view op) {
    if (!IsOp(op)) return Unexpected(absl::StrCat("'", AV(op), "'"));
    Advance();
    return absl::OkStatus();
  }
  absl::Status ExpectBlockEnd() {
    if (Cur().kind != Tok::kBlockEnd) return Unexpected("'%}'");
    Advance();
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ExpectName() {
    if (Cur().kind != Tok::kName) return Unexpected("a name");
    std::string name = Cur().text;
    Advance();
    return name;
  }

  // Counts recursion depth in both the block and the expression grammar.
  struct DepthGuard {
    explicit DepthGuard(int* d) : depth(d) { ++*depth; }
    ~DepthGuard() { --*depth; }
    DepthGuard(const DepthGuard&) = delete;
    int* depth;
  };
  absl::Status CheckDepth() const {
    if (depth_ > kMaxNestingDepth) {
      return SyntaxError(absl::StrCat("nesting deeper than ", kMaxNestingDepth), Cur().offset);
    }
    return absl::OkStatus();
  }

  template <typename... Operands>
  static ExprPtr MakeExpr(ExprKind kind, size_t offset, Operands... operands) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->offset = offset;
    (e->args.push_back(std::move(operands)), ...);
    return e;
  }

  // Parses nodes until a block tag whose name is in `end_names` (left as the
  // current token, after its '{%') or the end of the template (an error when
  // `end_names` is non-empty: `opener` at `opener_offset` was never closed).
  absl::StatusOr<std::vector<Node>> ParseStatements(const std::vector<std::string_view>& end_names,
                                                    std::string_view opener, size_t opener_offset) {
    DepthGuard guard(&depth_);
    DSV2_RETURN_IF_ERROR(CheckDepth());
    std::vector<Node> nodes;
    while (true) {
      const Token& t = Cur();
      if (t.kind == Tok::kEof) {
        if (end_names.empty()) return nodes;
        return SyntaxError(absl::StrCat("'{% ", AV(opener), " %}' is never closed (expected '{% ",
                                        AV(end_names.back()), " %}')"),
                           opener_offset);
      }
      if (t.kind == Tok::kData) {
        nodes.emplace_back(NodeKind::kText, t.offset).text = t.text;
        Advance();
      } else if (t.kind == Tok::kVarBegin) {
        Node n(NodeKind::kOutput, t.offset);
        Advance();
        DSV2_ASSIGN_OR_RETURN(n.expr, ParseExpression(true));
        if (Cur().kind != Tok::kVarEnd) return Unexpected("'}}'");
        Advance();
        nodes.push_back(std::move(n));
      } else if (t.kind == Tok::kBlockBegin) {
        Advance();
        if (Cur().kind != Tok::kName) return Unexpected("a tag name");
        const std::string& tag = Cur().text;
        if (std::find(end_names.begin(), end_names.end(), tag) != end_names.end()) return nodes;
        DSV2_ASSIGN_OR_RETURN(Node n, ParseStatement(t.offset));
        nodes.push_back(std::move(n));
      } else {
        return Unexpected("text, '{{' or '{%'");
      }
    }
  }

  // Parses an optional `{% else %}` body, then the `{% end_name %}` tag.
  absl::Status ParseElseAndEnd(std::string_view end_name, size_t offset, Node* n) {
    if (IsName("else")) {
      Advance();
      DSV2_RETURN_IF_ERROR(ExpectBlockEnd());
      DSV2_ASSIGN_OR_RETURN(n->else_body, ParseStatements({end_name}, "else", offset));
    }
    Advance();  // end_name
    return ExpectBlockEnd();
  }

  absl::StatusOr<Node> ParseStatement(size_t offset) {
    const std::string tag = Cur().text;
    Node n(NodeKind::kText, offset);
    if (tag == "if") {
      n.kind = NodeKind::kIf;
      std::string_view keyword = "if";
      while (true) {  // current token: 'if' or 'elif'
        Advance();
        IfBranch branch;
        DSV2_ASSIGN_OR_RETURN(branch.condition, ParseExpression(false));
        DSV2_RETURN_IF_ERROR(ExpectBlockEnd());
        DSV2_ASSIGN_OR_RETURN(branch.body,
                              ParseStatements({"elif", "else", "endif"}, keyword, offset));
        n.branches.push_back(std::move(branch));
        if (!IsName("elif")) break;
        keyword = "elif";
      }
      DSV2_RETURN_IF_ERROR(ParseElseAndEnd("endif", offset, &n));
      return n;
    }
    if (tag == "for") {
      n.kind = NodeKind::kFor;
      Advance();
      DSV2_ASSIGN_OR_RETURN(n.text, ExpectName());
      if (IsOp(",")) return SyntaxError("unsupported tuple unpacking in 'for'", Cur().offset);
      if (!IsName("in")) return Unexpected("'in'");
      Advance();
      DSV2_ASSIGN_OR_RETURN(n.expr, ParseExpression(false));
      if (IsName("if")) {
        Advance();
        DSV2_ASSIGN_OR_RETURN(n.filter, ParseExpression(true));
      }
      if (IsName("recursive")) return SyntaxError("unsupported recursive loop", Cur().offset);
      DSV2_RETURN_IF_ERROR(ExpectBlockEnd());
      ++loop_depth_;
      auto body = ParseStatements({"else", "endfor"}, "for", offset);
      --loop_depth_;
      if (!body.ok()) return body.status();
      n.body = std::move(*body);
      DSV2_RETURN_IF_ERROR(ParseElseAndEnd("endfor", offset, &n));
      return n;
    }
    if (tag == "set") {
      n.kind = NodeKind::kSet;
      Advance();
      DSV2_ASSIGN_OR_RETURN(n.text, ExpectName());
      if (IsOp(".")) {
        Advance();
        DSV2_ASSIGN_OR_RETURN(n.attr, ExpectName());
      }
      if (IsOp(",")) return SyntaxError("unsupported tuple assignment in 'set'", Cur().offset);
      if (Cur().kind == Tok::kBlockEnd) return SyntaxError("unsupported block 'set'", offset);
      DSV2_RETURN_IF_ERROR(ExpectOp("="));
      DSV2_ASSIGN_OR_RETURN(n.expr, ParseExpression(true));
      DSV2_RETURN_IF_ERROR(ExpectBlockEnd());
      return n;
    }
    if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) return SyntaxError(absl::StrCat("'", tag, "' outside a loop"), offset);
      n.kind = tag == "break" ? NodeKind::kBreak : NodeKind::kContinue;
      Advance();
      DSV2_RETURN_IF_ERROR(ExpectBlockEnd());
      return n;
    }
    if (tag == "elif" || tag == "else" || tag == "endif" || tag == "endfor") {
      return SyntaxError(absl::StrCat("unexpected '{% ", tag, " %}'"), offset);
    }
    return SyntaxError(absl::StrCat("unsupported tag '{% ", tag, " %}'"), offset);
  }

  // expression := or-expr ['if' or-expr ['else' expression]]  (with_condexpr)
  absl::StatusOr<ExprPtr> ParseExpression(bool with_condexpr) {
    DepthGuard guard(&depth_);
    DSV2_RETURN_IF_ERROR(CheckDepth());
    DSV2_ASSIGN_OR_RETURN(ExprPtr expr, ParseLogic(true));
    while (with_condexpr && IsName("if")) {
      const size_t offset = Cur().offset;
      Advance();
      DSV2_ASSIGN_OR_RETURN(ExprPtr test, ParseLogic(true));
      ExprPtr otherwise;
      if (IsName("else")) {
        Advance();
        DSV2_ASSIGN_OR_RETURN(otherwise, ParseExpression(true));
      }
      expr = MakeExpr(ExprKind::kCondExpr, offset, std::move(expr), std::move(test),
                      std::move(otherwise));
    }
    return expr;
  }

  // or-expr := and-expr ('or' and-expr)*; and-expr := not-expr ('and' not-expr)*
  absl::StatusOr<ExprPtr> ParseLogic(bool is_or) {
    auto operand = [&]() { return is_or ? ParseLogic(false) : ParseNot(); };
    DSV2_ASSIGN_OR_RETURN(ExprPtr left, operand());
    while (IsName(is_or ? "or" : "and")) {
      const size_t offset = Cur().offset;
      Advance();
      DSV2_ASSIGN_OR_RETURN(ExprPtr right, operand());
      left = MakeExpr(is_or ? ExprKind::kOr : ExprKind::kAnd, offset, std::move(left),
                      std::move(right));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseNot() {
    if (IsName("not")) {
      DepthGuard guard(&depth_);
      DSV2_RETURN_IF_ERROR(CheckDepth());
      const size_t offset = Cur().offset;
      Advance();
      DSV2_ASSIGN_OR_RETURN(ExprPtr operand, ParseNot());
      return MakeExpr(ExprKind::kNot, offset, std::move(operand));
    }
    return ParseCompare();
  }

  absl::StatusOr<ExprPtr> ParseCompare() {
    static constexpr std::pair<std::string_view, CmpOp> kOps[] = {
        {"==", CmpOp::kEq}, {"!=", CmpOp::kNe}, {"<", CmpOp::kLt},
        {"<=", CmpOp::kLe}, {">", CmpOp::kGt},  {">=", CmpOp::kGe}};
    const size_t offset = Cur().offset;
    DSV2_ASSIGN_OR_RETURN(ExprPtr first, ParseMath(true));
    std::vector<CmpOp> ops;
    std::vector<ExprPtr> operands;
    while (true) {
      auto it = std::find_if(std::begin(kOps), std::end(kOps),
                             [&](const auto& o) { return IsOp(o.first); });
      CmpOp op;
      if (it != std::end(kOps)) {
        op = it->second;
      } else if (IsName("in")) {
        op = CmpOp::kIn;
      } else if (IsName("not") && Peek().kind == Tok::kName && Peek().text == "in") {
        op = CmpOp::kNotIn;
        Advance();
      } else {
        break;
      }
      Advance();
      ops.push_back(op);
      DSV2_ASSIGN_OR_RETURN(ExprPtr operand, ParseMath(true));
      operands.push_back(std::move(operand));
    }
    if (ops.empty()) return first;
    auto e = MakeExpr(ExprKind::kCompare, offset);
    e->cmp_ops = std::move(ops);
    e->args.push_back(std::move(first));
    for (auto& operand : operands) e->args.push_back(std::move(operand));
    return e;
  }

  // math1 := concat (('+' | '-') concat)*
  // math2 := unary (('*' | '//' | '%') unary)*
  absl::StatusOr<ExprPtr> ParseMath(bool additive) {
    static constexpr std::pair<std::string_view, BinOp> kOps[] = {{"+", BinOp::kAdd},
                                                                  {"-", BinOp::kSub},
                                                                  {"*", BinOp::kMul},
                                                                  {"//", BinOp::kFloorDiv},
                                                                  {"%", BinOp::kMod}};
    auto operand = [&]() { return additive ? ParseConcat() : ParseUnary(true); };
    DSV2_ASSIGN_OR_RETURN(ExprPtr left, operand());
    while (true) {
      if (!additive && (IsOp("/") || IsOp("**"))) {
        return SyntaxError(absl::StrCat("unsupported operator '", Cur().text, "'"), Cur().offset);
      }
      auto it =
          std::find_if(std::begin(kOps) + (additive ? 0 : 2), std::begin(kOps) + (additive ? 2 : 5),
                       [&](const auto& o) { return IsOp(o.first); });
      if (it == std::begin(kOps) + (additive ? 2 : 5)) return left;
      const size_t offset = Cur().offset;
      Advance();
      DSV2_ASSIGN_OR_RETURN(ExprPtr right, operand());
      left = MakeExpr(ExprKind::kBinary, offset, std::move(left), std::move(right));
      left->bin_op = it->second;
    }
  }

  absl::StatusOr<ExprPtr> ParseConcat() {
    const size_t offset = Cur().offset;
    DSV2_ASSIGN_OR_RETURN(ExprPtr first, ParseMath(false));
    if (!IsOp("~")) return first;
    auto e = MakeExpr(ExprKind::kConcat, offset, std::move(first));
    while (IsOp("~")) {
      Advance();
      DSV2_ASSIGN_OR_RETURN(ExprPtr next, ParseMath(false));
      e->args.push_back(std::move(next));
    }
    return e;
  }

  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter) {
    DepthGuard guard(&depth_);
    DSV2_RETURN_IF_ERROR(CheckDepth());
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      const ExprKind kind = IsOp("-") ? ExprKind::kNeg : ExprKind::kPos;
      const size_t offset = Cur().offset;
      Advance();
      DSV2_ASSIGN_OR_RETURN(ExprPtr operand, ParseUnary(false));
      node = MakeExpr(kind, offset, std::move(operand));
    } else {
      DSV2_ASSIGN_OR_RETURN(node, ParsePrimary());
    }
    DSV2_ASSIGN_OR_RETURN(node, ParsePostfix(std::move(node)));
    if (with_filter) {
      DSV2_ASSIGN_OR_RETURN(node, ParseFilterExpr(std::move(node)));
    }
    return node;
  }

  absl::StatusOr<ExprPtr> ParsePrimary() {
    const Token& t = Cur();
    if (t.kind == Tok::kName) {
      auto e = MakeExpr(ExprKind::kLiteral, t.offset);
      if (t.text == "true" || t.text == "True") {
        e->literal = Value::Bool(true);
      } else if (t.text == "false" || t.text == "False") {
        e->literal = Value::Bool(false);
      } else if (t.text == "none" || t.text == "None") {
        e->literal = Value::None();
      } else {
        e->kind = ExprKind::kName;
        e->name = t.text;
      }
      Advance();
      return e;
    }
    if (t.kind == Tok::kString) {
      auto e = MakeExpr(ExprKind::kLiteral, t.offset);
      std::string s;
      while (Cur().kind == Tok::kString) {  // adjacent literals concatenate
        s += Cur().text;
        Advance();
      }
      e->literal = Value::Str(std::move(s));
      return e;
    }
    if (t.kind == Tok::kInt) {
      auto e = MakeExpr(ExprKind::kLiteral, t.offset);
      e->literal = Value::Int(t.int_value);
      Advance();
      return e;
    }
    if (IsOp("(") || IsOp("[") || IsOp("{")) {  // a tuple is a list here
      const bool paren = IsOp("("), dict = IsOp("{");
      auto e = MakeExpr(dict ? ExprKind::kDict : ExprKind::kList, t.offset);
      Advance();
      bool saw_comma = false;
      DSV2_RETURN_IF_ERROR(ParseItems(e.get(), paren ? ")" : dict ? "}" : "]", dict, &saw_comma));
      if (paren && e->args.size() == 1 && !saw_comma) return std::move(e->args[0]);  // grouping
      return e;
    }
    return Unexpected("an expression");
  }

  // Parses `item (',' item)* [',']` and then `close`; dict items are
  // `key ':' value`. *saw_comma tells a tuple `(x,)` from a grouping `(x)`.
  absl::Status ParseItems(Expr* out, std::string_view close, bool dict, bool* saw_comma) {
    while (!IsOp(close)) {
      if (!out->args.empty()) {
        DSV2_RETURN_IF_ERROR(ExpectOp(","));
        *saw_comma = true;
        if (IsOp(close)) break;
      }
      DSV2_ASSIGN_OR_RETURN(ExprPtr item, ParseExpression(true));
      out->args.push_back(std::move(item));
      if (dict) {
        DSV2_RETURN_IF_ERROR(ExpectOp(":"));
        DSV2_ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
        out->args.push_back(std::move(value));
      }
    }
    Advance();  // close
    return absl::OkStatus();
  }

  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr node) {
    while (true) {
      if (IsOp(".")) {
        const size_t offset = Cur().offset;
        Advance();
        if (Cur().kind == Tok::kInt) {  // foo.0 is foo[0]
          auto index = MakeExpr(ExprKind::kLiteral, Cur().offset);
          index->literal = Value::Int(Cur().int_value);
          Advance();
          node = MakeExpr(ExprKind::kGetItem, offset, std::move(node), std::move(index));
          continue;
        }
        DSV2_ASSIGN_OR_RETURN(std::string attr, ExpectName());
        if (IsOp("(")) {
          const Builtin* method = FindBuiltin(kMethods, attr);
          if (method == nullptr) {
            return SyntaxError(absl::StrCat("unsupported method '", attr, "'"), offset);
          }
          auto call = MakeExpr(ExprKind::kMethodCall, offset, std::move(node));
          call->name = attr;
          DSV2_RETURN_IF_ERROR(ParseCallArgs(call.get(), *method, 1, /*allow_kwargs=*/false));
          node = std::move(call);
          continue;
        }
        node = MakeExpr(ExprKind::kGetAttr, offset, std::move(node));
        node->name = attr;
      } else if (IsOp("[")) {
        DSV2_ASSIGN_OR_RETURN(node, ParseSubscript(std::move(node)));
      } else if (IsOp("(")) {
        const Builtin* function =
            node->kind == ExprKind::kName ? FindBuiltin(kFunctions, node->name) : nullptr;
        if (function == nullptr) {
          return SyntaxError(
              absl::StrCat("unsupported call", node->kind == ExprKind::kName
                                                   ? absl::StrCat(" to '", node->name, "'")
                                                   : ""),
              Cur().offset);
        }
        auto call = MakeExpr(ExprKind::kCall, node->offset);
        call->name = node->name;
        DSV2_RETURN_IF_ERROR(ParseCallArgs(call.get(), *function, 0, call->name == "namespace"));
        node = std::move(call);
      } else {
        return node;
      }
    }
  }

  // subscript := '[' expression ']' | '[' [e] ':' [e] [':' [e]] ']'
  absl::StatusOr<ExprPtr> ParseSubscript(ExprPtr node) {
    const size_t offset = Cur().offset;
    Advance();  // '['
    ExprPtr parts[3];
    int part = 0;
    bool is_slice = false;
    while (true) {
      if (IsOp(":")) {
        if (++part > 2) return Unexpected("']'");
        is_slice = true;
        Advance();
        continue;
      }
      if (IsOp("]")) break;
      if (parts[part] != nullptr) return Unexpected(is_slice ? "':' or ']'" : "']'");
      DSV2_ASSIGN_OR_RETURN(parts[part], ParseExpression(true));
    }
    Advance();  // ']'
    if (!is_slice) {
      if (parts[0] == nullptr) return SyntaxError("empty subscript", offset);
      return MakeExpr(ExprKind::kGetItem, offset, std::move(node), std::move(parts[0]));
    }
    return MakeExpr(ExprKind::kSlice, offset, std::move(node), std::move(parts[0]),
                    std::move(parts[1]), std::move(parts[2]));
  }

  // '(' [args] [name '=' expr ...] ')'
  // `call->args` already holds `num_subjects` operands (the filtered value,
  // the receiver); the count of the rest must fit `builtin`.
  absl::Status ParseCallArgs(Expr* call, const Builtin& builtin, size_t num_subjects,
                             bool allow_kwargs) {
    const size_t offset = Cur().offset;
    DSV2_RETURN_IF_ERROR(ExpectOp("("));
    bool first = true;
    while (!IsOp(")")) {
      if (!first) DSV2_RETURN_IF_ERROR(ExpectOp(","));
      first = false;
      if (IsOp(")")) break;
      if (IsOp("*") || IsOp("**")) return SyntaxError("unsupported *args/**kwargs", Cur().offset);
      if (Cur().kind == Tok::kName && Peek().kind == Tok::kOp && Peek().text == "=") {
        if (!allow_kwargs) {
          return SyntaxError(absl::StrCat("unsupported keyword argument '", Cur().text, "'"),
                             Cur().offset);
        }
        std::string key = Cur().text;
        Advance();
        Advance();
        DSV2_ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
        call->kwargs.emplace_back(std::move(key), std::move(value));
        continue;
      }
      if (!call->kwargs.empty()) {
        return SyntaxError("positional argument after keyword argument", Cur().offset);
      }
      DSV2_ASSIGN_OR_RETURN(ExprPtr arg, ParseExpression(true));
      call->args.push_back(std::move(arg));
    }
    Advance();  // ')'
    const size_t n = call->args.size() - num_subjects;
    if (n < builtin.min_args || n > builtin.max_args) {
      return SyntaxError(
          absl::StrCat(
              "'", AV(builtin.name), "' takes ", builtin.min_args,
              builtin.max_args == builtin.min_args ? "" : absl::StrCat(" to ", builtin.max_args),
              " positional argument(s), got ", n),
          offset);
    }
    return absl::OkStatus();
  }

  // Filters (`| name[(args)]`) and tests (`is [not] name[(args)]`).
  absl::StatusOr<ExprPtr> ParseFilterExpr(ExprPtr node) {
    while (true) {
      if (IsOp("|")) {
        Advance();
        const size_t offset = Cur().offset;
        DSV2_ASSIGN_OR_RETURN(std::string name, ExpectName());
        const Builtin* filter = FindBuiltin(kFilters, name);
        if (filter == nullptr) {
          return SyntaxError(absl::StrCat("unknown filter '", name, "'"), offset);
        }
        auto e = MakeExpr(ExprKind::kFilter, offset, std::move(node));
        e->name = name;
        if (IsOp("(")) {
          DSV2_RETURN_IF_ERROR(ParseCallArgs(e.get(), *filter, 1, /*allow_kwargs=*/false));
        }
        node = std::move(e);
      } else if (IsName("is")) {
        Advance();
        auto e = MakeExpr(ExprKind::kTest, Cur().offset);
        if (IsName("not")) {
          e->negated = true;
          Advance();
        }
        const size_t offset = Cur().offset;
        if (Cur().kind != Tok::kName) return Unexpected("a test name");
        // `none`, `true` and `false` are names here, not literals.
        std::string name = Cur().text;
        Advance();
        const Builtin* test = FindBuiltin(kTests, name);
        if (test == nullptr) return SyntaxError(absl::StrCat("unknown test '", name, "'"), offset);
        e->name = name;
        e->args.push_back(std::move(node));
        if (IsOp("(")) {
          DSV2_RETURN_IF_ERROR(ParseCallArgs(e.get(), *test, 1, /*allow_kwargs=*/false));
        }
        const bool primary_follows =
            (Cur().kind == Tok::kName && !IsName("else") && !IsName("or") && !IsName("and")) ||
            Cur().kind == Tok::kString || Cur().kind == Tok::kInt || IsOp("(") || IsOp("[") ||
            IsOp("{");
        if (primary_follows) return SyntaxError("unsupported test argument", Cur().offset);
        node = std::move(e);
      } else {
        return node;
      }
    }
  }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

// ---------------------------------------------------------------------------
// Evaluator.

absl::Status RenderError(std::string_view what, size_t offset) {
  return absl::InvalidArgumentError(
      absl::StrCat("chat template render: ", AV(what), " (at offset ", offset, ")"));
}

class Renderer {
 public:
  explicit Renderer(const ChatTemplateInputs& inputs) {
    ValueList messages;
    messages.reserve(inputs.messages.size());
    for (const ChatMessage& m : inputs.messages) {
      ValueMap map;
      map.Set("role", Value::Str(m.role));
      map.Set("content", Value::Str(m.content));
      messages.push_back(Value::Map(std::move(map)));
    }
    ValueMap globals;
    globals.Set("messages", Value::List(std::move(messages)));
    globals.Set("add_generation_prompt", Value::Bool(inputs.add_generation_prompt));
    globals.Set("bos_token", Value::Str(inputs.bos_token));
    globals.Set("eos_token", Value::Str(inputs.eos_token));
    globals.Set("tools", Value::None());
    globals.Set("documents", Value::None());
    scopes_.push_back(std::move(globals));
  }

  absl::Status Exec(const std::vector<Node>& nodes) {
    for (const Node& n : nodes) {
      DSV2_RETURN_IF_ERROR(ExecNode(n));
      if (flow_ != Flow::kNormal) break;
    }
    return absl::OkStatus();
  }

  std::string TakeOutput() { return std::move(out_); }

 private:
  enum class Flow { kNormal, kBreak, kContinue };
  using ExprPtr = std::unique_ptr<Expr>;

  absl::Status ExecNode(const Node& n) {
    switch (n.kind) {
      case NodeKind::kText:
        out_ += n.text;
        return absl::OkStatus();
      case NodeKind::kOutput: {
        DSV2_ASSIGN_OR_RETURN(Value v, Eval(*n.expr));
        out_ += ToStr(v);
        return absl::OkStatus();
      }
      case NodeKind::kIf:
        for (const IfBranch& b : n.branches) {
          DSV2_ASSIGN_OR_RETURN(Value cond, Eval(*b.condition));
          if (Truthy(cond)) return Exec(b.body);
        }
        return Exec(n.else_body);
      case NodeKind::kFor:
        return ExecFor(n);
      case NodeKind::kSet: {
        DSV2_ASSIGN_OR_RETURN(Value v, Eval(*n.expr));
        if (n.attr.empty()) {
          scopes_.back().Set(n.text, std::move(v));
          return absl::OkStatus();
        }
        const Value target = Lookup(n.text);
        if (!target.is_namespace()) {
          return RenderError(
              absl::StrCat("cannot assign attribute '", n.attr, "' on non-namespace '", n.text,
                           "' (", TypeName(target), ")"),
              n.offset);
        }
        target.ns().attrs.Set(n.attr, std::move(v));
        return absl::OkStatus();
      }
      case NodeKind::kBreak:
        flow_ = Flow::kBreak;
        return absl::OkStatus();
      case NodeKind::kContinue:
        flow_ = Flow::kContinue;
        return absl::OkStatus();
    }
    return absl::OkStatus();
  }

  static absl::StatusOr<ValueList> Iterate(const Value& v, size_t offset) {
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

  absl::Status ExecFor(const Node& n) {
    DSV2_ASSIGN_OR_RETURN(Value iterable, Eval(*n.expr));
    DSV2_ASSIGN_OR_RETURN(ValueList items, Iterate(iterable, n.expr->offset));
    if (n.filter != nullptr) {  // loop.* counts only the items that pass
      ValueList kept;
      for (Value& item : items) {
        scopes_.emplace_back();
        scopes_.back().Set(n.text, item);
        auto keep = Eval(*n.filter);
        scopes_.pop_back();
        if (!keep.ok()) return keep.status();
        if (Truthy(*keep)) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) return Exec(n.else_body);
    const int64_t length = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < length; ++i) {
      if (++iterations_ > kMaxLoopIterations) {
        return RenderError(absl::StrCat("more than ", kMaxLoopIterations, " loop iterations"),
                           n.offset);
      }
      ValueMap loop;
      loop.Set("index", Value::Int(i + 1));
      loop.Set("index0", Value::Int(i));
      loop.Set("revindex", Value::Int(length - i));
      loop.Set("revindex0", Value::Int(length - i - 1));
      loop.Set("first", Value::Bool(i == 0));
      loop.Set("last", Value::Bool(i == length - 1));
      loop.Set("length", Value::Int(length));
      // Each iteration is a fresh scope: a `set` inside the body is neither
      // seen by the next iteration nor after the loop (jinja2 semantics).
      scopes_.emplace_back();
      scopes_.back().Set(n.text, items[i]);
      scopes_.back().Set("loop", Value::Map(std::move(loop)));
      absl::Status status = Exec(n.body);
      scopes_.pop_back();
      DSV2_RETURN_IF_ERROR(status);
      if (flow_ == Flow::kBreak) {
        flow_ = Flow::kNormal;
        break;
      }
      flow_ = Flow::kNormal;
    }
    return absl::OkStatus();
  }

  Value Lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      if (const Value* v = it->Find(name)) return *v;
    }
    return Value::Undef(absl::StrCat("'", name, "' is undefined"));
  }

  // Jinja's default Undefined fails when used as an operand.
  static absl::Status CheckDefined(const Value& v, size_t offset) {
    if (v.is_undefined()) return RenderError(v.undefined_hint(), offset);
    return absl::OkStatus();
  }

  // Lazy expressions evaluate their own operands. Every other kind evaluates
  // all of its operands first, left to right (a missing slice bound is none),
  // and Apply then computes the result from their values.
  absl::StatusOr<Value> Eval(const Expr& e) {
    switch (e.kind) {
      case ExprKind::kLiteral:
        return e.literal;
      case ExprKind::kName:
        return Lookup(e.name);
      case ExprKind::kAnd:
      case ExprKind::kOr: {  // Python semantics: the result is an operand
        DSV2_ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
        if (Truthy(a) == (e.kind == ExprKind::kOr)) return a;
        return Eval(*e.args[1]);
      }
      case ExprKind::kCondExpr: {
        DSV2_ASSIGN_OR_RETURN(Value cond, Eval(*e.args[1]));
        if (Truthy(cond)) return Eval(*e.args[0]);
        if (e.args[2] == nullptr) return Value::Undef("the inline if had no else branch");
        return Eval(*e.args[2]);
      }
      case ExprKind::kCompare:
        return EvalCompare(e);
      case ExprKind::kCall:
        if (e.name == "namespace") return MakeNamespace(e);
        break;
      default:
        break;
    }
    std::vector<Value> v;
    v.reserve(e.args.size());
    for (const ExprPtr& arg : e.args) {
      if (arg == nullptr) {
        v.push_back(Value::None());
        continue;
      }
      DSV2_ASSIGN_OR_RETURN(Value x, Eval(*arg));
      v.push_back(std::move(x));
    }
    return Apply(e, std::move(v));
  }

  absl::StatusOr<Value> MakeNamespace(const Expr& e) {
    auto ns = std::make_shared<Namespace>();
    for (const auto& [key, expr] : e.kwargs) {
      DSV2_ASSIGN_OR_RETURN(Value v, Eval(*expr));
      ns->attrs.Set(key, std::move(v));
    }
    return Value{std::move(ns)};
  }

  static absl::StatusOr<Value> Apply(const Expr& e, std::vector<Value> v) {
    switch (e.kind) {
      case ExprKind::kGetAttr:
      case ExprKind::kGetItem:
        DSV2_RETURN_IF_ERROR(CheckDefined(v[0], e.offset));
        return GetItem(v[0], e.kind == ExprKind::kGetAttr ? Value::Str(e.name) : v[1]);
      case ExprKind::kSlice:
        return Slice(v, e.offset);
      case ExprKind::kNot:
        return Value::Bool(!Truthy(v[0]));
      case ExprKind::kNeg:
      case ExprKind::kPos:
        DSV2_RETURN_IF_ERROR(CheckDefined(v[0], e.offset));
        if (!v[0].is_number()) {
          return RenderError(
              absl::StrCat("bad operand type for unary ", e.kind == ExprKind::kNeg ? "-" : "+",
                           ": '", TypeName(v[0]), "'"),
              e.offset);
        }
        if (e.kind == ExprKind::kPos) return Value::Int(v[0].number());
        if (v[0].number() == INT64_MIN) return RenderError("integer overflow", e.offset);
        return Value::Int(-v[0].number());
      case ExprKind::kBinary:
        return Binary(e.bin_op, v[0], v[1], e.offset);
      case ExprKind::kConcat: {
        std::string s;
        for (const Value& x : v) s += ToStr(x);
        return Value::Str(std::move(s));
      }
      case ExprKind::kFilter:
        return Filter(e.name, v, e.offset);
      case ExprKind::kTest: {
        DSV2_ASSIGN_OR_RETURN(const bool result, Test(e.name, v[0], e.offset));
        return Value::Bool(result != e.negated);
      }
      case ExprKind::kCall:
        return Call(e.name, v, e.offset);
      case ExprKind::kMethodCall:
        return Method(e.name, v, e.offset);
      case ExprKind::kList:
        return Value::List(std::move(v));
      case ExprKind::kDict: {
        ValueMap map;
        for (size_t i = 0; i + 1 < v.size(); i += 2) {
          if (!v[i].is_str()) {
            return RenderError(absl::StrCat("unsupported dict key type '", TypeName(v[i]), "'"),
                               e.offset);
          }
          map.Set(v[i].str(), std::move(v[i + 1]));
        }
        return Value::Map(std::move(map));
      }
      default:  // the lazy kinds are handled in Eval
        return RenderError("unexpected expression", e.offset);
    }
  }

  // jinja2's getattr/getitem: a missing key, attribute or index is Undefined.
  static Value GetItem(const Value& obj, const Value& key) {
    if (obj.is_map() || obj.is_namespace()) {
      const ValueMap& map = obj.is_map() ? obj.map() : obj.ns().attrs;
      if (key.is_str()) {
        if (const Value* v = map.Find(key.str())) return *v;
      }
      return Value::Undef(
          absl::StrCat("'", TypeName(obj), " object' has no attribute ", Repr(key)));
    }
    if ((obj.is_list() || obj.is_str()) && key.is_number()) {
      std::vector<size_t> offsets;
      const int64_t size =
          obj.is_list() ? static_cast<int64_t>(obj.list().size())
                        : static_cast<int64_t>((offsets = CodePointOffsets(obj.str())).size() - 1);
      int64_t index = key.number();
      if (index < 0) index += size;
      if (index >= 0 && index < size) {
        if (obj.is_list()) return obj.list()[index];
        return Value::Str(obj.str().substr(offsets[index], offsets[index + 1] - offsets[index]));
      }
    }
    return Value::Undef(absl::StrCat("'", TypeName(obj), " object' has no attribute ", Repr(key)));
  }

  // Python slice semantics (CPython's PySlice_AdjustIndices). v: the object,
  // then start, stop and step (none when omitted).
  static absl::StatusOr<Value> Slice(const std::vector<Value>& v, size_t offset) {
    const Value& obj = v[0];
    DSV2_RETURN_IF_ERROR(CheckDefined(obj, offset));
    if (!obj.is_list() && !obj.is_str()) {
      return RenderError(absl::StrCat("'", TypeName(obj), "' object is not sliceable"), offset);
    }
    int64_t bounds[3] = {0, 0, 1};
    bool given[3] = {false, false, false};
    for (int k = 0; k < 3; ++k) {
      if (v[k + 1].is_none()) continue;
      if (!v[k + 1].is_number()) return RenderError("slice indices must be integers", offset);
      bounds[k] = v[k + 1].number();
      given[k] = true;
    }
    const int64_t step = bounds[2];
    if (step == 0) return RenderError("slice step cannot be zero", offset);
    std::vector<size_t> offsets;
    if (obj.is_str()) offsets = CodePointOffsets(obj.str());
    const int64_t len =
        static_cast<int64_t>(obj.is_list() ? obj.list().size() : offsets.size() - 1);
    auto adjust = [&](int64_t i, bool is_given, int64_t dflt) {
      if (!is_given) return dflt;
      if (i < 0) {
        i += len;
        if (i < 0) i = step < 0 ? -1 : 0;
      } else if (i >= len) {
        i = step < 0 ? len - 1 : len;
      }
      return i;
    };
    const int64_t start = adjust(bounds[0], given[0], step < 0 ? len - 1 : 0);
    const int64_t stop = adjust(bounds[1], given[1], step < 0 ? -1 : len);
    ValueList items;
    std::string s;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      if (obj.is_list()) {
        items.push_back(obj.list()[i]);
      } else {
        s.append(obj.str(), offsets[i], offsets[i + 1] - offsets[i]);
      }
    }
    if (obj.is_list()) return Value::List(std::move(items));
    return Value::Str(std::move(s));
  }

  static absl::StatusOr<Value> Binary(BinOp op, const Value& a, const Value& b, size_t offset) {
    static constexpr std::string_view kNames[] = {"+", "-", "*", "//", "%"};
    DSV2_RETURN_IF_ERROR(CheckDefined(a, offset));
    DSV2_RETURN_IF_ERROR(CheckDefined(b, offset));
    if (a.is_number() && b.is_number()) {
      const int64_t x = a.number(), y = b.number();
      int64_t r = 0;
      bool overflow = false;
      if (op == BinOp::kAdd) {
        overflow = __builtin_add_overflow(x, y, &r);
      } else if (op == BinOp::kSub) {
        overflow = __builtin_sub_overflow(x, y, &r);
      } else if (op == BinOp::kMul) {
        overflow = __builtin_mul_overflow(x, y, &r);
      } else {  // floor division and modulo round toward -inf, as in Python
        if (y == 0) return RenderError("integer division or modulo by zero", offset);
        overflow = x == INT64_MIN && y == -1;
        int64_t q = overflow ? 0 : x / y, m = overflow ? 0 : x % y;
        if (m != 0 && ((m < 0) != (y < 0))) {
          --q;
          m += y;
        }
        r = op == BinOp::kFloorDiv ? q : m;
      }
      if (overflow) return RenderError("integer overflow", offset);
      return Value::Int(r);
    }
    if (op == BinOp::kAdd && a.is_str() && b.is_str()) {
      if (a.str().size() + b.str().size() > kMaxStringBytes) {
        return RenderError("string too long", offset);
      }
      return Value::Str(a.str() + b.str());
    }
    if (op == BinOp::kAdd && a.is_list() && b.is_list()) {
      ValueList items = a.list();
      items.insert(items.end(), b.list().begin(), b.list().end());
      return Value::List(std::move(items));
    }
    if (op == BinOp::kMul && (((a.is_str() || a.is_list()) && b.is_number()) ||
                              ((b.is_str() || b.is_list()) && a.is_number()))) {
      const Value& seq = a.is_number() ? b : a;
      const int64_t times = std::max<int64_t>(0, a.is_number() ? a.number() : b.number());
      const size_t unit = seq.is_str() ? seq.str().size() : seq.list().size();
      if (unit != 0 && static_cast<uint64_t>(times) > kMaxStringBytes / unit) {
        return RenderError("repetition result too large", offset);
      }
      if (seq.is_str()) {
        std::string s;
        for (int64_t i = 0; i < times; ++i) s += seq.str();
        return Value::Str(std::move(s));
      }
      ValueList items;
      for (int64_t i = 0; i < times; ++i) {
        items.insert(items.end(), seq.list().begin(), seq.list().end());
      }
      return Value::List(std::move(items));
    }
    if (op == BinOp::kMod && a.is_str()) {
      return RenderError("unsupported '%' string formatting", offset);
    }
    return RenderError(
        absl::StrCat("unsupported operand types for ", AV(kNames[static_cast<int>(op)]), ": '",
                     TypeName(a), "' and '", TypeName(b), "'"),
        offset);
  }

  absl::StatusOr<Value> EvalCompare(const Expr& e) {
    DSV2_ASSIGN_OR_RETURN(Value left, Eval(*e.args[0]));
    for (size_t i = 0; i < e.cmp_ops.size(); ++i) {  // Python chains: a < b < c
      DSV2_ASSIGN_OR_RETURN(Value right, Eval(*e.args[i + 1]));
      DSV2_ASSIGN_OR_RETURN(bool result, Compare(e.cmp_ops[i], left, right, e.offset));
      if (!result) return Value::Bool(false);
      left = std::move(right);
    }
    return Value::Bool(true);
  }

  static absl::StatusOr<bool> Compare(CmpOp op, const Value& a, const Value& b, size_t offset) {
    if (op == CmpOp::kEq || op == CmpOp::kNe) return Equals(a, b) == (op == CmpOp::kEq);
    if (op == CmpOp::kIn || op == CmpOp::kNotIn) {
      DSV2_ASSIGN_OR_RETURN(const bool found, Contains(b, a, offset));
      return found == (op == CmpOp::kIn);
    }
    DSV2_ASSIGN_OR_RETURN(const int cmp, Order(a, b, offset));
    return op == CmpOp::kLt   ? cmp < 0
           : op == CmpOp::kLe ? cmp <= 0
           : op == CmpOp::kGt ? cmp > 0
                              : cmp >= 0;
  }

  // Python's ordering: numbers, strings (code point order, which is UTF-8
  // byte order) and lists (lexicographic); anything else is a TypeError.
  static absl::StatusOr<int> Order(const Value& a, const Value& b, size_t offset) {
    DSV2_RETURN_IF_ERROR(CheckDefined(a, offset));
    DSV2_RETURN_IF_ERROR(CheckDefined(b, offset));
    if (a.is_number() && b.is_number()) {
      return a.number() < b.number() ? -1 : a.number() > b.number() ? 1 : 0;
    }
    if (a.is_str() && b.is_str()) {
      const int c = a.str().compare(b.str());
      return c < 0 ? -1 : c > 0 ? 1 : 0;
    }
    if (a.is_list() && b.is_list()) {
      const ValueList& x = a.list();
      const ValueList& y = b.list();
      for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
        if (!Equals(x[i], y[i])) return Order(x[i], y[i], offset);
      }
      return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
    }
    return RenderError(
        absl::StrCat("unsupported comparison between '", TypeName(a), "' and '", TypeName(b), "'"),
        offset);
  }

  static absl::StatusOr<bool> Contains(const Value& container, const Value& item, size_t offset) {
    if (container.is_undefined()) return false;  // Undefined iterates as empty
    if (container.is_str()) {
      if (!item.is_str()) {
        return RenderError(
            absl::StrCat("'in <string>' requires string as left operand, not ", TypeName(item)),
            offset);
      }
      return container.str().find(item.str()) != std::string::npos;
    }
    if (container.is_list()) {
      for (const Value& v : container.list()) {
        if (Equals(v, item)) return true;
      }
      return false;
    }
    if (container.is_map()) {
      if (item.is_list() || item.is_map() || item.is_namespace()) {
        return RenderError(absl::StrCat("unhashable type: '", TypeName(item), "'"), offset);
      }
      return item.is_str() && container.map().Find(item.str()) != nullptr;
    }
    return RenderError(absl::StrCat("argument of type '", TypeName(container), "' is not iterable"),
                       offset);
  }

  static absl::StatusOr<Value> ChangeCase(const std::string& s, bool upper, size_t offset) {
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
  static absl::StatusOr<Value> Strip(const std::string& s, StripSide side, const Value& chars,
                                     size_t offset) {
    if (chars.is_none()) return Value::Str(PyStrip(s, side, nullptr));
    if (!chars.is_str()) return RenderError("strip characters must be a string or none", offset);
    return Value::Str(PyStrip(s, side, &chars.str()));
  }

  // Filters; v[0] is the filtered value. Argument counts were checked by Parse.
  static absl::StatusOr<Value> Filter(const std::string& f, const std::vector<Value>& v,
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

  static absl::StatusOr<bool> Test(const std::string& t, const Value& v, size_t offset) {
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
  static absl::StatusOr<Value> Call(const std::string& f, const std::vector<Value>& v,
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
  static absl::StatusOr<Value> Method(const std::string& m, const std::vector<Value>& v,
                                      size_t offset) {
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

  // Python's str.split(sep, maxsplit); sep none splits on whitespace runs.
  static absl::StatusOr<Value> Split(const std::string& s, const Value& sep, int64_t maxsplit,
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

  std::vector<ValueMap> scopes_;  // [0] holds the template's variables
  std::string out_;
  Flow flow_ = Flow::kNormal;
  int64_t iterations_ = 0;
};

}  // namespace chat_template_internal

struct ChatTemplate::Program {
  std::vector<chat_template_internal::Node> body;
};

ChatTemplate::ChatTemplate(std::shared_ptr<const Program> program) : program_(std::move(program)) {}

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(std::string_view source) {
  namespace internal = chat_template_internal;
  const std::string normalized = internal::NormalizeNewlines(source);
  DSV2_ASSIGN_OR_RETURN(std::vector<internal::Token> tokens, internal::Lexer(normalized).Run());
  auto program = std::make_shared<Program>();
  DSV2_ASSIGN_OR_RETURN(program->body, internal::Parser(std::move(tokens)).ParseTemplate());
  return ChatTemplate(std::move(program));
}

absl::StatusOr<std::string> ChatTemplate::Render(const ChatTemplateInputs& inputs) const {
  chat_template_internal::Renderer renderer(inputs);
  DSV2_RETURN_IF_ERROR(renderer.Exec(program_->body));
  return renderer.TakeOutput();
}

std::string RenderFallbackChat(const ChatTemplateInputs& inputs) {
  std::string out = inputs.bos_token;
  for (const ChatMessage& m : inputs.messages) {
    if (m.role == "user") {
      absl::StrAppend(&out, "User: ", m.content, "\n\n");
    } else if (m.role == "assistant") {
      absl::StrAppend(&out, "Assistant: ", m.content, inputs.eos_token);
    } else if (m.role == "system") {
      absl::StrAppend(&out, m.content, "\n\n");
    }
  }
  if (inputs.add_generation_prompt) out += "Assistant:";
  return out;
}

absl::Status ValidateChatMessages(const std::vector<ChatMessage>& messages) {
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat(
          "message ", i, " has role '", role, "'; allowed roles are system, user, assistant"));
    }
  }
  return absl::OkStatus();
}

}  // namespace dsv2
