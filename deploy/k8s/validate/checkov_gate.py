#!/usr/bin/env python3
"""Applies deploy/k8s/checkov-waivers.yaml to checkov's JSON reports of the rendered overlays.

    checkov_gate.py WAIVERS OVERLAY=REPORT.json [OVERLAY=REPORT.json ...]

Prints every failed check with its waiver (or none) and exits 1 if a failed check has no waiver, a
waiver has no reason, or a waiver matches no finding in any report (a stale waiver). Runs in the
checkov virtualenv (PyYAML comes with checkov).
"""

import fnmatch
import json
import sys

import yaml


def load_reports(pairs):
    reports = {}
    for pair in pairs:
        overlay, _, path = pair.partition("=")
        if not path:
            sys.exit(f"expected OVERLAY=REPORT.json, got {pair!r}")
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        # One framework gives an object; several, a list. An empty scan gives a bare summary.
        runs = data if isinstance(data, list) else [data]
        failed, passed, resources, parse_errors = [], 0, 0, 0
        for run in runs:
            if "results" not in run:
                continue
            failed.extend(run["results"].get("failed_checks", []))
            summary = run.get("summary", {})
            passed += summary.get("passed", 0)
            resources += summary.get("resource_count", 0)
            parse_errors += summary.get("parsing_errors", 0)
        reports[overlay] = {"failed": failed, "passed": passed, "resources": resources,
                            "parse_errors": parse_errors}
    return reports


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    with open(argv[1], encoding="utf-8") as fh:
        waivers = (yaml.safe_load(fh) or {}).get("waivers") or []
    reports = load_reports(argv[2:])

    errors = 0
    for i, w in enumerate(waivers):
        if not str(w.get("reason") or "").strip() or not w.get("check"):
            print(f"  waiver #{i + 1} ({w.get('check')}): needs `check` and a `reason`")
            errors += 1
    used = [0] * len(waivers)

    for overlay, rep in reports.items():
        if rep["parse_errors"]:
            print(f"  {overlay}: checkov could not parse {rep['parse_errors']} file(s)")
            errors += 1
        if rep["resources"] == 0:
            print(f"  {overlay}: checkov scanned no resources")
            errors += 1
        unwaived = waived = 0
        for f in rep["failed"]:
            match = None
            for i, w in enumerate(waivers):
                if w.get("check") != f["check_id"]:
                    continue
                if overlay not in (w.get("overlays") or [overlay]):
                    continue
                if not any(fnmatch.fnmatchcase(f["resource"], p) for p in (w.get("resources") or ["*"])):
                    continue
                match = i
                break
            if match is None:
                unwaived += 1
                print(f"  {overlay}: FAILED {f['check_id']} {f['check_name']} -- {f['resource']}")
            else:
                waived += 1
                used[match] += 1
        print(f"  {overlay}: {rep['resources']} resources, {rep['passed']} checks passed, "
              f"{waived} findings waived, {unwaived} not waived")
        errors += unwaived

    for i, w in enumerate(waivers):
        if used[i] == 0:
            print(f"  stale waiver #{i + 1}: {w.get('check')} {w.get('overlays')} {w.get('resources')} "
                  "matches no finding; remove it")
            errors += 1
    by_check = {}
    for i, w in enumerate(waivers):
        by_check[w.get("check")] = by_check.get(w.get("check"), 0) + used[i]
    print("  waived by check: " + (", ".join(f"{c} x{n}" for c, n in sorted(by_check.items())) or "none"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
