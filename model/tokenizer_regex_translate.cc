// TranslateOnigRegex (tokenizer_internal.h): Oniguruma patterns of tokenizer.json, as
// `tokenizers` (0.23.3) compiles them (SysRegex, Ruby syntax, UTF-8), rewritten for RE2
// so that they match the same text. Classes whose Unicode tables differ between the two
// engines are spelled out from the tables measured on `tokenizers` (unicode_internal.h).
// tests/model/tokenizer_test.cc checks the translation and the resulting splits.
#include <array>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "model/tokenizer_internal.h"
#include "model/unicode_internal.h"

namespace dsv2::tokenizer_internal {
namespace {

namespace uni = ::dsv2::unicode_internal;

std::string HexCodepoint(char32_t c) {
  return absl::StrCat("\\x{", absl::Hex(static_cast<uint32_t>(c), absl::kNoPad), "}");
}

// The body of a character class (no brackets) holding exactly `ranges`.
std::string ClassBody(absl::Span<const uni::CodepointRange> ranges) {
  std::string out;
  for (const auto& r : ranges) {
    out += HexCodepoint(r.lo);
    if (r.hi != r.lo) absl::StrAppend(&out, "-", HexCodepoint(r.hi));
  }
  return out;
}

std::vector<uni::CodepointRange> Complement(absl::Span<const uni::CodepointRange> ranges) {
  std::vector<uni::CodepointRange> out;
  char32_t next = 0;
  for (const auto& r : ranges) {
    if (r.lo > next) out.push_back({next, r.lo - 1});
    next = r.hi + 1;
  }
  if (next <= 0x10FFFF) out.push_back({next, 0x10FFFF});
  return out;
}

// Oniguruma classes that RE2 either means differently (`\s` `\d` `\w` are ASCII in RE2) or
// knows from another Unicode version (`\p{L}`, `\p{N}`): spelled out from the tables
// measured on `tokenizers`.
enum class UClass { kSpace = 0, kLetter, kNumber, kWord, kDigit };

// Class body of `c`, or of its complement.
const std::string& UClassBody(UClass c, bool complement) {
  static const std::array<std::string, 10>* const bodies = [] {
    auto* b = new std::array<std::string, 10>;
    const absl::Span<const uni::CodepointRange> tables[] = {
        uni::WhitespaceRanges(), uni::OnigLetterRanges(), uni::OnigNumberRanges(),
        uni::OnigWordRanges(), uni::OnigDigitRanges()};
    for (int i = 0; i < 5; ++i) {
      (*b)[2 * i] = ClassBody(tables[i]);
      (*b)[2 * i + 1] = ClassBody(Complement(tables[i]));
    }
    return b;
  }();
  return (*bodies)[2 * static_cast<int>(c) + (complement ? 1 : 0)];
}

// Appends class `c` (negated when `negate`) inside a [...] or as a class of its own.
void AppendUClass(UClass c, bool negate, bool in_class, std::string* out) {
  if (in_class) {
    *out += UClassBody(c, negate);
  } else {
    absl::StrAppend(out, negate ? "[^" : "[", UClassBody(c, false), "]");
  }
}

absl::Status Unsupported(std::string_view what, std::string_view pattern) {
  return absl::UnimplementedError(absl::StrCat(
      "regex construct ", ToAbsl(what), " is not supported (pattern \"", ToAbsl(pattern), "\")"));
}

bool IsHex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// Splits `pattern` at its top-level '|' (outside groups and classes).
std::vector<std::string_view> TopLevelAlternatives(std::string_view pattern) {
  std::vector<std::string_view> out;
  int depth = 0;
  bool in_class = false;
  size_t start = 0;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\') {
      ++i;
    } else if (in_class) {
      if (c == ']') in_class = false;
    } else if (c == '[') {
      in_class = true;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') ++i;
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') ++i;  // leading ']' is literal
    } else if (c == '(') {
      ++depth;
    } else if (c == ')') {
      --depth;
    } else if (c == '|' && depth == 0) {
      out.push_back(pattern.substr(start, i - start));
      start = i + 1;
    }
  }
  out.push_back(pattern.substr(start));
  return out;
}

// Translates one Oniguruma fragment (Ruby syntax) to RE2 syntax, one token at a time:
// an escape, a character inside [...], or an operator / literal outside it. Every group
// becomes non-capturing so that the only capture group is the lookahead emulation's.
class FragmentTranslator {
 public:
  // *top_level_flags is set when the fragment has a group-less "(?i)", whose effect runs
  // on into the following alternatives.
  FragmentTranslator(std::string_view p, bool* top_level_flags)
      : p_(p), top_level_flags_(top_level_flags) {}

  absl::StatusOr<std::string> Translate() {
    while (i_ < p_.size()) {
      absl::Status s = p_[i_] == '\\' ? Escape() : in_class_ ? ClassChar() : Operator();
      if (!s.ok()) return s;
    }
    if (in_class_) {
      return absl::InvalidArgumentError(absl::StrCat("regex \"", ToAbsl(p_), "\": missing ]"));
    }
    return std::move(out_);
  }

