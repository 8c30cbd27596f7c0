"""What the deployment checks share (deploy_test.py: the Kubernetes
manifests; dockerfile_test.py: deploy/Dockerfile): paths, the binaries'
--flags-json, kustomize rendering, and helpers over rendered objects.
"""

import copy
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import unittest

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN_DIR = os.environ.get("DSV2_TEST_BIN_DIR", os.path.join(REPO, "build"))
K8S_DIR = os.path.join(REPO, "deploy", "k8s")
DOCKERFILE = os.path.join(REPO, "deploy", "Dockerfile")
# A current Kubernetes version that the pinned kubernetes-validate ships.
K8S_VERSION = os.environ.get("DSV2_K8S_SCHEMA_VERSION", "1.34.0")

# The service binaries: name -> path under the build directory.
BINARIES = {
    "dsv2-coordinator": "coordinator/dsv2-coordinator",
    "dsv2-attention": "attention_service/dsv2-attention",
    "dsv2-expert": "expert_service/dsv2-expert",
}
# Kustomization fields that Debian's kubectl 1.20 (kustomize v2.0.3) and
# kustomize v5 both understand the same way.
PORTABLE_KUSTOMIZATION_KEYS = {
    "apiVersion", "kind", "resources", "bases", "patchesStrategicMerge",
    "configMapGenerator", "secretGenerator", "generatorOptions", "images",
    "namespace", "namePrefix", "nameSuffix", "commonLabels",
    "commonAnnotations",
}
CRD_GROUP = "monitoring.coreos.com/v1"
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# cert-manager's objects (overlays/cert-manager); kubernetes-validate has no
# schema for them, so CertManagerTest checks their fields itself.
CERT_MANAGER_GROUP = "cert-manager.io/v1"
CERT_MANAGER_KINDS = {"Issuer", "Certificate"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


# ---------------------------------------------------------------- helpers

def load_flags(binary_path):
    """{flag name: {"bool", "env", ...}} from `BINARY --flags-json`."""
    out = subprocess.run([binary_path, "--flags-json"], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return {f["name"]: f for f in json.loads(out)}


def render(target_dir):
    """`kubectl kustomize DIR` -> list of objects."""
    proc = subprocess.run(["kubectl", "kustomize", target_dir],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {target_dir} failed:\n{proc.stderr}")
    return [o for o in yaml.safe_load_all(proc.stdout) if o]


def kustomize_targets():
    """The base and every overlay: (label, directory)."""
    targets = [("base", os.path.join(K8S_DIR, "base"))]
    for k in sorted(glob.glob(os.path.join(K8S_DIR, "overlays", "*", "kustomization.yaml"))):
        d = os.path.dirname(k)
        targets.append(("overlays/" + os.path.basename(d), d))
    return targets


def split_flag(token):
    """'--name=value' / '--name' -> 'name'; anything else -> None."""
    if not token.startswith("--") or token == "--":
        return None
    return token[2:].split("=", 1)[0]


def container_argv(container):
    """The container's argv as (binary name, argv tokens after the binary,
    shell script or None). A `sh -c SCRIPT` is looked into: the binary is the
    first word of the script that names a service binary."""
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    if not argv:
        return None, [], None
    if os.path.basename(argv[0]) in ("sh", "bash") and len(argv) >= 3 and argv[1] == "-c":
        script = argv[2]
        words = shlex.split(script, posix=True)
        for i, w in enumerate(words):
            if os.path.basename(w) in BINARIES:
                return os.path.basename(w), words[i + 1:] + argv[3:], script
        return None, words, script
    return os.path.basename(argv[0]), argv[1:], None


def cli_value(tokens, name, flags):
    """The value of --name in tokens (last one wins), or None."""
    value = None
    for i, t in enumerate(tokens):
        if split_flag(t) != name:
            continue
        if "=" in t:
            value = t.split("=", 1)[1]
        elif flags.get(name, {}).get("bool"):
            value = "true"
        elif i + 1 < len(tokens):
            value = tokens[i + 1]
    return value


def labels_match(selector, labels):
    """Kubernetes LabelSelector (matchLabels + matchExpressions) semantics."""
    if not selector:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def parse_quantity(q):
    """Kubernetes quantity -> float (base units)."""
    q = str(q)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for s in sorted(suffixes, key=len, reverse=True):
        if q.endswith(s):
            return float(q[:-len(s)]) * suffixes[s]
    return float(q)


class Rendered:
    """One rendered kustomize target with lookups."""

    def __init__(self, label, objects):
        self.label = label
        self.objects = objects

    def of_kind(self, *kinds):
        return [o for o in self.objects if o.get("kind") in kinds]

    def get(self, kind, name):
        for o in self.of_kind(kind):
            if o["metadata"]["name"] == name:
                return o
        return None

    def workloads(self):
        return self.of_kind(*WORKLOAD_KINDS)

    def pod_spec(self, workload):
        spec = workload["spec"]["template"]["spec"]
        return spec

    def containers(self):
        """(workload, pod spec, container) for every container."""
        for w in self.workloads():
            spec = self.pod_spec(w)
            for c in (spec.get("initContainers") or []) + spec["containers"]:
                yield w, spec, c


def effective_env(r, spec, container):
    """The container's environment: {name: (value or None for valueFrom,
    source)}; also returns the duplicate names (set twice). Raises when a
    referenced ConfigMap is missing."""
    env, dups = {}, []
    for ef in container.get("envFrom") or []:
        ref = ef.get("configMapRef")
        if ref is None:
            raise AssertionError(f"{container['name']}: envFrom other than configMapRef: {ef}")
        cm = r.get("ConfigMap", ref["name"])
        if cm is None:
            raise AssertionError(f"{container['name']}: envFrom ConfigMap {ref['name']} not rendered")
        prefix = ef.get("prefix", "")
        for k, v in (cm.get("data") or {}).items():
            if prefix + k in env:
                dups.append(prefix + k)
            env[prefix + k] = (str(v), "ConfigMap " + ref["name"])
    for e in container.get("env") or []:
        if e["name"] in env:
            dups.append(e["name"])
        env[e["name"]] = (e.get("value"), "env")
    return env, dups


# ---------------------------------------------------------------- fixtures

FLAGS = {}     # binary name -> its --flags-json entries by flag name
RENDERED = []  # Rendered, one per kustomize target


def load_flags_of_binaries():
    for name, rel in BINARIES.items():
        path = os.path.join(BIN_DIR, rel)
        if not os.access(path, os.X_OK):
            raise AssertionError(f"{path} not built (bash tools/build.sh)")
        FLAGS[name] = load_flags(path)


def render_all():
    if shutil.which("kubectl") is None:
        raise AssertionError("kubectl not found (tools/setup.sh installs kubernetes-client)")
    for label, d in kustomize_targets():
        RENDERED.append(Rendered(label, render(d)))
