#include "model/chat_template.h"

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace dsv2 {
namespace {

// gmock is not linked into the test binaries; this stands in for HasSubstr.
::testing::AssertionResult HasSubstr(absl::string_view text, absl::string_view needle) {
  if (text.find(needle) != absl::string_view::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "\"" << text << "\" does not contain \"" << needle << "\"";
}

constexpr char kBos[] = "<｜begin▁of▁sentence｜>";
constexpr char kEos[] = "<｜end▁of▁sentence｜>";

ChatTemplateInputs Inputs(std::vector<ChatMessage> messages, bool add_generation_prompt = true) {
  ChatTemplateInputs inputs;
  inputs.messages = std::move(messages);
  inputs.add_generation_prompt = add_generation_prompt;
  inputs.bos_token = kBos;
  inputs.eos_token = kEos;
  return inputs;
}

const std::vector<ChatMessage> kConversation = {
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}};

// Renders `source` with kConversation; the failure message carries the status.
std::string RenderOrError(std::string_view source,
                          const ChatTemplateInputs& inputs = Inputs(kConversation)) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(source);
  if (!t.ok()) return "PARSE ERROR: " + std::string(t.status().message());
  absl::StatusOr<std::string> out = t->Render(inputs);
  if (!out.ok()) return "RENDER ERROR: " + std::string(out.status().message());
  return *out;
}

absl::Status ParseStatus(std::string_view source) { return ChatTemplate::Parse(source).status(); }

absl::Status RenderStatus(std::string_view source) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(source);
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return t.status();
  return t->Render(Inputs(kConversation)).status();
}

// ----------------------------------------------------------------------------
// Conformance with transformers' apply_chat_template (tests/data/chat_cases.json,
// written by tests/conformance/gen_chat_cases.py).

nlohmann::json LoadCases() {
  std::ifstream in(std::string(DSV2_SOURCE_DIR) + "/tests/data/chat_cases.json");
  EXPECT_TRUE(in.good()) << "missing tests/data/chat_cases.json";
  std::stringstream buf;
  buf << in.rdbuf();
  return nlohmann::json::parse(buf.str());
}

ChatTemplateInputs CaseInputs(const nlohmann::json& c) {
  ChatTemplateInputs inputs;
  for (const auto& m : c["messages"]) {
    inputs.messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  inputs.add_generation_prompt = c["add_generation_prompt"].get<bool>();
  inputs.bos_token = c["bos"].get<std::string>();
  inputs.eos_token = c["eos"].get<std::string>();
  return inputs;
}

TEST(ChatTemplateConformanceTest, RendersLikeTransformersForEveryCase) {
  const nlohmann::json data = LoadCases();
  std::map<std::string, ChatTemplate> templates;
  for (const auto& [name, info] : data["templates"].items()) {
    absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(info["source"].get<std::string>());
    ASSERT_TRUE(t.ok()) << name << ": " << t.status();
    templates.emplace(name, *std::move(t));
  }
  EXPECT_GE(templates.size(), 4u);
  ASSERT_GE(data["cases"].size(), 100u);
  for (const auto& c : data["cases"]) {
    const ChatTemplate& t = templates.at(c["template"].get<std::string>());
    absl::StatusOr<std::string> out = t.Render(CaseInputs(c));
    ASSERT_TRUE(out.ok()) << c["name"] << ": " << out.status();
    EXPECT_EQ(*out, c["expected_text"].get<std::string>()) << c["name"];
  }
}

TEST(ChatTemplateConformanceTest, CasesKeepSingleBosIds) {
  const nlohmann::json data = LoadCases();
  EXPECT_TRUE(data["meta"]["ids_have_single_bos"].get<bool>());
  for (const auto& c : data["cases"]) {
    const std::vector<int> ids = c["expected_ids"].get<std::vector<int>>();
    ASSERT_FALSE(ids.empty()) << c["name"];
    if (c["bos"] == kBos) {
      EXPECT_EQ(ids[0], 100000) << c["name"];
      if (ids.size() > 1) {
        EXPECT_NE(ids[1], 100000) << c["name"];
      }
    }
  }
}

TEST(ChatTemplateConformanceTest, FallbackMatchesShippedTemplateCases) {
  const nlohmann::json data = LoadCases();
  int checked = 0;
  for (const auto& c : data["cases"]) {
    if (c["template"] != "deepseek-v2-chat") continue;
    EXPECT_EQ(RenderFallbackChat(CaseInputs(c)), c["expected_text"].get<std::string>())
        << c["name"];
    ++checked;
  }
  EXPECT_GT(checked, 30);
}

TEST(ChatTemplateConformanceTest, ShippedTemplateRendersModelCardFormat) {
  std::ifstream in(std::string(DSV2_SOURCE_DIR) + "/model/data/deepseek-v2/tokenizer_config.json");
  ASSERT_TRUE(in.good());
  const nlohmann::json config = nlohmann::json::parse(in);
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(config["chat_template"].get<std::string>());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t->Render(Inputs(kConversation)), std::string(kBos) +
                                                   "Be brief.\n\nUser: Hi\n\nAssistant: Hello" +
                                                   kEos + "User: Bye\n\nAssistant:");
}

