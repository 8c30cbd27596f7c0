"""Metrics end to end: a real Prometheus server (Debian `prometheus`) on
loopback scrapes a `dsv2 up` cluster (coordinator + 1 attention node + 2
expert shards) while requests run; the test asks Prometheus' HTTP API for
dsv2_generated_tokens_total and a TTFT quantile and checks them against what
the client saw. `promtool check metrics` must pass on every endpoint.

Run: .venv/bin/python tests/python/metrics_scrape_test.py (CTest does).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("DSV2_TEST_BIN_DIR", os.path.join(ROOT, "build"))
DSV2 = os.path.join(BIN, "tools", "dsv2")
WORK = tempfile.mkdtemp(prefix="dsv2_metrics_")
MODEL = os.path.join(WORK, "model")
# Upper bounds of dsv2_time_to_first_token_seconds (metrics/metrics.cc).
TTFT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30]


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dsv2_stubs  # noqa: E402

dsv2_stubs.generate(WORK)
import grpc  # noqa: E402
import inference_pb2 as pb  # noqa: E402
import inference_pb2_grpc as pb_grpc  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def bucket_bounds(value):
    """(lower, upper] bounds of the TTFT bucket holding `value`."""
    lower = 0.0
    for upper in TTFT_BUCKETS:
        if value <= upper:
            return lower, upper
        lower = upper
    return lower, float("inf")


class MetricsScrapeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        subprocess.run([DSV2, "make-random-model", "--out", MODEL, "--preset", "v2-tiny",
                        "--seed", "0"], check=True, capture_output=True, timeout=300)
        cls.up = subprocess.Popen(
            [DSV2, "up", "--model", MODEL, "--attention-nodes", "1", "--expert-shards", "2",
             "--port", "0", "--threads", "1"], stdout=subprocess.PIPE, text=True)
        line = cls.up.stdout.readline()
        if not line.startswith("dsv2 ready "):
            cls.up.kill()
            raise RuntimeError(f"dsv2 up did not become ready: {line!r}")
        fields = dict(f.split("=", 1) for f in line.split()[2:])
        cls.endpoint = fields["endpoint"]
        cls.metrics = {name[:-len(".metrics_port")]: int(port)
                       for name, port in fields.items() if name.endswith(".metrics_port")}
        assert set(cls.metrics) == {"coordinator", "attention-0", "expert-0", "expert-1"}, line
        # Prometheus scraping every endpoint once a second.
        cls.prom_port = free_port()
        jobs = {"dsv2-coordinator": ["coordinator"], "dsv2-attention": ["attention-0"],
                "dsv2-expert": ["expert-0", "expert-1"]}
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [
                      {"job_name": job, "static_configs": [
                          {"targets": [f"127.0.0.1:{cls.metrics[n]}" for n in names]}]}
                      for job, names in jobs.items()]}
        config_path = os.path.join(WORK, "prometheus.yml")
        with open(config_path, "w") as f:
            json.dump(config, f)  # JSON is YAML
        cls.prom_log = open(os.path.join(WORK, "prometheus.log"), "w")
        cls.prom = subprocess.Popen(
            ["prometheus", f"--config.file={config_path}",
             f"--storage.tsdb.path={os.path.join(WORK, 'tsdb')}",
             f"--web.listen-address=127.0.0.1:{cls.prom_port}"],
            stdout=subprocess.DEVNULL, stderr=cls.prom_log)
        cls.channel = dsv2_stubs.channel_from_ready_fields(fields)
        cls.stub = pb_grpc.InferenceStub(cls.channel)
        deadline = time.time() + 60
        while True:
            try:
                if "Ready" in http_get(f"http://127.0.0.1:{cls.prom_port}/-/ready", 2):
                    break
            except Exception:
                pass
            if time.time() > deadline or cls.prom.poll() is not None:
                raise RuntimeError("prometheus did not start: " +
                                   open(os.path.join(WORK, "prometheus.log")).read()[-2000:])
            time.sleep(0.2)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.prom.send_signal(signal.SIGTERM)
        cls.prom.wait(timeout=30)
        cls.prom_log.close()
        cls.up.send_signal(signal.SIGTERM)
        assert cls.up.wait(timeout=60) == 0
        cls.up.stdout.close()
        shutil.rmtree(WORK, ignore_errors=True)

    def query(self, promql):
        url = (f"http://127.0.0.1:{self.prom_port}/api/v1/query?" +
               urllib.parse.urlencode({"query": promql}))
        body = json.loads(http_get(url))
        self.assertEqual(body["status"], "success", body)
        return body["data"]["result"]

    def wait_scraped_after(self, t, timeout=60):
        """Until all 4 dsv2 targets are up with a scrape later than t."""
        promql = f'count(timestamp(up{{job=~"dsv2-.*"}} == 1) > {t:.3f})'
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.query(promql)
            if r and float(r[0]["value"][1]) == 4:
                return
            time.sleep(0.25)
        self.fail(f"Prometheus did not scrape every target after {t}: "
                  f"{self.query('up')}")

    def scalar(self, promql):
        result = self.query(promql)
        self.assertEqual(len(result), 1, f"{promql}: {result}")
        return float(result[0]["value"][1])

    def test_01_promtool_accepts_every_endpoint(self):
        for name, port in self.metrics.items():
            text = http_get(f"http://127.0.0.1:{port}/metrics")
            self.assertIn("dsv2_", text, name)
            r = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                               capture_output=True)
            self.assertEqual(r.returncode, 0, f"{name}: {r.stdout}{r.stderr}")

    def test_02_prometheus_sees_what_the_client_saw(self):
        requests = 8
        tokens = 0
        ttfts = []
        for i in range(requests):
            chunks = list(self.stub.Generate(pb.GenerateRequest(
                prompt_ids=[100000, 10 + i, 20 + i], max_tokens=5 + 3 * i, temperature=0.0,
                ignore_eos=True), timeout=120))
            tokens += sum(len(c.token_ids) for c in chunks)
            ttfts.append(chunks[-1].usage.time_to_first_token_seconds)
        self.assertEqual(tokens, sum(5 + 3 * i for i in range(requests)))
        # Wait until Prometheus has scraped every target after the last
        # request ended (it starts scraping new targets only after its
        # discovery settles, a few seconds after start).
        self.wait_scraped_after(time.time())
        self.assertEqual(self.scalar('dsv2_generated_tokens_total{job="dsv2-coordinator"}'), tokens)
        self.assertEqual(self.scalar('sum(dsv2_requests_total{finish_reason="length"})'), requests)
        self.assertEqual(self.scalar("dsv2_time_to_first_token_seconds_count"), requests)
        # The median TTFT Prometheus estimates lies in the buckets spanned by
        # the client's (server-measured, reported in usage) TTFTs.
        ttfts.sort()
        p50 = self.scalar(
            "histogram_quantile(0.5, sum by (le) (dsv2_time_to_first_token_seconds_bucket))")
        lo, _ = bucket_bounds(ttfts[(requests - 1) // 2])
        _, hi = bucket_bounds(ttfts[requests // 2])
        self.assertGreaterEqual(p50, lo, f"p50 {p50} vs client TTFTs {ttfts}")
        self.assertLessEqual(p50, hi, f"p50 {p50} vs client TTFTs {ttfts}")
        # Every node reported in, and the cluster's own figures add up.
        self.assertEqual(self.scalar('dsv2_nodes{role="expert_shard",state="live"}'), 2)
        self.assertEqual(self.scalar('dsv2_nodes{role="attention",state="live"}'), 1)
        self.assertEqual(self.scalar("dsv2_placement_complete"), 1)
        self.assertEqual(len(self.query('up{job=~"dsv2-.*"} == 1')), 4)
        # Assignments dispatched by the node == rows computed by the shards.
        self.assertEqual(self.scalar("sum(dsv2_expert_assignments_total)"),
                         self.scalar("sum(dsv2_expert_rows_total)"))
        self.assertGreater(self.scalar("sum(dsv2_batch_size_count)"), 0)

    def test_03_every_process_reports_when_its_certificates_expire(self):
        # `dsv2 up` runs TLS by default: its certificates live 30 days, its
        # authority a year (service/certificates.h defaults).
        now = time.time()
        for name, port in self.metrics.items():
            text = http_get(f"http://127.0.0.1:{port}/metrics")
            values = dict(re.findall(
                r'^dsv2_tls_certificate_expiry_timestamp_seconds\{file="(cert|ca)"\} (\S+)$',
                text, re.M))
            self.assertEqual(set(values), {"cert", "ca"}, f"{name}: {text}")
            self.assertAlmostEqual(float(values["cert"]) - now, 30 * 86400, delta=3600, msg=name)
            self.assertAlmostEqual(float(values["ca"]) - now, 365 * 86400, delta=3600, msg=name)


if __name__ == "__main__":
    unittest.main(verbosity=2)
