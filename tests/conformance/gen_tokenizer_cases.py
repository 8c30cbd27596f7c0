#!/usr/bin/env python3
"""Writes tests/data/tokenizer_cases.json: what HuggingFace `tokenizers` does with
model/data/deepseek-v2/tokenizer.json, for tests/model/tokenizer_test.cc.

Run with the reference interpreter (it has `tokenizers` installed):

    /work/pyref/bin/python tests/conformance/gen_tokenizer_cases.py

Sections of the output (all text is UTF-8, ids are ints):
  meta            tokenizers version and the sha256 of the tokenizer files.
  encode_cases    {text, ids (add_special_tokens=False), ids_special (True),
                   decoded / decoded_skip: decode(ids_special, skip_special_tokens=False/True)}
  decode_cases    {ids, decoded, decoded_skip}: byte tokens that form invalid UTF-8,
                   added tokens, unknown ids (HF skips them).
  variants        the same tokenizer.json with some top-level keys replaced
                   (`override`, and `model_override` merged into "model"): the
                   pre-tokenizer's raw pieces and the ids, to cover pre-tokenizer
                   kinds, Split behaviours, added-token flags and post-processors
                   that the shipped file does not use.
  unicode         the character sets the C++ tables must reproduce, measured on HF:
                   whitespace (onig `\\s`, also Rust char::is_whitespace),
                   numeric_ranges (Digits pre-tokenizer: Rust char::is_numeric),
                   word_ranges (added-token single_word: Rust regex `\\w`),
                   onig_*_ranges (Oniguruma `\\p{L}`, `\\p{N}`, `\\w`, `\\d`).

model/gen_unicode_tables.py turns the `unicode` section into model/unicode_tables.inc (the
C++ range tables); run it after this script.
"""

import argparse
import hashlib
import json
import os
import random
import sys

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, pre_tokenizers

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TOK_DIR = os.path.join(REPO, "model", "data", "deepseek-v2")
OUT = os.path.join(REPO, "tests", "data", "tokenizer_cases.json")

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
ADDED_CHARS = "øöúÿõ÷ûýÀùÁþü"  # ids 100002..100014


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


B2U = bytes_to_unicode()
U2B = {u: b for b, u in B2U.items()}


def all_chars():
    return [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]


def to_ranges(cps):
    out = []
    for c in cps:
        if out and out[-1][1] + 1 == c:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


# ----------------------------------------------------------------------------- unicode sets
def measure_whitespace():
    sp = pre_tokenizers.Split(Regex(r"\s"), "isolated")
    s = "".join(chr(c) for c in all_chars())
    cand = [p for p, _ in sp.pre_tokenize_str(s) if len(p) == 1]
    return sorted(ord(p) for p in cand if len(sp.pre_tokenize_str("a" + p + "a")) == 3)


def measure_numeric():
    d = pre_tokenizers.Digits(individual_digits=True)
    s = "".join(chr(c) for c in all_chars())
    cand = [p for p, _ in d.pre_tokenize_str(s) if len(p) == 1]
    return [ord(p) for p in cand if len(d.pre_tokenize_str(p + p)) == 2]


def measure_onig(pattern):
    """Code points that the Oniguruma pattern (one character class) matches."""
    sp = pre_tokenizers.Split(Regex(pattern), "removed", invert=True)  # keeps the matches
    s = "".join(chr(c) for c in all_chars())
    return sorted(set(ord(c) for p, _ in sp.pre_tokenize_str(s) for c in p))


# Oniguruma classes that the C++ regex translation spells out as explicit ranges, so that
# RE2's (older) Unicode tables do not matter.
ONIG_CLASSES = [("kOnigLetterRanges", "onig_letter_ranges", r"\p{L}"),
                ("kOnigNumberRanges", "onig_number_ranges", r"\p{N}"),
                ("kOnigWordRanges", "onig_word_ranges", r"\w"),
                ("kOnigDigitRanges", "onig_digit_ranges", r"\d")]