// ----------------------------------------------------------------------------
// Expressions.

TEST(ChatTemplateTest, PlainTextPassesThrough) {
  EXPECT_EQ(RenderOrError("just text, no tags"), "just text, no tags");
}

TEST(ChatTemplateTest, PrintsLiteralsLikePython) {
  EXPECT_EQ(RenderOrError(
                "{{ 'a' }}{{ \"b\" }}{{ 42 }}{{ -7 }}{{ true }}{{ False }}{{ none }}{{ None }}"),
            "ab42-7TrueFalseNoneNone");
  EXPECT_EQ(
      RenderOrError(
          "{{ [1, 'it\\'s', none, [true]] }}|{{ {'k': 'v', 'n': 1} }}|{{ ['a\\nb', '\\u3000'] }}"),
      "[1, \"it's\", None, [True]]|{'k': 'v', 'n': 1}|['a\\nb', '\\u3000']");
  EXPECT_EQ(RenderOrError("{{ 'a' 'b' }}"), "ab");
}

TEST(ChatTemplateTest, DecodesPythonStringEscapes) {
  EXPECT_EQ(RenderOrError(R"({{ 'a\nb\tc\\d\'e\"f' }})"), "a\nb\tc\\d'e\"f");
  EXPECT_EQ(RenderOrError(R"({{ "\x41\u00e9\U0001F600\101" }})"), "Aé😀A");
  EXPECT_EQ(RenderOrError(R"({{ 'keep \q' }})"), "keep \\q");  // unknown escapes keep the backslash
  EXPECT_EQ(RenderOrError("{{ 'spans\nlines' }}"), "spans\nlines");
}

TEST(ChatTemplateTest, ReadsContextVariables) {
  EXPECT_EQ(
      RenderOrError(
          "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ messages|length }}"),
      std::string(kBos) + "|" + kEos + "|True|4");
  EXPECT_EQ(RenderOrError("{{ add_generation_prompt }}", Inputs(kConversation, false)), "False");
  EXPECT_EQ(RenderOrError("{{ tools is none }}{{ documents is defined }}"), "TrueTrue");
}

TEST(ChatTemplateTest, AttributeAndSubscriptAccess) {
  EXPECT_EQ(RenderOrError(
                "{{ messages[0]['role'] }} {{ messages[1].content }} {{ messages[-1].content }}"),
            "system Hi Bye");
  EXPECT_EQ(RenderOrError("{{ messages.0.role }}"), "system");
  EXPECT_EQ(RenderOrError("{{ 'héllo'[1] }}{{ 'héllo'[-1] }}"), "éo");  // code points, not bytes
  EXPECT_EQ(
      RenderOrError("[{{ messages[9] }}][{{ messages[0].nope }}][{{ none.x }}][{{ 'abc'.nope }}]"),
      "[][][][]");
}

