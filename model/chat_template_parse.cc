// Parser of the chat-template Jinja subset, template and statement level: tokens ->
// syntax tree (chat_template_internal.h). Expressions are parsed in
// chat_template_parse_expr.cc, the tokens come from chat_template_lex.cc and the
// evaluator is in chat_template.cc.
#include <algorithm>
#include <cstddef>
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

absl::StatusOr<std::vector<Node>> ParseTemplateSource(std::string_view source) {
  DSV2_ASSIGN_OR_RETURN(std::vector<Token> tokens, LexTemplateSource(source));
  return Parser(std::move(tokens)).ParseTemplate();
}

absl::StatusOr<std::vector<Node>> Parser::ParseTemplate() {
  DSV2_ASSIGN_OR_RETURN(std::vector<Node> body, ParseStatements({}, "", 0));
  return body;
}

// Parses nodes until a block tag whose name is in `end_names` (left as the
// current token, after its '{%') or the end of the template (an error when
// `end_names` is non-empty: `opener` at `opener_offset` was never closed).
absl::StatusOr<std::vector<Node>> Parser::ParseStatements(
    const std::vector<std::string_view>& end_names, std::string_view opener, size_t opener_offset) {
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
absl::Status Parser::ParseElseAndEnd(std::string_view end_name, size_t offset, Node* n) {
  if (IsName("else")) {
    Advance();
    DSV2_RETURN_IF_ERROR(ExpectBlockEnd());
    DSV2_ASSIGN_OR_RETURN(n->else_body, ParseStatements({end_name}, "else", offset));
  }
  Advance();  // end_name
  return ExpectBlockEnd();
}

// Parses the statement whose tag name is the current token (after '{%'), through its
// end tag for blocks (if, for).
absl::StatusOr<Node> Parser::ParseStatement(size_t offset) {
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

}  // namespace chat_template_internal
}  // namespace dsv2