def measure_word_chars(base_json):
    # An added single_word token "\x01\x02" matches only when the character before
    # it is not a word character (tokenizers' ENDS_WITH_WORD regex `\w$`).
    t = Tokenizer.from_str(base_json)
    t.add_tokens([AddedToken("\x01\x02", single_word=True)])
    tid = t.token_to_id("\x01\x02")
    cs = [c for c in all_chars() if c not in (1, 2)]
    text = "".join(chr(c) + "\x01\x02 " for c in cs)
    e = t.encode(text, add_special_tokens=False)
    hit = set(o[0] // 4 for i, o in zip(e.ids, e.offsets) if i == tid)
    assert len(hit) > 1000
    return [c for k, c in enumerate(cs) if k not in hit]


# ----------------------------------------------------------------------------- inputs
def hand_written_texts():
    t = [
        # ASCII and code
        "Hello world",
        "Hello, world! How are you today?",
        "The quick brown fox jumps over the lazy dog.",
        "hello",
        " hello",
        "  hello",
        "hello ",
        "hello  ",
        "HELLO WORLD",
        "a",
        " ",
        "  ",
        "   ",
        "!",
        "?!?!",
        "...",
        "a.b.c",
        "e.g. i.e. etc.",
        "user@example.com",
        "https://www.example.com/path?query=1&x=y#frag",
        "def foo(x, y):\n    return x + y\n",
        "int main() {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
        "for (int i = 0; i < n; ++i) { a[i] = b[i] * 2; }",
        "    indented line\n        more indented\n",
        "if x:\n\tpass\n\telse:\n\t\tpass",
        "<div class=\"a\">text</div>",
        "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
        "x = y->z; // comment\n/* block */",
        "SELECT * FROM users WHERE id = 42;",
        "$ ls -la | grep foo > out.txt 2>&1",
        "#include <iostream>",
        "snake_case_name camelCaseName PascalCase kebab-case",
        "a_b__c___d",
        "@@ -1,5 +1,6 @@",
        "~/.bashrc",
        "`backticks` and 'quotes' and \"double\"",
        # contractions
        "don't",
        "I'm you're he's she'll we've they'd it's can't won't",
        "DON'T I'M YOU'RE WE'VE",
        "'s 't 're 've 'm 'll 'd",
        "rock 'n' roll",
        "the dog's bone",
        "O'Reilly",
        # whitespace
        "a b",
        "a  b",
        "a   b",
        "a    b",
        "a\tb",
        "a\t\tb",
        "a \tb",
        "a\t b",
        "\tx",
        "x\t",
        "a\nb",
        "a\n\nb",
        "a\r\nb",
        "a\rb",
        "\n",
        "\n\n",
        "\r\n",
        "\r\n\r\n",
        " \n",
        "\n ",
        " \n ",
        "a \n b",
        "a  \n  b",
        "line1\nline2\n",
        "\n\n\nx\n\n\n",
        "  \n\n  x  ",
        "x \t \n \t y",
        "end with spaces   ",
        "   start with spaces",
        "a\u00a0b",
        "\u00a0a",
        "a\u00a0",
        "a\u00a0\u00a0b",
        "a \u00a0b",
        "a\u00a0 b",
        "100\u00a0km",
        "a\u3000b",
        "\u3000a",
        "中文\u3000中文",
        "a\u3000\u3000b",
        "\u3000\u3000",
        "a\u2009b",
        "\u2009\u2009a",
        "5\u2009000",
        "a\u2028b\u2029c",
        "a\u0085b",
        "a\u1680b",
        "a\u202fb\u205fc",
        "a\u2000b\u2001c\u2002d\u2003e\u200af",
        "a\u180eb",
        "a\u200bb",
        "a\ufeffb",
        "a\x0bb\x0cc",
        "a\x1cb\x1dc\x1ed\x1ff",
        " \t\x0b\x0c\u00a0\u3000\u2009",
        "x\u00a0\n\u3000y",
        # digits
        "12345",
        "1234567890",
        "x1y2z3",
        "3.14159",
        "1,000,000",
        "2024-01-15",
        "v1.2.3",
        "0x1F",
        "１２３",
        "٣٤٥",
        "²³",
        "Ⅻ",
        "½ ¾",
        "① ②",
        "abc123def",
        " 42",
        "$100.00",
        "1e-10",
        # CJK and other scripts
        "你好",
        "你好世界",
        "我爱北京天安门。",
        "今天天气很好，我们去公园吧！",
        "这是一个测试：“引号”和‘单引号’。",
        "龥龦",
        "日本語のテキストです。",
        "ひらがなカタカナ",
        "한국어 텍스트입니다",
        "안녕하세요",
        "Привет, мир!",
        "Ελληνικά γράμματα",
        "مرحبا بالعالم",
        "שלום עולם",
        "नमस्ते दुनिया",
        "สวัสดีชาวโลก",
        "Tiếng Việt có dấu",
        "ქართული",
        "Հայերեն",
        "mixed 中文 and English",
        "中文English混合",
        "日本語とEnglishと한국어",
        "αβγ ABC абв",
        # emoji and symbols
        "😀",
        "I love 🍕!",
        "👨‍👩‍👧‍👦",
        "🇺🇸🇨🇳",
        "❤️",
        "✓ ✗ → ← ↑ ↓",
        "∑_{i=1}^n x_i² ≤ ∞",
        "E = mc²",
        "©®™",
        "€£¥",
        "e\u0301",
        "\ufffd",
        "\ue000",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "𐐀𐐁",
        "\x00\x01\x7f",
        "\x7f",
        # letter / punctuation class edges
        "ƻƺƼ",
        "ʔʓʕ",
        "µ",
        "×",
        "！／：～",
        "‘’“”‟",
        "、。〃",
        "a！b",
        " ！",
        "Ｈｅｌｌｏ",
        "ＡＢＣ ａｂｃ",
        "ſ K Å",
        # the added byte-level characters (ids 100002-100014)
        "ü",
        "über",
        "Müller",
        " ü",
        "üü",
        ADDED_CHARS,
        " ".join(ADDED_CHARS),
        "Øresund ÀÁ ÿ",
        "façade naïve résumé",
        "à á â ã ä å æ ç è é ê ë",
        "ÀÁÂÃÄÅ",
        "÷×",
        # special token strings
        BOS,
        EOS,
        BOS + "hello",
        "hello" + EOS,
        "a" + EOS + "b",
        "x " + EOS + " y",
        BOS + EOS,
        EOS + EOS,
        BOS + " " + BOS,
        "<｜begin▁of",
        "<｜begin▁of▁sentence｜ >",
        "<|begin_of_sentence|>",
        "<｜end▁of▁sentence｜",
        "▁",
        "｜",
        BOS + "ü" + EOS,
        # chat-formatted
        BOS + "You are helpful.\n\nUser: Hi there!\n\nAssistant:",
        "User: What is 2+2?\n\nAssistant: 4" + EOS + "User: Thanks\n\nAssistant:",
    ]
    return t


def long_texts():
    lorem = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
             "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis "
             "nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. ")
    return [
        lorem * 6,
        "a" * 1000,
        " " * 500,
        "\n" * 50 + "x",
        "你好世界" * 200,
        "1234567890" * 30,
        "ab " * 300,
        ("def f(x):\n    return x * 2\n\n" * 20),
        "🙂" * 100,
        "ü" * 50 + "x",
    ]