 private:
  // `\` and the character after it, in or outside a class.
  absl::Status Escape() {
    if (i_ + 1 >= p_.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("regex \"", ToAbsl(p_), "\" ends with a lone backslash"));
    }
    const char e = p_[i_ + 1];
    i_ += 2;
    class_start_ = false;
    // Escapes whose Oniguruma meaning RE2 lacks or spells differently.
    constexpr std::string_view kUnsupported = "bBGZKRXkgyYNO";
    if (kUnsupported.find(e) != std::string_view::npos) {
      return Unsupported(absl::StrCat("\\", std::string(1, e)), p_);
    }
    switch (e) {
      case 's':
      case 'S':
        AppendUClass(UClass::kSpace, e == 'S', in_class_, &out_);
        return absl::OkStatus();
      case 'd':
      case 'D':
        AppendUClass(UClass::kDigit, e == 'D', in_class_, &out_);
        return absl::OkStatus();
      case 'w':
      case 'W':
        AppendUClass(UClass::kWord, e == 'W', in_class_, &out_);
        return absl::OkStatus();
      case 'p':
      case 'P':
        return Property(/*negate=*/e == 'P');
      case 'h':
        out_ += in_class_ ? "0-9a-fA-F" : "[0-9a-fA-F]";
        return absl::OkStatus();
      case 'H':
        if (in_class_) return Unsupported("\\H inside []", p_);
        out_ += "[^0-9a-fA-F]";
        return absl::OkStatus();
      case 'e':
        out_ += "\\x1B";
        return absl::OkStatus();
      case 'u':
        return UnicodeEscape();
      case 'x':
        return HexEscape();
      default:
        if (e >= '1' && e <= '9') return Unsupported("backreference", p_);
        out_.push_back('\\');
        out_.push_back(e);
        return absl::OkStatus();
    }
  }

  // The rest of \pL, \p{L}, \p{^L}, \P{L} after "\p" / "\P"; only L and N are spelled
  // out, other properties are left to RE2's tables.
  absl::Status Property(bool negate) {
    std::string_view name;
    if (i_ < p_.size() && p_[i_] == '{') {
      const size_t close = p_.find('}', i_);
      if (close == std::string_view::npos) return Unsupported("unterminated \\p{", p_);
      name = p_.substr(i_ + 1, close - i_ - 1);
      i_ = close + 1;
    } else if (i_ < p_.size()) {
      name = p_.substr(i_, 1);
      ++i_;
    } else {
      return Unsupported("\\p without a name", p_);
    }
    if (name.starts_with('^')) {
      negate = !negate;
      name.remove_prefix(1);
    }
    if (name == "L" || name == "Letter") {
      AppendUClass(UClass::kLetter, negate, in_class_, &out_);
    } else if (name == "N" || name == "Number") {
      AppendUClass(UClass::kNumber, negate, in_class_, &out_);
    } else {
      absl::StrAppend(&out_, negate ? "\\P{" : "\\p{", ToAbsl(name), "}");
    }
    return absl::OkStatus();
  }

  // The 4 hex digits after "\u" (Ruby), which RE2 writes \x{HHHH}.
  absl::Status UnicodeEscape() {
    if (i_ + 4 > p_.size() || !IsHex(p_[i_]) || !IsHex(p_[i_ + 1]) || !IsHex(p_[i_ + 2]) ||
        !IsHex(p_[i_ + 3])) {
      return Unsupported("\\u without 4 hex digits", p_);
    }
    absl::StrAppend(&out_, "\\x{", ToAbsl(p_.substr(i_, 4)), "}");
    i_ += 4;
    return absl::OkStatus();
  }

  // \xHH or \x{HHHH}: same syntax in RE2; copy the braces along.
  absl::Status HexEscape() {
    out_ += "\\x";
    if (i_ < p_.size() && p_[i_] == '{') {
      const size_t close = p_.find('}', i_);
      if (close == std::string_view::npos) return Unsupported("unterminated \\x{", p_);
      out_.append(p_.substr(i_, close + 1 - i_));
      i_ = close + 1;
    }
    return absl::OkStatus();
  }

  // One character inside [...] (escapes excepted).
  absl::Status ClassChar() {
    const char c = p_[i_];
    if (c == '[') return Unsupported("nested [] or POSIX bracket", p_);
    if (c == '&' && i_ + 1 < p_.size() && p_[i_ + 1] == '&') return Unsupported("&& in []", p_);
    if (c == '^' && class_start_ && out_.back() == '[') {
      out_.push_back('^');
      ++i_;
      return absl::OkStatus();  // a ']' right after "[^" is still literal
    }
    if (c == ']' && !class_start_) in_class_ = false;
    class_start_ = false;
    out_.push_back(c);
    ++i_;
    return absl::OkStatus();
  }

  // One character outside [...] (escapes excepted): operators whose meaning differs, or
  // a literal.
  absl::Status Operator() {
    const char c = p_[i_];
    switch (c) {
      case '[':
        in_class_ = true;
        class_start_ = true;
        out_.push_back('[');
        break;
      case ')':
        --depth_;
        out_.push_back(c);
        break;
      case '(':
        return Group();
      case '$':
        out_ += "(?m:$)";  // Ruby's $ and ^ are always multi-line
        break;
      case '^':
        out_ += "(?m:^)";
        break;
      case '*':
      case '+':
      case '?':
        if (i_ + 1 < p_.size() && p_[i_ + 1] == '+') {
          return Unsupported("possessive quantifier", p_);
        }
        out_.push_back(c);
        break;
      case '{':
        if (i_ + 1 < p_.size() && p_[i_ + 1] == ',') {  // Ruby's {,n} is {0,n}
          out_ += "{0";
        } else {
          out_.push_back(c);
        }
        break;
      default:
        out_.push_back(c);
    }
    ++i_;
    return absl::OkStatus();
  }

  // "(" and what follows it up to the group's body: plain and named groups become "(?:",
  // comments vanish, lookaround is refused, option flags go to Flags().
  absl::Status Group() {
    ++depth_;
    if (i_ + 1 >= p_.size() || p_[i_ + 1] != '?') {
      out_ += "(?:";
      ++i_;
      return absl::OkStatus();
    }
    const std::string_view rest = p_.substr(i_ + 2);
    if (rest.starts_with(":")) {
      out_ += "(?:";
      i_ += 3;
    } else if (rest.starts_with("=") || rest.starts_with("!") || rest.starts_with("<=") ||
               rest.starts_with("<!")) {
      return Unsupported("lookaround", p_);
    } else if (rest.starts_with("<") || rest.starts_with("P<")) {
      const size_t close = p_.find('>', i_);
      if (close == std::string_view::npos) return Unsupported("unterminated group name", p_);
      out_ += "(?:";
      i_ = close + 1;
    } else if (rest.starts_with("#")) {
      const size_t close = p_.find(')', i_);
      if (close == std::string_view::npos) return Unsupported("unterminated comment", p_);
      i_ = close + 1;
      --depth_;
    } else {
      return Flags();
    }
    return absl::OkStatus();
  }

  // "(?flags)" or "(?flags:": Ruby's (?m) is dot-matches-newline, RE2's (?s).
  absl::Status Flags() {
    size_t j = i_ + 2;
    std::string flags;
    while (j < p_.size() && (p_[j] == 'i' || p_[j] == 'm' || p_[j] == '-')) {
      flags.push_back(p_[j] == 'm' ? 's' : p_[j]);
      ++j;
    }
    if (j >= p_.size() || (p_[j] != ')' && p_[j] != ':')) {
      return Unsupported(absl::StrCat("group \"", ToAbsl(p_.substr(i_, 4)), "\""), p_);
    }
    if (p_[j] == ':') {
      absl::StrAppend(&out_, "(?", flags, ":");
    } else {
      --depth_;  // "(?i)" opens no group
      if (!flags.empty() && flags != "-") absl::StrAppend(&out_, "(?", flags, ")");
      if (depth_ == 0) *top_level_flags_ = true;
    }
    i_ = j + 1;
    return absl::OkStatus();
  }

  const std::string_view p_;
  bool* const top_level_flags_;
  std::string out_;
  size_t i_ = 0;  // next character of p_
  int depth_ = 0;
  bool in_class_ = false;
  bool class_start_ = false;  // just after '[' or '[^'
};

}  // namespace

