// Lexer of the chat-template Jinja subset: template source -> tokens
// (chat_template_internal.h). The parser is in chat_template_parse*.cc.
//
// Mirrors jinja2's lexer with trim_blocks and lstrip_blocks on: a block
// or comment end eats one following newline; spaces and tabs between a line
// start and a block or comment tag are dropped; '-' next to a delimiter strips
// all whitespace on that side; '+' keeps it.
#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/chat_template_internal.h"

namespace dsv2 {
namespace chat_template_internal {
namespace {

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

}  // namespace

absl::Status SyntaxError(std::string_view what, size_t offset) {
  return absl::InvalidArgumentError(
      absl::StrCat("chat template: ", AV(what), " at offset ", offset));
}

absl::StatusOr<std::vector<Token>> LexTemplateSource(std::string_view source) {
  const std::string normalized = NormalizeNewlines(source);
  return Lexer(normalized).Run();
}

}  // namespace chat_template_internal
}  // namespace dsv2
