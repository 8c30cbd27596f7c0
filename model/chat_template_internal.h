// Internal to the chat-template implementation (model/chat_template.h is the
// public contract); not for use outside model/chat_template*.cc.
//
// The implementation is two halves that share only what is declared here:
//   template source -> syntax tree
//     chat_template_lex.cc         source -> tokens (jinja2's lexer)
//     chat_template_parse.cc       tokens -> tree: template and statements
//     chat_template_parse_expr.cc  tokens -> tree: expressions
//                                  (both parse files share chat_template_parser_internal.h)
//   syntax tree + inputs -> text
//     chat_template.cc             the evaluator, and the public API
//     chat_template_values.cc      Python semantics of values and strings
//     chat_template_builtins.cc    filters, tests, functions and methods (also the
//                                  argument counts the parser checks)
// This header holds the syntax tree (Expr, Node), the runtime Value type that
// literals in the tree carry, the resource limits, the tokens, and the helpers
// used across files. The tree is immutable after ParseTemplateSource returns;
// an Expr or Node owns its children.
#ifndef DSV2_MODEL_CHAT_TEMPLATE_INTERNAL_H_
#define DSV2_MODEL_CHAT_TEMPLATE_INTERNAL_H_

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
#include "absl/strings/string_view.h"
#include "model/unicode_internal.h"

namespace dsv2 {
namespace chat_template_internal {

// The pinned Abseil (20220623, ABSL_OPTION_USE_STD_STRING_VIEW 0) has its own
// string_view type, so std::string_view must be converted for StrCat.
inline absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Limits that keep a hostile template from exhausting the stack or the CPU.
constexpr int kMaxNestingDepth = 200;              // expressions and blocks
constexpr int64_t kMaxLoopIterations = 1'000'000;  // per Render, all loops
constexpr int64_t kMaxRangeLength = 1'000'000;
constexpr size_t kMaxStringBytes = size_t{1} << 28;  // results of * and +

// ---------------------------------------------------------------------------
// UTF-8 and Python string semantics (defined in chat_template_values.cc).
// Python indexes, slices, measures and strips strings by code point; these
// helpers do the same on UTF-8 bytes. An invalid byte counts as one code point
// of its own.

// Decodes the code point at byte offset *i and advances *i past it.
char32_t DecodeUtf8(std::string_view s, size_t* i);

// Byte offset of every code point, plus s.size() at the end.
std::vector<size_t> CodePointOffsets(std::string_view s);

// Python's str.isspace(), which is also what `\s` and str.strip() use.
bool IsPyWhitespace(char32_t cp);

enum class StripSide { kLeft, kRight, kBoth };

// Python's str.strip / lstrip / rstrip: `chars` null means whitespace.
std::string PyStrip(std::string_view s, StripSide side, const std::string* chars);

// Python's repr() of a str: single quotes unless the text holds ' and no ".
std::string PyStrRepr(std::string_view s);

// True when `s` holds a non-ASCII code point in a block with cased letters,
// where ASCII-only case mapping would differ from Python's.
bool HasNonAsciiCasedLetters(std::string_view s);

// UTF-8 encoding of one code point: the tokenizer's helper.
using unicode_internal::AppendUtf8;

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

inline Value Value::Map(ValueMap map) {
  return Value{std::make_shared<const ValueMap>(std::move(map))};
}

// Python semantics of values (chat_template_values.cc).
std::string TypeName(const Value& v);  // Python's type name: "str", "NoneType", ...
bool Truthy(const Value& v);
std::string ToStr(const Value& v);  // Python's str(), which {{ }} and ~ print
std::string Repr(const Value& v);
bool Equals(const Value& a, const Value& b);  // Python's ==; dict equality ignores order

// InvalidArgument "chat template render: <what> (at offset <n>)".
absl::Status RenderError(std::string_view what, size_t offset);
// Jinja's default Undefined fails when used as an operand: RenderError with its hint.
absl::Status CheckDefined(const Value& v, size_t offset);
// Python's iteration: a list's items, a dict's keys, a str's code points;
// Undefined iterates as empty, anything else is an error.
absl::StatusOr<ValueList> Iterate(const Value& v, size_t offset);

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
// Tokens (chat_template_lex.cc -> chat_template_parse*.cc).

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

// InvalidArgument "chat template: <what> at offset <n>".
absl::Status SyntaxError(std::string_view what, size_t offset);

// Normalizes newlines and splits `source` into tokens, ending with kEof;
// offsets are into the normalized text. SyntaxError on malformed input.
absl::StatusOr<std::vector<Token>> LexTemplateSource(std::string_view source);

// Normalizes newlines, lexes and parses `source` (chat_template_parse.cc).
// InvalidArgument "chat template: <what> at offset <n>" on malformed or
// unsupported input.
absl::StatusOr<std::vector<Node>> ParseTemplateSource(std::string_view source);

// ---------------------------------------------------------------------------
// Builtins (chat_template_builtins.cc). Argument counts exclude the filtered
// or tested value and the method's receiver; the parser rejects other names
// and counts, so the functions below may rely on them.

struct Builtin {
  std::string_view name;
  size_t min_args;
  size_t max_args;
};
enum class BuiltinKind { kFilter, kTest, kFunction, kMethod };

// The supported builtin of that kind and name, or nullptr.
const Builtin* FindBuiltin(BuiltinKind kind, std::string_view name);

// `name` applied to v[0] (the filtered value) with arguments v[1..].
absl::StatusOr<Value> ApplyFilter(const std::string& name, const std::vector<Value>& v,
                                  size_t offset);
// `v is name` (without `not`).
absl::StatusOr<bool> ApplyTest(const std::string& name, const Value& v, size_t offset);
// raise_exception(message) and range([start,] stop[, step]); namespace() is
// evaluated by the renderer because its arguments are keywords.
absl::StatusOr<Value> CallFunction(const std::string& name, const std::vector<Value>& v,
                                   size_t offset);
// The str / dict method `name` of receiver v[0] with arguments v[1..].
absl::StatusOr<Value> CallMethod(const std::string& name, const std::vector<Value>& v,
                                 size_t offset);

}  // namespace chat_template_internal
}  // namespace dsv2

#endif  // DSV2_MODEL_CHAT_TEMPLATE_INTERNAL_H_
