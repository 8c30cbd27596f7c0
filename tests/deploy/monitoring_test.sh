#!/usr/bin/env bash
# Checks deploy/monitoring/ (Grafana dashboard, Prometheus alert rules and their
# promtool unit tests, example prometheus.yml) and the Prometheus-operator copy
# of the rules in deploy/k8s/base/monitoring/prometheusrule.yaml.
#
#   bash tests/deploy/monitoring_test.sh
#
# Needs promtool (override with PROMTOOL=...) and a Python with PyYAML
# (default <repo>/.venv/bin/python, override with PYTHON=...).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MON="$ROOT/deploy/monitoring"
PROM_DIR="$MON/prometheus"
RULES="$PROM_DIR/dsv2-alerts.rules.yml"
RULE_TESTS="$PROM_DIR/dsv2-alerts.test.yml"
PROM_CONFIG="$PROM_DIR/prometheus.yml"
DASHBOARD="$MON/grafana/dsv2-dashboard.json"
FAMILIES="$MON/metric_families.json"
PROM_RULE="$ROOT/deploy/k8s/base/monitoring/prometheusrule.yaml"
PROMTOOL="${PROMTOOL:-$(command -v promtool || true)}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

[[ -n "$PROMTOOL" && -x "$PROMTOOL" ]] || fail "promtool not found (install prometheus / set PROMTOOL)"
[[ -x "$PYTHON" ]] || fail "python not found at $PYTHON (run tools/setup.sh / set PYTHON)"
"$PYTHON" -c 'import yaml' || fail "$PYTHON has no PyYAML"
for f in "$RULES" "$RULE_TESTS" "$PROM_CONFIG" "$DASHBOARD" "$FAMILIES" "$PROM_RULE"; do
  [[ -f "$f" ]] || fail "missing $f"
done

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

step "promtool check rules $RULES"
"$PROMTOOL" check rules "$RULES" || fail "promtool check rules"

step "promtool test rules $RULE_TESTS"
(cd "$PROM_DIR" && "$PROMTOOL" test rules "$(basename "$RULE_TESTS")") || fail "promtool test rules"

step "promtool check config $PROM_CONFIG"
"$PROMTOOL" check config "$PROM_CONFIG" || fail "promtool check config"

step "structural checks (dashboard, metric names, rules, rule tests, PrometheusRule)"
# The Python part writes two files for promtool: the PrometheusRule's groups as
# a plain rules file, and every dashboard expression as a recording rule (so
# the dashboard's PromQL is parsed by Prometheus' own parser).
"$PYTHON" - "$ROOT" "$TMP" <<'PYEOF'
import json, re, sys, pathlib
import yaml

root, tmp = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
mon = root / "deploy" / "monitoring"
errors = []

def check(cond, msg):
    print(("  ok   " if cond else "  FAIL ") + msg)
    if not cond:
        errors.append(msg)

# ---- metric families
fam = json.loads((mon / "metric_families.json").read_text())["families"]


def jobs_of(spec):
    """The jobs exporting a family: "job", or "jobs" for one every service exports."""
    return spec.get("jobs") or [spec["job"]]

allowed = {}
for name, spec in fam.items():
    allowed[name] = (name, spec)
    if spec["type"] == "histogram":
        for suf in ("_bucket", "_sum", "_count"):
            allowed[name + suf] = (name, spec)
check(len(fam) > 0 and all(n.startswith("dsv2_") for n in fam),
      f"metric_families.json lists {len(fam)} dsv2_* families")

NAME_RE = re.compile(r"(?<![A-Za-z0-9_:])dsv2_[A-Za-z0-9_:]*")
def check_names(text, where):
    names = set(NAME_RE.findall(text))
    bad = sorted(n for n in names if n not in allowed)
    check(not bad, f"{where}: every dsv2_* name is a known family ({len(names)} names used)"
          + (f"; unknown: {bad}" if bad else ""))
    return {allowed[n][0] for n in names if n in allowed}

# ---- dashboard
dash_path = mon / "grafana" / "dsv2-dashboard.json"
try:
    dash = json.loads(dash_path.read_text())
    check(True, "dashboard JSON parses")
