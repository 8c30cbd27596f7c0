// Parser of the chat-template Jinja subset, expression level (jinja2's precedence:
// conditional, or, and, not, comparisons, + -, ~, * // %, unary, postfix, filters and
// tests); calls are checked against the builtins of chat_template_builtins.cc.
#include <algorithm>
#include <cstddef>
#include <iterator>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/chat_template_internal.h"
#include "model/chat_template_parser_internal.h"

namespace dsv2 {
namespace chat_template_internal {

// expression := or-expr ['if' or-expr ['else' expression]]  (with_condexpr)
absl::StatusOr<ExprPtr> Parser::ParseExpression(bool with_condexpr) {
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
absl::StatusOr<ExprPtr> Parser::ParseLogic(bool is_or) {
  auto operand = [&]() { return is_or ? ParseLogic(false) : ParseNot(); };
  DSV2_ASSIGN_OR_RETURN(ExprPtr left, operand());
  while (IsName(is_or ? "or" : "and")) {
    const size_t offset = Cur().offset;
    Advance();
    DSV2_ASSIGN_OR_RETURN(ExprPtr right, operand());
    left =
        MakeExpr(is_or ? ExprKind::kOr : ExprKind::kAnd, offset, std::move(left), std::move(right));
  }
  return left;
}

absl::StatusOr<ExprPtr> Parser::ParseNot() {
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

absl::StatusOr<ExprPtr> Parser::ParseCompare() {
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
absl::StatusOr<ExprPtr> Parser::ParseMath(bool additive) {
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

absl::StatusOr<ExprPtr> Parser::ParseConcat() {
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

absl::StatusOr<ExprPtr> Parser::ParseUnary(bool with_filter) {
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

absl::StatusOr<ExprPtr> Parser::ParsePrimary() {
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
absl::Status Parser::ParseItems(Expr* out, std::string_view close, bool dict, bool* saw_comma) {
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

absl::StatusOr<ExprPtr> Parser::ParsePostfix(ExprPtr node) {
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
        const Builtin* method = FindBuiltin(BuiltinKind::kMethod, attr);
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
          node->kind == ExprKind::kName ? FindBuiltin(BuiltinKind::kFunction, node->name) : nullptr;
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
absl::StatusOr<ExprPtr> Parser::ParseSubscript(ExprPtr node) {
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
absl::Status Parser::ParseCallArgs(Expr* call, const Builtin& builtin, size_t num_subjects,
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
absl::StatusOr<ExprPtr> Parser::ParseFilterExpr(ExprPtr node) {
  while (true) {
    if (IsOp("|")) {
      Advance();
      const size_t offset = Cur().offset;
      DSV2_ASSIGN_OR_RETURN(std::string name, ExpectName());
      const Builtin* filter = FindBuiltin(BuiltinKind::kFilter, name);
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
      const Builtin* test = FindBuiltin(BuiltinKind::kTest, name);
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

}  // namespace chat_template_internal
}  // namespace dsv2