absl::StatusOr<TranslatedRegex> TranslateOnigRegex(std::string_view pattern) {
  constexpr std::string_view kLookahead = R"(\s+(?!\S))";
  const std::vector<std::string_view> alternatives = TopLevelAlternatives(pattern);
  TranslatedRegex out;
  std::vector<std::string> translated;
  int lookahead_index = -1;
  bool top_level_flags = false;
  for (size_t k = 0; k < alternatives.size(); ++k) {
    if (alternatives[k] == kLookahead) {
      if (lookahead_index >= 0) return Unsupported("two \\s+(?!\\S) alternatives", pattern);
      lookahead_index = static_cast<int>(k);
      translated.push_back(absl::StrCat("([", UClassBody(UClass::kSpace, false), "]+)"));
      continue;
    }
    absl::StatusOr<std::string> t =
        FragmentTranslator(alternatives[k], &top_level_flags).Translate();
    if (!t.ok()) {
      return absl::Status(t.status().code(),
                          absl::StrCat(t.status().message(), " in \"", ToAbsl(pattern), "\""));
    }
    translated.push_back(*std::move(t));
  }
  if (lookahead_index >= 0 && top_level_flags) {
    // `rest` is compiled on its own and would lose the flags.
    return Unsupported("\\s+(?!\\S) together with a group-less (?flags)", pattern);
  }
  for (size_t k = 0; k < translated.size(); ++k) {
    if (k > 0) out.re2 += "|";
    out.re2 += translated[k];
    if (lookahead_index >= 0 && static_cast<int>(k) > lookahead_index) {
      if (!out.rest.empty()) out.rest += "|";
      out.rest += translated[k];
    }
  }
  out.has_lookahead_alternative = lookahead_index >= 0;
  return out;
}

}  // namespace dsv2::tokenizer_internal
