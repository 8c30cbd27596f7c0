// The chat-template evaluator (syntax tree + inputs -> text) and the public API of
// model/chat_template.h. Parsing is in chat_template_lex.cc / chat_template_parse*.cc,
// value semantics in chat_template_values.cc, filters / tests / methods in
// chat_template_builtins.cc.
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
#include "base/status_macros.h"
#include "model/chat_template_internal.h"

namespace dsv2 {
namespace chat_template_internal {

// Executes a syntax tree on one set of inputs: one Renderer per Render call,
// used by one thread. Operators are here; the builtins it calls are in
// chat_template_builtins.cc.
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
        return ApplyFilter(e.name, v, e.offset);
      case ExprKind::kTest: {
        DSV2_ASSIGN_OR_RETURN(const bool result, ApplyTest(e.name, v[0], e.offset));
        return Value::Bool(result != e.negated);
      }
      case ExprKind::kCall:
        return CallFunction(e.name, v, e.offset);
      case ExprKind::kMethodCall:
        return CallMethod(e.name, v, e.offset);
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
  auto program = std::make_shared<Program>();
  DSV2_ASSIGN_OR_RETURN(program->body, chat_template_internal::ParseTemplateSource(source));
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
