#!/usr/bin/env python3
"""Writes tests/data/chat_cases.json: what transformers' apply_chat_template renders
for real DeepSeek chat templates, for tests/model/chat_template_test.cc (text) and the
tokenizer integration (ids).

Run with the reference interpreter (transformers, jinja2 and tokenizers installed):

    /work/pyref/bin/python tests/conformance/gen_chat_cases.py

Sections of the output (all text is UTF-8, ids are ints):
  meta       library versions, the tokenizer directory, and what we checked about BOS:
             apply_chat_template(tokenize=True) encodes the rendered text with
             add_special_tokens=False, so the only BOS is the one the template renders.
  templates  name -> {source, origin}. `origin` says where the template comes from.
  cases      {name, template (a key of `templates`), messages [{role, content}],
             add_generation_prompt, bos, eos, expected_text (tokenize=False),
             expected_ids (tokenize=True, return_dict=False)}.

The tokenizer is model/data/deepseek-v2 for every template, so for templates of
other checkpoints (V2.5, R1, Coder) their role markers such as <｜User｜> are plain
text to it; the ids still pin down how the rendered text must be encoded.
"""

import hashlib
import json
import os
import sys

import jinja2
import tokenizers
import transformers
from transformers import AutoTokenizer

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TOK_DIR = os.path.join(REPO, "model", "data", "deepseek-v2")
OUT = os.path.join(REPO, "tests", "data", "chat_cases.json")

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
BOS_ID = 100000

# DeepSeek-V2.5 (deepseek-ai/DeepSeek-V2.5 tokenizer_config.json; the same
# tool-calling template later shipped with V2.5-1210 and V3). Written out from the
# published file; the tool branches are never taken here (messages have no
# tool_calls), but they must parse.
V2_5 = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}"
    "{%- endfor -%}"
    "{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}"
)

# deepseek-ai/deepseek-coder-33b-instruct (also 6.7b/1.3b-instruct): newlines,
# indentation and -/trim_blocks/lstrip_blocks interplay; namespace(found=...).
# Byte-for-byte as in llama.cpp's tests/test-chat-template.cpp.
CODER = (
    "{% if not add_generation_prompt is defined %}\n{% set add_generation_prompt = false %}\n{% endif %}\n"
    "{%- set ns = namespace(found=false) -%}\n{%- for message in messages -%}\n"
    "    {%- if message['role'] == 'system' -%}\n        {%- set ns.found = true -%}\n    {%- endif -%}\n"
    "{%- endfor -%}\n{{bos_token}}{%- if not ns.found -%}\n"
    "{{'You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek "
    "Company, and you only answer questions related to computer science. For politically sensitive "
    "questions, security and privacy issues, and other non-computer science questions, you will refuse "
    "to answer\\n'}}\n{%- endif %}\n{%- for message in messages %}\n    {%- if message['role'] == 'system' %}\n"
    "{{ message['content'] }}\n    {%- else %}\n        {%- if message['role'] == 'user' %}\n"
    "{{'### Instruction:\\n' + message['content'] + '\\n'}}\n        {%- else %}\n"
    "{{'### Response:\\n' + message['content'] + '\\n<|EOT|>\\n'}}\n        {%- endif %}\n    {%- endif %}\n"
    "{%- endfor %}\n{% if add_generation_prompt %}\n{{'### Response:'}}\n{% endif %}"
)

# deepseek-ai/DeepSeek-R1 (2025-01 revision): several system prompts joined,
# `'tool_calls' in message`, content.split('</think>')[-1].
R1 = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and 'tool_calls' in message %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls'] %}{%- if not ns.is_first %}{%- if message['content'] is none %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- else %}"
    "{{'<｜Assistant｜>' + message['content'] + '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- endif %}{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- endif %}{%- endfor %}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and 'tool_calls' not in message %}"
    "{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}"
    "{{'<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}"
    "{%- endfor -%}"
    "{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)