TEST(ChatTemplateTest, SlicesLikePython) {
  EXPECT_EQ(
      RenderOrError(
          "{{ [1, 2, 3, 4][1:] }}{{ [1, 2, 3][::-1] }}{{ [1, 2, 3][5:] }}{{ [1, 2, 3, 4][::2] }}"),
      "[2, 3, 4][3, 2, 1][][1, 3]");
  EXPECT_EQ(
      RenderOrError("{{ 'abcdef'[-2:] }}|{{ 'abcdef'[:2] }}|{{ 'h€llo'[1:3] }}|{{ 'abc'[::-1] }}"),
      "ef|ab|€l|cba");
  EXPECT_EQ(RenderOrError("{{ (messages[1:]|first).role }}"), "user");
}

TEST(ChatTemplateTest, ArithmeticAndConcatenation) {
  EXPECT_EQ(
      RenderOrError(
          "{{ 'a' + 'b' }} {{ 2 + 3 }} {{ 7 - 10 }} {{ 3 * 4 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ "
          "-7 % 3 }}"),
      "ab 5 -3 12 3 -4 2");
  EXPECT_EQ(RenderOrError("{{ 'ab' * 2 }} {{ [1] + [2] }} {{ true + 1 }}"), "abab [1, 2] 2");
  EXPECT_EQ(RenderOrError("{{ 'n=' ~ 1 ~ none ~ true ~ undefined_thing }}"), "n=1NoneTrue");
}

TEST(ChatTemplateTest, ComparisonsAndLogic) {
  EXPECT_EQ(RenderOrError(
                "{{ 1 == 1 }}{{ 'a' != 'a' }}{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 'a' <= 'b' }}{{ true "
                "== 1 }}"),
            "TrueFalseTrueFalseTrueTrue");
  EXPECT_EQ(
      RenderOrError("{{ 0 and 1 }}|{{ 0 or 'x' }}|{{ 1 and 'z' }}|{{ not 0 }}|{{ not 1 == 2 }}"),
      "0|x|z|True|True");
  EXPECT_EQ(
      RenderOrError(
          "{{ [1, 'a'] == [1, 'a'] }}{{ {'a': 1, 'b': 2} == {'b': 2, 'a': 1} }}{{ none == none }}"),
      "TrueTrueTrue");
  EXPECT_EQ(RenderOrError("{{ [] < [1] }}{{ [1, 'b'] > [1, 'a'] }}{{ [2] <= [1, 5] }}"),
            "TrueTrueFalse");
}

TEST(ChatTemplateTest, MembershipTests) {
  EXPECT_EQ(
      RenderOrError("{{ 'ell' in 'hello' }}{{ 'x' not in 'hello' }}{{ 2 in [1, 2] }}{{ 'role' in "
                    "messages[0] }}"),
      "TrueTrueTrueTrue");
  EXPECT_EQ(RenderOrError("{{ 'tool_calls' in messages[0] }}{{ 'a' in undefined_thing }}"),
            "FalseFalse");
}

TEST(ChatTemplateTest, IsTests) {
  EXPECT_EQ(
      RenderOrError(
          "{{ x is defined }}{{ x is not defined }}{{ x is undefined }}{{ bos_token is defined }}"),
      "FalseTrueTrueTrue");
  EXPECT_EQ(RenderOrError("{{ none is none }}{{ x is none }}{{ 1 is not none }}"), "TrueFalseTrue");
  EXPECT_EQ(
      RenderOrError(
          "{{ 'a' is string }}{{ 1 is number }}{{ true is integer }}{{ true is boolean }}"
          "{{ {} is mapping }}{{ 'a' is sequence }}{{ x is iterable }}{{ 2 is even }}{{ 3 is odd }}"
          "{{ true is true }}{{ 1 is false }}"),
      "TrueTrueFalseTrueTrueTrueTrueTrueTrueTrueFalse");
  // `not x is defined` is `not (x is defined)`, as in the DeepSeek templates.
  EXPECT_EQ(
      RenderOrError(
          "{% if not add_generation_prompt is defined %}undefined{% else %}defined{% endif %}"),
      "defined");
}

TEST(ChatTemplateTest, InlineIf) {
  EXPECT_EQ(
      RenderOrError("{{ 'a' if true else 'b' }}{{ 'a' if false else 'b' }}[{{ 'a' if false }}]"),
      "ab[]");
}

