#!/usr/bin/env python3
"""The "it speaks" check of the demo model on the held-out prompts.

Given answers to tests/data/demo_model/heldout_prompts.json, checks every answer:

  vocabulary  every word of the answer (maximal runs of ASCII letters, [A-Za-z]+) is, lowercased,
              in the generator's vocabulary (`vocabulary` in the prompts file, which is
              story_corpus.vocabulary(): every word of every word list and sentence form of
              tools/demo_model/story_corpus.py, names included, lowercased), and every other
              character is one the generator writes: space, newline or one of . , ! ? "
  sentence    the answer (whitespace stripped) is not empty and ends a sentence: its last
              character is . ! or ?, or a closing " right after one of them;
  mentions    every word of the prompt's `mentions` (name, animal, object, place) occurs in the
              answer as a whole word, case-insensitive (the animal may also be plural: +s).

Pass: 100% of answers pass `vocabulary` and `sentence`; at least 80% pass `mentions`.

Also reported (not part of the pass): `mention_rate_story`, the mention check on the story alone,
without an opening sentence that says back what was asked ("Here is a story about ...": the
first sentence, when it contains "story about"), so the rate shows what the story itself uses.

Answers come from --answers FILE (JSON: a list of strings in prompt order, or a list of
{"prompt": ..., "answer": ...}) or are generated here with transformers, greedy, from a model
directory (--model DIR; needs torch + transformers, like tools/demo_model/train.py):

    /path/to/venv/bin/python tools/demo_model/eval_heldout.py --model model/data/demo-stories \
        --save-answers /tmp/answers.json
    python3 tools/demo_model/eval_heldout.py --answers /tmp/answers.json

Exit status 0 when the check passes, 1 when it does not.
"""

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROMPTS = os.path.join(HERE, "..", "..", "tests", "data", "demo_model", "heldout_prompts.json")

_WORD = re.compile(r"[A-Za-z]+")
ALLOWED_OTHER = set(' \n.,!?"')
MIN_MENTION_RATE = 0.8


def check_answer(answer, mentions, vocab):
    text = answer.strip()
    words = _WORD.findall(text)
    bad_words = sorted({w for w in words if w.lower() not in vocab})
    bad_chars = sorted({c for c in _WORD.sub("", text) if c not in ALLOWED_OTHER})
    ends = bool(text) and (text[-1] in ".!?" or (len(text) >= 2 and text[-1] == '"' and text[-2] in ".!?"))
    lower = {w.lower() for w in words}
    missing = []
    for i, m in enumerate(mentions):
        m = m.lower()
        ok = m in lower or (i == 1 and m + "s" in lower)  # mentions[1] is the animal
        if not ok:
            missing.append(m)
    return {
        "vocabulary": not bad_words and not bad_chars,
        "sentence": ends,
        "mentions": not missing,
        "bad_words": bad_words,
        "bad_chars": bad_chars,
        "missing": missing,
    }


def story_part(answer):
    """The answer without an opening sentence that says back the request ("... story about ...")."""
    text = answer.strip()
    m = re.match(r"(?:[A-Za-z]+!\s*)?[^.!?]*story about[^.!?]*[.!?]\s*", text)
    return text[m.end():] if m else text


def evaluate(prompts, answers, vocab):
    rows = []
    for p, a in zip(prompts, answers):
        r = check_answer(a, p["mentions"], vocab)
        r["story_mentions"] = check_answer(story_part(a), p["mentions"], vocab)["mentions"]
        r["prompt"] = p["prompt"]
        r["answer"] = a
        rows.append(r)
    n = len(rows)
    per_word = {}
    for k, key in enumerate(["name", "animal", "object", "place"]):
        per_word[key] = sum(1 for p, r in zip(prompts, rows) if p["mentions"][k].lower() not in r["missing"]) / n
    summary = {
        "answers": n,
        "vocabulary_rate": sum(r["vocabulary"] for r in rows) / n,
        "sentence_rate": sum(r["sentence"] for r in rows) / n,
        "mention_rate": sum(r["mentions"] for r in rows) / n,
        "mention_rate_by_kind": per_word,
        "mention_rate_story": sum(r["story_mentions"] for r in rows) / n,
    }
    summary["pass"] = (
        summary["vocabulary_rate"] == 1.0 and summary["sentence_rate"] == 1.0 and summary["mention_rate"] >= MIN_MENTION_RATE
    )
    return summary, rows


def generate(model_dir, prompts, max_new_tokens, threads):
    import torch
    from transformers import AutoTokenizer, DeepseekV2ForCausalLM

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = DeepseekV2ForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="eager")
    for m in model.modules():  # MODEL_SPEC 9: some 5.x releases lack num_experts here
        if type(m).__name__ == "DeepseekV2Moe":
            m.num_experts = model.config.n_routed_experts
    model.eval()
    answers = []
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p["prompt"]}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        x = torch.tensor([list(ids)])
        with torch.no_grad():
            out = model.generate(x, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=model.config.eos_token_id, pad_token_id=model.config.eos_token_id)
        text = tok.decode(out[0, x.shape[1]:], skip_special_tokens=True)
        answers.append(text.strip())
        print(f"--- {p['prompt']}\n{text.strip()}\n", file=sys.stderr, flush=True)
    return answers


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", default=DEFAULT_PROMPTS)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--answers", help="JSON answers to check")
    src.add_argument("--model", help="model directory: generate the answers with transformers, greedy")
    ap.add_argument("--save-answers", help="with --model: write the generated answers here")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report", help="write the per-answer results here (JSON)")
    args = ap.parse_args()

    with open(args.prompts) as f:
        data = json.load(f)
    prompts = data["prompts"]
    vocab = set(data["vocabulary"])
    if args.model:
        answers = generate(args.model, prompts, args.max_new_tokens, args.threads)
        if args.save_answers:
            with open(args.save_answers, "w") as f:
                json.dump([{"prompt": p["prompt"], "answer": a} for p, a in zip(prompts, answers)], f, indent=1)
                f.write("\n")
    else:
        with open(args.answers) as f:
            raw = json.load(f)
        answers = [a["answer"] if isinstance(a, dict) else a for a in raw]
        if raw and isinstance(raw[0], dict):
            for p, a in zip(prompts, raw):
                if a.get("prompt") not in (None, p["prompt"]):
                    sys.exit(f"answer order does not match the prompts: {a.get('prompt')!r} vs {p['prompt']!r}")
    if len(answers) != len(prompts):
        sys.exit(f"{len(answers)} answers for {len(prompts)} prompts")
    summary, rows = evaluate(prompts, answers, vocab)
    for r in rows:
        if not (r["vocabulary"] and r["sentence"] and r["mentions"]):
            print(f"FAIL {r['prompt']!r}: bad_words={r['bad_words']} bad_chars={r['bad_chars']} "
                  f"ends_sentence={r['sentence']} missing={r['missing']}")
    print(json.dumps(summary, indent=1))
    if args.report:
        with open(args.report, "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=1)
            f.write("\n")
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
