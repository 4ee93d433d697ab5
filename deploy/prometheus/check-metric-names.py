#!/usr/bin/env python3
"""Checks the Grafana provisioning and dashboards and the metric names used by them and the rules.

Run by scripts/check-monitoring.sh (needs PyYAML). Checks:
  - deploy/prometheus/metrics.txt: one metric name per line, no duplicates;
  - every metric name in a rule expression (deploy/prometheus/rules/*.yml) and in a dashboard query
    (panel targets, template variables) is in metrics.txt, a recording rule of the rules files, or
    one of Prometheus' own series (BUILTIN);
  - the Grafana provisioning files parse; the dashboards parse as JSON, have unique panel ids, a
    gridPos for each panel, and name the provisioned Prometheus datasource by its uid;
  - every alert of the rules has a unit test in deploy/prometheus/tests/ that expects it to fire and
    one that expects it silent (exp_alerts: []).
With --emit-rules PATH, also writes the dashboards' queries as recording rules (Grafana variables
replaced: time ranges by 5m, others by .*) so that `promtool check rules PATH` parses them.
Exit status 1 on any problem.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
METRICS = ROOT / "deploy/prometheus/metrics.txt"
RULES = sorted((ROOT / "deploy/prometheus/rules").glob("*.yml"))
TESTS = sorted((ROOT / "deploy/prometheus/tests").glob("*.yml"))
GRAFANA = ROOT / "deploy/grafana"
# Series Prometheus makes itself for every target; not exported by the service (not in metrics.txt).
BUILTIN = {"up"}

KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2", "start", "end",
}
NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

problems: list[str] = []


def problem(msg: str) -> None:
    problems.append(msg)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (PromQL, with Grafana's $variables)."""
    s = expr
    # Grafana template functions: label_values(QUERY, label) / label_values(label) / query_result(QUERY).
    s = re.sub(r"label_values\(\s*([^,()]*(?:\([^()]*\))?[^,()]*),\s*\w+\s*\)", r"\1", s)
    s = re.sub(r"label_values\(\s*\w+\s*\)", " ", s)
    s = re.sub(r"query_result\(", "(", s)
    s = re.sub(r"#[^\n]*", " ", s)  # PromQL comments
    s = re.sub(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'|`[^`]*`", '""', s)  # string literals
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)  # range / subquery selectors
    s = re.sub(r"\$\{?\w+(?::\w+)?\}?", " ", s)  # Grafana variables ($__rate_interval, ${job})
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)", s):
        name = m.group(1)
        rest = s[m.end():].lstrip()
        if rest.startswith("("):  # function or aggregation
            continue
        if name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def load_metrics() -> set[str]:
    names: list[str] = []
    for n, line in enumerate(METRICS.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not NAME.match(line) or ":" in line:
            problem(f"{METRICS.relative_to(ROOT)}:{n}: not a metric name: {line!r}")
        names.append(line)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problem(f"{METRICS.relative_to(ROOT)}: duplicate names {dupes}")
    return set(names)


def promql_for_check(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, for promtool to parse."""

    def sub(m: re.Match) -> str:
        return "5m" if m.group(1).startswith("__") else ".*"

    return re.sub(r"\$\{?(\w+)(?::\w+)?\}?", sub, expr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--emit-rules", metavar="PATH", help="write the dashboard queries as a rules file")
    args = parser.parse_args()
    dashboard_rules: list[dict] = []
    exported = load_metrics()
    used: dict[str, set[str]] = {}  # metric -> where

    # Rules: recording rule names, expressions, alert names.
    recorded: set[str] = set()
    exprs: list[tuple[str, str]] = []
    alerts: set[str] = set()
    for path in RULES:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                where = f"{path.relative_to(ROOT)} {group['name']}/{rule.get('record') or rule.get('alert')}"
                if "record" in rule:
                    recorded.add(rule["record"])
                else:
                    alerts.add(rule["alert"])
                exprs.append((where, str(rule["expr"])))
    for name in recorded & exported:
        problem(f"recording rule {name} has the name of an exported metric")
    known = exported | recorded | BUILTIN
    for where, expr in exprs:
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)

    # Grafana provisioning.
    uids = set()
    for path in sorted((GRAFANA / "provisioning").rglob("*.y*ml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for ds in (doc or {}).get("datasources", []) or []:
            if ds.get("type") == "prometheus":
                uids.add(ds.get("uid"))
    if len(uids) != 1 or None in uids:
        problem(f"deploy/grafana/provisioning: expected one Prometheus datasource with a uid, found {uids}")

    # Dashboards.
    dashboards = sorted((GRAFANA / "dashboards").rglob("*.json"))
    if not dashboards:
        problem("no dashboard in deploy/grafana/dashboards")
    panel_count = 0
    for path in dashboards:
        rel = path.relative_to(ROOT)
        try:
            dash = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            problem(f"{rel}: invalid JSON: {e}")
            continue
        for key in ("title", "uid", "schemaVersion", "panels"):
            if key not in dash:
                problem(f"{rel}: no {key}")

        def check_ds(ds, where):
            if ds is None:
                return
            if isinstance(ds, dict) and ds.get("type") == "prometheus" and ds.get("uid") not in uids:
                problem(f"{where}: datasource uid {ds.get('uid')!r} is not the provisioned one {sorted(uids)}")
            if isinstance(ds, str):
                problem(f"{where}: datasource by name {ds!r}; use {{type, uid}}")

        ids = []

        def walk(panels):
            nonlocal panel_count
            for p in panels:
                panel_count += 1
                where = f"{rel} panel {p.get('id')} {p.get('title')!r}"
                ids.append(p.get("id"))
                if "gridPos" not in p:
                    problem(f"{where}: no gridPos")
                check_ds(p.get("datasource"), where)
                if p.get("type") != "row" and p.get("type") != "text" and not p.get("targets"):
                    problem(f"{where}: no query")
                for t in p.get("targets", []):
                    check_ds(t.get("datasource"), where)
                    expr = t.get("expr")
                    if not expr:
                        problem(f"{where}: target {t.get('refId')} without expr")
                        continue
                    for name in metric_names(expr):
                        used.setdefault(name, set()).add(where)
                    dashboard_rules.append({
                        "record": f"dashboard:{path.stem}_panel_{p.get('id')}_{t.get('refId')}".replace("-", "_"),
                        "expr": promql_for_check(expr),
                    })
                walk(p.get("panels", []))

        walk(dash.get("panels", []))
        dupes = sorted({i for i in ids if ids.count(i) > 1}, key=str)
        if dupes or None in ids:
            problem(f"{rel}: panel ids missing or not unique: {dupes}")
        for var in dash.get("templating", {}).get("list", []):
            where = f"{rel} variable {var.get('name')}"
            check_ds(var.get("datasource"), where)
            if var.get("type") != "query":
                continue
            q = var.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            for name in metric_names(q or ""):
                used.setdefault(name, set()).add(where)

    for name in sorted(used):
        if name not in known:
            for where in sorted(used[name]):
                problem(f"{where}: metric {name} is not in deploy/prometheus/metrics.txt (nor a recording rule)")

    # Unit-test coverage: every alert fires in a test and stays silent in one.
    fires, silent = set(), set()
    for path in TESTS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for test in doc.get("tests", []):
            for check in test.get("alert_rule_test", []) or []:
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    for alert in sorted(alerts):
        if alert not in fires:
            problem(f"alert {alert}: no unit test expects it to fire")
        if alert not in silent:
            problem(f"alert {alert}: no unit test expects it silent")

    if args.emit_rules:
        groups = {"groups": [{"name": "dashboard-queries", "rules": dashboard_rules}]}
        Path(args.emit_rules).write_text(yaml.safe_dump(groups, sort_keys=False, width=1000), encoding="utf-8")

    unused = sorted(exported - set(used))
    print(
        f"{len(dashboards)} dashboard(s), {panel_count} panels, {len(exprs)} rules ({len(alerts)} alert names); "
        f"{len(set(used) & exported)} of {len(exported)} metrics in metrics.txt used"
        + (f"; unused: {' '.join(unused)}" if unused else "")
    )
    for p in problems:
        print(f"check-metric-names: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