TEST(ChatTemplateTest, Filters) {
  EXPECT_EQ(RenderOrError(
                "[{{ '  a b \n'|trim }}][{{ '\u3000x\u00a0'|trim }}][{{ 'xxaxx'|trim('x') }}][{{ "
                "undefined_thing|trim }}]"),
            "[a b][x][a][]");
  EXPECT_EQ(RenderOrError("{{ 'héllo'|length }} {{ messages|count }} {{ {'a': 1}|length }} {{ "
                          "undefined_thing|length }}"),
            "5 4 1 0");
  EXPECT_EQ(RenderOrError("{{ 'ab'|upper }}{{ 'CD'|lower }}{{ 5|string ~ 'x' }}"), "ABcd5x");
  EXPECT_EQ(RenderOrError("{{ [3, 4]|first }}{{ [3, 4]|last }}{{ 'xyz'|last }}[{{ []|first }}]"),
            "34z[]");
  EXPECT_EQ(RenderOrError("{{ ['a', 'b']|join('-') }}{{ [1, 2]|join }}"), "a-b12");
  EXPECT_EQ(
      RenderOrError("{{ undefined_thing|default('d') }}{{ ''|default('e') }}{{ ''|d('f', true) }}"),
      "df");
  EXPECT_EQ(RenderOrError("{{ 'a' + messages[1].content|trim + 'b' }}"),
            "aHib");  // filters bind tighter than +
}

TEST(ChatTemplateTest, StringAndDictMethods) {
  EXPECT_EQ(
      RenderOrError(
          "{{ 'a</think>b</think>c'.split('</think>')[-1] }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  "
          "b '.split() }}"),
      "c|['a', 'b', '', 'c']|['a', 'b']");
  EXPECT_EQ(RenderOrError("{{ '  a b  c  '.split(none, 1) }}|{{ 'a b'.split(' ', 0) }}"),
            "['a', 'b  c  ']|['a b']");
  EXPECT_EQ(RenderOrError(
                "{{ 'a,b,c'.split(',', 1) }}|{{ ' x '.strip() }}|{{ 'xxy'.lstrip('x') }}|{{ 'y  "
                "'.rstrip() }}"),
            "['a', 'b,c']|x|y|y");
  EXPECT_EQ(
      RenderOrError(
          "{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('bc') }}{{ 'abc'.endswith('abcd') }}"),
      "TrueTrueFalse");
  EXPECT_EQ(RenderOrError("{{ 'Ab'.upper() }}{{ 'Ab'.lower() }}"), "ABab");
  EXPECT_EQ(RenderOrError("{{ messages[0].get('role') }}{{ messages[0].get('nope') }}{{ "
                          "messages[0].get('nope', 7) }}"),
            "systemNone7");
}

TEST(ChatTemplateTest, RangeAndListLiterals) {
  EXPECT_EQ(
      RenderOrError(
          "{% for i in range(3) %}{{ i }}{% endfor %}|{% for i in range(5, 1, -2) %}{{ i }}{% "
          "endfor %}"),
      "012|53");
  EXPECT_EQ(RenderOrError("{% for x in [1, 'b', {'c': 3}['c']] %}{{ x }}{% endfor %}"), "1b3");
}

// ----------------------------------------------------------------------------
// Statements.

TEST(ChatTemplateTest, IfElifElse) {
  const std::string t =
      "{% for m in messages %}{% if m.role == 'user' %}U{% elif m.role == 'assistant' %}A"
      "{% else %}S{% endif %}{% endfor %}";
  EXPECT_EQ(RenderOrError(t), "SUAU");
}

TEST(ChatTemplateTest, ForLoopVariables) {
  EXPECT_EQ(
      RenderOrError(
          "{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}"
          "{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }};{% endfor %}"),
      "10TrueFalse443;21FalseFalse432;32FalseFalse421;43FalseTrue410;");
}

