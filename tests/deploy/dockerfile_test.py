#!/usr/bin/env python3
"""Checks of deploy/Dockerfile, read statically (no container engine): its
build stage sets up without test tools and installs with `cmake --install`
(run here too, to see what the prefix holds), its runtime stage copies that
prefix and has every shared library; every flag and DSV2_* variable it names
exists in the binaries' --flags-json.

Run: .venv/bin/python tests/deploy/dockerfile_test.py
Env: DSV2_TEST_BIN_DIR  build directory with the binaries (default <repo>/build)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deploy_common import *  # noqa: E402,F401,F403
import deploy_common  # noqa: E402


def setUpModule():
    deploy_common.load_flags_of_binaries()


def dockerfile_instructions():
    """[(stage index, INSTRUCTION, arguments)] with continuations joined."""
    with open(DOCKERFILE) as f:
        lines = f.read().splitlines()
    out, cur, stage = [], "", -1
    for line in lines:
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        instr, _, rest = cur.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stage += 1
        out.append((stage, instr, rest.strip()))
        cur = ""
    return out


def exec_form_or_shell(rest):
    rest = rest.strip()
    if rest.startswith("["):
        return json.loads(rest)
    return shlex.split(rest)


class DockerfileTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.ins = dockerfile_instructions()
        cls.stages = {}
        for stage, instr, rest in cls.ins:
            if instr == "FROM":
                words = rest.split()
                name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(stage)
                cls.stages[stage] = {"image": words[0], "name": name, "workdir": "/"}
            if instr == "WORKDIR":
                cls.stages[stage]["workdir"] = rest

    def test_bases_are_debian_bookworm_multi_stage(self):
        images = [s["image"] for s in self.stages.values()]
        self.assertGreaterEqual(len(images), 2, "multi-stage")
        for image in images:
            self.assertRegex(image, r"^debian:bookworm(-slim)?$")
        self.assertEqual(images[-1], "debian:bookworm-slim")

    def test_run_scripts_exist_and_are_the_readme_ones(self):
        scripts = []
        for stage, instr, rest in self.ins:
            if instr != "RUN":
                continue
            for w in shlex.split(rest):
                if w.endswith(".sh"):
                    scripts.append(w)
                    self.assertTrue(os.path.isfile(os.path.join(REPO, w)), f"RUN names {w}: no such script")
        self.assertIn("tools/setup.sh", scripts)
        self.assertIn("tools/build.sh", scripts)

    def run_commands(self, stages):
        """[(stage, argv)] of every `&&`/`;`-separated command of the RUNs in `stages`."""
        out = []
        for stage, instr, rest in self.ins:
            if instr == "RUN" and stage in stages:
                for cmd in re.split(r"&&|;", rest):
                    if cmd.strip():
                        out.append((stage, shlex.split(cmd)))
        return out

    def test_build_stage_sets_up_and_builds_without_test_tools(self):
        final = max(self.stages)
        runs = [argv for _, argv in self.run_commands(set(self.stages) - {final})]
        setups = [a for a in runs if "tools/setup.sh" in a]
        self.assertTrue(setups, "no tools/setup.sh in a build stage")
        for a in setups:
            self.assertIn("--build-only", a, "the image needs no test tools")
        with open(os.path.join(REPO, "tools", "setup.sh")) as f:
            self.assertIn("--build-only)", f.read(), "tools/setup.sh has no --build-only mode")
        # --build-only leaves GoogleTest out: the build must not configure the tests.
        builds = [a for a in runs if "tools/build.sh" in a]
        self.assertTrue(builds, "no tools/build.sh in a build stage")
        for a in builds:
            self.assertIn("-DDSV2_BUILD_TESTS=OFF", a)

    def test_runtime_copies_the_install_prefix(self):
        """A build stage runs `cmake --install build --prefix P`; the final
        stage copies P as a whole into /usr/local (no hand-picked build
        outputs), and that prefix holds every binary the image and the
        manifests run, plus the data `dsv2 up` needs."""
        final = max(self.stages)
        prefixes = {}  # stage name -> install prefix
        for stage, argv in self.run_commands(set(self.stages)):
            if argv[:2] != ["cmake", "--install"]:
                continue
            self.assertNotEqual(stage, final, "cmake --install belongs in a build stage")
            self.assertEqual(argv[2], "build", "installs tools/build.sh's build directory")
            self.assertIn("--prefix", argv)
            self.assertNotIn("--component", argv, "the whole install, not a part")
            prefix = argv[argv.index("--prefix") + 1]
            self.assertTrue(os.path.isabs(prefix), prefix)
            prefixes[self.stages[stage]["name"]] = prefix.rstrip("/")
        self.assertTrue(prefixes, "no `cmake --install build --prefix P` in a build stage")
        copies = [rest.split() for stage, instr, rest in self.ins
                  if stage == final and instr in ("COPY", "ADD")]
        self.assertEqual(len(copies), 1, "the final stage copies the install prefix and nothing else")
        words = copies[0]
        src = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
        self.assertIn(src, prefixes, "COPY --from= names the stage that ran cmake --install")
        paths = [w for w in words if not w.startswith("--")]
        self.assertEqual([p.rstrip("/") for p in paths], [prefixes[src], "/usr/local"])
        # What that prefix holds: install the build directory the way the image does.
        with tempfile.TemporaryDirectory() as prefix:
            proc = subprocess.run(["cmake", "--install", BIN_DIR, "--prefix", prefix],
                                  capture_output=True, text=True, timeout=300)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            for binary in list(BINARIES) + ["dsv2"]:  # on the image's PATH (/usr/local/bin)
                self.assertTrue(os.access(os.path.join(prefix, "bin", binary), os.X_OK),
                                f"cmake --install puts no bin/{binary}")
            self.assertTrue(os.path.isfile(
                os.path.join(prefix, "share", "dsv2", "deepseek-v2", "tokenizer.json")))

    def test_runs_as_non_root(self):
        users = [rest for stage, instr, rest in self.ins if instr == "USER" and stage == max(self.stages)]
        self.assertTrue(users, "no USER in the final stage")
        user = users[-1].split(":")[0]
        self.assertNotIn(user, ("0", "root"))
        self.assertTrue(user.isdigit(), "numeric USER (runAsNonRoot can check it)")
        for r in RENDERED:
            for w, spec, c in r.containers():
                run_as = (c.get("securityContext") or {}).get("runAsUser", spec["securityContext"].get("runAsUser"))
                self.assertEqual(run_as, int(user))

    def test_named_flags_and_env_exist(self):
        final = max(self.stages)
        for stage, instr, rest in self.ins:
            if stage != final:
                continue
            if instr in ("CMD", "ENTRYPOINT"):
                argv = exec_form_or_shell(rest)
                self.assertIn(argv[0], BINARIES)
                for t in argv[1:]:
                    name = split_flag(t)
                    if name is not None:
                        self.assertIn(name, FLAGS[argv[0]], f"{instr}: {argv[0]} has no --{name}")
            if instr == "ENV":
                for kv in shlex.split(rest):
                    key = kv.split("=", 1)[0]
                    if key.startswith("DSV2_"):
                        for b, flags in FLAGS.items():  # image-wide: every binary
                            self.assertIn(key, {f["env"] for f in flags.values()}, f"ENV {key}: not a flag of {b}")
            if instr == "EXPOSE":
                exposed = {int(p.split("/")[0]) for p in rest.split()}
                for r in RENDERED:
                    for w, spec, c in r.containers():
                        for p in c.get("ports") or []:
                            self.assertIn(p["containerPort"], exposed)

    def test_runtime_packages_provide_every_shared_library(self):
        if not (shutil.which("ldd") and shutil.which("dpkg") and shutil.which("apt-cache")):
            self.skipTest("needs ldd, dpkg and apt-cache (Debian)")
        final = max(self.stages)
        listed = []
        for stage, instr, rest in self.ins:
            if stage == final and instr == "RUN" and "apt-get install" in rest:
                words = shlex.split(rest.split("apt-get install", 1)[1].split("&&")[0])
                listed += [w for w in words if not w.startswith("-")]
        self.assertTrue(listed, "no apt-get install in the final stage")
        for p in listed:
            out = subprocess.run(["apt-cache", "show", p], capture_output=True, text=True)
            self.assertEqual(out.returncode, 0, f"no Debian package {p}")
        deps = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                               "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
                               "--no-pre-depends"] + listed, capture_output=True, text=True).stdout
        provided = set(listed) | {l.split(":")[-1].strip().strip("<>") for l in deps.splitlines()}
        provided |= {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}  # in debian:bookworm-slim
        for name, rel in BINARIES.items():
            libs = subprocess.run(["ldd", os.path.join(BIN_DIR, rel)], capture_output=True, text=True).stdout
            for line in libs.splitlines():
                m = re.search(r"=>\s+(/\S+)", line)
                if not m:
                    continue
                path = m.group(1)
                owner = None
                for candidate in (os.path.realpath(path), path):
                    out = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
                    if out.returncode == 0:
                        owner = out.stdout.split(":")[0]
                        break
                if owner is None:
                    continue  # not from a Debian package (e.g. a locally built library)
                with self.subTest(binary=name, library=path):
                    self.assertIn(owner, provided, f"{path} ({owner}) is not installed in the runtime stage")


if __name__ == "__main__":
    unittest.main(verbosity=2)
