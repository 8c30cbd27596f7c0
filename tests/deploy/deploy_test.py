#!/usr/bin/env python3
"""Checks of the Kubernetes deployment files: deploy/k8s (kustomize).

No cluster: the manifests are rendered with `kubectl kustomize`, validated
with kubernetes-validate (strict, a current Kubernetes schema), and
cross-checked against the real binaries' flags (each service binary's
`--flags-json`): every binary, flag, DSV2_* variable, port, probe, volume,
Service and monitor named in the manifests must exist and fit. The
Dockerfile has its own checks (dockerfile_test.py).

Run: .venv/bin/python tests/deploy/deploy_test.py
Env: DSV2_TEST_BIN_DIR  build directory with the binaries (default <repo>/build)
     DSV2_K8S_SCHEMA_VERSION  Kubernetes schema version (default in deploy_common.py)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deploy_common import *  # noqa: E402,F401,F403
import deploy_common  # noqa: E402


def setUpModule():
    deploy_common.load_flags_of_binaries()
    deploy_common.render_all()


# ---------------------------------------------------------------- kustomize

class KustomizeTest(unittest.TestCase):

    def test_every_overlay_is_found_and_renders(self):
        labels = [r.label for r in RENDERED]
        self.assertIn("base", labels)
        self.assertIn("overlays/small-cpu", labels)
        for r in RENDERED:
            with self.subTest(target=r.label):
                self.assertTrue(r.objects)

    def test_kustomizations_use_only_portable_fields(self):
        for path in glob.glob(os.path.join(K8S_DIR, "**", "kustomization.yaml"), recursive=True):
            with self.subTest(kustomization=os.path.relpath(path, REPO)):
                with open(path) as f:
                    k = yaml.safe_load(f)
                self.assertLessEqual(set(k), PORTABLE_KUSTOMIZATION_KEYS,
                                     "fields kustomize v2.0.3 (kubectl 1.20) lacks")
                d = os.path.dirname(path)
                # kustomize v2.0.3: `resources` are files, directories go in `bases`.
                for res in k.get("resources") or []:
                    self.assertTrue(os.path.isfile(os.path.join(d, res)), f"resource {res} is not a file")
                for base in k.get("bases") or []:
                    self.assertTrue(os.path.isfile(os.path.join(d, base, "kustomization.yaml")),
                                    f"base {base} has no kustomization.yaml")
                for p in k.get("patchesStrategicMerge") or []:
                    self.assertTrue(os.path.isfile(os.path.join(d, p)), f"patch {p} is not a file")
                for g in k.get("configMapGenerator") or []:
                    self.assertLessEqual(set(g), {"name", "behavior", "literals", "files", "env"})

    def test_base_is_namespace_agnostic(self):
        with open(os.path.join(K8S_DIR, "base", "kustomization.yaml")) as f:
            self.assertNotIn("namespace", yaml.safe_load(f))
        base = next(r for r in RENDERED if r.label == "base")
        for o in base.objects:
            self.assertNotIn("namespace", o["metadata"], o["metadata"]["name"])
        self.assertFalse(base.of_kind("Namespace"))


class SchemaTest(unittest.TestCase):

    def test_core_objects_validate_strictly(self):
        import kubernetes_validate
        for r in RENDERED:
            for o in r.objects:
                if o.get("apiVersion") in (CRD_GROUP, CERT_MANAGER_GROUP):
                    continue
                with self.subTest(target=r.label, kind=o["kind"], name=o["metadata"]["name"]):
                    kubernetes_validate.validate(o, K8S_VERSION, strict=True)

    def test_validation_is_strict(self):
        # The validator itself must reject an unknown field and a wrong type.
        import kubernetes_validate
        r = RENDERED[0]
        sts = copy.deepcopy(r.of_kind("StatefulSet")[0])
        sts["spec"]["template"]["spec"]["containers"][0]["envFromm"] = []
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(sts, K8S_VERSION, strict=True)
        svc = copy.deepcopy(r.of_kind("Service")[0])
        svc["spec"]["ports"][0]["port"] = "fifty"
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(svc, K8S_VERSION, strict=True)

    def test_only_known_custom_resources(self):
        for r in RENDERED:
            for o in r.objects:
                if "monitoring.coreos.com" in o.get("apiVersion", "") or o["kind"] in CRD_KINDS:
                    with self.subTest(target=r.label, kind=o["kind"]):
                        self.assertEqual(o["apiVersion"], CRD_GROUP)
                        self.assertIn(o["kind"], CRD_KINDS)
                        self.assertIsInstance(o.get("spec"), dict)
                elif "cert-manager.io" in o.get("apiVersion", "") or o["kind"] in CERT_MANAGER_KINDS:
                    with self.subTest(target=r.label, kind=o["kind"]):
                        self.assertEqual(o["apiVersion"], CERT_MANAGER_GROUP)
                        self.assertIn(o["kind"], CERT_MANAGER_KINDS)
                        self.assertIsInstance(o.get("spec"), dict)


# ---------------------------------------------------------------- containers vs flags

class ContainerFlagsTest(unittest.TestCase):

    def each_service_container(self):
        for r in RENDERED:
            for w, spec, c in r.containers():
                binary, tokens, script = container_argv(c)
                yield r, w, spec, c, binary, tokens, script

    def test_command_names_a_service_binary_and_real_flags(self):
        seen = set()
        for r, w, spec, c, binary, tokens, script in self.each_service_container():
            with self.subTest(target=r.label, workload=w["metadata"]["name"], container=c["name"]):
                self.assertIn(binary, BINARIES, f"command {c.get('command')} names no service binary")
                seen.add(binary)
                flags = FLAGS[binary]
                for t in tokens:
                    name = split_flag(t)
                    if name is not None:
                        self.assertIn(name, flags, f"{binary} has no flag --{name}")
                    elif t.startswith("-") and t != "-":
                        self.fail(f"{binary}: single-dash token {t!r} (flags are --name)")
                self.assertNotIn("flags-json", [split_flag(t) for t in tokens])
                self.assertNotIn("help", [split_flag(t) for t in tokens])
        self.assertEqual(seen, set(BINARIES), "every service binary is deployed")

    def test_env_vars_are_flags_of_the_binary(self):
        for r, w, spec, c, binary, tokens, script in self.each_service_container():
            with self.subTest(target=r.label, workload=w["metadata"]["name"], container=c["name"]):
                envs = {f["env"] for f in FLAGS[binary].values()}
                env, dups = effective_env(r, spec, c)
                self.assertEqual(dups, [], "variables set twice (which one wins is easy to miss)")
                for name, (_, source) in env.items():
                    if name.startswith("DSV2_"):
                        self.assertIn(name, envs, f"{binary} has no flag read from {name} ({source})")
                # ConfigMaps given by envFrom hold flags only.
                for ef in c.get("envFrom") or []:
                    cm = r.get("ConfigMap", ef["configMapRef"]["name"])
                    for k in cm.get("data") or {}:
                        self.assertTrue(k.startswith("DSV2_"), f"{cm['metadata']['name']}: {k}")
                self.assertNotIn("DSV2_FLAGS_JSON", env)
                self.assertNotIn("DSV2_HELP", env)

    def flag_value(self, r, spec, c, binary, tokens, name):
        """Effective value of --name: the command line wins over DSV2_*."""
        flags = FLAGS[binary]
        v = cli_value(tokens, name, flags)
        if v is not None:
            return v
        env, _ = effective_env(r, spec, c)
        return env.get(flags[name]["env"], (None,))[0]

    def test_ports_probes_and_bind_address(self):
        for r, w, spec, c, binary, tokens, script in self.each_service_container():
            with self.subTest(target=r.label, workload=w["metadata"]["name"], container=c["name"]):
                port = self.flag_value(r, spec, c, binary, tokens, "port")
                self.assertIsNotNone(port, "no --port / DSV2_PORT: the OS would choose one")
                port = int(port)
                self.assertGreater(port, 0)
                metrics = self.flag_value(r, spec, c, binary, tokens, "metrics-port")
                self.assertIsNotNone(metrics, "no --metrics-port / DSV2_METRICS_PORT")
                metrics = int(metrics)
                self.assertNotEqual(port, metrics)
                # Probes and Services reach the pod IP: bind all addresses.
                self.assertEqual(self.flag_value(r, spec, c, binary, tokens, "host"), "0.0.0.0")

                # Probes cannot speak TLS: they use the plaintext health port.
                health = self.flag_value(r, spec, c, binary, tokens, "health-port")
                self.assertIsNotNone(health, "no --health-port / DSV2_HEALTH_PORT")
                health = int(health)
                self.assertEqual(len({port, metrics, health}), 3, "ports must differ")

                declared = {p["containerPort"]: p.get("name") for p in c.get("ports") or []}
                names = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
                self.assertEqual(names.get("grpc"), port, "containerPort grpc != --port")
                self.assertEqual(names.get("metrics"), metrics, "containerPort metrics != --metrics-port")
                self.assertEqual(names.get("health"), health, "containerPort health != --health-port")
                self.assertEqual(len(declared), len(c.get("ports") or []), "duplicate containerPort")

                for probe in ("livenessProbe", "readinessProbe"):
                    self.assertIn(probe, c, f"no {probe}")
                for probe in PROBES:
                    if probe not in c:
                        continue
                    p = c[probe]
                    self.assertIn("grpc", p, f"{probe} is not a native gRPC probe")
                    self.assertEqual(p["grpc"]["port"], health, f"{probe} port != --health-port")
                    self.assertIn(p["grpc"]["port"], declared, f"{probe} port is no containerPort")
                    # "" = the process serves; the only service the binaries set.
                    self.assertEqual(p["grpc"].get("service", ""), "", f"{probe} service")

    def test_drain_fits_in_the_grace_period(self):
        for r, w, spec, c, binary, tokens, script in self.each_service_container():
            with self.subTest(target=r.label, workload=w["metadata"]["name"]):
                grace = spec.get("terminationGracePeriodSeconds", 30)
                if "drain-timeout-s" in FLAGS[binary]:
                    drain = self.flag_value(r, spec, c, binary, tokens, "drain-timeout-s")
                    drain = int(drain) if drain is not None else 30
                    self.assertGreater(grace, drain, "terminationGracePeriodSeconds <= drain timeout")

    def test_nodes_register_and_advertise_a_reachable_address(self):
        for r, w, spec, c, binary, tokens, script in self.each_service_container():
            if "coordinator" not in FLAGS[binary]:
                continue
            with self.subTest(target=r.label, workload=w["metadata"]["name"]):
                coord = self.flag_value(r, spec, c, binary, tokens, "coordinator")
                self.assertIsNotNone(coord, "no --coordinator / DSV2_COORDINATOR")
                host, _, cport = coord.rpartition(":")
                svc = r.get("Service", host.split(".")[0])
                self.assertIsNotNone(svc, f"--coordinator {coord}: no such Service")
                self.assertIn(int(cport), [p["port"] for p in svc["spec"]["ports"]])
                coord_dep = [x for x in r.workloads()
                             if labels_match({"matchLabels": svc["spec"]["selector"]},
                                             x["spec"]["template"]["metadata"].get("labels", {}))]
                self.assertEqual(len(coord_dep), 1)
                cc = coord_dep[0]["spec"]["template"]["spec"]["containers"][0]
                self.assertEqual(container_argv(cc)[0], "dsv2-coordinator")
                # The Service port leads to the coordinator's membership port:
                # --internal-port when it has one, else its gRPC port.
                sp = next(p for p in svc["spec"]["ports"] if p["port"] == int(cport))
                target = sp.get("targetPort", sp["port"])
                cports = {p.get("name"): p["containerPort"] for p in cc["ports"]}
                _, ctokens, _ = container_argv(cc)
                internal = self.flag_value(r, coord_dep[0]["spec"]["template"]["spec"], cc,
                                           "dsv2-coordinator", ctokens, "internal-port")
                membership = int(internal) if internal is not None else cports["grpc"]
                self.assertEqual(cports.get(target, target), membership)
                if internal is not None:
                    self.assertIn(membership, cports.values(), "--internal-port is no containerPort")
                # The advertised host: the pod IP (downward API) or a DNS name.
                adv = [e for e in c.get("env") or [] if e["name"] == FLAGS[binary]["advertise-host"]["env"]]
                adv_cli = cli_value(tokens, "advertise-host", FLAGS[binary])
                self.assertTrue(adv or adv_cli, "no --advertise-host: the node would advertise 0.0.0.0")
                if adv and "valueFrom" in adv[0]:
                    self.assertEqual(adv[0]["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP")

    def test_shard_id_is_the_statefulset_ordinal(self):
        found = 0
        for r, w, spec, c, binary, tokens, script in self.each_service_container():
            if binary != "dsv2-expert":
                continue
            found += 1
            with self.subTest(target=r.label, workload=w["metadata"]["name"]):
                self.assertEqual(w["kind"], "StatefulSet")
                self.assertIsNotNone(cli_value(tokens, "shard-id", FLAGS[binary]), "no --shard-id")
                # Run the real command with a stand-in binary that prints its
                # argv, as pod <name>-3 would.
                env_vars = {}
                for e in c.get("env") or []:
                    if "value" in e:
                        env_vars[e["name"]] = e["value"]
                    elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
                        env_vars[e["name"]] = w["metadata"]["name"] + "-3"
                argv = list(c.get("command") or []) + list(c.get("args") or [])
                with tempfile.TemporaryDirectory() as tmp:
                    stub = os.path.join(tmp, binary)
                    with open(stub, "w") as f:
                        f.write('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
                    os.chmod(stub, 0o755)
                    out = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                         env={"PATH": tmp + ":/usr/bin:/bin", **env_vars})
                self.assertEqual(out.returncode, 0, out.stderr)
                args = out.stdout.splitlines()
                self.assertEqual(cli_value(args, "shard-id", FLAGS[binary]), "3", args)
        self.assertGreater(found, 0)


# ---------------------------------------------------------------- pods, volumes, services

class PodSpecTest(unittest.TestCase):

    def test_security_and_resources(self):
        for r in RENDERED:
            for w, spec, c in r.containers():
                with self.subTest(target=r.label, workload=w["metadata"]["name"], container=c["name"]):
                    psc, csc = spec.get("securityContext") or {}, c.get("securityContext") or {}
                    self.assertTrue(csc.get("runAsNonRoot", psc.get("runAsNonRoot")), "runAsNonRoot")
                    self.assertNotEqual(csc.get("runAsUser", psc.get("runAsUser", 0)), 0)
                    self.assertFalse(csc.get("allowPrivilegeEscalation", True))
                    res = c.get("resources") or {}
                    for kind in ("cpu", "memory"):
                        req = (res.get("requests") or {}).get(kind)
                        lim = (res.get("limits") or {}).get(kind)
                        self.assertIsNotNone(req, f"no {kind} request")
                        self.assertIsNotNone(lim, f"no {kind} limit")
                        self.assertLessEqual(parse_quantity(req), parse_quantity(lim), kind)

    def test_model_volume_is_read_only_many_and_mounted_read_only(self):
        for r in RENDERED:
            pvcs = {p["metadata"]["name"]: p for p in r.of_kind("PersistentVolumeClaim")}
            self.assertIn("dsv2-model", pvcs)
            for p in pvcs.values():
                self.assertEqual(p["spec"]["accessModes"], ["ReadOnlyMany"])
            for w, spec, c in r.containers():
                with self.subTest(target=r.label, workload=w["metadata"]["name"], container=c["name"]):
                    claim_volumes = {v["name"]: v for v in spec.get("volumes") or []
                                     if "persistentVolumeClaim" in v}
                    for v in claim_volumes.values():
                        self.assertIn(v["persistentVolumeClaim"]["claimName"], pvcs)
                        self.assertTrue(v["persistentVolumeClaim"].get("readOnly"), v["name"])
                    mounts = [m for m in c.get("volumeMounts") or [] if m["name"] in claim_volumes]
                    self.assertTrue(mounts, "the checkpoint volume is not mounted")
                    for m in mounts:
                        self.assertTrue(m.get("readOnly"), f"{m['mountPath']} mounted read-write")
                    binary, tokens, _ = container_argv(c)
                    env, _ = effective_env(r, spec, c)
                    model = cli_value(tokens, "model", FLAGS[binary]) or env.get("DSV2_MODEL", (None,))[0]
                    self.assertIsNotNone(model, "no --model / DSV2_MODEL")
                    self.assertTrue(any(model == m["mountPath"] or model.startswith(m["mountPath"].rstrip("/") + "/")
                                        for m in mounts), f"--model {model} is not on the checkpoint volume")

    def test_statefulsets_have_headless_services(self):
        for r in RENDERED:
            for sts in r.of_kind("StatefulSet"):
                with self.subTest(target=r.label, statefulset=sts["metadata"]["name"]):
                    svc = r.get("Service", sts["spec"].get("serviceName"))
                    self.assertIsNotNone(svc, "serviceName names no Service")
                    self.assertEqual(svc["spec"].get("clusterIP"), "None")
                    self.assertTrue(labels_match({"matchLabels": svc["spec"]["selector"]},
                                                 sts["spec"]["template"]["metadata"]["labels"]))

    def test_services_select_pods_and_name_their_ports(self):
        for r in RENDERED:
            for svc in r.of_kind("Service"):
                with self.subTest(target=r.label, service=svc["metadata"]["name"]):
                    pods = [w for w in r.workloads()
                            if labels_match({"matchLabels": svc["spec"]["selector"]},
                                            w["spec"]["template"]["metadata"].get("labels", {}))]
                    self.assertEqual(len(pods), 1, "a Service selects exactly one workload")
                    cports = {p.get("name"): p["containerPort"]
                              for c in pods[0]["spec"]["template"]["spec"]["containers"]
                              for p in c.get("ports") or []}
                    for p in svc["spec"]["ports"]:
                        t = p.get("targetPort", p["port"])
                        if isinstance(t, str):
                            self.assertIn(t, cports, f"targetPort {t} is no named containerPort")
                        else:
                            self.assertIn(t, cports.values())
                    # The coordinator's also has the membership port.
                    expected = {"grpc", "metrics"}
                    if svc["metadata"]["name"] == "dsv2-coordinator":
                        expected.add("internal")
                    self.assertEqual({p["name"] for p in svc["spec"]["ports"]}, expected)

    def test_network_policies_admit_internal_ports_only_from_dsv2_pods(self):
        for r in RENDERED:
            policies = r.of_kind("NetworkPolicy")
            for w, spec, c in r.containers():
                labels = w["spec"]["template"]["metadata"].get("labels", {})
                selecting = [p for p in policies if labels_match(p["spec"]["podSelector"], labels)]
                for cp in c.get("ports") or []:
                    name, number = cp.get("name"), cp["containerPort"]
                    with self.subTest(target=r.label, workload=w["metadata"]["name"], port=name):
                        rules = [rule for p in selecting for rule in p["spec"].get("ingress") or []
                                 if not rule.get("ports")
                                 or any(rp.get("port") in (name, number) for rp in rule["ports"])]
                        self.assertTrue(rules, "no NetworkPolicy admits this port")
                        public = name in ("metrics", "health") or (
                            name == "grpc" and labels.get("app.kubernetes.io/component") == "coordinator")
                        open_to_all = any(not rule.get("from") for rule in rules)
                        self.assertEqual(open_to_all, public,
                                         "only the public API, metrics and health are open to every source")
                        for rule in rules:
                            for peer in rule.get("from") or []:
                                # dsv2's own pods only: no namespace or IP block.
                                self.assertEqual(set(peer), {"podSelector"})
                                self.assertEqual(peer["podSelector"]["matchLabels"].get(
                                    "app.kubernetes.io/name"), "dsv2")

    def test_workload_selectors_match_their_templates(self):
        for r in RENDERED:
            for w in r.workloads():
                with self.subTest(target=r.label, workload=w["metadata"]["name"]):
                    self.assertTrue(labels_match(w["spec"]["selector"],
                                                 w["spec"]["template"]["metadata"]["labels"]))
            coord = r.get("Deployment", "dsv2-coordinator")
            self.assertEqual(coord["spec"]["replicas"], 1)
            self.assertEqual(coord["spec"]["strategy"]["type"], "Recreate")

    def test_disruption_budgets(self):
        for r in RENDERED:
            pdbs = r.of_kind("PodDisruptionBudget")
            for w in r.workloads():
                with self.subTest(target=r.label, workload=w["metadata"]["name"]):
                    labels = w["spec"]["template"]["metadata"]["labels"]
                    mine = [p for p in pdbs if labels_match(p["spec"]["selector"], labels)]
                    self.assertEqual(len(mine), 1, "exactly one PodDisruptionBudget")
                    if w["kind"] == "StatefulSet":
                        self.assertEqual(mine[0]["spec"].get("maxUnavailable"), 1)
                    else:  # the one-replica coordinator must not block drains
                        self.assertEqual(mine[0]["spec"].get("minAvailable", 0), 0)

    def test_small_cpu_overlay_shape(self):
        r = next(x for x in RENDERED if x.label == "overlays/small-cpu")
        self.assertEqual(r.get("StatefulSet", "dsv2-attention")["spec"]["replicas"], 2)
        self.assertEqual(r.get("StatefulSet", "dsv2-expert")["spec"]["replicas"], 4)
        for w, spec, c in r.containers():
            self.assertNotEqual(c["image"].split(":")[0], "dsv2", "image not overridden")
            self.assertLessEqual(parse_quantity(c["resources"]["limits"]["cpu"]), 4)
            binary, tokens, _ = container_argv(c)
            if "threads" in FLAGS[binary] and binary != "dsv2-coordinator":
                env, _ = effective_env(r, spec, c)
                threads = int(env["DSV2_THREADS"][0])
                self.assertLessEqual(threads, parse_quantity(c["resources"]["limits"]["cpu"]))


# ---------------------------------------------------------------- Prometheus operator

# ---------------------------------------------------------------- TLS

TLS_FILES = {"tls-cert": "tls.crt", "tls-key": "tls.key", "tls-ca": "ca.crt"}
ROLES = {"coordinator", "attention", "expert"}


CSI_DRIVER = "csi.cert-manager.io"
CSI = "csi.cert-manager.io/"


def tls_volumes(r):
    """(workload, pod spec, component, volume) of the volume every service
    container mounts at /etc/dsv2/tls."""
    for w, spec, c in r.containers():
        component = w["metadata"]["labels"].get("app.kubernetes.io/component")
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for m in c.get("volumeMounts") or []:
            if m["mountPath"] == "/etc/dsv2/tls" and m["name"] in volumes:
                yield w, spec, component, volumes[m["name"]]


def tls_secrets(r):
    """{Secret name: component} of the TLS Secrets the workloads mount."""
    return {v["secret"]["secretName"]: component
            for _, _, component, v in tls_volumes(r) if v.get("secret") is not None}


def member_identity(uri):
    """(role, id or None) of a spiffe://dsv2/ identity; None if it is none."""
    m = re.fullmatch(r"spiffe://dsv2/([a-z]+)(?:/([A-Za-z0-9._-]{1,64}))?", uri)
    if m is None or m.group(1) not in ROLES:
        return None
    return m.group(1), m.group(2)