TEST(ChatTemplateTest, ForLoopFilterElseAndControl) {
  EXPECT_EQ(RenderOrError(
                "{% for m in messages if m.role == 'user' %}{{ loop.index }}/{{ loop.length }}{{ "
                "m.content }} "
                "{% endfor %}"),
            "1/2Hi 2/2Bye ");
  EXPECT_EQ(RenderOrError("{% for x in [] %}x{% else %}empty{% endfor %}{% for x in "
                          "undefined_thing %}x{% endfor %}"),
            "empty");
  EXPECT_EQ(
      RenderOrError("{% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}{{ x }}"
                    "{% if x == 3 %}{% break %}{% endif %}{% endfor %}"),
      "13");
  EXPECT_EQ(RenderOrError(
                "{% for k in {'a': 1, 'b': 2} %}{{ k }}{% endfor %}{% for c in 'hé' %}[{{ c }}]{% "
                "endfor %}"),
            "ab[h][é]");
}

TEST(ChatTemplateTest, NestedLoopsShadowLoop) {
  EXPECT_EQ(RenderOrError(
                "{% for a in [1, 2] %}{% for b in 'xy' %}{{ loop.index }}{% endfor %}{{ loop.index "
                "}}.{% endfor %}"),
            "121.122.");
}

TEST(ChatTemplateTest, SetInsideLoopDoesNotLeakButNamespaceDoes) {
  // jinja2: each iteration is a fresh scope; namespace attributes are shared.
  EXPECT_EQ(
      RenderOrError(
          "{% set x = 0 %}{% for i in [1, 2] %}{{ x }}{% set x = i %}{{ x }}{% endfor %}{{ x }}"),
      "01020");
  EXPECT_EQ(RenderOrError("{% for i in [1] %}{% set y = 1 %}{% endfor %}[{{ y }}]"), "[]");
  EXPECT_EQ(RenderOrError("{% if true %}{% set z = 5 %}{% endif %}{{ z }}"),
            "5");  // if is not a scope
  EXPECT_EQ(
      RenderOrError(
          "{% set ns = namespace(n=0, s='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
          "{% set ns.s = ns.s + m.role[0] %}{% endfor %}{{ ns.n }}{{ ns.s }}{{ ns['n'] }}[{{ "
          "ns.nope }}]"),
      "4suau4[]");
  EXPECT_EQ(RenderOrError("{% set ns = namespace() %}{% set ns.late = 'ok' %}{{ ns.late }}"), "ok");
}

TEST(ChatTemplateTest, SetOverridesContextVariable) {
  EXPECT_EQ(RenderOrError("{% set add_generation_prompt = false %}{{ add_generation_prompt }}"),
            "False");
}

// ----------------------------------------------------------------------------
// Whitespace control (transformers: trim_blocks and lstrip_blocks on).

TEST(ChatTemplateWhitespaceTest, MinusStripsAllWhitespaceOnItsSide) {
  EXPECT_EQ(RenderOrError("a \n {%- if true -%} \n x \n {%- endif -%} \n b"), "axb");
  EXPECT_EQ(RenderOrError("a  {{- 'b' -}}  \n c"), "abc");
  EXPECT_EQ(RenderOrError("a \n {#- comment -#} \n b"), "ab");
}

TEST(ChatTemplateWhitespaceTest, TrimBlocksEatsOneNewlineAfterBlockTags) {
  EXPECT_EQ(RenderOrError("{% if true %}\nx\n{% endif %}\n\ny"), "x\n\ny");
  EXPECT_EQ(RenderOrError("{{ 'v' }}\nw"), "v\nw");  // not after {{ }}
  EXPECT_EQ(RenderOrError("{# c #}\nz"), "z");       // but after comments
}

TEST(ChatTemplateWhitespaceTest, LstripBlocksDropsIndentBeforeBlockTags) {
  EXPECT_EQ(RenderOrError("a\n  {% if true %}\n  x\n  {% endif %}\nb\n"), "a\n  x\nb");
  EXPECT_EQ(RenderOrError("a  {% if true %}x{% endif %}  b"),
            "a  x  b");  // text before the tag: kept
  EXPECT_EQ(RenderOrError("  {{ 'v' }}  \n  {# c #}\n  y"), "  v  \n  y");  // not before {{ }}
}

TEST(ChatTemplateWhitespaceTest, PlusKeepsWhitespace) {
  EXPECT_EQ(RenderOrError("a\n\t{%+ if true %}x{% endif +%}\nb"), "a\n\tx\nb");
}

