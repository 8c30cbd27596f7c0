#!/usr/bin/env python3
"""Self-check of the conformance fixtures written by make_reference.py.

    /path/to/python tests/conformance/check_reference.py --data tests/data/conformance

For every `<variant>_<dtype>/` directory (demo_bf16: the checkpoint is the directory its
reference.json names, relative to the repository root, e.g. model/data/demo-stories, and must
still hash to the recorded checkpoint_sha256) this
  * reloads the checkpoint with DeepseekV2ForCausalLM.from_pretrained (the same dtype,
    attention and expert implementations as the generator) and checks that one forward pass
    over each case's tokens reproduces reference.safetensors bit for bit, and that the
    greedy tokens are the argmax of those logits;
  * checks the file layout: per-expert names or fused `mlp.experts.gate_up_proj` /
    `mlp.experts.down_proj`, an index covering every shard for sharded checkpoints;
  * checks that v2, sharded and fused (same weights, three layouts) hold identical tensors
    once the fused experts are split (gate_up_proj[e, :I] = experts.e.gate_proj, ...);
  * for the quantized variants (v2_int8, lite_int4): checks the quantized layout (I8/U8 values
    beside F16 `<name>_scale`, the rest f32) and runs the checks above on the weights
    dequantized (make_reference.dequantize).
Exit status 0 when everything holds.
"""

import argparse
import json
import os
import sys
import tempfile

import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import DeepseekV2ForCausalLM  # noqa: E402