def hours(duration):
    m = re.fullmatch(r"(\d+)h", duration or "")
    return int(m.group(1)) if m else None


def cert_manager_problems(r):
    """What is wrong with the cert-manager objects of a render: every TLS
    volume a workload mounts is either a Secret that one Certificate makes,
    naming that workload's role, or a csi-driver volume (a certificate per
    pod) naming that pod in that role (spiffe://dsv2/<role>/${POD_NAME}:
    the shard's pod name ends in its shard id); either is for server and
    client auth, issued by the cluster's CA Issuer, whose key pair is an isCA
    Certificate of a self-signed Issuer, and renewed before the expiry alert
    (7 days) fires."""
    problems = []
    certs = {c["spec"].get("secretName"): c for c in r.of_kind("Certificate")}
    issuers = {i["metadata"]["name"]: i for i in r.of_kind("Issuer")}

    def issuer_named(owner, kind, name):
        if kind != "Issuer" or name not in issuers:
            problems.append(f"{owner}: issuer {kind}/{name} names no Issuer")
            return None
        return issuers[name]

    def check_authority(owner, kind, name):
        issuer = issuer_named(owner, kind, name)
        if issuer is None:
            return
        ca = certs.get((issuer["spec"].get("ca") or {}).get("secretName"))
        if ca is None or not ca["spec"].get("isCA"):
            problems.append(f"{owner}: its Issuer {name} is not a CA Issuer backed by an isCA "
                            "Certificate")
            return
        ref = ca["spec"].get("issuerRef") or {}
        root = issuer_named(ca["metadata"]["name"], ref.get("kind", "Issuer"), ref.get("name"))
        if root is not None and "selfSigned" not in root["spec"]:
            problems.append(f"{ca['metadata']['name']}: not issued by a selfSigned Issuer")

    def check_lifetime(owner, duration, renew_before):
        d, rb = hours(duration), hours(renew_before)
        if d is None or rb is None or not 7 * 24 < rb < d:
            problems.append(f"{owner}: renewBefore {renew_before} must exceed 7 days (the "
                            f"expiry alert) and be below duration {duration}")

    for w, spec, component, volume in tls_volumes(r):
        if volume.get("secret") is not None:
            secret = volume["secret"]["secretName"]
            cert = certs.get(secret)
            if cert is None:
                problems.append(f"no Certificate makes Secret {secret}")
                continue
            cspec, name = cert["spec"], cert["metadata"]["name"]
            ids = [member_identity(u) for u in cspec.get("uris") or []]
            if len(ids) != 1 or ids[0] is None or ids[0][0] != component:
                problems.append(f"{name}: uris {cspec.get('uris')} must name one {component} "
                                "identity")
            if component == "coordinator" and "dsv2-coordinator" not in (cspec.get("dnsNames")
                                                                         or []):
                problems.append(f"{name}: dnsNames lack the Service name dsv2-coordinator")
            if not {"server auth", "client auth"} <= set(cspec.get("usages") or []):
                problems.append(f"{name}: usages must include server auth and client auth")
            if cspec.get("isCA"):
                problems.append(f"{name}: a member certificate must not be a CA")
            check_lifetime(name, cspec.get("duration"), cspec.get("renewBefore"))
            ref = cspec.get("issuerRef") or {}
            check_authority(name, ref.get("kind", "Issuer"), ref.get("name"))
        elif (volume.get("csi") or {}).get("driver") == CSI_DRIVER:
            attrs = volume["csi"].get("volumeAttributes") or {}
            name = f"{w['metadata']['name']} volume {volume['name']}"
            want = f"spiffe://dsv2/{component}/${{POD_NAME}}"
            if attrs.get(CSI + "uri-sans") != want:
                problems.append(f"{name}: uri-sans {attrs.get(CSI + 'uri-sans')} must be {want}")
            if component == "expert" and w["kind"] != "StatefulSet":
                problems.append(f"{name}: a shard's pod name ends in its id only in a StatefulSet")
            usages = {u.strip() for u in attrs.get(CSI + "key-usages", "").split(",")}
            if not {"server auth", "client auth"} <= usages:
                problems.append(f"{name}: key-usages must include server auth and client auth")
            if attrs.get(CSI + "is-ca", "false") != "false":
                problems.append(f"{name}: a member certificate must not be a CA")
            for key, file in (("certificate-file", "tls.crt"), ("privatekey-file", "tls.key"),
                              ("ca-file", "ca.crt")):
                if attrs.get(CSI + key, file) != file:
                    problems.append(f"{name}: {key} must be {file} (the --tls-* paths)")
            if attrs.get(CSI + "fs-group") != str(spec["securityContext"].get("runAsGroup")):
                problems.append(f"{name}: fs-group must be the container's group")
            if not volume["csi"].get("readOnly"):
                problems.append(f"{name}: must be read-only")
            check_lifetime(name, attrs.get(CSI + "duration"), attrs.get(CSI + "renew-before"))
            check_authority(name, attrs.get(CSI + "issuer-kind", "Issuer"),
                            attrs.get(CSI + "issuer-name"))
    for i in issuers.values():
        if len(set(i["spec"]) & {"selfSigned", "ca", "acme", "vault", "venafi"}) != 1:
            problems.append(f"Issuer {i['metadata']['name']}: needs exactly one issuer type")
    return problems