def fuzz_texts(rng, count):
    pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 3 +
            list("0123456789") * 2 +
            list(" " * 10) + list("\t\n\r") + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") +
            ["\u00a0", "\u3000", "\u2009", "\u0085", "\u2028", "\u200b", "\x0b"] +
            list("你好世界中文测试龥한국어ひらがなカタカナ") + list("😀🍕👍🏽❤") +
            ["\u200d", "\ufe0f"] + list(ADDED_CHARS) + list("éàçñßøåæœ") +
            list("αβγδПривет") + list("！，。：“”‘’、") +
            ["\u0301", "\u0308"] + ["'s", "'t", "'re", "'ll"] + [BOS, EOS, "<｜", "▁"])
    out = []
    for _ in range(count):
        n = rng.randint(1, 40)
        out.append("".join(rng.choice(pool) for _ in range(n)))
    # Random code points anywhere in Unicode (no surrogates).
    for _ in range(count // 4):
        n = rng.randint(1, 12)
        s = []
        for _ in range(n):
            while True:
                c = rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0x7FF),
                                rng.randint(0x800, 0xFFFF), rng.randint(0x10000, 0x10FFFF)])
                if not 0xD800 <= c < 0xE000:
                    break
            s.append(chr(c))
            if rng.random() < 0.3:
                s.append(rng.choice([" ", "  ", "\u00a0", "a", "1", "\n"]))
        out.append("".join(s))
    return out


