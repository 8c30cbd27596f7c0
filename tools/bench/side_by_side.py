#!/usr/bin/env python3
"""dsv2 against llama.cpp on one machine, one checkpoint: decode (batch 1 and 8), prefill (64 and
512 tokens) and quantization quality (KL divergence against the bf16 model), as markdown tables.

    tools/bench/side_by_side.py --model DIR [--llama-cpp DIR] [--llama-python PY]
        [--threads 1,2] [--runs 3] [--work DIR] [--skip kld,batch8,prefill]

--model: a bf16 DeepseekV2ForCausalLM checkpoint (e.g. `dsv2 make-random-model --preset v2-lite
--num-layers 4`). dsv2's int8 and int4 checkpoints are made from it by `dsv2 quantize` (lm_head
int8, dsv2's default), in --work.

--llama-cpp: a llama.cpp source tree you built yourself, outside this repository, with its
binaries in DIR/build/bin (llama-bench, llama-batched-bench, llama-perplexity, llama-quantize) and
its converter DIR/convert_hf_to_gguf.py, run by --llama-python (a Python with the converter's
requirements: torch, numpy, transformers, sentencepiece). This script neither fetches nor builds
llama.cpp; without --llama-cpp its columns are left out. Its GGUFs are made in --work: BF16 by the
converter (from a copy of config.json with "q_lora_rank": 0 for null, which the converter needs),
then Q8_0 (lm_head Q8_0), Q4_0 (lm_head Q6_K) and Q4_K_M by llama-quantize. Quantized GGUFs run
with llama.cpp's weight repacking off (see no_repack()).

Figures: medians over --runs interleaved rounds (each round runs every case once, in the same
order), with min-max. Decode batch 1: `dsv2 run` (16-token prompt, 64 new tokens) vs llama-bench
-n 64; batch 8: cluster_bench --single-only (8 sequences through the engine) vs llama-batched-bench
-npl 8 (S_TG); prefill: `dsv2 run` prompt of 64 / 512 tokens (the engine's prefill time, weights
prefaulted) vs llama-bench -p N. Roofline: bytes of the weights one decode token reads (every
non-expert weight, the shared experts and num_experts_per_tok routed experts per MoE layer, in each
side's format) / the read bandwidth kernels_bench measures with the same threads. KLD: `dsv2
eval-kld` and llama-perplexity --kl-divergence on the same generated text (our story generator,
seed 7), context 512, scoring the second half of each chunk.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("BUILD_DIR", os.path.join(ROOT, "build"))
DSV2 = os.path.join(BUILD, "tools", "dsv2")
CLUSTER_BENCH = os.path.join(BUILD, "tools", "cluster_bench")
KERNELS_BENCH = os.path.join(BUILD, "tools", "kernels_bench")

# dsv2 format -> the llama.cpp format it is compared with (and lm_head's format on each side).
PAIRS = [("bf16", "BF16", "bf16", "bf16"), ("int8", "Q8_0", "int8", "Q8_0"),
         ("int4", "Q4_0", "int8", "Q6_K")]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, env=None, timeout=3600):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p.stdout, p.stderr


# ------------------------------------------------------------------------------------ models

def dsv2_models(model, work):
    out = {"bf16": model}
    for fmt in ("int8", "int4"):
        d = os.path.join(work, f"dsv2-{fmt}")
        if not os.path.exists(os.path.join(d, "config.json")):
            log(f"dsv2 quantize --weights {fmt} -> {d}")
            run([DSV2, "quantize", "--model", model, "--out", d, "--weights", fmt])
        out[fmt] = d
    return out


def llama_models(model, work, llama, python):
    out = {}
    bf16 = os.path.join(work, "llama-BF16.gguf")
    if not os.path.exists(bf16):
        # The converter needs "q_lora_rank": 0 (not null) below 26 layers.
        hf = tempfile.mkdtemp(prefix="side-by-side-hf-", dir=work)
        for f in os.listdir(model):
            if f != "config.json":
                os.symlink(os.path.join(os.path.abspath(model), f), os.path.join(hf, f))
        with open(os.path.join(model, "config.json")) as f:
            cfg = json.load(f)
        if cfg.get("q_lora_rank") is None:
            cfg["q_lora_rank"] = 0
        with open(os.path.join(hf, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        log(f"convert_hf_to_gguf.py --outtype bf16 -> {bf16}")
        run([python, os.path.join(llama, "convert_hf_to_gguf.py"), hf, "--outtype", "bf16",
             "--outfile", bf16])
        shutil.rmtree(hf)
    out["BF16"] = bf16
    for q in ("Q8_0", "Q4_0", "Q4_K_M"):
        g = os.path.join(work, f"llama-{q}.gguf")
        if not os.path.exists(g):
            log(f"llama-quantize {q} -> {g}")
            run([os.path.join(llama, "build", "bin", "llama-quantize"), bf16, g, q])
        out[q] = g
    return out


# ------------------------------------------------------------------------------------ measures

def prompt_ids(n):
    return ",".join(str(100 + i) for i in range(n))


def dsv2_decode(model, threads):
    _, err = run([DSV2, "run", "--model", model, "--prompt-ids", prompt_ids(16), "--max-tokens",
                  "65", "--ignore-eos", "--threads", str(threads)])
    return float(re.search(r"decode: \d+ steps in [\d.]+ s \(([\d.]+) tokens/s\)", err).group(1))


def dsv2_prefill(model, threads, n):
    _, err = run([DSV2, "run", "--model", model, "--prompt-ids", prompt_ids(n), "--max-tokens", "1",
                  "--threads", str(threads)])
    m = re.search(r"prefill: (\d+) tokens in ([\d.]+) s", err)
    return int(m.group(1)) / float(m.group(2))


def dsv2_batch8(model, threads):
    out, _ = run([CLUSTER_BENCH, "--model", model, "--threads", str(threads), "--batches", "8",
                  "--new-tokens", "33", "--single-only"])
    return float(re.search(r"^\s+8\s+([\d.]+)\s*$", out, re.M).group(1))


def no_repack(gguf, bench=False):
    """llama.cpp's weight repacking (its AMX / AVX-512 layouts) aborts on quantized DeepSeek-V2
    GGUFs in the build this was written against (GGML_ASSERT(*cur_backend_id != -1),
    ggml-backend.cpp), so quantized runs turn it off; BF16 keeps it."""
    if "BF16" in os.path.basename(gguf):
        return []
    return ["--repack", "0"] if bench else ["--no-repack"]


def llama_bench(llama, gguf, threads, p, n):
    out, _ = run([os.path.join(llama, "build", "bin", "llama-bench"), "-m", gguf, "-t", str(threads),
                  "-p", str(p), "-n", str(n), "-r", "1", "-o", "json"] + no_repack(gguf, True))
    return float(json.loads(out)[0]["avg_ts"])


def llama_batch8(llama, gguf, threads):
    out, _ = run([os.path.join(llama, "build", "bin", "llama-batched-bench"), "-m", gguf, "-t",
                  str(threads), "-c", "2048", "-npp", "16", "-ntg", "32", "-npl", "8"] +
                 no_repack(gguf))
    # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
    for line in out.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) >= 8 and cols[2] == "8":
            return float(cols[7])
    raise RuntimeError("no batch-8 row in llama-batched-bench output:\n" + out)


def bandwidth(threads):
    out, _ = run([KERNELS_BENCH, "--threads", str(threads), "--bandwidth-only"])
    return float(re.search(r"best ([\d.]+) GB/s", out).group(1))


def active_bytes(model, fmt, lm_head_fmt):
    """Bytes of weights one decode token reads, for a dsv2 format or a GGUF type name."""
    with open(os.path.join(model, "config.json")) as f:
        c = json.load(f)
    bpw = {"bf16": 2.0, "BF16": 2.0, "int8": 34 / 32, "Q8_0": 34 / 32, "int4": 18 / 32,
           "Q4_0": 18 / 32, "Q6_K": 210 / 256}
    D, L, H = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
    nope, rope, vd, kvr = (c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"],
                           c["kv_lora_rank"])
    qk = nope + rope
    q = (D * H * qk if not c.get("q_lora_rank") else
         D * c["q_lora_rank"] + c["q_lora_rank"] * H * qk)
    attn_q = q + D * (kvr + rope) + H * vd * D      # quantized projections
    kv_b = kvr * H * (nope + vd)                   # dsv2 keeps kv_b_proj bf16
    dense = 3 * D * c["intermediate_size"]
    moe_i = c["moe_intermediate_size"]
    routed = c["num_experts_per_tok"] * 3 * D * moe_i
    shared = c.get("n_shared_experts", 0) * 3 * D * moe_i
    k = c.get("first_k_dense_replace", 0)
    b = bpw[fmt]
    kv_b_bytes = kv_b * (2.0 if fmt in ("int8", "int4") else b)
    total = L * (attn_q * b + kv_b_bytes) + k * dense * b + (L - k) * (
        (routed + shared) * b + c["n_routed_experts"] * D * 2.0)
    return total + c["vocab_size"] * D * bpw[lm_head_fmt]


def kld_text(work):
    path = os.path.join(work, "kld-text.txt")
    if not os.path.exists(path):
        docs = os.path.join(work, "kld-docs.jsonl")
        run([sys.executable, os.path.join(ROOT, "tools", "demo_model", "story_corpus.py"), "--seed",
             "7", "--docs", "120", "--out", docs])
        with open(docs) as f, open(path, "w") as out:
            for line in f:
                d = json.loads(line)
                out.write((d.get("text") or d["user"] + "\n" + d["assistant"]) + "\n\n")
    return path


def dsv2_kld(model, fmt, text, threads):
    out, _ = run([DSV2, "eval-kld", "--model", model, "--weights", fmt, "--text", text,
                  "--context", "512", "--threads", str(threads), "--json"])
    j = json.loads(out.strip().splitlines()[-1])
    return j["kld_mean"], j["top1_agreement"] * 100, j["positions"]


def llama_kld(llama, base_gguf, gguf, text, threads, base_file):
    ppl = os.path.join(llama, "build", "bin", "llama-perplexity")
    if not os.path.exists(base_file):
        run([ppl, "-m", base_gguf, "-f", text, "-c", "512", "-t", str(threads),
             "--kl-divergence-base", base_file])
    out, err = run([ppl, "-m", gguf, "-f", text, "-c", "512", "-t", str(threads),
                    "--kl-divergence-base", base_file, "--kl-divergence"] + no_repack(gguf))
    s = out + err
    kld = float(re.search(r"Mean\s+KLD:\s+([\d.]+)", s).group(1))
    top = float(re.search(r"Same top p:\s+([\d.]+)", s).group(1))
    return kld, top


# ------------------------------------------------------------------------------------ main

def med(xs):
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--llama-cpp", help="llama.cpp source tree with build/bin (built by you)")
    ap.add_argument("--llama-python", default=sys.executable)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default=os.path.join(BUILD, "side-by-side"))
    ap.add_argument("--skip", default="", help="comma-separated: decode, batch8, prefill, kld")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    threads = [int(t) for t in args.threads.split(",")]
    os.makedirs(args.work, exist_ok=True)
    llama = args.llama_cpp
    dm = dsv2_models(args.model, args.work)
    lm = llama_models(args.model, args.work, llama, args.llama_python) if llama else {}

    cases = []  # (table, row key, column, callable)
    for t in threads:
        for dfmt, lfmt, _, _ in PAIRS:
            if "decode" not in skip:
                cases.append(("decode1", (t, dfmt), "dsv2", lambda m=dm[dfmt], t=t: dsv2_decode(m, t)))
                if llama:
                    cases.append(("decode1", (t, dfmt), "llama",
                                  lambda g=lm[lfmt], t=t: llama_bench(llama, g, t, 0, 64)))
            if "batch8" not in skip:
                cases.append(("decode8", (t, dfmt), "dsv2", lambda m=dm[dfmt], t=t: dsv2_batch8(m, t)))
                if llama:
                    cases.append(("decode8", (t, dfmt), "llama",
                                  lambda g=lm[lfmt], t=t: llama_batch8(llama, g, t)))
        if "prefill" not in skip:
            for n in (64, 512):
                cases.append(("prefill", (t, n), "dsv2",
                              lambda t=t, n=n: dsv2_prefill(dm["bf16"], t, n)))
                if llama:
                    cases.append(("prefill", (t, n), "llama",
                                  lambda t=t, n=n: llama_bench(llama, lm["BF16"], t, n, 0)))
    results = {}
    for r in range(args.runs):
        for table, key, col, fn in cases:
            log(f"round {r + 1}/{args.runs}: {table} {key} {col}")
            results.setdefault((table, key, col), []).append(fn())
    bw = {t: bandwidth(t) for t in threads}

    print(f"# dsv2 vs llama.cpp: {args.model}\n")
    print("medians of %d interleaved rounds (min-max); read bandwidth (kernels_bench): %s\n" % (
        args.runs, ", ".join(f"{t} threads {bw[t]:.1f} GB/s" for t in threads)))
    for table, title in (("decode1", "decode tok/s, batch 1"), ("decode8", "decode tok/s, batch 8")):
        if not any(k[0] == table for k in results):
            continue
        print(f"## {title}\n")
        print("| threads | dsv2 (lm_head) | tok/s | roofline | llama.cpp (lm_head) | tok/s | roofline "
              "| dsv2 / llama.cpp |")
        print("|---|---|---|---|---|---|---|---|")
        for t in threads:
            for dfmt, lfmt, dlm, llm in PAIRS:
                d = results.get((table, (t, dfmt), "dsv2"))
                if d is None:
                    continue
                l = results.get((table, (t, dfmt), "llama"))
                roof_d = bw[t] * 1e9 / active_bytes(args.model, dfmt, dlm)
                roof_l = bw[t] * 1e9 / active_bytes(args.model, lfmt, llm)
                mult = 8 if table == "decode8" else 1
                row = [str(t), f"{dfmt} ({dlm})", med(d),
                       f"{100 * statistics.median(d) / mult / roof_d:.0f}%" if mult == 1 else "-"]
                if l:
                    row += [f"{lfmt} ({llm})", med(l),
                            f"{100 * statistics.median(l) / roof_l:.0f}%" if mult == 1 else "-",
                            f"{statistics.median(d) / statistics.median(l):.2f}x"]
                else:
                    row += ["-", "-", "-", "-"]
                print("| " + " | ".join(row) + " |")
        print()
    if any(k[0] == "prefill" for k in results):
        print("## prefill tok/s, bf16\n")
        print("| threads | tokens | dsv2 | llama.cpp | dsv2 / llama.cpp |")
        print("|---|---|---|---|---|")
        for t in threads:
            for n in (64, 512):
                d = results[("prefill", (t, n), "dsv2")]
                l = results.get(("prefill", (t, n), "llama"))
                print(f"| {t} | {n} | {med(d)} | {med(l) if l else '-'} | "
                      f"{statistics.median(d) / statistics.median(l):.2f}x |" if l else
                      f"| {t} | {n} | {med(d)} | - | - |")
        print()
    if "kld" not in skip:
        text = kld_text(args.work)
        t = max(threads)
        print("## quantization quality: KL divergence from the bf16 model, top-1 agreement\n")
        print("| weights | bits/weight (linear layers) | mean KLD | same top-1 |")
        print("|---|---|---|---|")
        for fmt in ("int8", "int4"):
            kld, top, pos = dsv2_kld(args.model, fmt, text, t)
            bits = {"int8": 8.5, "int4": 4.5}[fmt]
            print(f"| dsv2 {fmt} | {bits} | {kld:.6f} | {top:.2f}% |")
        if llama:
            base = os.path.join(args.work, "llama-kld-base.bin")
            for q, bits in (("Q8_0", 8.5), ("Q4_0", 4.5), ("Q4_K_M", "~4.8")):
                kld, top = llama_kld(llama, lm["BF16"], lm[q], text, t, base)
                print(f"| llama.cpp {q} | {bits} | {kld:.6f} | {top:.2f}% |")
        print(f"\n({pos} scored positions per dsv2 row; same text and context 512 for both)")


if __name__ == "__main__":
    main()
