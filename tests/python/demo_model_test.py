"""The shipped demo model speaks (issue 12): `dsv2 up` with no --model serves
model/data/demo-stories, and greedy answers through the public API to the
held-out prompts (tests/data/demo_model/heldout_prompts.json: names, animals,
objects and places the training prompts never paired) are checked by
tools/demo_model/eval_heldout.py's rules: 100% of answers are made of the
story generator's vocabulary and end a sentence (at EOS); at least 80% mention
everything the prompt named (its name, animal, object and place, all four in
the same answer); the rates are printed. Also: `dsv2 run` without --model is the same
model (same tokens as the cluster). Exactness against transformers on this
model is the conformance suite's (tests/data/conformance/demo_bf16).

Run: .venv/bin/python tests/python/demo_model_test.py (CTest does; needs
DSV2_TEST_BIN_DIR = the build directory).
"""
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("DSV2_TEST_BIN_DIR", os.path.join(ROOT, "build"))
DSV2 = os.path.join(BIN, "tools", "dsv2")
WORK = tempfile.mkdtemp(prefix="dsv2_demo_")
PROMPTS = os.path.join(ROOT, "tests", "data", "demo_model", "heldout_prompts.json")
MAX_TOKENS = 512

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "demo_model"))
import dsv2_stubs  # noqa: E402
import eval_heldout  # noqa: E402

dsv2_stubs.generate(WORK)
import grpc  # noqa: E402
import inference_pb2 as pb  # noqa: E402
import inference_pb2_grpc as pb_grpc  # noqa: E402


def child_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSV2_")}
    return env


class DemoModelTest(unittest.TestCase):
    up = None
    channel = None

    @classmethod
    def setUpClass(cls):
        with open(PROMPTS) as f:
            data = json.load(f)
        cls.prompts = data["prompts"]
        cls.vocab = set(data["vocabulary"])
        cls.up = subprocess.Popen(
            [DSV2, "up", "--attention-nodes", "1", "--expert-shards", "2", "--port", "0",
             "--threads", "1"], stdout=subprocess.PIPE, text=True, env=child_env())
        line = cls.up.stdout.readline()
        if not line.startswith("dsv2 ready "):
            cls.up.kill()
            raise RuntimeError(f"dsv2 up did not become ready: {line!r}")
        fields = dict(f.split("=", 1) for f in line.split()[2:])
        cls.channel = dsv2_stubs.channel_from_ready_fields(fields)
        cls.stub = pb_grpc.InferenceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        if cls.channel is not None:
            cls.channel.close()
        if cls.up is not None:
            cls.up.send_signal(signal.SIGTERM)
            rc = cls.up.wait(timeout=60)
            assert rc == 0, f"dsv2 up exited with {rc}"

    def answer(self, prompt):
        req = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content=prompt)],
                                 temperature=0, max_tokens=MAX_TOKENS)
        chunks = list(self.stub.Generate(req, timeout=300))
        return ("".join(c.text for c in chunks), [i for c in chunks for i in c.token_ids],
                chunks[-1].finish_reason)

    def test_default_model_is_the_shipped_demo(self):
        info = self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        self.assertEqual(info.model_name, "demo-stories")

    def test_heldout_prompts_are_answered_in_the_story_world(self):
        self.assertGreaterEqual(len(self.prompts), 20)
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda p: self.answer(p["prompt"]), self.prompts))
        answers = [r[0] for r in results]
        for p, (text, _, reason) in zip(self.prompts, results):
            self.assertEqual(reason, pb.FINISH_REASON_EOS, f"{p['prompt']!r} did not end: {text!r}")
        summary, rows = eval_heldout.evaluate(self.prompts, answers, self.vocab)
        print(json.dumps(summary, indent=1), file=sys.stderr)
        for r in rows:
            with self.subTest(prompt=r["prompt"]):
                self.assertTrue(r["vocabulary"], f"outside the vocabulary: {r['bad_words']} "
                                f"{r['bad_chars']} in {r['answer']!r}")
                self.assertTrue(r["sentence"], f"does not end a sentence: {r['answer']!r}")
        # Issue 12: >= 80% of the answers mention everything the prompt named (name, animal,
        # object and place, all four in one answer). Each kind is also checked on its own, so a
        # failure says which one fell.
        for kind in ("name", "animal", "object", "place"):
            self.assertGreaterEqual(summary["mention_rate_by_kind"][kind], eval_heldout.MIN_MENTION_RATE,
                                    (kind, [r["answer"][:160] for r in rows]))
        self.assertGreaterEqual(summary["mention_rate"], eval_heldout.MIN_MENTION_RATE,
                                [(r["prompt"], r["missing"]) for r in rows if r["missing"]])

    def test_dsv2_run_without_model_is_the_same_model(self):
        prompt = self.prompts[0]["prompt"]
        out = subprocess.run([DSV2, "run", "--chat", "--prompt", prompt, "--max-tokens", "64",
                              "--temperature", "0", "--threads", "1", "--json"],
                             check=True, capture_output=True, text=True, timeout=300,
                             env=child_env()).stdout
        run = json.loads(out.strip().splitlines()[-1])
        req = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content=prompt)],
                                 temperature=0, max_tokens=64, ignore_eos=True)
        ids = [i for c in self.stub.Generate(req, timeout=300) for i in c.token_ids]
        n = len(run["output_ids"])
        self.assertGreater(n, 0)
        self.assertEqual(ids[:n], run["output_ids"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