except Exception as e:  # noqa: BLE001
    check(False, f"dashboard JSON parses: {e}")
    dash = {"panels": []}
check(dash.get("uid") == "dsv2-overview", 'dashboard uid is "dsv2-overview"')
check(isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 36,
      f"dashboard schemaVersion >= 36 (is {dash.get('schemaVersion')})")
tvars = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
check(tvars.get("datasource", {}).get("type") == "datasource"
      and tvars["datasource"].get("query") == "prometheus",
      "dashboard has a Prometheus `datasource` template variable")

def all_panels(ps):
    for p in ps:
        yield p
        yield from all_panels(p.get("panels", []))

panels = list(all_panels(dash.get("panels", [])))
ids = [p.get("id") for p in panels]
check(len(ids) == len(set(ids)), "panel ids are unique")
exprs = []
for p in panels:
    if p.get("type") == "row":
        continue
    title = p.get("title", "?")
    targets = p.get("targets") or []
    has_exprs = bool(targets) and all(isinstance(t.get("expr"), str) and t["expr"].strip() for t in targets)
    dss = [p.get("datasource")] + [t.get("datasource") for t in targets]
    uses_var = all(isinstance(d, dict) and d.get("uid") == "${datasource}" for d in dss)
    check(has_exprs and uses_var and "gridPos" in p,
          f"panel '{title}': {len(targets)} target(s) with non-empty PromQL, ${{datasource}}, gridPos"
          + ("" if has_exprs else " [empty/missing expr]") + ("" if uses_var else " [datasource]")
          + ("" if "gridPos" in p else " [gridPos]"))
    exprs += [t["expr"] for t in targets if isinstance(t.get("expr"), str)]
dash_text = "\n".join(exprs)
used_in_dash = check_names(dash_text, "dashboard exprs")
missing = sorted(set(fam) - used_in_dash)
check(not missing, "dashboard shows every metric family" + (f"; missing: {missing}" if missing else ""))
check(re.search(r"\bup\{", dash_text) is not None, "dashboard shows `up` for the dsv2 targets")
for q in ("0.5", "0.95", "0.99"):
    for h in ("dsv2_time_to_first_token_seconds", "dsv2_inter_token_latency_seconds"):
        pat = f"histogram_quantile({q}, sum by (le) (rate({h}_bucket[5m])))"
        check(pat in dash_text, f"dashboard has {pat}")
check(any(p.get("type") == "heatmap" and any("dsv2_expert_assignments_total" in t.get("expr", "")
                                            and "by (expert)" in t.get("expr", "")
                                            for t in p.get("targets", []))
          for p in panels), "dashboard has a per-expert load heatmap")
# Grafana's range variables -> fixed durations, then let promtool parse them.
def degrafana(e):
    return re.sub(r"\$__(rate_interval|interval|range)|\$\{__(rate_interval|interval|range)\}", "5m", e)