TEST(ChatTemplateWhitespaceTest, NewlinesAreNormalizedAndOneTrailingNewlineDropped) {
  EXPECT_EQ(RenderOrError("a\r\nb\rc\n"), "a\nb\nc");
  EXPECT_EQ(RenderOrError("a\n\n"), "a\n");
  EXPECT_EQ(RenderOrError("{{ 'x' }}\n"), "x");
}

TEST(ChatTemplateWhitespaceTest, CoderTemplateLayout) {
  // deepseek-coder-instruct's indentation idiom: `-` on a block start strips the
  // newline and indentation before it, including the newline after each {{ }}.
  const std::string t =
      "{%- for m in messages %}\n    {%- if m.role == 'user' %}\n{{ 'U:' + m.content }}\n"
      "    {%- else %}\n{{ 'O:' + m.content }}\n    {%- endif %}\n{%- endfor %}\n";
  EXPECT_EQ(RenderOrError(t), "O:Be brief.U:HiO:HelloU:Bye");  // checked against jinja2 3.1.6
  const std::string keep =
      "{%- for m in messages %}\n    {%- if m.role == 'user' %}\n{{ 'U:' + m.content }}\n"
      "    {% else %}\n{{ 'O:' + m.content }}\n    {% endif %}\n{% endfor %}\n";
  EXPECT_EQ(RenderOrError(keep), "O:Be brief.\nU:Hi\nO:Hello\nU:Bye\n");
}

// ----------------------------------------------------------------------------
// Errors.

TEST(ChatTemplateErrorTest, UnclosedTags) {
  absl::Status s = ParseStatus("abc {{ messages");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(HasSubstr(s.message(), "unclosed '{{' tag at offset 4"));
  EXPECT_TRUE(HasSubstr(ParseStatus("{% if true ").message(), "unclosed '{%' tag at offset 0"));
  EXPECT_TRUE(
      HasSubstr(ParseStatus("x{# never closed").message(), "unclosed comment '{#' at offset 1"));
  EXPECT_TRUE(
      HasSubstr(ParseStatus("{{ 'abc }}").message(), "unterminated string literal at offset 3"));
  EXPECT_TRUE(
      HasSubstr(ParseStatus("{{ (1 }}").message(), "unexpected '}', expected ')' at offset 6"));
}

TEST(ChatTemplateErrorTest, UnclosedAndStrayBlocks) {
  EXPECT_TRUE(HasSubstr(ParseStatus("ab{% if true %}x").message(),
                        "'{% if %}' is never closed (expected '{% endif %}') at offset 2"));
  EXPECT_TRUE(HasSubstr(ParseStatus("{% for x in y %}{% if x %}{% endfor %}").message(),
                        "unexpected '{% endfor %}'"));
  EXPECT_TRUE(
      HasSubstr(ParseStatus("{% endif %}").message(), "unexpected '{% endif %}' at offset 0"));
  EXPECT_TRUE(HasSubstr(ParseStatus("{% break %}").message(), "'break' outside a loop"));
}

