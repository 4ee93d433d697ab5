#!/usr/bin/env python3
"""Generates deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/rules/memory.rules.yml.

The PrometheusRule (prometheus-operator, monitoring.coreos.com/v1) gets exactly the rule groups of the
Prometheus rules file: the file's `groups:` block is copied verbatim (comments included), indented
under `spec:`. Indenting every line by the same amount keeps the YAML meaning of the block (block
scalars included), so no YAML library is needed: this runs with any python3 on a fresh machine.
scripts/check-monitoring.sh parses both files and checks that spec.groups equals the file's groups.

Usage: deploy/prometheus/gen-prometheusrule.py [--output PATH | --output -]
       (default output: deploy/k8s/base/prometheusrule.yaml)
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "deploy/prometheus/rules/memory.rules.yml"
TARGET = "deploy/k8s/base/prometheusrule.yaml"
GENERATOR = "deploy/prometheus/gen-prometheusrule.py"

HEADER = f"""\
# generated from {SOURCE} by {GENERATOR}; do not edit.
# Edit the rules file, then run {GENERATOR} (scripts/check-monitoring.sh checks that this is current).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: memory
  labels:
    app.kubernetes.io/name: memory
    app.kubernetes.io/part-of: memory-layer
spec:
"""


def groups_block(text: str) -> list[str]:
    """The lines of the top-level `groups:` mapping entry, from `groups:` to the end of the file."""
    lines = text.splitlines()
    start = None
    for i, line in enumerate(lines):
        if "\t" in line:
            sys.exit(f"{SOURCE}:{i + 1}: tab character; use spaces")
        bare = line.strip()
        if start is None:
            if not bare or bare.startswith("#") or bare == "---":
                continue
            if line.rstrip() != "groups:":
                sys.exit(f"{SOURCE}:{i + 1}: expected the first key to be `groups:` (block style), got {line!r}")
            start = i
        elif line and not line[0].isspace() and not line.startswith("#"):
            # Another top-level key or document: a rules file has nothing but `groups`.
            sys.exit(f"{SOURCE}:{i + 1}: unexpected top-level content {line!r}; only `groups:` is allowed")
    if start is None:
        sys.exit(f"{SOURCE}: no `groups:` key")
    block = lines[start:]
    while block and not block[-1].strip():
        block.pop()
    return block


def render(text: str) -> str:
    out = [HEADER.rstrip("\n")]
    for line in groups_block(text):
        out.append("  " + line if line.strip() else "")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", "-o", default=str(ROOT / TARGET), help="file to write, or - for stdout")
    args = parser.parse_args()
    rendered = render((ROOT / SOURCE).read_text(encoding="utf-8"))
    if args.output == "-":
        sys.stdout.write(rendered)
        return
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(rendered, encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