class TlsTest(unittest.TestCase):

    def test_every_service_container_takes_its_certificate_from_a_secret_or_its_pod(self):
        for r in RENDERED:
            for w, spec, c in r.containers():
                binary, tokens, script = container_argv(c)
                with self.subTest(target=r.label, workload=w["metadata"]["name"]):
                    env, _ = effective_env(r, spec, c)
                    flags = FLAGS[binary]
                    volumes = {v["name"]: v for v in spec.get("volumes") or []}
                    mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
                    component = w["metadata"]["labels"]["app.kubernetes.io/component"]
                    for flag, file in TLS_FILES.items():
                        value = env.get(flags[flag]["env"], (None,))[0]
                        self.assertEqual(value, "/etc/dsv2/tls/" + file, f"--{flag}")
                    m = mounts.get("/etc/dsv2/tls")
                    self.assertIsNotNone(m, "no volume at /etc/dsv2/tls")
                    self.assertTrue(m.get("readOnly"))
                    volume = volumes[m["name"]]
                    secret, csi = volume.get("secret"), volume.get("csi")
                    self.assertTrue((secret is None) != (csi is None),
                                    "/etc/dsv2/tls is neither a Secret nor a csi-driver volume")
                    if secret is not None:
                        self.assertEqual(secret["secretName"], f"dsv2-{component}-tls")
                        # The key is readable by the container's group only.
                        self.assertEqual(secret.get("defaultMode"), 0o440)
                    else:
                        self.assertEqual(csi["driver"], CSI_DRIVER)
                        self.assertNotEqual(component, "coordinator",
                                            "the coordinator's DNS names need its Certificate")
                    self.assertEqual(spec["securityContext"].get("fsGroup"),
                                     spec["securityContext"].get("runAsGroup"))
                    if "internal-port" in flags:  # mutual TLS needs the internal port
                        self.assertIsNotNone(env.get(flags["internal-port"]["env"]))

    def test_cert_manager_overlay_issues_every_secret(self):
        r = next((r for r in RENDERED if r.label == "overlays/cert-manager"), None)
        self.assertIsNotNone(r, "overlays/cert-manager not rendered")
        self.assertEqual(set(tls_secrets(r).values()), ROLES)
        self.assertEqual(cert_manager_problems(r), [])
        # The check finds what a broken overlay gets wrong.
        mutations = {
            "role": lambda o: o["spec"].__setitem__("uris", ["spiffe://dsv2/expert"])
            if o["spec"].get("secretName") == "dsv2-coordinator-tls" else None,
            "usages": lambda o: o["spec"].__setitem__("usages", ["server auth"])
            if o["spec"].get("secretName") == "dsv2-expert-tls" else None,
            "secret": lambda o: o["spec"].__setitem__("secretName", "other")
            if o["spec"].get("secretName") == "dsv2-attention-tls" else None,
            "renewal": lambda o: o["spec"].__setitem__("renewBefore", "24h")
            if o["spec"].get("secretName") == "dsv2-attention-tls" else None,
            "authority": lambda o: o["spec"].__setitem__("isCA", False)
            if o["spec"].get("secretName") == "dsv2-ca" else None,
        }
        for what, mutate in mutations.items():
            with self.subTest(mutation=what):
                broken = copy.deepcopy(r)
                for o in broken.of_kind("Certificate"):
                    mutate(o)
                self.assertNotEqual(cert_manager_problems(broken), [], what)

    def test_cert_manager_csi_overlay_gives_each_member_pod_its_own_identity(self):
        r = next((r for r in RENDERED if r.label == "overlays/cert-manager-csi"), None)
        self.assertIsNotNone(r, "overlays/cert-manager-csi not rendered")
        kinds = {component: "secret" if v.get("secret") is not None else "csi"
                 for _, _, component, v in tls_volumes(r)}
        self.assertEqual(kinds, {"coordinator": "secret", "attention": "csi", "expert": "csi"})
        # No role-wide member certificate is left to act for every pod.
        for cert in r.of_kind("Certificate"):
            ids = [member_identity(u) for u in cert["spec"].get("uris") or []]
            self.assertNotIn(("attention", None), ids)
            self.assertNotIn(("expert", None), ids)
        self.assertEqual(cert_manager_problems(r), [])

        def attr(name, value):
            def mutate(volume, component):
                if component == "expert":
                    volume["csi"]["volumeAttributes"][CSI + name] = value
            return mutate
        mutations = {
            "role-wide": attr("uri-sans", "spiffe://dsv2/expert"),
            "another role": attr("uri-sans", "spiffe://dsv2/attention/${POD_NAME}"),
            "usages": attr("key-usages", "digital signature,server auth"),
            "issuer": attr("issuer-name", "letsencrypt"),
            "file": attr("privatekey-file", "key.pem"),
            "group": attr("fs-group", "0"),
            "renewal": attr("renew-before", "24h"),
            "ca": attr("is-ca", "true"),
        }
        for what, mutate in mutations.items():
            with self.subTest(mutation=what):
                broken = copy.deepcopy(r)
                for _, _, component, volume in tls_volumes(broken):
                    if volume.get("csi") is not None:
                        mutate(volume, component)
                self.assertNotEqual(cert_manager_problems(broken), [], what)


