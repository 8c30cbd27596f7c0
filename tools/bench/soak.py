#!/usr/bin/env python3
"""Soak under faults (DESIGN.md section 9; not a CI test): a loopback cluster
(dsv2-coordinator, attention nodes, expert shards; real UCX, real gRPC) under
a steady load of greedy and seeded Generate streams, while one fault at a
time is injected at random: SIGKILL / SIGSTOP+SIGCONT / SIGTERM of an expert
shard or an attention node (each restarted or resumed afterwards). Every
completed stream is compared with `dsv2 run` on the same prompt and
sampling. Prints requests sent, completed, failed by status code, and wrong
(must be 0), and the faults injected.

  .venv/bin/python tools/bench/soak.py --build build --minutes 5

Needs grpcio and grpcio-tools (tests/python/requirements.txt).
"""
import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
import dsv2_stubs  # noqa: E402


class Member:
    """One cluster process, restartable."""

    def __init__(self, name, argv):
        self.name, self.argv, self.proc, self.port = name, argv, None, None

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if " ready " not in line:
            raise RuntimeError(f"{self.name} did not start: {line!r}")
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        self.port = fields["port"]
        # Keep draining stdout so the child never blocks on a full pipe.
        threading.Thread(target=lambda p=self.proc: [None for _ in p.stdout], daemon=True).start()

    def signal(self, sig):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout=60):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--model", help="checkpoint directory (default: a v2-tiny random model)")
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--attention", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--fault-every", type=float, default=8.0, help="seconds between faults")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="dsv2_soak_")
    b = os.path.abspath(args.build)
    model = args.model
    if model is None:
        model = os.path.join(work, "model")
        subprocess.run([f"{b}/tools/dsv2", "make-random-model", "--out", model, "--preset",
                        "v2-tiny", "--seed", "0"], check=True, stdout=subprocess.DEVNULL)

    # Requests: a fixed pool, each with its `dsv2 run` reference.
    pool = []
    for i in range(8):
        prompt = [100000, 11 + i, 12 + 2 * i, 13 + 3 * i]
        seeded = i % 2 == 1
        flags = ["--ignore-eos"] + (["--temperature", "0.9", "--seed", str(500 + i)] if seeded else [])
        out = subprocess.run([f"{b}/tools/dsv2", "run", "--model", model, "--prompt-ids",
                              ",".join(map(str, prompt)), "--max-tokens", str(args.max_tokens),
                              "--threads", "1", "--json"] + flags,
                             check=True, capture_output=True, text=True).stdout
        ref = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])["output_ids"]
        pool.append((prompt, seeded, 500 + i, ref))

    hb = ["--heartbeat-interval-ms", "200", "--heartbeat-timeout-ms", "1500"]
    coord = Member("coordinator", [f"{b}/coordinator/dsv2-coordinator", "--model", model, "--port",
                                   "0", "--threads", "1"] + hb)
    coord.start()
    endpoint = f"127.0.0.1:{coord.port}"
    shards = [Member(f"shard {i}", [f"{b}/expert_service/dsv2-expert", "--model", model,
                                    "--shard-id", str(i), "--coordinator", endpoint, "--port", "0",
                                    "--threads", "1"]) for i in range(args.shards)]
    nodes = [Member(f"attention {i}", [f"{b}/attention_service/dsv2-attention", "--model", model,
                                       "--coordinator", endpoint, "--port", "0", "--threads", "1",
                                       "--cache-tokens", "8192"]) for i in range(args.attention)]
    for m in shards + nodes:
        m.start()

    dsv2_stubs.generate(work)
    import grpc
    import inference_pb2 as pb
    import inference_pb2_grpc as pbg
    stub = pbg.InferenceStub(grpc.insecure_channel(endpoint))
    while True:  # serving: every node and shard on one complete placement
        info = stub.GetModelInfo(pb.GetModelInfoRequest())
        if (info.placement_complete and len(info.attention_nodes) == args.attention
                and len(info.expert_shards) == args.shards):
            break
        time.sleep(0.2)

    stop = threading.Event()
    lock = threading.Lock()
    counts = collections.Counter()

    def client(k):
        r = random.Random(args.seed * 1000 + k)
        while not stop.is_set():
            prompt, seeded, seed, ref = r.choice(pool)
            req = pb.GenerateRequest(prompt_ids=prompt, max_tokens=args.max_tokens,
                                     ignore_eos=True, temperature=0.9 if seeded else 0.0)
            if seeded:
                req.seed = seed
            with lock:
                counts["sent"] += 1
            ids = []
            try:
                for resp in stub.Generate(req, timeout=300):
                    ids.extend(resp.token_ids)
                key = "completed" if ids == ref else "wrong"
            except grpc.RpcError as e:
                key = f"failed {e.code().name}"
            with lock:
                counts[key] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.concurrency)]
    for t in threads:
        t.start()

    faults = collections.Counter()
    end = time.time() + args.minutes * 60
    while time.time() < end:
        time.sleep(args.fault_every)
        kind = rng.choice(["shard", "attention"])
        m = rng.choice(shards if kind == "shard" else nodes)
        how = rng.choice(["SIGKILL", "SIGSTOP", "SIGTERM"])
        faults[f"{how} {kind}"] += 1
        print(f"{time.strftime('%H:%M:%S')} {how} {m.name}", flush=True)
        if how == "SIGSTOP":
            m.signal(signal.SIGSTOP)
            time.sleep(rng.uniform(2, 6))
            m.signal(signal.SIGCONT)
        else:
            m.signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGTERM)
            m.wait()
            m.start()  # the restarted process registers again

    stop.set()
    for t in threads:
        t.join()
    for m in nodes + shards + [coord]:
        m.signal(signal.SIGTERM)
        m.wait()
    c = dict(counts)
    print(json.dumps({"minutes": args.minutes, "faults": dict(faults),
                      "requests_sent": c.get("sent", 0), "completed": c.get("completed", 0),
                      "wrong": c.get("wrong", 0),
                      "failed": {k[7:]: v for k, v in c.items() if k.startswith("failed ")}},
                     indent=1))
    return 0 if c.get("wrong", 0) == 0 and not any(k.startswith("failed") for k in c) else 1


if __name__ == "__main__":
    sys.exit(main())
