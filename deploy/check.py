#!/usr/bin/env python3
"""Checks deploy/: every PromQL expression of the Grafana dashboard parses (promtool, as a
recording rule), and every keel_* metric the dashboard and the alert rules use is one keel
exports (a name in crates/keel/src/metrics.rs). CI runs it after the promtool rule checks."""
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

dashboard = json.load(open(os.path.join(HERE, "grafana", "keel-dashboard.json")))
exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
rules = {"groups": [{"name": "dashboard", "rules": [
    {"record": f"keel:dashboard:{i}", "expr": e.replace("$pipeline", ".*")} for i, e in enumerate(exprs)]}]}
with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
    json.dump(rules, f)  # JSON is YAML
r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
os.unlink(f.name)
if r.returncode != 0:
    sys.exit(f"dashboard expressions: {r.stdout}{r.stderr}")

exported = set(re.findall(r'"(keel_[a-z_]+)"', open(os.path.join(ROOT, "crates", "keel", "src", "metrics.rs")).read()))
used = set()
for text in exprs + [open(os.path.join(HERE, "prometheus", "keel-alerts.yml")).read()]:
    for m in re.findall(r"\b(keel_[a-z_]+)", text):
        used.add(re.sub(r"_(bucket|sum|count)$", "", m))
unknown = sorted(m for m in used if m not in exported)
if unknown:
    sys.exit(f"metrics used in deploy/ that keel does not export: {unknown}")
print(f"deploy: {len(exprs)} dashboard expressions parse; {len(used)} metrics used, all exported")
