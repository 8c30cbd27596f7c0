#!/usr/bin/env python3
"""The install prefix is self-contained (docs/install.md).

`cmake --install` of the build directory into a temporary prefix, then:

  * the tree: bin/ holds the four binaries, share/dsv2/ the shipped tokenizer
    and the deployment files; no link points out of the prefix;
  * no installed file, binaries included (their strings and debug info),
    contains the path of the source tree or of the build tree (the build
    compiles with -ffile-prefix-map, so __FILE__ and debug info are
    relative; nothing else may compile a tree path in);
  * every shared library the binaries load is a system one, none from a tree;
  * every binary's --version names the project version and one revision;
  * the prefix, moved elsewhere (so no absolute install path counts either),
    runs from a working directory outside both trees, with no DSV2_*
    variable, a fresh XDG_CACHE_HOME and a PATH without the trees:
    `dsv2 up` without --model serves the shipped demo model from
    share/dsv2/demo-stories (nothing is made in the cache), every child it
    starts is the prefix's binary, and `dsv2 generate` streams what
    `dsv2 run` computes on that model.

Run: .venv/bin/python tests/install/install_test.py
Env: DSV2_TEST_BIN_DIR  the build directory (default <repo>/build)
Python standard library only.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN_DIR = os.path.abspath(os.environ.get("DSV2_TEST_BIN_DIR", os.path.join(REPO, "build")))
BINARIES = ["dsv2", "dsv2-coordinator", "dsv2-attention", "dsv2-expert"]
PROMPT = "The capital of France is"
READY_TIMEOUT_S = 180


def tree_paths():
    """Every spelling of the source and build trees' paths (as given and
    with symlinks resolved)."""
    out = set()
    for p in (REPO, BIN_DIR):
        out.add(p.rstrip("/"))
        out.add(os.path.realpath(p).rstrip("/"))
    return sorted(out, key=len)


def inside(path, tree):
    path, tree = os.path.realpath(path), os.path.realpath(tree)
    return path == tree or path.startswith(tree + "/")


class InstallTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = os.path.realpath(tempfile.mkdtemp(prefix="dsv2-install-test-"))
        for tree in (REPO, BIN_DIR):
            if inside(cls.tmp, tree):
                raise unittest.SkipTest(f"the temporary directory {cls.tmp} is inside {tree}")
        cls.prefix = os.path.join(cls.tmp, "prefix")
        proc = subprocess.run(["cmake", "--install", BIN_DIR, "--prefix", cls.prefix],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"cmake --install failed:\n{proc.stdout}\n{proc.stderr}")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def installed_files(self, root=None):
        root = root or self.prefix
        for d, dirs, files in os.walk(root):
            for name in dirs + files:
                yield os.path.join(d, name)

    # --------------------------------------------------------------- layout

    def test_01_layout(self):
        for b in BINARIES:
            path = os.path.join(self.prefix, "bin", b)
            self.assertTrue(os.path.isfile(path) and os.access(path, os.X_OK), f"bin/{b}")
        self.assertEqual(sorted(os.listdir(os.path.join(self.prefix, "bin"))), sorted(BINARIES))
        data = os.path.join(self.prefix, "share", "dsv2")
        for rel in ("deepseek-v2/tokenizer.json", "deepseek-v2/tokenizer_config.json",
                    "demo-stories/config.json", "demo-stories/model.safetensors",
                    "demo-stories/tokenizer.json", "demo-stories/tokenizer_config.json",
                    "deploy/k8s", "deploy/monitoring"):
            self.assertTrue(os.path.exists(os.path.join(data, rel)), f"share/dsv2/{rel}")
        with open(os.path.join(data, "deepseek-v2", "tokenizer.json"), "rb") as a, \
                open(os.path.join(REPO, "model", "data", "deepseek-v2", "tokenizer.json"), "rb") as b:
            self.assertEqual(a.read(), b.read(), "the shipped tokenizer, as in the source")
        for path in self.installed_files():
            if os.path.islink(path):  # a link must stay inside the prefix
                self.assertTrue(inside(path, self.prefix), f"{path} -> {os.readlink(path)}")

    def test_02_no_installed_file_names_a_tree(self):
        needles = [p.encode() for p in tree_paths()]
        checked = 0
        for path in self.installed_files():
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            checked += 1
            for n in needles:
                i = data.find(n)
                if i >= 0:
                    context = data[max(0, i - 40):i + len(n) + 40]
                    self.fail(f"{os.path.relpath(path, self.prefix)} contains {n.decode()} "
                              f"at byte {i}: {context!r}")
        self.assertGreaterEqual(checked, len(BINARIES) + 2)

    def test_03_shared_libraries_are_system_ones(self):
        if shutil.which("ldd") is None:
            self.skipTest("no ldd")
        for b in BINARIES:
            out = subprocess.run(["ldd", os.path.join(self.prefix, "bin", b)],
                                 capture_output=True, text=True, timeout=60).stdout
            self.assertNotIn("not found", out, f"bin/{b}:\n{out}")
            for lib in re.findall(r"=>\s+(/\S+)", out):
                for tree in (REPO, BIN_DIR, self.prefix):
                    self.assertFalse(inside(lib, tree), f"bin/{b} loads {lib} from {tree}")

    def test_04_version(self):
        """Every installed binary reports the project version and the same
        git revision (base/version.h)."""
        with open(os.path.join(BIN_DIR, "CMakeCache.txt")) as f:
            version = re.search(r"^CMAKE_PROJECT_VERSION:STATIC=(.*)$", f.read(), re.M).group(1)
        lines = set()
        for program, argv in [("dsv2-coordinator", ["dsv2-coordinator"]),
                              ("dsv2-attention", ["dsv2-attention"]),
                              ("dsv2-expert", ["dsv2-expert"]),
                              ("dsv2 generate", ["dsv2", "generate"])]:
            argv = [os.path.join(self.prefix, "bin", argv[0])] + argv[1:] + ["--version"]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            m = re.fullmatch(re.escape(program) + r" (\S+) \(git ([A-Za-z0-9._+-]+)\)\n",
                             proc.stdout)
            self.assertIsNotNone(m, proc.stdout)
            self.assertEqual(m.group(1), version)
            lines.add(m.group(2))
        self.assertEqual(len(lines), 1, lines)

    # ------------------------------------------------- running the prefix

    def test_05_moved_prefix_runs_up_and_generate(self):
        # Moved (the last test): no absolute install path may count either.
        moved = os.path.join(self.tmp, "moved", "dsv2")
        os.makedirs(os.path.dirname(moved))
        os.rename(self.prefix, moved)
        work = os.path.join(self.tmp, "work")  # the working directory: outside both trees
        cache = os.path.join(self.tmp, "cache")
        os.makedirs(work)
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": os.path.join(self.tmp, "home"), "XDG_CACHE_HOME": cache,
               "LANG": "C.UTF-8"}  # no DSV2_* variable: no model, no data directory named
        dsv2 = os.path.join(moved, "bin", "dsv2")
        ready = os.path.join(work, "ready")
        with open(os.path.join(work, "up.log"), "w+") as log:
            up = subprocess.Popen([dsv2, "up", "--port", "0", "--threads", "1",
                                   "--ready-file", ready],
                                  cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=log)
            try:
                deadline = time.monotonic() + READY_TIMEOUT_S
                while not os.path.exists(ready):
                    if up.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        self.fail(f"dsv2 up not ready (exit {up.poll()}):\n{log.read()}")
                    time.sleep(0.2)
                with open(ready) as f:
                    line = f.read().strip()
                fields = dict(f.split("=", 1) for f in line.split()[2:])
                self.check_children(fields, moved)
                model = os.path.join(moved, "share", "dsv2", "demo-stories")
                self.check_default_model(cache, log)
                self.check_generate(dsv2, fields["endpoint"], fields["tls_ca"], model, work, env)
            finally:
                up.send_signal(signal.SIGTERM)
                try:
                    code = up.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    up.kill()
                    code = up.wait()
            log.seek(0)
            self.assertEqual(code, 0, f"dsv2 up after SIGTERM:\n{log.read()}")

    def check_children(self, fields, moved):
        pids = {k: int(v) for k, v in fields.items()
                if k != "endpoint" and re.fullmatch(r"[a-z]+(-\d+)?", k)}
        self.assertEqual(sorted(k.split("-")[0] for k in pids),
                         ["attention", "coordinator", "expert", "expert"], fields)
        for name, pid in pids.items():
            exe = os.readlink(f"/proc/{pid}/exe")
            self.assertTrue(inside(exe, os.path.join(moved, "bin")), f"{name} runs {exe}")

    def check_default_model(self, cache, log):
        # The shipped demo model is served from the prefix; nothing is made.
        self.assertFalse(os.path.exists(os.path.join(cache, "dsv2")), "something was made in the cache")
        log.seek(0)
        self.assertNotIn("making the default model", log.read())

    def check_generate(self, dsv2, endpoint, tls_ca, model, work, env):
        def run_json(args):
            proc = subprocess.run([dsv2] + args + ["--json"], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=300)
            self.assertEqual(proc.returncode, 0, f"dsv2 {args[0]}: {proc.stderr}")
            return json.loads(proc.stdout.strip().splitlines()[-1])

        got = run_json(["generate", "--endpoint", endpoint, "--tls-ca", tls_ca, "--prompt", PROMPT,
                        "--max-tokens", "8", "--temperature", "0", "--timeout-s", "120"])
        want = run_json(["run", "--model", model, "--prompt", PROMPT, "--max-tokens", "8",
                         "--threads", "1"])
        self.assertGreater(len(got["prompt_ids"]), 0)
        self.assertEqual(got["usage"]["completion_tokens"], len(got["output_ids"]))
        self.assertGreater(len(got["output_ids"]), 0)
        self.assertEqual(got["prompt_ids"], want["prompt_ids"])
        self.assertEqual(got["output_ids"], want["output_ids"])
        self.assertEqual(got["text"], want["text"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
