#!/usr/bin/env python3
"""Train the demo model (model/data/demo-stories/): corpus -> tokenizer -> DeepseekV2ForCausalLM.

Everything is made from seeds by this one command (run by hand; CI does not install torch).
From the repository root, on 2 CPU cores (about 60 minutes alone on the machine):

    python3 -m venv /tmp/train-venv
    /tmp/train-venv/bin/pip install "transformers==5.23.0" torch safetensors tokenizers
    /tmp/train-venv/bin/python tools/demo_model/train.py \
        --out model/data/demo-stories --work /tmp/demo-train   # defaults = the shipped model

By default the command trains two stages. The first, from a random init, on every token of every
document (--steps), is saved to WORK/stage1; the second continues from it for --stage2-steps (the
same as `--init-from WORK/stage1 --loss-on STAGE2_LOSS_ON --schedule const-decay
--no-decay-embeddings --steps N --lr STAGE2_LR --warmup STAGE2_WARMUP`), writing --out. The second
stage (a warm restart on the same loss) is what made the prompt's name reliably copied into the
answer: model/data/demo-stories/SOURCE.md. --stage2-steps 0 trains the first stage only, into --out.

Pipeline (each stage):
  1. corpus: tools/demo_model/story_corpus.py, training documents from --corpus-seed,
     validation (held-out loss) documents from --corpus-seed + 1000;
  2. tokenizer: byte-level BPE (HF tokenizers) trained on the training documents, with
     DeepSeek-V2's pre-tokenizer, BOS/EOS named like DeepSeek's, DeepSeek-V2's chat template;
  3. model: DeepseekV2ForCausalLM keeping every feature dsv2 implements (q_lora, MLA,
     YaRN RoPE, first_k_dense_replace 1, shared + routed experts with group_limited_greedy,
     routed_scaling_factor != 1), trained in f32 with AdamW (constant rate, then a linear decay) on packed
     sequences of --seq-len tokens, saved as bf16 safetensors (save_pretrained).

Documents: chat pairs as the chat template renders them,
`<bos>User: {user}\\n\\nAssistant: {assistant}<eos>`, and plain stories `<bos>{story}<eos>`.
By default the loss covers every token of every document (the first stage of the shipped model).
Continued training (the second stage): --init-from DIR starts from DIR's weights (read in f32) and
reuses its tokenizer; --loss-on answers trains on the chat documents only, with the loss on the
assistant's answer tokens and the closing EOS (a parallel mask over the packed rows; the user's
prompt, BOS and "Assistant:" carry no loss); --schedule const-decay keeps the learning rate constant
after warm-up and decays it linearly over the last --decay-frac of the steps; --no-decay-embeddings
leaves embed_tokens and lm_head out of weight decay; --save-every N --save-dir D saves D/step-N.
CPU float arithmetic is not bitwise reproducible, not even between runs on one machine (torch's
threaded reductions): a rerun differs from step ~100 on, and because the copies of the prompt's
name and object appear as sudden drops at a step that varies, a rerun does not yet always reach the
shipped model's held-out rates (model/data/demo-stories/SOURCE.md, "Reproducibility").
"""

import argparse
import json
import math
import os
import random
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import story_corpus  # noqa: E402

BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
# DeepSeek-V2's chat template (MODEL_SPEC section 8), verbatim from its tokenizer_config.json.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# DeepSeek-V2's pre-tokenizer, verbatim from its tokenizer.json (so dsv2 runs the same code).
PRE_TOKENIZER = json.loads(r'''
{"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "[\r\n]"}, "behavior": "Isolated", "invert": false}, {"type": "Split", "pattern": {"Regex": "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\ud801\udc00-\ud801\udc4f\ud801\udcb0-\ud801\udcd3\ud801\udcd8-\ud801\udcfb\ud803\udc80-\ud803\udcb2\ud803\udcc0-\ud803\udcf2\ud806\udca0-\ud806\udcdf\ud83a\udd00-\ud83a\udd43]+"}, "behavior": "Isolated", "invert": false}, {"type": "Split", "pattern": {"Regex": "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"}, "behavior": "Isolated", "invert": false}, {"type": "Split", "pattern": {"Regex": "\\s+$"}, "behavior": "Isolated", "invert": false}, {"type": "Split", "pattern": {"Regex": "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"}, "behavior": "Isolated", "invert": false}, {"type": "Digits", "individual_digits": true}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}
''')


