// The chat-template parser (tokens -> syntax tree): jinja2's grammar restricted to the
// supported subset. Internal to chat_template_parse.cc (template and statements) and
// chat_template_parse_expr.cc (expressions), which share this class.
//
// Thread-safety: one Parser per parse, used by one thread.
#ifndef DSV2_MODEL_CHAT_TEMPLATE_PARSER_INTERNAL_H_
#define DSV2_MODEL_CHAT_TEMPLATE_PARSER_INTERNAL_H_

#include <algorithm>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "model/chat_template_internal.h"

namespace dsv2 {
namespace chat_template_internal {

using ExprPtr = std::unique_ptr<Expr>;

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  absl::StatusOr<std::vector<Node>> ParseTemplate();

 private:
  // Token cursor; the last token (kEof) repeats at the end.
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

  // Statements (chat_template_parse.cc).
  absl::StatusOr<std::vector<Node>> ParseStatements(const std::vector<std::string_view>& end_names,
                                                    std::string_view opener, size_t opener_offset);
  absl::Status ParseElseAndEnd(std::string_view end_name, size_t offset, Node* n);
  absl::StatusOr<Node> ParseStatement(size_t offset);

  // Expressions (chat_template_parse_expr.cc), one function per precedence level;
  // the grammar is written above each definition.
  absl::StatusOr<ExprPtr> ParseExpression(bool with_condexpr);
  absl::StatusOr<ExprPtr> ParseLogic(bool is_or);
  absl::StatusOr<ExprPtr> ParseNot();
  absl::StatusOr<ExprPtr> ParseCompare();
  absl::StatusOr<ExprPtr> ParseMath(bool additive);
  absl::StatusOr<ExprPtr> ParseConcat();
  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter);
  absl::StatusOr<ExprPtr> ParsePrimary();
  absl::Status ParseItems(Expr* out, std::string_view close, bool dict, bool* saw_comma);
  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr node);
  absl::StatusOr<ExprPtr> ParseSubscript(ExprPtr node);
  absl::Status ParseCallArgs(Expr* call, const Builtin& builtin, size_t num_subjects,
                             bool allow_kwargs);
  absl::StatusOr<ExprPtr> ParseFilterExpr(ExprPtr node);

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace chat_template_internal
}  // namespace dsv2

#endif  // DSV2_MODEL_CHAT_TEMPLATE_PARSER_INTERNAL_H_