# ----------------------------------------------------------------------------- cases
def encode_case(tok, text):
    ids = tok.encode(text, add_special_tokens=False).ids
    ids_sp = tok.encode(text, add_special_tokens=True).ids
    return {
        "text": text,
        "ids": ids,
        "ids_special": ids_sp,
        "decoded": tok.decode(ids_sp, skip_special_tokens=False),
        "decoded_skip": tok.decode(ids_sp, skip_special_tokens=True),
    }


def decode_cases(tok, rng):
    vocab = tok.get_vocab(with_added_tokens=False)
    # The 13 bytes that never occur in UTF-8 have no BPE token; their characters are
    # the added tokens 100002-100014, which the ByteLevel decoder maps back to bytes.
    byte_id = {b: vocab[B2U[b]] if B2U[b] in vocab else tok.token_to_id(B2U[b])
               for b in range(256)}

    def by(bs):
        return [byte_id[b] for b in bs]

    seqs = [
        by([0xE4]),  # lone lead byte of a 3-byte char
        by([0xE4, 0xBD]),  # truncated 你
        by([0xE4, 0xBD, 0xA0]),  # 你, one byte per token
        by([0xE4, 0xBD]) + by([0x61]),
        by([0xF0, 0x9F, 0x98]),  # truncated emoji
        by([0xF0, 0x9F, 0x98, 0x80]),  # 😀
        by([0xF0, 0x9F, 0x98]) + by([0xF0, 0x9F, 0x98, 0x80]),
        by([0x80]),  # lone continuation
        by([0x80, 0x80, 0x80]),
        by([0xC3]),  # truncated 2-byte char
        by([0xC3, 0x41]),
        by([0xC3, 0xA9]),  # é
        by([0xC0, 0xAF]),  # overlong
        by([0xC1, 0xBF]),
        by([0xE0, 0x80, 0x80]),  # overlong 3-byte
        by([0xE0, 0xA0, 0x80]),
        by([0xED, 0xA0, 0x80]),  # surrogate
        by([0xED, 0x9F, 0xBF]),
        by([0xF4, 0x8F, 0xBF, 0xBF]),  # U+10FFFF
        by([0xF4, 0x90, 0x80, 0x80]),  # > U+10FFFF
        by([0xF5, 0x80]),
        by([0xF8, 0x88, 0x80, 0x80, 0x80]),
        by([0x61, 0xE4, 0x62, 0xBD, 0x63]),
        by([0xE4, 0xBD, 0xE4, 0xBD, 0xA0]),
        by([0xF0, 0x9F]) + by([0x20]),
        [100014],
        [100002, 100003, 100004],
        list(range(100002, 100015)),
        [100000] + by([0xE4]),
        by([0xE4]) + [100000],
        by([0xE4, 0xBD]) + [100001] + by([0xA0]),
        [100000, 100001, 100000],
        [100015],  # first id past the vocabulary: HF skips it
        [3, 100015, 4],
        [3, 102399, 4, 2000000, 5],
        [],
    ]
    # Multi-byte BPE tokens whose bytes are not whole characters.
    partial = [i for t, i in vocab.items() if len(t) > 1 and not bytes(U2B[c] for c in t).decode(
        "utf-8", errors="ignore") == bytes(U2B[c] for c in t).decode("utf-8", errors="replace")]
    partial.sort()
    for _ in range(20):
        seqs.append([rng.choice(partial) for _ in range(rng.randint(1, 4))])
    for _ in range(40):
        seqs.append(by([rng.randint(0x80, 0xFF) if rng.random() < 0.7 else rng.randint(0x20, 0x7F)
                        for _ in range(rng.randint(1, 10))]))
    for _ in range(20):
        seqs.append([rng.randint(0, 100014) for _ in range(rng.randint(1, 12))])
    out = []
    for ids in seqs:
        out.append({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                    "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    return out


LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
BYTELEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False}

VARIANT_TEXTS = [
    "Hello world", "Hello  world", "a   b", "a \t b", "x  ", "  x", " ", "   ", "a\n\nb",
    "a  \n  b", "don't I'm WE'LL 'S", "123456 7", "x1y22z333", "a,b;;c", "hi!!  there??",
    "你好 世界", "😀 😀", "a\u00a0\u00a0b", "\u3000\u3000x", "ü über", "tab\tsep\t\tx",
    "  leading and trailing  ", "a1 b22 c333 d4444", "mixed\r\nlines\rend", "",
    # characters whose classes differ between Unicode versions / regex engines
    "_\U000143ab\n\ue0e5H", " \ucf3e\U0001392e\u4054 1", "\u0d5a' \u00b2\u00bd\u216b",
    "a\u200cb\u200dc",
    "'\u017f 'K \u212a",
]

ADDED_TEXTS = [
    "hello world", "say hello", "<tool>x</tool>", "a <tool> b </tool> c", "a  <tool>  b",
    "x</tool>   y", "word", "a word b", "aword", "words", "word_", "_word", "éword", "word1",
    " word ", "<unnorm>", "a<unnorm>b", "<to", "<tool", "<toolx", "<tool>x", "ab", "aab",
    "abab", BOS + "hello" + EOS, "  <tool>", "\u00a0<tool>\u3000", "<tool>\n\n", "zzqq",
    "hellohello", "ü" + "<tool>" + "ü",
]


def variants(base):
    def pt_seq(*steps):
        return {"type": "Sequence", "pretokenizers": list(steps)}

    def split(pattern, behavior, invert=False, literal=False):
        return {"type": "Split", "pattern": {("String" if literal else "Regex"): pattern},
                "behavior": behavior, "invert": invert}

    orig_pt = base["pre_tokenizer"]
    vs = []
    vs.append(("gpt2_bytelevel_regex",
               {"pre_tokenizer": dict(BYTELEVEL, use_regex=True)}, {}, VARIANT_TEXTS))
    vs.append(("bytelevel_add_prefix_space",
               {"pre_tokenizer": pt_seq(*orig_pt["pretokenizers"][:-1],
                                        dict(BYTELEVEL, add_prefix_space=True))}, {},
               VARIANT_TEXTS))
    vs.append(("llama3_split", {"pre_tokenizer": pt_seq(split(LLAMA3_REGEX, "Isolated"),
                                                        BYTELEVEL)}, {},
               VARIANT_TEXTS + ["x   \n\n  y", "a\n \n b", "'S 'LL 'Re", "abc   ", "1234567"]))
    for behavior in ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"]:
        for invert in [False, True]:
            name = f"split_{behavior.lower()}{'_invert' if invert else ''}"
            vs.append((name, {"pre_tokenizer": pt_seq(split(r"\s+|[0-9]", behavior, invert),
                                                      BYTELEVEL)}, {}, VARIANT_TEXTS))
    vs.append(("split_literal_string", {"pre_tokenizer": pt_seq(
        split(" ", "MergedWithNext", literal=True), split("a.", "Isolated", literal=True),
        BYTELEVEL)}, {}, VARIANT_TEXTS + ["a.b a.c", "a.*", "x  a."]))
    vs.append(("split_anchors", {"pre_tokenizer": pt_seq(
        split(r"^\s+|\s+$", "Isolated"), split(r"\d+", "Isolated"), split(r"\w+", "Isolated"),
        BYTELEVEL)}, {}, VARIANT_TEXTS + ["٣٤٥ ١٢", "ab_cd éf", "x\u0301y"]))
    vs.append(("digits_contiguous", {"pre_tokenizer": pt_seq(
        {"type": "Digits", "individual_digits": False}, BYTELEVEL)}, {},
               VARIANT_TEXTS + ["٣٤٥x١٢", "²³½", "１２a"]))
    vs.append(("post_processor_bos_eos", {"post_processor": {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": EOS, "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {BOS: {"id": BOS, "ids": [100000], "tokens": [BOS]},
                           EOS: {"id": EOS, "ids": [100001], "tokens": [EOS]}}}}, {},
               ["", "hello", BOS + "x"]))
    vs.append(("post_processor_null", {"post_processor": None}, {}, ["", "hello"]))
    vs.append(("ignore_merges", {}, {"ignore_merges": True}, VARIANT_TEXTS))
    extra = [
        {"id": 200000, "content": "hello", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": True, "special": False},
        {"id": 200001, "content": "<tool>", "single_word": False, "lstrip": True, "rstrip": False,
         "normalized": True, "special": True},
        {"id": 200002, "content": "</tool>", "single_word": False, "lstrip": False, "rstrip": True,
         "normalized": True, "special": True},
        {"id": 200003, "content": "word", "single_word": True, "lstrip": False, "rstrip": False,
         "normalized": True, "special": False},
        {"id": 200004, "content": "<unnorm>", "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True},
        {"id": 200005, "content": "<to", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": True, "special": False},
        {"id": 200006, "content": "<toolx", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": False},
        {"id": 7, "content": "ab", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": True, "special": False},
        {"id": 200008, "content": "zzqq", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": True, "special": True},
        {"id": 200009, "content": "hello", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": True, "special": True},
    ]
    vs.append(("added_token_flags", {"added_tokens": base["added_tokens"] + extra}, {},
               ADDED_TEXTS))
    return vs


def variant_cases(base):
    out = []
    for name, override, model_override, texts in variants(base):
        j = dict(base)
        j.update(override)
        if model_override:
            j["model"] = dict(base["model"], **model_override)
        tok = Tokenizer.from_str(json.dumps(j))
        has_bytelevel = "ByteLevel" in json.dumps(j["pre_tokenizer"])
        cases = []
        for text in texts:
            pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(text)]
            if has_bytelevel:
                pieces = [bytes(U2B[c] for c in p).decode("utf-8") for p in pieces]
            ids = tok.encode(text, add_special_tokens=False).ids
            ids_sp = tok.encode(text, add_special_tokens=True).ids
            case = {"text": text, "pieces": pieces, "ids": ids, "ids_special": ids_sp}
            if name == "added_token_flags":
                case["decoded_skip"] = tok.decode(ids_sp, skip_special_tokens=True)
                case["decoded"] = tok.decode(ids_sp, skip_special_tokens=False)
            cases.append(case)
        entry = {"name": name, "override": override, "cases": cases}
        if model_override:
            entry["model_override"] = model_override
        if name == "added_token_flags":
            entry["token_ids"] = {t["content"]: tok.token_to_id(t["content"])
                                  for t in j["added_tokens"]}
            entry["num_ids"] = tok.get_vocab_size(with_added_tokens=True)
        out.append(entry)
    return out


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()

    with open(os.path.join(TOK_DIR, "tokenizer.json"), encoding="utf-8") as f:
        base_text = f.read()
    base = json.loads(base_text)
    tok = Tokenizer.from_str(base_text)
    rng = random.Random(20240515)

    texts = hand_written_texts() + long_texts() + fuzz_texts(rng, 120)
    seen = set()
    texts = [t for t in texts if not (t in seen or seen.add(t))]
    data = {
        "meta": {
            "generator": "tests/conformance/gen_tokenizer_cases.py",
            "tokenizers_version": tokenizers.__version__,
            "tokenizer_json_sha256": sha256(os.path.join(TOK_DIR, "tokenizer.json")),
            "tokenizer_config_json_sha256": sha256(os.path.join(TOK_DIR, "tokenizer_config.json")),
            "num_ids": tok.get_vocab_size(with_added_tokens=True),
        },
        "encode_cases": [encode_case(tok, t) for t in texts],
        "decode_cases": decode_cases(tok, rng),
        "variants": variant_cases(base),
        "unicode": {
            "whitespace": measure_whitespace(),
            "numeric_ranges": to_ranges(measure_numeric()),
            "word_ranges": to_ranges(measure_word_chars(base_text)),
            **{key: to_ranges(measure_onig(pattern)) for _, key, pattern in ONIG_CLASSES},
        },
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out}: {len(data['encode_cases'])} encode cases, "
          f"{len(data['decode_cases'])} decode cases, {len(data['variants'])} variants, "
          f"{os.path.getsize(args.out)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