def render(doc):
    """A corpus document as the text the model is trained on (special tokens included)."""
    if doc["kind"] == "chat":
        return BOS + "User: " + doc["user"] + "\n\nAssistant: " + doc["assistant"] + EOS
    return BOS + doc["text"] + EOS


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def train_tokenizer(texts, vocab_size, out_dir):
    from tokenizers import Tokenizer, trainers

    skeleton = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": {"type": "Sequence", "normalizers": []},
        "pre_tokenizer": PRE_TOKENIZER,
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": {}, "merges": []},
    }
    tok = Tokenizer.from_str(json.dumps(skeleton))
    from tokenizers import pre_tokenizers
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[BOS, EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # train on the text between the special tokens
    tok.train_from_iterator((t.replace(BOS, "").replace(EOS, "") for t in texts), trainer=trainer)
    assert tok.token_to_id(BOS) == 0 and tok.token_to_id(EOS) == 1
    # post-processor: prepend BOS, like DeepSeek's tokenizer.json
    j = json.loads(tok.to_str())
    j["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": BOS, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {BOS: {"id": BOS, "ids": [0], "tokens": [BOS]}},
    }
    tok = Tokenizer.from_str(json.dumps(j))
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    added = {"__type": "AddedToken", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": dict(added, content=BOS),
        "eos_token": dict(added, content=EOS),
        "pad_token": dict(added, content=EOS),
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 2048,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return tok


def encode_docs(tok, texts):
    """Token ids of rendered documents; BOS/EOS in the text become their ids."""
    ids = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids.extend(enc.ids)
    return ids


def encode_answers(tok, docs):
    """Token ids of the chat documents only, and a parallel 0/1 loss mask that is 1 on the
    assistant's answer tokens and the closing EOS (not on BOS, "User: ...", "Assistant:")."""
    ids, mask = [], []
    chats = [d for d in docs if d["kind"] == "chat"]
    texts = [render(d) for d in chats]
    for d, t, enc in zip(chats, texts, tok.encode_batch(texts, add_special_tokens=False)):
        start = len(BOS + "User: " + d["user"] + "\n\nAssistant:")
        assert t[start:start + 1] == " "
        m = [1 if s >= start else 0 for (s, e) in enc.offsets]
        assert enc.ids[-1] == 1 and m[-1] == 1 and m[0] == 0 and 0 < sum(m) < len(m)
        ids.extend(enc.ids)
        mask.extend(m)
    return ids, mask


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def make_config(vocab_size, args):
    from transformers import DeepseekV2Config

    yarn = {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 512,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": 0.707,
        "mscale_all_dim": 0.707,
    }
    return DeepseekV2Config(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        moe_intermediate_size=args.moe_inter,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        q_lora_rank=128,
        kv_lora_rank=args.kv_lora_rank,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        n_routed_experts=16,
        n_shared_experts=1,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        topk_method="group_limited_greedy",
        routed_scaling_factor=2.5,
        norm_topk_prob=False,
        first_k_dense_replace=1,
        rms_norm_eps=1e-6,
        rope_parameters=yarn,
        max_position_embeddings=int(yarn["factor"] * yarn["original_max_position_embeddings"]),
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
        tie_word_embeddings=args.tie_embeddings,
        attention_bias=False,
        attention_dropout=0.0,
        mlp_bias=False,
        hidden_act="silu",
        initializer_range=0.02,
        use_cache=True,
        output_router_logits=False,
    )


class BalanceLoss:
    """Switch-style load-balancing loss over every router, collected with forward hooks."""

    def __init__(self, model):
        self.terms = []
        for m in model.modules():
            if type(m).__name__ == "DeepseekV2TopkRouter":
                m.register_forward_hook(self._hook)

    def _hook(self, mod, args, out):
        logits, _, idx = out
        e = mod.num_experts
        p = logits.softmax(-1).mean(0)
        f = torch.bincount(idx.reshape(-1), minlength=e).float() / idx.numel()
        self.terms.append(e * (f.detach() * p).sum())

    def take(self):
        t, self.terms = self.terms, []
        return sum(t) / max(len(t), 1), t


def batches(ids, seq_len, batch, seed, mask=None):
    """Endless batches of packed rows (seq_len tokens each) in a seeded order, epoch by epoch.
    With a loss mask (parallel to ids): (input rows, label rows with -100 where the mask is 0)."""
    n = len(ids) // seq_len
    data = torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    if mask is not None:
        m = torch.tensor(mask[: n * seq_len], dtype=torch.bool).view(n, seq_len)
        labels = data.masked_fill(~m, -100)
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=g)
        for i in range(0, n - batch + 1, batch):
            sel = order[i : i + batch]
            yield data[sel] if mask is None else (data[sel], labels[sel])


@torch.no_grad()
def eval_loss(model, rows, batch):
    model.eval()
    tot, cnt = 0.0, 0
    for i in range(0, rows.shape[0], batch):
        x = rows[i : i + batch]
        out = model(input_ids=x, labels=x, use_cache=False)
        n = x.numel() - x.shape[0]
        tot += float(out.loss) * n
        cnt += n
    model.train()
    return tot / cnt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="model directory to write (e.g. model/data/demo-stories)")
    ap.add_argument("--work", required=True, help="scratch directory (corpus, logs)")
    ap.add_argument("--corpus-seed", type=int, default=1)
    ap.add_argument("--train-docs", type=int, default=100000)
    ap.add_argument("--val-docs", type=int, default=2000)
    ap.add_argument("--val-rows", type=int, default=200, help="held-out loss over this many packed rows")
    ap.add_argument("--vocab-size", type=int, default=3072)
    ap.add_argument("--seed", type=int, default=1234, help="model init and data order")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--moe-inter", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4, help="attention heads per layer")
    ap.add_argument("--tie-embeddings", action="store_true",
                    help="lm_head = embed_tokens (tie_word_embeddings): output rows stay as distinct as the "
                         "input embeddings, which copying a word from the prompt needs")
    ap.add_argument("--kv-lora-rank", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3600)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--balance-coef", type=float, default=0.01)
    ap.add_argument("--experts-impl", default="grouped_mm", help="transformers experts_implementation for training")
    ap.add_argument("--max-train-minutes", type=float, default=80,
                    help="safety stop: end training early (and say so) after this many minutes (0: never); the shipped run did not hit it")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--save-every", type=int, default=0, help="also save a checkpoint every N steps (0: only at the end)")
    ap.add_argument("--save-dir", default=None,
                    help="with --save-every: save checkpoints as DIR/step-N (default: one rolling OUT.partial)")
    ap.add_argument("--init-from", default=None,
                    help="start from this model directory's weights (loaded in f32) instead of a random init; "
                         "its tokenizer is reused (not retrained) when it has one")
    ap.add_argument("--loss-on", choices=["all", "answers"], default="all",
                    help="all: next-token loss on every token of every document (default); answers: train on the "
                         "chat documents only, with the loss on the assistant's answer tokens and the closing EOS")
    ap.add_argument("--schedule", choices=["cosine", "const-decay"], default="const-decay",
                    help="cosine: warm-up then cosine to lr x min-lr-frac; const-decay: warm-up, constant lr, "
                         "then linear decay to lr x min-lr-frac over the last --decay-frac of the steps")
    ap.add_argument("--decay-frac", type=float, default=0.25)
    ap.add_argument("--no-decay-embeddings", action="store_true",
                    help="no weight decay on embed_tokens and lm_head")
    ap.add_argument("--stage2-steps", type=int, default=600,
                    help="second stage (0: none; only without --init-from): after the first stage, saved to "
                         "WORK/stage1, continue from it with --loss-on STAGE2_LOSS_ON --schedule const-decay "
                         "--no-decay-embeddings for this many steps at --stage2-lr, --stage2-warmup warm-up steps")
    ap.add_argument("--stage2-loss-on", choices=["all", "answers"], default="all")
    ap.add_argument("--stage2-lr", type=float, default=1e-3)
    ap.add_argument("--stage2-warmup", type=int, default=30)
    args = ap.parse_args()
    if args.stage2_steps and not args.init_from:
        stage1 = argparse.Namespace(**vars(args))
        stage1.out = os.path.join(args.work, "stage1")
        stage1.stage2_steps = 0
        train(stage1)
        stage2 = argparse.Namespace(**vars(args))
        stage2.work = os.path.join(args.work, "stage2")
        stage2.init_from = stage1.out
        stage2.loss_on, stage2.schedule, stage2.no_decay_embeddings = args.stage2_loss_on, "const-decay", True
        stage2.steps, stage2.lr, stage2.warmup = args.stage2_steps, args.stage2_lr, args.stage2_warmup
        stage2.stage2_steps = 0
        train(stage2)
    else:
        train(args)