from make_reference import dequantize, write_dequantized  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def raw_tensors(vdir):
    """All checkpoint tensors of a directory, following the shard index when there is one."""
    index = os.path.join(vdir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
        out = {}
        for shard in shards:
            t = load_file(os.path.join(vdir, shard))
            for k in t:
                assert weight_map.get(k) == shard, f"{vdir}: {k} in {shard} but index says {weight_map.get(k)}"
            out.update(t)
        assert set(out) == set(weight_map), f"{vdir}: index and shards disagree"
        return out, shards
    return load_file(os.path.join(vdir, "model.safetensors")), ["model.safetensors"]


def unfuse(tensors, inter):
    out = {}
    for k, v in tensors.items():
        if k.endswith("mlp.experts.gate_up_proj"):
            assert v.shape[1] == 2 * inter, (k, v.shape)
            base = k[: -len("gate_up_proj")]
            for e in range(v.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = v[e, :inter]
                out[f"{base}{e}.up_proj.weight"] = v[e, inter:]
        elif k.endswith("mlp.experts.down_proj"):
            base = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = v[e]
        else:
            out[k] = v
    return out


def load(vdir, dtype, meta):
    model = DeepseekV2ForCausalLM.from_pretrained(
        vdir,
        dtype=dtype,
        attn_implementation=meta["attn_implementation"],
        experts_implementation=meta["experts_implementation"],
    )
    # from_pretrained may leave tensors memory-mapped at unaligned addresses (the fused
    # experts), which sends f32 GEMMs down other CPU kernel paths (last-bit differences);
    # the generator copies every parameter into fresh aligned memory, so do the same.
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    return model.eval()


@torch.no_grad()
def check_dir(refdir):
    with open(os.path.join(refdir, "reference.json")) as f:
        meta = json.load(f)
    errors = []
    vdir = refdir  # the checkpoint
    if "checkpoint" in meta:
        vdir = os.path.join(REPO_ROOT, meta["checkpoint"])
        import hashlib

        for name, want in meta["checkpoint_sha256"].items():
            with open(os.path.join(vdir, name), "rb") as f:
                got = hashlib.sha256(f.read()).hexdigest()
            if got != want:
                errors.append(f"{vdir}/{name}: sha256 {got} != {want} (the model changed: regenerate)")
    with open(os.path.join(vdir, "config.json")) as f:
        cfg = json.load(f)
    tensors, shards = raw_tensors(vdir)
    assert shards == meta["checkpoint_files"], (shards, meta["checkpoint_files"])
    quantized_dir = None
    if "quantization" in meta:
        # dsv2's quantized layout: every tensor f32, or I8/U8 values with an F16 <name>_scale;
        # transformers then runs the dequantized weights (make_reference.write_dequantized).
        for k, v in tensors.items():
            if k.endswith("_scale"):
                ok = v.dtype == torch.float16 and k[: -len("_scale")] in tensors
            elif v.dtype in (torch.int8, torch.uint8):
                ok = k + "_scale" in tensors
            else:
                ok = v.dtype == torch.float32
            if not ok:
                errors.append(f"{k}: dtype {v.dtype} out of place in a quantized checkpoint")
        if cfg.get("quantization_config", {}).get("format") != meta["quantization"]["format"]:
            errors.append("config.json's quantization_config does not match reference.json")
        quantized_dir = tempfile.TemporaryDirectory()
        write_dequantized(vdir, quantized_dir.name)
        cfg.pop("quantization_config", None)
        tensors = dequantize(tensors, cfg)
        vdir = quantized_dir.name
    fused = [k for k in tensors if k.endswith("mlp.experts.gate_up_proj") or k.endswith("mlp.experts.down_proj")]
    per_expert = [k for k in tensors if ".mlp.experts." in k and k.endswith("_proj.weight")]
    moe_layers = cfg["num_hidden_layers"] - cfg["first_k_dense_replace"]
    if meta["layout"] == "fused":
        if per_expert or len(fused) != 2 * moe_layers:
            errors.append(f"fused layout expected, got {len(fused)} fused and {len(per_expert)} per-expert tensors")
        E, I, D = cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["hidden_size"]
        for k in fused:
            want = (E, 2 * I, D) if k.endswith("gate_up_proj") else (E, D, I)
            if tuple(tensors[k].shape) != want:
                errors.append(f"{k}: shape {tuple(tensors[k].shape)} != {want}")
    elif fused or len(per_expert) != 3 * moe_layers * cfg["n_routed_experts"]:
        errors.append(f"per-expert layout expected, got {len(fused)} fused and {len(per_expert)} per-expert tensors")
    if meta["variant"] == "sharded" and len(shards) < 2:
        errors.append("sharded variant has a single shard")
    for k, v in tensors.items():
        if v.dtype != DTYPES[meta["dtype"]]:
            errors.append(f"{k}: dtype {v.dtype}")
            break

    dtype = DTYPES[meta["dtype"]]
    model = load(vdir, dtype, meta)
    if abs(model.model.layers[0].self_attn.scaling - meta["softmax_scale"]) > 1e-12:
        errors.append("softmax scale differs after reload")
    # the reloaded parameters must equal the file's tensors (fused layout after splitting)
    inter = cfg["moe_intermediate_size"]
    sd = unfuse({k: v for k, v in model.state_dict().items()}, inter)
    ft = unfuse(tensors, inter)
    if set(sd) != set(ft):
        errors.append(f"reloaded names differ: {sorted(set(sd) ^ set(ft))[:6]}")
    else:
        bad = [k for k in ft if not torch.equal(sd[k], ft[k])]
        if bad:
            errors.append(f"reloaded tensors differ from the file: {bad[:4]}")
    ref = load_file(os.path.join(refdir, "reference.safetensors"))
    worst = 0.0
    for i, case in enumerate(meta["cases"]):
        tokens, P = case["tokens"], case["num_prompt"]
        assert tokens[:P] == case["prompt_ids"]
        logits = model(torch.tensor([tokens]), use_cache=False).logits[0].float()
        want = ref[f"logits_{i}"]
        if logits.shape != want.shape:
            errors.append(f"case {i}: shape {tuple(logits.shape)} != {tuple(want.shape)}")
            continue
        diff = float((logits - want).abs().max())
        worst = max(worst, diff)
        if diff != 0.0:
            errors.append(f"case {i}: reloaded logits differ by {diff:.3e}")
        if want[P - 1 : -1].argmax(-1).tolist() != tokens[P:]:
            errors.append(f"case {i}: tokens are not the greedy argmax of the reference logits")
    f32math = sorted(k for k in ref if k.startswith("logits_f32math_"))
    if f32math:
        # the bf16 checkpoint widened to f32 on load must reproduce the f32-math reference
        m32 = load(vdir, torch.float32, meta)
        for i, case in enumerate(meta["cases"]):
            logits = m32(torch.tensor([case["tokens"]]), use_cache=False).logits[0]
            diff = float((logits - ref[f"logits_f32math_{i}"]).abs().max())
            if diff > 1e-5:
                errors.append(f"case {i}: f32-math logits differ by {diff:.3e}")
            if ref[f"logits_f32math_{i}"][case["num_prompt"] - 1 : -1].argmax(-1).tolist() != case["tokens"][case["num_prompt"] :]:
                errors.append(f"case {i}: f32-math greedy tokens differ")
    elif meta["dtype"] != "float32":
        errors.append("bf16 fixture without logits_f32math_<i>")
    return errors, worst, shards, tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="e.g. tests/data/conformance")
    args = ap.parse_args()
    dirs = sorted(d for d in os.listdir(args.data) if os.path.exists(os.path.join(args.data, d, "reference.json")))
    if not dirs:
        print(f"no fixtures under {args.data}", file=sys.stderr)
        return 1
    failed = False
    raw = {}
    for d in dirs:
        errors, worst, shards, tensors = check_dir(os.path.join(args.data, d))
        raw[d] = tensors
        status = "OK" if not errors else "FAIL"
        failed |= bool(errors)
        print(f"{d}: {status} (max |reloaded - reference| = {worst:.1e}, {len(shards)} file(s), {len(tensors)} tensors)")
        for e in errors:
            print(f"  {e}")
    # same weights, three layouts
    for tag in ("f32", "bf16"):
        names = [f"{v}_{tag}" for v in ("v2", "sharded", "fused")]
        if not all(n in raw for n in names):
            continue
        with open(os.path.join(args.data, names[0], "config.json")) as f:
            inter = json.load(f)["moe_intermediate_size"]
        base = unfuse(raw[names[0]], inter)
        for other in names[1:]:
            o = unfuse(raw[other], inter)
            same = set(o) == set(base) and all(torch.equal(o[k], base[k]) for k in base)
            failed |= not same
            print(f"{other} holds the same tensors as {names[0]}: {'OK' if same else 'FAIL'}")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