# Not a checkpoint's template: exercises the rest of the supported subset
# (loop.*, filters, slices, tests, `in`, `~`, inline if, literals, escapes, indented
# blocks under trim_blocks/lstrip_blocks, '+' markers, comments, break/continue).
FEATURES = """{#- dsv2: every supported construct, rendered by HF for the expected text -#}
{%- set ns = namespace(users=0, seen='') -%}
{%- for m in messages if m.role != 'system' -%}
  {%- if m['role'] == 'user' %}{% set ns.users = ns.users + 1 %}{% endif -%}
{%- endfor -%}
{{ bos_token }}[{{ messages|length }} messages, {{ ns.users }} from the user]
{% for message in messages %}
    {% if loop.first %}<first of {{ loop.length }}>{% endif %}
    {{- loop.index }}/{{ loop.revindex }} {{ message['role']|upper }}: {{ message.content|trim }}
    |{{ message['content'][:3] }}|{{ message.content[-2:] }}|{{ message.content|length }}|{{ message.content[::-1][:2] }}|
    {% if message.role == 'assistant' %}
{{ message.content ~ eos_token }}
    {% elif message.role == 'user' and not loop.last %}
  (user turn {{ loop.index0 }}){# a comment #}
    {% else %}
{{ 'system' if message.role == 'system' else 'last user' }}
    {% endif %}
    {%+ if loop.last %}<last revindex0={{ loop.revindex0 }} even={{ loop.index is even }}>{% endif +%}
{% endfor %}
{%- for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}{{ x }}{% if x >= 3 %}{% break %}{% endif %}{% endfor %}
{{ 7 // 2 }} {{ -7 % 3 }} {{ 'ab' * 2 }} {{ [1, 'two', none, true] }} {{ {'k': 'v'}['k'] }} {{ ('t', 1)|length }}
{{ 'x' in 'xyz' }} {{ 'q' not in ['a', 'b'] }} {{ 'role' in messages[0] }} {{ messages[0].missing is defined }} {{ undefined_name is not defined }}
{{ 'tab\\there' }} {{ "dq \\"x\\" \\u00e9 \\x41" }} {{ 'a' 'b' }} {{ none }} {{ true and 'yes' }} {{ 0 or 'fallback' }}
{{ messages|first|length }} {{ (messages|last).role }} {{ ['p', 'q']|join('-') }} {{ undefined_name|default('dflt') }}
{{ '  padded  '.strip() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a  b c'.split() }}|{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith('c') }}|{{ messages[0].get('role') }}{{ messages[0].get('nope', '-') }}
{%- if add_generation_prompt %}
{{ 'Assistant:' }}
{%- endif %}
"""

TEMPLATES = {
    "deepseek-v2-chat": {
        "source": None,  # filled from model/data/deepseek-v2/tokenizer_config.json
        "origin": "model/data/deepseek-v2/tokenizer_config.json (DeepSeek-V2-Chat; "
                  "V2-Lite-Chat and Coder-V2-Instruct ship the same template)",
    },
    "deepseek-v2.5": {"source": V2_5, "origin": "deepseek-ai/DeepSeek-V2.5 tokenizer_config.json"},
    "deepseek-coder-instruct": {"source": CODER,
                                "origin": "deepseek-ai/deepseek-coder-33b-instruct tokenizer_config.json"},
    "deepseek-r1": {"source": R1, "origin": "deepseek-ai/DeepSeek-R1 tokenizer_config.json"},
    "dsv2-features": {"source": FEATURES, "origin": "synthetic: covers the rest of the Jinja subset"},
}


def conversations():
    s, u, a = "system", "user", "assistant"

    def msgs(*pairs):
        return [{"role": r, "content": c} for r, c in pairs]

    return [
        ("user_only", msgs((u, "Hello"))),
        ("system_user", msgs((s, "You are a helpful assistant."), (u, "What is 2+2?"))),
        ("multi_turn", msgs((s, "You are a helpful assistant."), (u, "Hi"), (a, "Hello! How can I help?"),
                            (u, "Tell me a joke."))),
        ("multi_turn_no_system", msgs((u, "Hi"), (a, "Hello!"), (u, "Bye"))),
        ("ends_with_assistant", msgs((u, "Ping"), (a, "Pong"))),
        ("assistant_first", msgs((a, "Hi, how can I help?"), (u, "Explain MLA."))),
        ("only_system", msgs((s, "You are terse."))),
        ("two_systems", msgs((s, "Rule one."), (s, "Rule two."), (u, "Go"))),
        ("unicode", msgs((u, "你好，世界！🌍 Grüße, naïve café — ‘quotes’ ẞ"), (a, "Привет 😀 مرحبا"),
                         (u, "日本語のテキスト\u3000全角スペース"))),
        ("added_token_chars", msgs((u, "øöúÿõ÷ûýÀùÁþü and ü"))),
        ("empty_content", msgs((s, ""), (u, ""), (a, ""), (u, ""))),
        ("whitespace_content", msgs((u, "  leading and trailing  \n\n"), (a, "\tTabbed\nnext line\n"),
                                    (u, "   "))),
        ("jinja_like_content", msgs((u, "{{ 7*7 }} {% if true %}x{% endif %} {# c #} ' \" \\ \\n"))),
        ("special_tokens_in_content", msgs((u, f"say {EOS} then {BOS} verbatim"))),
        ("think_content", msgs((u, "2+2?"), (a, "<think>add the numbers</think>\n\nThe answer is 4."),
                               (u, "And 3+3?"))),
        ("code_block", msgs((u, "```python\ndef f(x):\n    return x * 2\n```\nWhat does f do?"))),
        ("digits", msgs((u, "Compute 12345 * 67890 = ?"), (a, "838102050"), (u, "Thanks, 1e9 next."))),
        ("long_multi_turn", msgs(*[(u if i % 2 == 0 else a, f"turn {i}: " + "word " * (i + 1)) for i in range(9)])),
    ]