def train(args):
    """One training stage (see the module docstring) with these arguments."""

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    import transformers
    from transformers import DeepseekV2ForCausalLM

    t0 = time.time()
    os.makedirs(args.work, exist_ok=True)
    # 1. corpus
    train_docs = list(story_corpus.generate(args.corpus_seed, args.train_docs))
    val_docs = list(story_corpus.generate(args.corpus_seed + 1000, args.val_docs))
    train_texts = [render(d) for d in train_docs]
    val_texts = [render(d) for d in val_docs]
    words = sum(len(t.split()) for t in train_texts)
    log(f"corpus: {len(train_texts)} train docs ({words} words, {sum(map(len, train_texts))} chars), "
        f"{len(val_texts)} val docs; generator vocabulary {len(story_corpus.vocabulary())} words")
    # 2. tokenizer
    if args.init_from and os.path.exists(os.path.join(args.init_from, "tokenizer.json")):
        import shutil
        from tokenizers import Tokenizer
        os.makedirs(args.out, exist_ok=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            if os.path.abspath(args.init_from) != os.path.abspath(args.out):
                shutil.copyfile(os.path.join(args.init_from, f), os.path.join(args.out, f))
        tok = Tokenizer.from_file(os.path.join(args.out, "tokenizer.json"))
        log(f"tokenizer: reused from {args.init_from}")
    else:
        tok = train_tokenizer(train_texts, args.vocab_size, args.out)
    V = tok.get_vocab_size()
    chat = [{"role": "user", "content": train_docs[0].get("user", "hi")}, {"role": "assistant", "content": "x"}]
    from transformers import AutoTokenizer
    hf_tok = AutoTokenizer.from_pretrained(args.out)
    rendered = hf_tok.apply_chat_template(chat, tokenize=False)
    assert rendered == render({"kind": "chat", "user": chat[0]["content"], "assistant": "x"}), rendered
    assert hf_tok("Hello there").input_ids[0] == 0
    train_ids = encode_docs(tok, train_texts)
    val_ids = encode_docs(tok, val_texts)
    log(f"tokenizer: {V} tokens; train {len(train_ids)} tokens ({len(train_ids)/words:.3f}/word), val {len(val_ids)} tokens")
    train_mask = None
    if args.loss_on == "answers":
        all_tokens = len(train_ids)
        train_ids, train_mask = encode_answers(tok, train_docs)
        log(f"loss on answers: {len(train_ids)} of {all_tokens} tokens are chat documents, "
            f"{sum(train_mask)} of them answer tokens (with the loss)")
    # 3. model
    if args.init_from:
        model = DeepseekV2ForCausalLM.from_pretrained(args.init_from, dtype=torch.float32)
        cfg = model.config
        assert cfg.vocab_size == V, (cfg.vocab_size, V)
        log(f"model: weights from {args.init_from} (f32)")
    else:
        cfg = make_config(V, args)
        model = DeepseekV2ForCausalLM(cfg)
    model.set_attn_implementation("sdpa")
    model.set_experts_implementation(args.experts_impl)
    for m in model.modules():
        if type(m).__name__ == "DeepseekV2Moe":
            m.num_experts = cfg.n_routed_experts
    nparams = sum(p.numel() for p in model.parameters())
    log(f"model: {nparams} parameters ({nparams/1e6:.2f}M); config {cfg.to_json_string(use_diff=True)}")
    balance = BalanceLoss(model)

    def decays(n, p):
        if args.no_decay_embeddings and ("embed_tokens" in n or "lm_head" in n):
            return False
        return p.dim() >= 2

    decay = [p for n, p in model.named_parameters() if decays(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not decays(n, p)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        if args.schedule == "const-decay":
            d0 = args.steps - int(round(args.decay_frac * args.steps))
            if step < d0:
                return args.lr
            p = (step - d0) / max(1, args.steps - 1 - d0)
            return args.lr * (1 - (1 - args.min_lr_frac) * p)
        p = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))

    nval = min(len(val_ids) // args.seq_len, args.val_rows)
    val_rows = torch.tensor(val_ids[: nval * args.seq_len]).view(nval, args.seq_len)
    val_small = val_rows[:16]
    it = batches(train_ids, args.seq_len, args.batch, args.seed, train_mask)
    tokens_per_step = args.batch * args.seq_len
    log(f"training: {args.steps} steps x {tokens_per_step} tokens = {args.steps * tokens_per_step} tokens "
        f"({args.steps * tokens_per_step / len(train_ids):.2f} epochs); threads {torch.get_num_threads()}")
    model.train()
    t_train = time.time()
    ema = None
    steps_done = args.steps
    for step in range(args.steps):
        if args.max_train_minutes and time.time() - t_train > 60 * args.max_train_minutes:
            steps_done = step
            log(f"SAFETY STOP: --max-train-minutes {args.max_train_minutes} reached after {step} of {args.steps} steps")
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x = next(it)
        x, y = x if train_mask is not None else (x, x)
        out = model(input_ids=x, labels=y, use_cache=False)
        bal, _ = balance.take()
        loss = out.loss + args.balance_coef * bal
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lv = float(out.loss)
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        if step % 10 == 0 or step == args.steps - 1:
            el = time.time() - t_train
            log(f"step {step} loss {lv:.4f} ema {ema:.4f} balance {float(bal):.3f} gnorm {float(gn):.2f} "
                f"lr {lr_at(step):.2e} tok/s {(step + 1) * tokens_per_step / el:.0f} elapsed {el:.0f}s")
        if args.eval_every and step > 0 and step % args.eval_every == 0:
            vl = eval_loss(model, val_small, args.batch)
            balance.take()
            log(f"step {step} val_loss(16 rows) {vl:.4f}")
        if args.save_every and step > 0 and step % args.save_every == 0:
            save(model, cfg, os.path.join(args.save_dir, f"step-{step}") if args.save_dir else args.out + ".partial")
    train_s = time.time() - t_train
    final_train = eval_loss(model, torch.stack([next(it) if train_mask is None else next(it)[0] for _ in range(4)]).view(-1, args.seq_len), args.batch)
    balance.take()
    final_val = eval_loss(model, val_rows, args.batch)
    balance.take()
    log(f"done: {steps_done} steps in {train_s:.0f}s, {steps_done * tokens_per_step / train_s:.0f} tok/s; "
        f"train loss (64 rows, final weights) {final_train:.4f}; held-out loss ({nval} rows) {final_val:.4f}")
    save(model, cfg, args.out)
    # the bf16 model's held-out loss, as shipped
    m16 = DeepseekV2ForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    for m in m16.modules():
        if type(m).__name__ == "DeepseekV2Moe":
            m.num_experts = cfg.n_routed_experts
    final_val16 = eval_loss(m16, val_rows, args.batch)
    stats = dict(
        parameters=nparams, vocab_size=V, train_docs=len(train_texts), train_words=words,
        train_tokens=len(train_ids), val_docs=len(val_texts), val_tokens=len(val_ids),
        steps=steps_done, steps_planned=args.steps, batch=args.batch, seq_len=args.seq_len, tokens_seen=steps_done * tokens_per_step,
        train_seconds=round(train_s), tokens_per_second=round(steps_done * tokens_per_step / train_s),
        final_train_loss=round(final_train, 4), heldout_loss_f32=round(final_val, 4),
        heldout_loss_bf16_weights=round(final_val16, 4), total_seconds=round(time.time() - t0),
        torch=torch.__version__, transformers=transformers.__version__, threads=args.threads,
        args=vars(args),
    )
    with open(os.path.join(args.work, "train_stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    log("stats " + json.dumps(stats))


def save(model, cfg, out):
    from transformers import GenerationConfig

    import copy

    m = copy.deepcopy(model).to(torch.bfloat16)
    m.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=1, do_sample=True, temperature=0.7, top_p=0.9)
    m.save_pretrained(out)


if __name__ == "__main__":
    main()
