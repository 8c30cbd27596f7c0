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
