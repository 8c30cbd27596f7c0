// Lexer and parser of the chat-template Jinja subset: template source ->
// syntax tree (chat_template_internal.h). The evaluator is in chat_template.cc.

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <memory>
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

absl::StatusOr<std::vector<Node>> ParseTemplateSource(std::string_view source) {
  const std::string normalized = NormalizeNewlines(source);
  DSV2_ASSIGN_OR_RETURN(std::vector<Token> tokens, Lexer(normalized).Run());
  return Parser(std::move(tokens)).ParseTemplate();
}

}  // namespace chat_template_internal
}  // namespace dsv2
