"""The public API from a real Python gRPC client (grpcio from PyPI, stubs
generated from proto/inference.proto by grpcio-tools at test time), against
a cluster started with `dsv2 up` (coordinator + 1 attention node + 2 expert
shards, real processes, real UCX). Outputs are compared with single-process
`dsv2 run`.

Run: .venv/bin/python tests/python/api_client_test.py (CTest does; needs
DSV2_TEST_BIN_DIR = the build directory).
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("DSV2_TEST_BIN_DIR", os.path.join(ROOT, "build"))
DSV2 = os.path.join(BIN, "tools", "dsv2")
WORK = tempfile.mkdtemp(prefix="dsv2_py_")


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dsv2_stubs  # noqa: E402

dsv2_stubs.generate(WORK)
import grpc  # noqa: E402
import inference_pb2 as pb  # noqa: E402
import inference_pb2_grpc as pb_grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: E402

MODEL = os.path.join(WORK, "model")


def dsv2_run(*args):
    out = subprocess.run([DSV2, "run", "--model", MODEL, "--threads", "1", "--json", *args],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


class ApiClientTest(unittest.TestCase):
    up = None
    channel = None

    @classmethod
    def setUpClass(cls):
        subprocess.run([DSV2, "make-random-model", "--out", MODEL, "--preset", "v2-tiny",
                        "--seed", "0"], check=True, capture_output=True, timeout=300)
        ready_file = os.path.join(WORK, "ready")
        cls.up = subprocess.Popen(
            [DSV2, "up", "--model", MODEL, "--attention-nodes", "1", "--expert-shards", "2",
             "--port", "0", "--threads", "1", "--ready-file", ready_file],
            stdout=subprocess.PIPE, text=True)
        line = cls.up.stdout.readline()
        if not line.startswith("dsv2 ready "):
            cls.up.kill()
            raise RuntimeError(f"dsv2 up did not become ready: {line!r}")
        fields = dict(f.split("=", 1) for f in line.split()[2:])
        cls.endpoint = fields["endpoint"]
        with open(ready_file) as f:
            assert f.read().strip() == line.strip(), "ready file differs from the ready line"
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

    def generate(self, **kw):
        chunks = list(self.stub.Generate(pb.GenerateRequest(**kw), timeout=120))
        ids = [i for c in chunks for i in c.token_ids]
        text = "".join(c.text for c in chunks)
        return chunks, ids, text

    def test_greedy_text_prompt_equals_dsv2_run(self):
        ref = dsv2_run("--prompt", "Hello from Python", "--max-tokens", "16")
        chunks, ids, text = self.generate(prompt="Hello from Python", max_tokens=16,
                                          temperature=0.0, return_prompt_ids=True)
        self.assertEqual(ids, ref["output_ids"])
        self.assertEqual(text, ref["text"])
        final = chunks[-1]
        self.assertIn(final.finish_reason, (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_EOS))
        self.assertEqual(list(final.prompt_ids), ref["prompt_ids"])
        self.assertEqual(final.usage.prompt_tokens, len(ref["prompt_ids"]))
        self.assertEqual(final.usage.completion_tokens, len(ids))
        self.assertGreaterEqual(final.usage.time_to_first_token_seconds, 0.0)
        for c in chunks[:-1]:
            self.assertEqual(c.finish_reason, pb.FINISH_REASON_UNSPECIFIED)

    def test_seeded_sampling_equals_dsv2_run_seed(self):
        ref = dsv2_run("--prompt", "Sample me", "--max-tokens", "12", "--temperature", "0.7",
                       "--top-k", "20", "--seed", "99", "--ignore-eos")
        _, ids, _ = self.generate(prompt="Sample me", max_tokens=12, temperature=0.7, top_k=20,
                                  seed=99, ignore_eos=True)
        self.assertEqual(ids, ref["output_ids"])

    def test_stop_string(self):
        _, ids, text = self.generate(prompt="Count with me", max_tokens=30, temperature=0.0,
                                     ignore_eos=True)
        self.assertGreater(len(text), 6)
        stop = text[len(text) // 2:len(text) // 2 + 2]
        chunks, ids2, text2 = self.generate(prompt="Count with me", max_tokens=30,
                                            temperature=0.0, ignore_eos=True, stop=[stop])
        self.assertEqual(text2, text[:text.find(stop)])
        self.assertEqual(chunks[-1].finish_reason, pb.FINISH_REASON_STOP)
        self.assertEqual(ids2, ids[:len(ids2)])

    def test_invalid_arguments_name_the_field(self):
        for kw, field in [({"prompt": "x", "temperature": -1.0}, "temperature"),
                          ({"prompt": "x", "top_p": 2.0}, "top_p"),
                          ({"prompt": "x", "logprobs": 21}, "logprobs"),
                          ({}, "prompt"),
                          ({"messages": [pb.ChatMessage(role="pirate", content="arr")]}, "role")]:
            with self.assertRaises(grpc.RpcError) as cm:
                self.generate(**kw)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, field)
            self.assertIn(field, cm.exception.details())

    def test_deadline(self):
        with self.assertRaises(grpc.RpcError) as cm:
            list(self.stub.Generate(pb.GenerateRequest(prompt_ids=[100000, 5], max_tokens=3000,
                                                       ignore_eos=True), timeout=0.3))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)

    def test_tokenize_detokenize_model_info(self):
        t = self.stub.Tokenize(pb.TokenizeRequest(text="Hello world"))
        self.assertEqual(t.token_ids[0], 100000)
        d = self.stub.Detokenize(pb.DetokenizeRequest(token_ids=t.token_ids,
                                                      skip_special_tokens=True))
        self.assertEqual(d.text, "Hello world")
        info = self.stub.GetModelInfo(pb.GetModelInfoRequest())
        self.assertEqual(len(info.attention_nodes), 1)
        self.assertEqual(len(info.expert_shards), 2)
        self.assertTrue(info.placement_complete)
        self.assertEqual(info.n_routed_experts, 160)

    def test_health_and_reflection(self):
        health = health_pb2_grpc.HealthStub(self.channel)
        for service in ("", "dsv2.v1.Inference"):
            r = health.Check(health_pb2.HealthCheckRequest(service=service))
            self.assertEqual(r.status, health_pb2.HealthCheckResponse.SERVING)
        refl = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        responses = refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = [s.name for r in responses for s in r.list_services_response.service]
        self.assertIn("dsv2.v1.Inference", services)
        self.assertIn("grpc.health.v1.Health", services)
        # `dsv2 up` serves membership on the coordinator's internal port.
        self.assertNotIn("dsv2.internal.Coordinator", services)


if __name__ == "__main__":
    unittest.main(verbosity=2)
