// Renders HuggingFace chat templates (the `chat_template` string of a
// checkpoint's tokenizer_config.json) for the Jinja subset that DeepSeek
// templates use, with the same output as transformers' apply_chat_template
// (MODEL_SPEC.md section 8). No Jinja library: a small lexer, a
// recursive-descent parser and a tree-walking evaluator.
//
// The environment matches transformers': trim_blocks and lstrip_blocks on,
// one trailing newline of the template dropped, loop controls on, and the
// globals `raise_exception` and `namespace`. Render sees the variables
// `messages` (a list of {'role', 'content'} maps), `add_generation_prompt`,
// `bos_token`, `eos_token`, and `tools` / `documents` (both none, as
// apply_chat_template passes them when no tools are given). Any other name is
// Jinja's default Undefined: falsy, renders as "", is not defined, and fails
// when used as an operand, attribute base or subscript base.
//
// Supported:
//   {{ expr }}, {% set x = e %}, {% set ns.attr = e %}, {% if %}/{% elif %}/
//   {% else %}/{% endif %}, {% for x in e [if cond] %}...[{% else %}]
//   {% endfor %} with loop.index/index0/revindex/revindex0/first/last/length,
//   {% break %}, {% continue %}, {# comments #}, the -/+ whitespace markers.
//   Literals: 'str' / "str" (Python escapes), ints, true/false/none (any of
//   the Python spellings), [lists], (tuples, as lists), {'dict': literals}.
//   Operators: + - * // % ~ == != < <= > >= and or not in, `not in`,
//   `a if c else b`, attribute and subscript access, slices [a:b:c].
//   Tests: defined undefined none string number integer boolean mapping
//   sequence iterable true false even odd (with `is not`).
//   Filters: trim length count string lower upper first last join default/d.
//   Calls: raise_exception(msg), namespace(k=v, ...), range(...); methods
//   str.strip/lstrip/rstrip/split/startswith/endswith/upper/lower and
//   dict.get. Argument counts are checked by Parse.
// Not supported (Parse fails naming the construct and its offset): macros,
// call/filter/raw/include/extends/generation/block tags, block set, tuple
// unpacking, floats, `/`, `**`, `%` string formatting (fails in Render), and
// any other filter (tojson, ...), test, function or method.
// Known differences (none matter for the DeepSeek templates): tuples and
// range() print as lists; lower/upper map ASCII only and fail on text with
// non-ASCII cased letters rather than differ silently; the Python repr of a
// list or dict escapes control and non-ASCII space characters only.
//
// Thread-safety: a ChatTemplate is immutable after Parse; Render is safe for
// concurrent use. Copies share the parsed program, which keeps no reference to
// the source text.
#ifndef DSV2_MODEL_CHAT_TEMPLATE_H_
#define DSV2_MODEL_CHAT_TEMPLATE_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dsv2 {

struct ChatMessage {
  std::string role;     // "system", "user" or "assistant"
  std::string content;  // UTF-8
};

struct ChatTemplateInputs {
  std::vector<ChatMessage> messages;
  bool add_generation_prompt = true;
  std::string bos_token;  // e.g. "<｜begin▁of▁sentence｜>"
  std::string eos_token;  // e.g. "<｜end▁of▁sentence｜>"
};

class ChatTemplate {
 public:
  // Parses `source` once. InvalidArgument naming the construct and its byte
  // offset (in the source after \r\n and \r became \n) for malformed or
  // unsupported templates, e.g. "chat template: unknown filter 'tojson' at
  // offset 120".
  static absl::StatusOr<ChatTemplate> Parse(std::string_view source);

  // Renders the conversation. The output holds the template's own BOS text,
  // so encode it without adding special tokens. InvalidArgument with the
  // message when the template calls raise_exception, uses an undefined value
  // where Jinja would fail ("'foo' is undefined"), or hits a type error.
  absl::StatusOr<std::string> Render(const ChatTemplateInputs& inputs) const;

 private:
  struct Program;  // the parsed template; defined in chat_template.cc

  explicit ChatTemplate(std::shared_ptr<const Program> program);

  // Constant after construction.
  std::shared_ptr<const Program> program_;
};

// The model-card chat format of MODEL_SPEC.md section 8, for checkpoints
// without a chat_template; identical to DeepSeek-V2-Chat's template:
//   {bos}{system}\n\nUser: {user}\n\nAssistant: {assistant}{eos}User: {user}
//   \n\nAssistant:
// (system optional, "Assistant:" only when add_generation_prompt). Messages
// with other roles are skipped, as that template does.
std::string RenderFallbackChat(const ChatTemplateInputs& inputs);

// OK when every role is system, user or assistant; otherwise InvalidArgument
// naming the message index and the role.
absl::Status ValidateChatMessages(const std::vector<ChatMessage>& messages);

}  // namespace dsv2

#endif  // DSV2_MODEL_CHAT_TEMPLATE_H_