def main():
    with open(os.path.join(TOK_DIR, "tokenizer_config.json"), encoding="utf-8") as f:
        TEMPLATES["deepseek-v2-chat"]["source"] = json.load(f)["chat_template"]

    tok = AutoTokenizer.from_pretrained(TOK_DIR)
    assert tok.bos_token == BOS and tok.eos_token == EOS, (tok.bos_token, tok.eos_token)
    assert tok.convert_tokens_to_ids(BOS) == BOS_ID

    cases = []
    double_bos_if_special = None
    for tname, tinfo in TEMPLATES.items():
        token_overrides = [(BOS, EOS)]
        if tname == "deepseek-v2-chat":
            token_overrides.append(("", "</s>"))  # bos/eos are template inputs too
        for cname, messages in conversations():
            for bos, eos in token_overrides:
                if (bos, eos) != (BOS, EOS) and cname not in ("multi_turn", "user_only"):
                    continue
                for agp in (True, False):
                    kwargs = dict(chat_template=tinfo["source"], add_generation_prompt=agp,
                                  bos_token=bos, eos_token=eos)
                    text = tok.apply_chat_template(messages, tokenize=False, **kwargs)
                    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)
                    # apply_chat_template encodes with add_special_tokens=False: the
                    # template's BOS is the only one.
                    assert ids == tok.encode(text, add_special_tokens=False), (tname, cname)
                    if bos == BOS:
                        assert ids[0] == BOS_ID and ids[1:2] != [BOS_ID], (tname, cname, ids[:3])
                        with_special = tok.encode(text, add_special_tokens=True)
                        double = with_special[:2] == [BOS_ID, BOS_ID]
                        assert double_bos_if_special in (None, double)
                        double_bos_if_special = double
                    suffix = "" if (bos, eos) == (BOS, EOS) else "/custom_tokens"
                    cases.append({
                        "name": f"{tname}/{cname}{suffix}/{'gen' if agp else 'nogen'}",
                        "template": tname,
                        "messages": messages,
                        "add_generation_prompt": agp,
                        "bos": bos,
                        "eos": eos,
                        "expected_text": text,
                        "expected_ids": ids,
                    })

    def sha256(name):
        with open(os.path.join(TOK_DIR, name), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    out = {
        "meta": {
            "generator": "tests/conformance/gen_chat_cases.py",
            "transformers": transformers.__version__,
            "jinja2": jinja2.__version__,
            "tokenizers": tokenizers.__version__,
            "tokenizer_dir": "model/data/deepseek-v2",
            "tokenizer_class_loaded": type(tok).__name__,
            "tokenizer_json_sha256": sha256("tokenizer.json"),
            "tokenizer_config_sha256": sha256("tokenizer_config.json"),
            "ids_have_single_bos": True,
            "encode_with_add_special_tokens_true_gives_double_bos": double_bos_if_special,
            "note": "expected_ids == tokenizer.encode(expected_text, add_special_tokens=False). "
                    "Encoding the rendered text with add_special_tokens=True would prepend a "
                    "second BOS; callers must not do that.",
        },
        "templates": TEMPLATES,
        "cases": cases,
    }
    # One case per line keeps the file small and its diffs readable.
    with open(OUT, "w", encoding="utf-8") as f:
        f.write("{\n")
        for key in ("meta", "templates"):
            f.write(f' "{key}": {json.dumps(out[key], ensure_ascii=False, indent=1)},\n')
        f.write(' "cases": [\n')
        f.write(",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases))
        f.write("\n ]\n}\n")
    with open(OUT, encoding="utf-8") as f:
        assert json.load(f) == out
    print(f"wrote {len(cases)} cases over {len(TEMPLATES)} templates to {os.path.relpath(OUT, REPO)}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