TEST(ChatTemplateErrorTest, UnsupportedConstructsNameThemselves) {
  EXPECT_TRUE(
      HasSubstr(ParseStatus("{{ x|tojson }}").message(), "unknown filter 'tojson' at offset 5"));
  EXPECT_TRUE(
      HasSubstr(ParseStatus("{{ x is divisibleby(3) }}").message(), "unknown test 'divisibleby'"));
  EXPECT_TRUE(HasSubstr(ParseStatus("{% macro m() %}{% endmacro %}").message(),
                        "unsupported tag '{% macro %}' at offset 0"));
  EXPECT_TRUE(HasSubstr(ParseStatus("{{ strftime_now('%Y') }}").message(),
                        "unsupported call to 'strftime_now'"));
  EXPECT_TRUE(HasSubstr(ParseStatus("{{ m.items() }}").message(), "unsupported method 'items'"));
  EXPECT_TRUE(
      HasSubstr(ParseStatus("{{ 1.5 }}").message(), "unsupported number literal at offset 3"));
  EXPECT_TRUE(HasSubstr(ParseStatus("{{ 4 / 2 }}").message(), "unsupported operator '/'"));
  EXPECT_TRUE(
      HasSubstr(ParseStatus("{% for k, v in x %}{% endfor %}").message(), "tuple unpacking"));
  EXPECT_TRUE(
      HasSubstr(ParseStatus("{% set x %}a{% endset %}").message(), "unsupported block 'set'"));
  EXPECT_TRUE(HasSubstr(ParseStatus("{{ 'x'|trim('a', 'b') }}").message(),
                        "'trim' takes 0 to 1 positional argument(s), got 2"));
  EXPECT_TRUE(HasSubstr(ParseStatus("{{ namespace(1) }}").message(), "'namespace' takes 0"));
  EXPECT_TRUE(HasSubstr(ParseStatus("{{ 'x'.strip(chars='a') }}").message(),
                        "unsupported keyword argument 'chars'"));
  EXPECT_TRUE(HasSubstr(ParseStatus("{{ 1 + }}").message(), "expected an expression, got '}}'"));
  EXPECT_TRUE(
      HasSubstr(ParseStatus("{{ é }}").message(), "unexpected character U+00E9 at offset 3"));
  EXPECT_TRUE(HasSubstr(ParseStatus("{{ ? }}").message(), "unexpected character U+003F"));
  EXPECT_TRUE(HasSubstr(ParseStatus("{{ a b }}").message(), "expected '}}', got 'b'"));
}

TEST(ChatTemplateErrorTest, DeepNestingIsRejectedNotACrash) {
  const std::string deep = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  EXPECT_TRUE(HasSubstr(ParseStatus(deep).message(), "nesting deeper than"));
  std::string blocks;
  for (int i = 0; i < 1000; ++i) blocks += "{% if true %}";
  EXPECT_TRUE(HasSubstr(ParseStatus(blocks).message(), "nesting deeper than"));
}

TEST(ChatTemplateErrorTest, RaiseExceptionFailsRenderWithItsMessage) {
  const std::string t =
      "{% for m in messages %}{% if m.role == 'system' %}"
      "{{ raise_exception('System role not supported') }}{% endif %}{% endfor %}";
  absl::Status s = RenderStatus(t);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(HasSubstr(s.message(), "System role not supported"));
  // Not raised when the branch is not taken.
  EXPECT_EQ(RenderOrError(t, Inputs({{"user", "hi"}})), "");
}

TEST(ChatTemplateErrorTest, UndefinedValuesFailWhereJinjaFails) {
  EXPECT_TRUE(HasSubstr(RenderStatus("{{ foo.bar }}").message(), "'foo' is undefined"));
  EXPECT_TRUE(HasSubstr(RenderStatus("{{ foo['bar'] }}").message(), "'foo' is undefined"));
  EXPECT_TRUE(HasSubstr(RenderStatus("{{ 'a' + foo }}").message(), "'foo' is undefined"));
  EXPECT_TRUE(
      HasSubstr(RenderStatus("{{ messages[0].nope + 'x' }}").message(), "has no attribute 'nope'"));
  EXPECT_TRUE(HasSubstr(RenderStatus("{{ messages[0].nope.deeper }}").message(),
                        "has no attribute 'nope'"));
  // Printing, testing, `~` and iterating an undefined value are fine.
  EXPECT_EQ(RenderOrError(
                "[{{ foo }}][{{ foo is defined }}][{{ foo ~ 'x' }}]{% for x in foo %}{% endfor %}"),
            "[][False][x]");
}

TEST(ChatTemplateErrorTest, TypeErrorsFailRender) {
  EXPECT_TRUE(HasSubstr(RenderStatus("{{ 'a' + 1 }}").message(),
                        "unsupported operand types for +: 'str' and 'int'"));
  EXPECT_TRUE(HasSubstr(RenderStatus("{{ 1 // 0 }}").message(), "division or modulo by zero"));
  EXPECT_TRUE(HasSubstr(RenderStatus("{% for x in 5 %}{% endfor %}").message(),
                        "'int' object is not iterable"));
  EXPECT_TRUE(
      HasSubstr(RenderStatus("{% set a = 1 %}{% set a.b = 2 %}").message(), "non-namespace"));
  EXPECT_TRUE(
      HasSubstr(RenderStatus("{{ 1 in 'a' }}").message(), "requires string as left operand"));
  EXPECT_TRUE(HasSubstr(RenderStatus("{{ none|length }}").message(), "has no len()"));
  EXPECT_TRUE(
      HasSubstr(RenderStatus("{{ messages[0][1:] }}").message(), "'dict' object is not sliceable"));
  EXPECT_TRUE(HasSubstr(RenderStatus("{{ 'Ä'|lower }}").message(), "non-ASCII"));
  EXPECT_TRUE(HasSubstr(
      RenderStatus("{% for i in range(100000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}")
          .message(),
      "loop iterations"));
}