(tmp / "dashboard_exprs.rules.yml").write_text(yaml.safe_dump(
    {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": degrafana(e)} for i, e in enumerate(exprs)]}]}))

# ---- alert rules
rules_text = (mon / "prometheus" / "dsv2-alerts.rules.yml").read_text()
rules = yaml.safe_load(rules_text)
check_names(rules_text, "dsv2-alerts.rules.yml")
groups = rules.get("groups", [])
check([g.get("name") for g in groups] == ["dsv2"], 'rules file has exactly one group, "dsv2"')
expected_alerts = {"Dsv2NodeDown", "Dsv2PlacementIncomplete", "Dsv2TTFTHigh",
                   "Dsv2LatentCacheNearFull", "Dsv2HighErrorRate", "Dsv2ExpertLoadImbalance"}
alerts = [r for g in groups for r in g.get("rules", []) if "alert" in r]
names = {r["alert"] for r in alerts}
check(expected_alerts <= names, "rules define " + ", ".join(sorted(expected_alerts))
      + (f"; missing {sorted(expected_alerts - names)}" if expected_alerts - names else ""))
for r in alerts:
    a = r["alert"]
    check(r.get("labels", {}).get("severity") in ("critical", "warning"),
          f"{a}: severity label is critical|warning")
    ann = r.get("annotations", {})
    check(bool(ann.get("summary")) and bool(ann.get("description")), f"{a}: summary and description annotations")
    check(bool(r.get("for")), f"{a}: has a `for` duration")
ttft = next((r for r in alerts if r["alert"] == "Dsv2TTFTHigh"), {})
check("> 2" in ttft.get("expr", "") and "2s" in ttft.get("annotations", {}).get("description", ""),
      "Dsv2TTFTHigh: the 2s SLO is in the expression and the annotation")

# ---- rule unit tests
tests_text = (mon / "prometheus" / "dsv2-alerts.test.yml").read_text()
tests = yaml.safe_load(tests_text)
check_names(tests_text, "dsv2-alerts.test.yml")
firing, quiet = set(), set()
SERIES_RE = re.compile(r'^\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{(.*)\})?\s*$')
LABEL_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"(?:[^"\\]|\\.)*"\s*,?')
for t in tests.get("tests", []):
    for s in t.get("input_series", []):
        m = SERIES_RE.match(s["series"])
        if not m:
            check(False, f"test series parses: {s['series']}")
            continue
        metric, body = m.group(1), m.group(2) or ""
        labels = set(LABEL_RE.findall(body))
        if metric in allowed:
            base, spec = allowed[metric]
            ok_labels = set(spec["labels"]) | {"job", "instance"} | ({"le"} if metric.endswith("_bucket") else set())
            extra = labels - ok_labels
            if extra:
                check(False, f"test series {s['series']}: labels {sorted(extra)} not in family {base}")
            if 'job="' in body and not any(f'job="{j}"' in body for j in jobs_of(spec)):
                check(False, f"test series {s['series']}: job should be one of {jobs_of(spec)}")
    for at in t.get("alert_rule_test", []):
        (firing if at.get("exp_alerts") else quiet).add(at["alertname"])
for a in sorted(names):
    check(a in firing, f"{a}: has a firing unit test")
    check(a in quiet, f"{a}: has a not-firing unit test")
check(not (firing | quiet) - names, "rule tests only name existing alerts")

# ---- PrometheusRule
prom_rule_path = root / "deploy" / "k8s" / "base" / "monitoring" / "prometheusrule.yaml"
prom_rule = yaml.safe_load(prom_rule_path.read_text())
check(prom_rule.get("apiVersion") == "monitoring.coreos.com/v1" and prom_rule.get("kind") == "PrometheusRule",
      "prometheusrule.yaml is a monitoring.coreos.com/v1 PrometheusRule")
check(bool(prom_rule.get("metadata", {}).get("name")), "PrometheusRule has metadata.name")
check(prom_rule.get("spec", {}).get("groups") == groups,
      "PrometheusRule spec.groups == dsv2-alerts.rules.yml groups")
(tmp / "prometheusrule_groups.rules.yml").write_text(
    yaml.safe_dump({"groups": prom_rule.get("spec", {}).get("groups", [])}))

# ---- prometheus.yml
cfg = yaml.safe_load((mon / "prometheus" / "prometheus.yml").read_text())
jobs = {sc.get("job_name") for sc in cfg.get("scrape_configs", [])}
for j in ("dsv2-coordinator", "dsv2-attention", "dsv2-expert"):
    check(j in jobs, f"prometheus.yml scrapes job {j}")
check("dsv2-alerts.rules.yml" in cfg.get("rule_files", []), "prometheus.yml loads dsv2-alerts.rules.yml")
fam_jobs = {j for spec in fam.values() for j in jobs_of(spec)}
check(fam_jobs <= jobs, "every family's job is scraped by prometheus.yml")

if errors:
    print(f"{len(errors)} check(s) failed", file=sys.stderr)
    sys.exit(1)
PYEOF

step "promtool check rules (PrometheusRule spec.groups)"
"$PROMTOOL" check rules "$TMP/prometheusrule_groups.rules.yml" || fail "PrometheusRule groups"

step "promtool check rules (every dashboard expression parses)"
"$PROMTOOL" check rules "$TMP/dashboard_exprs.rules.yml" || fail "dashboard PromQL"

echo "PASS: monitoring_test"