class MonitoringTest(unittest.TestCase):

    def test_scrape_jobs_are_the_ones_dashboards_and_alerts_use(self):
        # deploy/monitoring selects job="dsv2-coordinator|dsv2-attention|dsv2-expert".
        with open(os.path.join(REPO, "deploy", "monitoring", "metric_families.json")) as f:
            families = json.load(f)
        text = json.dumps(families)
        for r in RENDERED:
            jobs = set()
            for m in r.of_kind("ServiceMonitor", "PodMonitor"):
                eps = m["spec"].get("endpoints") or m["spec"].get("podMetricsEndpoints") or []
                for ep in eps:
                    for rl in ep.get("relabelings", []):
                        if rl.get("targetLabel") == "job":
                            jobs.add(rl.get("replacement"))
            with self.subTest(target=r.label):
                self.assertEqual(jobs, {"dsv2-coordinator", "dsv2-attention", "dsv2-expert"})
                for job in jobs:
                    self.assertIn(job, text, "metric_families.json does not know job " + job)

    def test_service_monitors_select_services_and_name_ports(self):
        for r in RENDERED:
            sms = r.of_kind("ServiceMonitor")
            self.assertTrue(sms)
            for sm in sms:
                with self.subTest(target=r.label, servicemonitor=sm["metadata"]["name"]):
                    self.assertEqual(sm["apiVersion"], CRD_GROUP)
                    svcs = [s for s in r.of_kind("Service")
                            if labels_match(sm["spec"].get("selector"), s["metadata"].get("labels", {}))]
                    self.assertTrue(svcs, "selects no Service")
                    self.assertTrue(sm["spec"].get("endpoints"))
                    for ep in sm["spec"]["endpoints"]:
                        self.assertLessEqual(set(ep), {"port", "path", "scheme", "interval",
                                                       "scrapeTimeout", "honorLabels",
                                                       "relabelings", "metricRelabelings"})
                        for s in svcs:
                            self.assertIn(ep["port"], [p["name"] for p in s["spec"]["ports"]])
                        self.assertEqual(ep.get("path", "/metrics"), "/metrics")

    def test_pod_monitors_select_pods_and_name_ports(self):
        for r in RENDERED:
            pms = r.of_kind("PodMonitor")
            self.assertTrue(pms)
            for pm in pms:
                with self.subTest(target=r.label, podmonitor=pm["metadata"]["name"]):
                    self.assertEqual(pm["apiVersion"], CRD_GROUP)
                    pods = [w for w in r.workloads()
                            if labels_match(pm["spec"].get("selector"),
                                            w["spec"]["template"]["metadata"].get("labels", {}))]
                    self.assertTrue(pods, "selects no pods")
                    self.assertTrue(pm["spec"].get("podMetricsEndpoints"))
                    for ep in pm["spec"]["podMetricsEndpoints"]:
                        self.assertLessEqual(set(ep), {"port", "path", "scheme", "interval",
                                                       "scrapeTimeout", "honorLabels",
                                                       "relabelings", "metricRelabelings"})
                        for w in pods:
                            names = [p.get("name") for c in w["spec"]["template"]["spec"]["containers"]
                                     for p in c.get("ports") or []]
                            self.assertIn(ep["port"], names)

    def test_every_service_binary_is_scraped(self):
        for r in RENDERED:
            for w in r.workloads():
                with self.subTest(target=r.label, workload=w["metadata"]["name"]):
                    labels = w["spec"]["template"]["metadata"]["labels"]
                    by_pod = any(labels_match(pm["spec"]["selector"], labels) for pm in r.of_kind("PodMonitor"))
                    svcs = [s for s in r.of_kind("Service")
                            if labels_match({"matchLabels": s["spec"]["selector"]}, labels)]
                    by_svc = any(labels_match(sm["spec"]["selector"], s["metadata"].get("labels", {}))
                                 for sm in r.of_kind("ServiceMonitor") for s in svcs)
                    self.assertTrue(by_pod or by_svc, "no monitor scrapes it")
                    self.assertFalse(by_pod and by_svc, "scraped twice")

    def test_prometheus_rules_are_well_formed(self):
        for r in RENDERED:
            for pr in r.of_kind("PrometheusRule"):
                with self.subTest(target=r.label, rule=pr["metadata"]["name"]):
                    self.assertEqual(pr["apiVersion"], CRD_GROUP)
                    groups = pr["spec"]["groups"]
                    self.assertTrue(groups)
                    for g in groups:
                        self.assertTrue(g.get("name"))
                        for rule in g["rules"]:
                            self.assertTrue(("alert" in rule) != ("record" in rule))
                            self.assertTrue(str(rule.get("expr", "")).strip())


# ---------------------------------------------------------------- Dockerfile


if __name__ == "__main__":
    unittest.main(verbosity=2)