// ----------------------------------------------------------------------------
// Parse once, render many.

TEST(ChatTemplateTest, ParsedTemplateRendersManyInputsAndCopiesShareIt) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(
      "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}"
      "{% if add_generation_prompt %}>{% endif %}");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t->Render(Inputs({{"user", "a"}})), std::string(kBos) + "user:a;>");
  EXPECT_EQ(*t->Render(Inputs({{"user", "b"}, {"assistant", "c"}}, false)),
            std::string(kBos) + "user:b;assistant:c;");
  const ChatTemplate copy = *t;
  EXPECT_EQ(*copy.Render(Inputs({})), std::string(kBos) + ">");
}

TEST(ChatTemplateTest, RenderIsSafeForConcurrentUse) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(
      "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m.content "
      "}}{% endfor %}"
      "{{ ns.n }}");
  ASSERT_TRUE(t.ok()) << t.status();
  std::vector<std::thread> threads;
  std::vector<std::string> results(4);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < 200; ++k) {
        results[i] = *t->Render(Inputs({{"user", std::to_string(i)}, {"user", "x"}}));
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(results[i], std::to_string(i) + "x2");
}

// ----------------------------------------------------------------------------
// Fallback format and role validation.

TEST(RenderFallbackChatTest, SystemUserAssistantTurns) {
  EXPECT_EQ(RenderFallbackChat(Inputs(kConversation)),
            "<｜begin▁of▁sentence｜>Be brief.\n\nUser: Hi\n\nAssistant: Hello<｜end▁of▁sentence｜>"
            "User: Bye\n\nAssistant:");
}

TEST(RenderFallbackChatTest, WithoutSystemOrGenerationPrompt) {
  EXPECT_EQ(RenderFallbackChat(Inputs({{"user", "Hi"}})),
            "<｜begin▁of▁sentence｜>User: Hi\n\nAssistant:");
  EXPECT_EQ(RenderFallbackChat(Inputs({{"user", "Hi"}, {"assistant", "Yo"}}, false)),
            "<｜begin▁of▁sentence｜>User: Hi\n\nAssistant: Yo<｜end▁of▁sentence｜>");
  EXPECT_EQ(RenderFallbackChat(Inputs({}, false)), "<｜begin▁of▁sentence｜>");
}

TEST(RenderFallbackChatTest, UsesGivenTokensAndSkipsUnknownRoles) {
  ChatTemplateInputs inputs = Inputs({{"user", "a"}, {"tool", "ignored"}, {"assistant", "b"}});
  inputs.bos_token = "<s>";
  inputs.eos_token = "</s>";
  EXPECT_EQ(RenderFallbackChat(inputs), "<s>User: a\n\nAssistant: b</s>Assistant:");
}

TEST(ValidateChatMessagesTest, AcceptsKnownRoles) {
  EXPECT_TRUE(ValidateChatMessages(kConversation).ok());
  EXPECT_TRUE(ValidateChatMessages({}).ok());
}

TEST(ValidateChatMessagesTest, RejectsUnknownRoleNamingIt) {
  absl::Status s = ValidateChatMessages({{"user", "a"}, {"tool", "b"}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(HasSubstr(s.message(), "message 1 has role 'tool'"));
  EXPECT_TRUE(HasSubstr(ValidateChatMessages({{"", "a"}}).message(), "role ''"));
  EXPECT_FALSE(ValidateChatMessages({{"User", "a"}}).ok());  // case-sensitive
}

}  // namespace
}  // namespace dsv2
