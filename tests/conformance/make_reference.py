#!/usr/bin/env python3
"""Generate the DeepSeek-V2 conformance fixtures (tiny random checkpoints + reference logits).

Regenerate (from the repository root; deterministic, CPU only, a few minutes on one core):

    pip install "transformers==5.23.0" torch safetensors
    /path/to/python tests/conformance/make_reference.py --out tests/data/conformance

The demo model's references (tests/data/conformance/demo_bf16; seconds; rerun whenever
model/data/demo-stories changes, which check_reference.py detects by its checkpoint_sha256):

    /path/to/python tests/conformance/make_reference.py --out tests/data/conformance \
        --demo-model model/data/demo-stories

The quantized variants (v2_int8, lite_int4; issue 13), from the f32 variants above and a
built dsv2 (seconds):

    /path/to/python tests/conformance/make_reference.py --out tests/data/conformance \
        --quantized --dsv2 build/tools/dsv2

Then verify that every checkpoint round-trips through from_pretrained:

    /path/to/python tests/conformance/check_reference.py --data tests/data/conformance

For every variant below and for each dtype (float32, bfloat16) this writes a directory
`<variant>_<f32|bf16>/` holding
  * the checkpoint exactly as `DeepseekV2ForCausalLM.save_pretrained` writes it
    (config.json, generation_config.json, model.safetensors or shards + index);
  * reference.safetensors: `logits_<i>` [T_i, V] float32, the logits of ONE teacher-forced
    forward pass (no cache) over prompt + 8 greedy tokens of case i (bf16 models: the bf16
    logits cast to f32); bf16 directories also hold `logits_f32math_<i>` [T_i, V]: the same
    checkpoint run entirely in f32 arithmetic (bf16 weights widened exactly), i.e. the
    rounding-free answer, for a test that wants to separate bf16 noise from bugs;
  * reference.json: versions, dtype, variant, layout and the cases
    ({"prompt_ids", "tokens" = prompt + 8 greedy tokens, "num_prompt"}), margin statistics
    and notes.

Variants (all: hidden 64, 4 heads, qk_nope 32 / qk_rope 16 / v 24, kv_lora_rank 32,
moe_intermediate 8, dense intermediate 112, vocab 1024, first_k_dense_replace 1,
3 layers, bos 0 / eos 1, untied embeddings, silu, no biases):
  v2       q_lora_rank 40, 160 experts, 8 groups / topk_group 3, K 6,
           group_limited_greedy, routed_scaling_factor 16, 2 shared experts, yarn
           (factor 40, original_max_position_embeddings 128, max_position_embeddings 5120,
           beta_fast 32, beta_slow 1, mscale 0.707, mscale_all_dim 0.707),
           rms_norm_eps 1e-5 (!= the 1e-6 of the q_a/kv_a norms).
  lite     q_lora_rank None (plain q_proj), 64 experts, greedy, n_group 1 / topk_group 1,
           routed_scaling_factor 1.0, yarn as v2, rms_norm_eps 1e-6.
  norope   as v2 but rope_parameters None (plain RoPE, written by transformers as
           {"rope_type": "default", "rope_theta": 25000}), 32 experts in 8 groups,
           rope_theta 25000 (catches a hard-coded base), rms_norm_eps 1e-2 (a wrong eps on
           any norm moves the logits by ~1e-2; v2's 1e-5 only by ~4e-5).
  sharded  v2's config and weights (other prompts), saved with a small max_shard_size ->
           model.safetensors.index.json + several shards.
  fused    v2's config and weights (other prompts), saved with save_original_format=False ->
           fused expert tensors
           model.layers.{l}.mlp.experts.gate_up_proj [E, 2I, D] (gate rows first) and
           model.layers.{l}.mlp.experts.down_proj [E, D, I].

demo_bf16 (--demo-model DIR): the shipped, trained demo model (bf16). Its checkpoint is not
copied: reference.json's "checkpoint" names DIR relative to the repository root and the C++
test loads it from there. Cases are realistic text made with the model's own tokenizer
(DEMO_SLOTS: three single-turn chats and one multi-turn chat through its chat template with
add_generation_prompt, one plain story opening as BOS + text), each + DEMO_NUM_NEW_TOKENS greedy
tokens (stopping at eos); logits_<i> and logits_f32math_<i> as for the other bf16 variants.
A trained model routes many tokens near a tie, so the random variants' rule (identical
routing in every witness) would reject nearly every real prompt; a candidate is rejected
instead when a witness's logits differ from the reference by more than the conformance test's
bf16 tolerance (3e-2 x max|logit|) at any position or makes another greedy choice (see
demo_case()); route flips and router gaps are recorded in case_stats, rejected candidates in
rejected_candidates.

The reference model is built with attn_implementation="eager" and
experts_implementation="grouped_mm" (transformers 5.23's default for this model, which sums
the K weighted expert outputs in fp32 and casts once, like DeepSeek's code); the
difference to experts_implementation="eager" is recorded in reference.json. (torch's CPU
grouped_mm needs 16-byte-aligned strides: keep moe_intermediate_size a multiple of 8.)

Prompts are random ids in [2, vocab). A candidate prompt is rejected (and the next one
drawn from the same seeded stream) when a greedy decision has a top-1/top-2 margin below
MIN_DECISION_MARGIN x max|logit| or a generated token is bos/eos, when a router's K-th pick
(or topk_group-th group) beats the best eligible non-pick by less than MIN_ROUTER_GAP in
router logits, or when a witness computation of the same checkpoint (experts_implementation
"eager"; for bf16 also f32 arithmetic on the bf16-rounded weights) routes any token
differently or makes another greedy choice. So greedy tokens and expert choices are robust to
rounding differences in the implementation under test. case_stats[i].max_abs_diff_vs in
reference.json records how far those witnesses' logits are from the reference (for bf16 this
is the bf16 noise floor to budget in tolerances).
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM  # noqa: E402

TRANSFORMERS_PIN = "5.23.0"
NUM_NEW_TOKENS = 8
PROMPT_LENGTHS = (7, 19)
MIN_DECISION_MARGIN = 0.03  # relative to max|logit| at that position
F32MATH = "f32_compute_on_rounded_weights"
MIN_ROUTER_GAP = 1e-3  # router logit gap between the K-th pick and the best eligible non-pick
INIT_STD = 0.1  # linear weights (and the experts)
EMBED_STD = 1.0  # token embeddings: a residual stream that dominates each layer's update halves bf16 noise
GATE_STD = 0.25  # router weights: spread the softmax so routing varies per token
NORM_STD = 0.1  # RMSNorm weights are 1 + NORM_STD * randn
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}

YARN = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 40.0,
    "original_max_position_embeddings": 128,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 0.707,
    "mscale_all_dim": 0.707,
}

BASE = dict(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=112,
    moe_intermediate_size=8,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=40,
    kv_lora_rank=32,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=24,
    n_routed_experts=160,
    n_shared_experts=2,
    num_experts_per_tok=6,
    n_group=8,
    topk_group=3,
    topk_method="group_limited_greedy",
    routed_scaling_factor=16.0,
    norm_topk_prob=False,
    first_k_dense_replace=1,
    rms_norm_eps=1e-5,
    rope_parameters=YARN,
    max_position_embeddings=int(YARN["factor"] * YARN["original_max_position_embeddings"]),
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=None,
    tie_word_embeddings=False,
    attention_bias=False,
    attention_dropout=0.0,
    mlp_bias=False,
    hidden_act="silu",
    initializer_range=INIT_STD,
    use_cache=True,
    pretraining_tp=1,
    output_router_logits=False,
)

VARIANTS = {
    "v2": dict(seed=1001, weights_seed=1001, config={}, save={}),
    "lite": dict(
        seed=1002,
        weights_seed=1002,
        config=dict(
            q_lora_rank=None,
            n_routed_experts=64,
            topk_method="greedy",
            n_group=1,
            topk_group=1,
            routed_scaling_factor=1.0,
            rms_norm_eps=1e-6,
        ),
        save={},
    ),
    "norope": dict(
        seed=1003,
        weights_seed=1003,
        config=dict(
            rope_parameters=None,
            rope_theta=25000.0,
            max_position_embeddings=4096,
            n_routed_experts=32,
            # large enough that reading the wrong eps (hard-coded 1e-6, or rms_norm_eps on
            # the q_a/kv_a norms) moves the logits by ~1e-2; 1e-5 vs 1e-6 moves them by ~4e-5
            rms_norm_eps=1e-2,
        ),
        save={},
    ),
    # sharded and fused hold v2's weights (weights_seed) so layouts can be compared tensor by
    # tensor; their prompts differ (seed).
    "sharded": dict(seed=1004, weights_seed=1001, config={}, save=dict(max_shard_size="600KB")),
    "fused": dict(seed=1005, weights_seed=1001, config={}, save=dict(save_original_format=False)),
}


def make_config(variant):
    kw = dict(BASE)
    kw.update(VARIANTS[variant]["config"])
    rope_theta = kw.pop("rope_theta", None)
    if kw["rope_parameters"] is None and rope_theta is not None:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta}
    kw["rope_parameters"] = None if kw["rope_parameters"] is None else dict(kw["rope_parameters"])
    return DeepseekV2Config(**kw)


def yarn_mscale(scale, mscale):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def expected_scaling(cfg):
    s = (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5
    rp = cfg.rope_parameters or {}
    if rp.get("rope_type", "default") == "yarn" and rp.get("mscale_all_dim"):
        m = yarn_mscale(rp["factor"], rp["mscale_all_dim"])
        s *= m * m
    return s


def build_model(variant, dtype, experts_impl="grouped_mm"):
    """Random model, deterministic in `variant` (the same f32 weights for every dtype)."""
    cfg = make_config(variant)
    torch.manual_seed(VARIANTS[variant]["weights_seed"])
    model = DeepseekV2ForCausalLM(cfg)
    gen = torch.Generator().manual_seed(VARIANTS[variant]["weights_seed"] * 7 + 1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                v = 1.0 + NORM_STD * torch.randn(p.shape, generator=gen)
            elif name.endswith("mlp.gate.weight"):
                v = GATE_STD * torch.randn(p.shape, generator=gen)
            elif name == "model.embed_tokens.weight":
                v = EMBED_STD * torch.randn(p.shape, generator=gen)
            else:
                v = INIT_STD * torch.randn(p.shape, generator=gen)
            p.copy_(v)
    model = model.to(dtype)
    model.eval()
    model.set_attn_implementation("eager")
    model.set_experts_implementation(experts_impl)
    return model


def check_model(model):
    cfg = model.config
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    for layer in model.model.layers:
        got, want = layer.self_attn.scaling, expected_scaling(cfg)
        assert abs(got - want) < 1e-12 * want, f"softmax scale {got} != {want}"
    # MODEL_SPEC 9 pitfall (older 5.x): DeepseekV2Moe lacking num_experts. Harmless here.
    for m in model.modules():
        if type(m).__name__ == "DeepseekV2Moe":
            m.num_experts = cfg.n_routed_experts
            assert m.gate.num_experts == cfg.n_routed_experts


@torch.no_grad()
def full_logits(model, ids):
    out = model(torch.tensor([ids]), use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def greedy_with_cache(model, prompt, num_new=NUM_NEW_TOKENS, stop=()):
    cache = transformers.DynamicCache(config=model.config)
    ids = list(prompt)
    inp = torch.tensor([ids])
    for _ in range(num_new):
        out = model(inp, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        nxt = int(out.logits[0, -1].float().argmax())
        ids.append(nxt)
        if nxt in stop:
            break
        inp = torch.tensor([[nxt]])
    return ids


def rel_margins(logits):
    top2 = logits.topk(2, dim=-1).values
    margin = top2[:, 0] - top2[:, 1]
    scale = logits.abs().max(dim=-1).values
    return margin, margin / scale


def robust_prefix(model, witnesses, ids):
    """Same routes in every witness and a clear greedy choice after `ids`."""
    probe = RouterProbe(model)
    logits = full_logits(model, ids)
    probe.close()
    if float(rel_margins(logits[-1:])[1][0]) < MIN_DECISION_MARGIN:
        return False
    for _, w in witnesses:
        wprobe = RouterProbe(w)
        wl = full_logits(w, ids)
        wprobe.close()
        if wprobe.signature() != probe.signature() or int(wl[-1].argmax()) != int(logits[-1].argmax()):
            return False
    return True


def pick_case(model, witnesses, length, gen, vocab, special):
    """Draws prompts until one has robust greedy decisions and robust routing.

    `witnesses` are other computations of the same checkpoint (other expert kernels; for bf16
    also f32 arithmetic on the bf16-rounded weights): they must route every token of the final
    sequence to the same experts and make the same greedy choices as the reference.
    """
    for attempt in range(1, 20001):
        prompt = torch.randint(2, vocab, (length,), generator=gen).tolist()
        if not robust_prefix(model, witnesses, prompt):  # cheap early rejection
            continue
        tokens = greedy_with_cache(model, prompt)
        if any(t in special for t in tokens[length:]):
            continue
        probe = RouterProbe(model)
        logits = full_logits(model, tokens)
        probe.close()
        # teacher-forced argmax must reproduce the cached greedy decode
        if logits[length - 1 : -1].argmax(-1).tolist() != tokens[length:]:
            continue
        _, rel = rel_margins(logits[length - 1 : -1])
        if float(rel.min()) < MIN_DECISION_MARGIN:
            continue
        route = probe.stats()
        gaps = [g for g in (route["min_expert_logit_gap"], route["min_group_logit_gap"]) if g is not None]
        if min(gaps) < MIN_ROUTER_GAP:
            continue
        ok, diffs, wlogits = True, {}, {}
        for wname, w in witnesses:
            wprobe = RouterProbe(w)
            wl = full_logits(w, tokens)
            wprobe.close()
            if wprobe.signature() != probe.signature() or wl[length - 1 : -1].argmax(-1).tolist() != tokens[length:]:
                ok = False
                break
            diffs[wname] = float((wl - logits).abs().max())
            wlogits[wname] = wl
        if not ok:
            continue
        st = dict(attempts=attempt, max_abs_diff_vs=diffs, **route)
        return prompt, tokens, logits, wlogits, st
    raise RuntimeError("no prompt with robust greedy margins and routing found")


class RouterProbe:
    """Records each router's input and chosen experts during one forward pass."""

    def __init__(self, model):
        self.records = []
        self.handles = [
            m.register_forward_hook(self._hook) for m in model.modules() if type(m).__name__ == "DeepseekV2TopkRouter"
        ]

    def _hook(self, mod, args, out):
        self.records.append((mod, args[0].detach().reshape(-1, mod.hidden_dim), out[2].detach()))

    def close(self):
        for h in self.handles:
            h.remove()

    def signature(self):
        return [[tuple(sorted(r)) for r in idx.tolist()] for _, _, idx in self.records]

    @torch.no_grad()
    def stats(self):
        distinct, differs, total = set(), 0, 0
        min_gap, min_group_gap = math.inf, math.inf
        for li, (mod, h, idx) in enumerate(self.records):
            logits = h.float() @ mod.weight.float().t()  # softmax is monotone: compare logits
            k = mod.top_k
            plain = logits.topk(k, dim=-1).indices
            eligible = logits
            if mod.topk_method == "group_limited_greedy":
                g = logits.view(-1, mod.num_group, mod.num_experts // mod.num_group).max(-1).values
                gs = g.sort(-1, descending=True).values
                min_group_gap = min(min_group_gap, float((gs[:, mod.topk_group - 1] - gs[:, mod.topk_group]).min()))
                keep = torch.zeros_like(g, dtype=torch.bool)
                keep.scatter_(1, g.topk(mod.topk_group, dim=-1).indices, True)
                keep = keep.repeat_interleave(mod.num_experts // mod.num_group, dim=1)
                eligible = logits.masked_fill(~keep, -math.inf)
            es = eligible.sort(-1, descending=True).values
            min_gap = min(min_gap, float((es[:, k - 1] - es[:, k]).min()))
            for r in range(idx.shape[0]):
                a = sorted(idx[r].tolist())
                distinct.update((li, e) for e in a)
                differs += a != sorted(plain[r].tolist())
                total += 1
        return dict(
            distinct_layer_experts_used=len(distinct),
            token_routes=total,
            routes_differing_from_plain_topk=differs,
            min_expert_logit_gap=min_gap,
            # One group (greedy routing) has no group gap: JSON null, not Infinity.
            min_group_logit_gap=min_group_gap if math.isfinite(min_group_gap) else None,
        )


def load_model(vdir, dtype, experts_impl="grouped_mm"):
    """The reference model: the saved checkpoint as from_pretrained gives it.

    Two pitfalls this avoids: `model.to(torch.bfloat16)` also rounds the non-persistent RoPE
    buffer `rotary_emb.inv_freq` to bf16 (from_pretrained(dtype=bf16) keeps it f32, as does
    DeepSeek's code); and tensors that from_pretrained leaves memory-mapped at unaligned
    addresses (the fused expert tensors) take other CPU kernel paths, which changes f32
    results in the last bits, so every parameter is copied into fresh (64-byte aligned)
    memory to make the logits reproducible bit for bit.
    """
    model = DeepseekV2ForCausalLM.from_pretrained(
        vdir, dtype=dtype, attn_implementation="eager", experts_implementation=experts_impl
    )
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    model.eval()
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    return model


def pick_cases(model, witnesses, gen):
    """One case per PROMPT_LENGTHS entry (pick_case); returns (cases, reference tensors
    logits_<i> and, with an F32MATH witness, logits_f32math_<i>, case stats, margin stats)."""
    cfg = model.config
    special = {cfg.bos_token_id, cfg.eos_token_id}
    cases, tensors, case_stats, f32math = [], {}, [], {}
    for i, length in enumerate(PROMPT_LENGTHS):
        prompt, tokens, logits, wlogits, st = pick_case(model, witnesses, length, gen, cfg.vocab_size, special)
        tensors[f"logits_{i}"] = logits.contiguous()
        if F32MATH in wlogits:
            f32math[f"logits_f32math_{i}"] = wlogits[F32MATH].contiguous()
        cases.append(dict(prompt_ids=prompt, tokens=tokens, num_prompt=length))
        case_stats.append(st)
    all_logits = torch.cat(list(tensors.values()))
    margin, rel = rel_margins(all_logits)
    dec_rel = torch.cat(
        [rel_margins(tensors[f"logits_{i}"][c["num_prompt"] - 1 : -1])[1] for i, c in enumerate(cases)]
    )
    stats = dict(
        positions=int(rel.numel()),
        max_abs_logit=float(all_logits.abs().max()),
        rel_margin_min=float(rel.min()),
        rel_margin_median=float(rel.median()),
        frac_rel_margin_above_1pct=float((rel > 1e-2).float().mean()),
        decision_rel_margin_min=float(dec_rel.min()),
        abs_margin_median=float(margin.median()),
    )
    return cases, {**tensors, **f32math}, case_stats, stats


def write_variant(out_root, variant, tag, dtype):
    vdir = os.path.join(out_root, f"{variant}_{tag}")
    if os.path.isdir(vdir):
        shutil.rmtree(vdir)
    src = build_model(variant, dtype)
    src.save_pretrained(vdir, **VARIANTS[variant]["save"])
    del src
    model = load_model(vdir, dtype)
    check_model(model)
    cfg = model.config

    witnesses = [("experts_eager", load_model(vdir, dtype, experts_impl="eager"))]
    if dtype != torch.float32:
        witnesses.append((F32MATH, load_model(vdir, torch.float32)))
    gen = torch.Generator().manual_seed(VARIANTS[variant]["seed"] * 131 + (0 if tag == "f32" else 1))
    cases, tensors, case_stats, stats = pick_cases(model, witnesses, gen)
    save_file(tensors, os.path.join(vdir, "reference.safetensors"))

    files = sorted(f for f in os.listdir(vdir) if f.endswith(".safetensors") and f != "reference.safetensors")
    layout = "fused" if VARIANTS[variant]["save"].get("save_original_format") is False else "per_expert"
    with safe_open(os.path.join(vdir, files[0]), "pt") as f:
        keys = list(f.keys())
    if layout == "fused":
        assert any(k.endswith("mlp.experts.gate_up_proj") for k in keys), keys
    meta = dict(
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
        dtype={"f32": "float32", "bf16": "bfloat16"}[tag],
        variant=variant,
        layout=layout,
        checkpoint_files=files,
        **implementation_meta(model),
        margin_stats=stats,
        case_stats=case_stats,
        cases=cases,
        notes=(
            "Random weights (weights seed %d): linear N(0, %.2f^2), embedding N(0, %.2f^2), router N(0, %.2f^2), "
            "RMSNorm 1 + %.2f N(0,1); "
            "the bf16 checkpoint is the f32 one rounded to bf16. logits_<i> [T_i, V] f32 come from one "
            "teacher-forced forward pass (use_cache=False) over `tokens`; tokens[num_prompt:] are greedy "
            "(argmax, decoded with a DynamicCache, checked equal to the teacher-forced argmax). Prompts with a "
            "greedy decision margin below %.2f x max|logit|, or a generated bos/eos, were redrawn. "
            "Built with attn_implementation=eager, experts_implementation=grouped_mm (fp32 sum of the K "
            "weighted expert outputs, one cast); norm_topk_prob=false. Regenerate: python "
            "tests/conformance/make_reference.py --out tests/data/conformance"
            % (VARIANTS[variant]["weights_seed"], INIT_STD, EMBED_STD, GATE_STD, NORM_STD, MIN_DECISION_MARGIN)
        ),
    )
    with open(os.path.join(vdir, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1, allow_nan=False)
        f.write("\n")
    return meta


# ---------------------------------------------------------------------------------------------
# Quantized variants (issue 13): an f32 variant quantized by `dsv2 quantize`; the references
# are transformers in f32 on the dequantized weights (exact: f16 scale x small integer)
# ---------------------------------------------------------------------------------------------

# name -> (f32 variant it quantizes, format). int4 on lite exercises short last groups
# (moe_intermediate 8, dense 112: K % 32 != 0) as q_lora 40 does for int8 on v2.
QUANT_VARIANTS = {"v2_int8": ("v2_f32", "int8"), "lite_int4": ("lite_f32", "int4")}
QUANT_GROUP = 32


def linear_in_features(name, cfg):
    """K (input features) of a linear weight of a DeepSeek-V2 checkpoint, from config.json."""
    if name == "lm_head.weight" or name.endswith(("q_a_proj.weight", "q_proj.weight", "kv_a_proj_with_mqa.weight")):
        return cfg["hidden_size"]
    if name.endswith("q_b_proj.weight"):
        return cfg["q_lora_rank"]
    if name.endswith("o_proj.weight"):
        return cfg["num_attention_heads"] * cfg["v_head_dim"]
    if name.endswith(("gate_proj.weight", "up_proj.weight")):
        return cfg["hidden_size"]
    if name.endswith("down_proj.weight"):
        if ".shared_experts." in name:
            return cfg["moe_intermediate_size"] * cfg["n_shared_experts"]
        if ".experts." in name:
            return cfg["moe_intermediate_size"]
        return cfg["intermediate_size"]
    raise ValueError(f"{name}: not a quantizable linear weight")


def dequantize(tensors, cfg):
    """A dsv2-quantized checkpoint's tensors (docs/numerics.md: `<name>` I8 [N, K] or U8
    [N, 16 ceil(K/32)] + `<name>_scale` F16 [N, ceil(K/32)]) as f32 weights; other tensors
    unchanged. w = f32(scale) x q, exact in f32."""
    out = {}
    for k, v in tensors.items():
        if k.endswith("_scale") and k[: -len("_scale")] in tensors:
            continue
        s = tensors.get(k + "_scale")
        if s is None:
            out[k] = v
            continue
        K = linear_in_features(k, cfg)
        N, G = s.shape
        assert G == (K + QUANT_GROUP - 1) // QUANT_GROUP, (k, tuple(s.shape), K)
        if v.dtype == torch.int8:
            assert tuple(v.shape) == (N, K), (k, tuple(v.shape))
            q = v.to(torch.float32)
        else:
            assert v.dtype == torch.uint8 and tuple(v.shape) == (N, 16 * G), (k, v.dtype, tuple(v.shape))
            b = v.view(N, G, 16).to(torch.int16)
            q = torch.cat([(b & 15) - 8, (b >> 4) - 8], dim=2).reshape(N, 32 * G)[:, :K].to(torch.float32)
        out[k] = q * s.to(torch.float32).repeat_interleave(QUANT_GROUP, dim=1)[:, :K]
    return out


def write_dequantized(qdir, dst):
    """qdir's checkpoint dequantized into dst: config.json without quantization_config (a
    plain f32 checkpoint transformers loads)."""
    with open(os.path.join(qdir, "config.json")) as f:
        cfg = json.load(f)
    qconf = cfg.pop("quantization_config")
    tensors = load_file(os.path.join(qdir, "model.safetensors"))
    os.makedirs(dst, exist_ok=True)
    save_file({k: v.contiguous() for k, v in dequantize(tensors, cfg).items()},
              os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return qconf


def write_quantized(out_root, name, dsv2):
    base, fmt = QUANT_VARIANTS[name]
    qdir = os.path.join(out_root, name)
    if os.path.isdir(qdir):
        shutil.rmtree(qdir)
    subprocess.run([dsv2, "quantize", "--model", os.path.join(out_root, base), "--out", qdir, "--weights", fmt],
                   check=True)
    with tempfile.TemporaryDirectory() as tmp:
        qconf = write_dequantized(qdir, tmp)
        model = load_model(tmp, torch.float32)
        check_model(model)
        witnesses = [("experts_eager", load_model(tmp, torch.float32, experts_impl="eager"))]
        seed = VARIANTS[base.rsplit("_", 1)[0]]["seed"] * 131 + 2 + list(QUANT_VARIANTS).index(name)
        cases, tensors, case_stats, stats = pick_cases(model, witnesses, torch.Generator().manual_seed(seed))
    save_file(tensors, os.path.join(qdir, "reference.safetensors"))
    meta = dict(
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
        dtype="float32",
        variant=name,
        layout="per_expert",
        checkpoint_files=["model.safetensors"],
        quantization=dict(source=base, **qconf),
        **implementation_meta(model),
        margin_stats=stats,
        case_stats=case_stats,
        cases=cases,
        notes=(
            f"{base} quantized by `dsv2 quantize --weights {fmt}` (the checkpoint here); the references are "
            "transformers in f32 on its weights dequantized (w = f32(scale) x q, exact), so dsv2's quantized "
            "forward (f32 activations) must match within the f32 tolerance. Cases drawn as for the random "
            "variants (robust greedy margins and routing on the dequantized weights). Regenerate: python "
            "tests/conformance/make_reference.py --out tests/data/conformance --quantized --dsv2 build/tools/dsv2"
        ),
    )
    with open(os.path.join(qdir, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1, allow_nan=False)
        f.write("\n")
    return meta


# ---------------------------------------------------------------------------------------------
# demo_bf16: the shipped demo model (a trained checkpoint, not a random one)
# ---------------------------------------------------------------------------------------------

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_VARIANT = "demo_bf16"
DEMO_NUM_NEW_TOKENS = 12
DEMO_BF16_TOLERANCE = 3e-2  # kBf16Tolerance of tests/conformance/conformance_test.cc


def _chat(*turns):
    roles = ("user", "assistant")
    return dict(kind="chat", messages=[dict(role=roles[i % 2], content=t) for i, t in enumerate(turns)])


def _text(text):
    return dict(kind="text", text=text)


# Candidate prompts per slot, in order of preference: each slot takes its first `count`
# candidates that pass the robustness rule of demo_case() (rejected ones are listed in
# reference.json). "chat": the tokenizer's chat template with add_generation_prompt (a
# multi-turn chat holds the eos that closes an assistant turn); "text": BOS + plain text.
# Case order in reference.json: single-turn chats, the multi-turn chat, the plain story.
DEMO_SLOTS = [
    (
        "chat",
        3,
        [
            _chat("Tell me a story about a dog named Max who lost his ball."),
            _chat("What does a cow say?"),
            _chat("Write a short story about a bear named Ben who wanted a friend."),
            _chat("Tell me a bedtime story."),
            _chat("Can you tell me a story about a rabbit called Rosie who got lost?"),
            _chat("Who are you?"),
            _chat("What do horses eat?"),
            _chat("Please tell me a story about a mouse named Tom and his red kite."),
            _chat("Make up a story about an owl named Luna who wanted to learn to fly."),
            _chat("What color is the sky?"),
        ],
    ),
    (
        "multi-turn chat",
        1,
        [
            _chat("What does a cat say?", "A cat says meow.", "Tell me a story about a cat."),
            _chat("Give me a name for a fox.", "How about Ruby? Ruby is a good name for a fox.", "Tell me a story about Ruby."),
            _chat("Say hello.", "Hello! I can tell you a story about animals and their friends.", "Tell me a story."),
            _chat("What does a duck say?", "A duck says quack.", "Tell me a short story."),
            _chat("What do pigs eat?", "Most pigs like to eat apples.", "Tell me a story about a pig."),
        ],
    ),
    (
        "plain story",
        1,
        [
            _text("Once upon a time, there was a little cat named Lily. She lived"),
            _text("One day, a duck named Daisy went to the pond."),
            _text("Once upon a time, a little frog named Sam lived near the river."),
            _text("Ben the bear was sad. He could not find his hat."),
            _text("Once upon a time, there was a kind pig named Molly."),
            _text("Once upon a time, there was a dog named Max."),
            _text("Lucy the rabbit loved to play in the garden."),
            _text("It was a sunny day in the park."),
        ],
    ),
]


def demo_prompt_ids(tok, cand):
    if cand["kind"] == "chat":
        out = tok.apply_chat_template(cand["messages"], add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if hasattr(out, "keys") else out
    else:
        ids = tok(cand["text"])["input_ids"]  # add_bos_token: BOS first
    ids = [int(x) for x in ids]
    assert ids[0] == tok.bos_token_id, ids[:3]
    return ids


def demo_case(model, witnesses, prompt, stop):
    """Greedy continuation of a fixed prompt, or (None, reason) when it is not robust.

    A trained model routes some tokens near a tie (router gaps of 1e-4 .. 1e-3 are common),
    and bf16 rounding flips a few of those routes between transformers' own computations
    (experts_implementation eager vs grouped_mm, bf16 vs f32 arithmetic), so routing
    identity, the rule of the random variants, would reject nearly every real prompt. The rule
    here is the conformance test's own tolerance: every witness's logits must lie within
    DEMO_BF16_TOLERANCE x max|logit| of the reference at every position (two correct
    implementations of the same checkpoint agree within the tolerance on this prompt), every
    witness must make the same greedy choices (bf16 logits can tie exactly), and the
    teacher-forced argmax must reproduce the cached greedy decode. Route flips and router gaps
    are recorded in case_stats.
    """
    length = len(prompt)
    tokens = greedy_with_cache(model, prompt, DEMO_NUM_NEW_TOKENS, stop)
    probe = RouterProbe(model)
    logits = full_logits(model, tokens)
    probe.close()
    if logits[length - 1 : -1].argmax(-1).tolist() != tokens[length:]:
        return None, "teacher-forced argmax differs from the cached greedy decode"
    scale = logits.abs().max(-1).values
    diffs, wlogits, route_flips = {}, {}, {}
    for wname, w in witnesses:
        wprobe = RouterProbe(w)
        wl = full_logits(w, tokens)
        wprobe.close()
        worst = float(((wl - logits).abs().max(-1).values / scale).max())
        if worst > DEMO_BF16_TOLERANCE:
            return None, f"{wname} differs from the reference by {worst:.3f} x max|logit|"
        if wl[length - 1 : -1].argmax(-1).tolist() != tokens[length:]:
            return None, f"{wname} makes another greedy choice"
        diffs[wname] = float((wl - logits).abs().max())
        wlogits[wname] = wl
        route_flips[wname] = sum(
            a != b for la, lb in zip(probe.signature(), wprobe.signature()) for a, b in zip(la, lb)
        )
    _, rel = rel_margins(logits[length - 1 : -1])
    st = dict(
        max_abs_diff_vs=diffs,
        routes_flipped_vs=route_flips,
        decision_rel_margin_min=float(rel.min()),
        **probe.stats(),
    )
    return (tokens, logits, wlogits, st), None


def implementation_meta(model):
    """What reference.json records about how transformers computed the reference (same keys, same
    order, for every variant)."""
    return dict(
        attn_implementation="eager",
        experts_implementation="grouped_mm",
        softmax_scale=model.model.layers[0].self_attn.scaling,
        rope_attention_scaling=float(model.model.rotary_emb.attention_scaling),
        rope_inv_freq=[float(x) for x in model.model.rotary_emb.inv_freq],
    )


def sha256_file(path):
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_demo(out_root, model_dir):
    """tests/data/conformance/demo_bf16: reference logits of the checkpoint in `model_dir`.

    The checkpoint is not copied: reference.json's "checkpoint" names its directory relative
    to the repository root, and the C++ test loads it from there.
    """
    from transformers import AutoTokenizer

    model_dir = os.path.abspath(model_dir)
    rel = os.path.relpath(model_dir, REPO_ROOT)
    if rel.startswith(".."):
        raise SystemExit(f"--demo-model {model_dir} is outside the repository {REPO_ROOT}")
    vdir = os.path.join(out_root, DEMO_VARIANT)
    if os.path.isdir(vdir):
        shutil.rmtree(vdir)
    os.makedirs(vdir)
    dtype = torch.bfloat16
    model = load_model(model_dir, dtype)
    check_model(model)
    cfg = model.config
    for name, p in model.named_parameters():
        assert p.dtype == dtype, (name, p.dtype)
    witnesses = [
        ("experts_eager", load_model(model_dir, dtype, experts_impl="eager")),
        (F32MATH, load_model(model_dir, torch.float32)),
    ]
    for _, w in witnesses:
        check_model(w)
    tok = AutoTokenizer.from_pretrained(model_dir)
    stop = {cfg.eos_token_id}
    cases, tensors, f32math, case_stats, rejected = [], {}, {}, [], []
    for slot, count, candidates in DEMO_SLOTS:
        taken = 0
        for cand in candidates:
            if taken == count:
                break
            prompt = demo_prompt_ids(tok, cand)
            got, why = demo_case(model, witnesses, prompt, stop)
            if got is None:
                rejected.append(dict(slot=slot, **cand, reason=why))
                print(f"{DEMO_VARIANT}: {slot}: rejected {cand}: {why}", flush=True)
                continue
            tokens, logits, wlogits, st = got
            i = len(cases)
            tensors[f"logits_{i}"] = logits.contiguous()
            f32math[f"logits_f32math_{i}"] = wlogits[F32MATH].contiguous()
            cases.append(
                dict(
                    slot=slot,
                    **cand,
                    prompt_text=tok.decode(prompt),
                    continuation=tok.decode(tokens[len(prompt) :]),
                    prompt_ids=prompt,
                    tokens=tokens,
                    num_prompt=len(prompt),
                )
            )
            case_stats.append(st)
            taken += 1
        if taken < count:
            raise RuntimeError(f"{slot}: only {taken} of {count} candidate prompts are robust: {rejected}")
    save_file({**tensors, **f32math}, os.path.join(vdir, "reference.safetensors"))

    all_logits = torch.cat(list(tensors.values()))
    margin, relm = rel_margins(all_logits)
    stats = dict(
        positions=int(relm.numel()),
        max_abs_logit=float(all_logits.abs().max()),
        rel_margin_min=float(relm.min()),
        rel_margin_median=float(relm.median()),
        frac_rel_margin_above_1pct=float((relm > 1e-2).float().mean()),
        # the C++ test checks greedy ids where the margin exceeds 2 x its bf16 tolerance (3e-2)
        frac_rel_margin_above_6pct=float((relm > 6e-2).float().mean()),
        decision_rel_margin_min=min(s["decision_rel_margin_min"] for s in case_stats),
        abs_margin_median=float(margin.median()),
    )
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    meta = dict(
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
        dtype="bfloat16",
        variant="demo",
        layout="per_expert",
        checkpoint=rel,
        checkpoint_files=files,
        checkpoint_sha256={f: sha256_file(os.path.join(model_dir, f)) for f in files},
        **implementation_meta(model),
        margin_stats=stats,
        case_stats=case_stats,
        cases=cases,
        rejected_candidates=rejected,
        notes=(
            "The shipped demo model (%s, a trained bf16 checkpoint; not copied here). Prompts are realistic "
            "text made with its tokenizer: chat prompts through its chat template with add_generation_prompt, "
            "plain text as BOS + text; tokens[num_prompt:] are up to %d greedy tokens (argmax, decoded with a "
            "DynamicCache, checked equal to the teacher-forced argmax; stopped at eos). logits_<i> [T_i, V] f32 "
            "are the bf16 logits of one teacher-forced forward pass (use_cache=False) cast to f32; "
            "logits_f32math_<i> are the same bf16 weights run in f32 arithmetic. A candidate prompt is "
            "rejected when a witness (experts_implementation eager, or f32 math) differs from the reference by "
            "more than %.0e x max|logit| at a position or makes another greedy choice (route flips are recorded "
            "in case_stats). Built with attn_implementation=eager, experts_implementation="
            "grouped_mm. Regenerate whenever the model changes (checkpoint_sha256): python "
            "tests/conformance/make_reference.py --out tests/data/conformance --demo-model %s"
            % (rel, DEMO_NUM_NEW_TOKENS, DEMO_BF16_TOLERANCE, rel)
        ),
    )
    with open(os.path.join(vdir, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1, allow_nan=False, ensure_ascii=False)
        f.write("\n")
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory, e.g. tests/data/conformance")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument(
        "--demo-model",
        metavar="DIR",
        help="instead of the random variants, write <out>/demo_bf16 for the trained checkpoint in DIR "
        "(inside the repository, e.g. model/data/demo-stories; not copied)",
    )
    ap.add_argument(
        "--quantized",
        action="store_true",
        help="instead, write the quantized variants (" + ", ".join(QUANT_VARIANTS) + ") from the f32 variants "
        "already in --out, quantized with --dsv2",
    )
    ap.add_argument("--dsv2", default="build/tools/dsv2", help="the dsv2 binary (for --quantized)")
    args = ap.parse_args()
    if transformers.__version__ != TRANSFORMERS_PIN:
        print(f"warning: transformers {transformers.__version__}, fixtures pinned to {TRANSFORMERS_PIN}", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    if args.demo_model:
        meta = write_demo(args.out, args.demo_model)
        s = meta["margin_stats"]
        for c, st in zip(meta["cases"], meta["case_stats"]):
            print(f"{DEMO_VARIANT}: {c['num_prompt']}+{len(c['tokens']) - c['num_prompt']} tokens "
                  f"{c['prompt_text']!r} -> {c['continuation']!r} {st}", flush=True)
        print(
            f"{DEMO_VARIANT}: positions={s['positions']} max|logit|={s['max_abs_logit']:.3f} "
            f"rel margin min/median={s['rel_margin_min']:.4f}/{s['rel_margin_median']:.4f} "
            f">6e-2: {s['frac_rel_margin_above_6pct']:.2f} decision min={s['decision_rel_margin_min']:.4f} "
            f"reference.safetensors {os.path.getsize(os.path.join(args.out, DEMO_VARIANT, 'reference.safetensors'))} bytes",
            flush=True,
        )
        return
    if args.quantized:
        for name in QUANT_VARIANTS:
            meta = write_quantized(args.out, name, args.dsv2)
            s = meta["margin_stats"]
            print(
                f"{name}: max|logit|={s['max_abs_logit']:.3f} rel margin min/median={s['rel_margin_min']:.4f}/"
                f"{s['rel_margin_median']:.4f} decision min={s['decision_rel_margin_min']:.4f} cases={meta['case_stats']}",
                flush=True,
            )
        return
    for variant in args.variants:
        for tag, dtype in DTYPES.items():
            meta = write_variant(args.out, variant, tag, dtype)
            s = meta["margin_stats"]
            print(
                f"{variant}_{tag}: files={meta['checkpoint_files']} max|logit|={s['max_abs_logit']:.3f} "
                f"rel margin min/median={s['rel_margin_min']:.4f}/{s['rel_margin_median']:.4f} "
                f">1e-2: {s['frac_rel_margin_above_1pct']:.2f} decision min={s['decision_rel_margin_min']:.4f} "
                f"cases={meta['case_stats']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
