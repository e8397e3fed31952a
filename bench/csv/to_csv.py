#!/usr/bin/env python3
"""The reference job's JSON-lines input as CSV, record for record (same ids, customers,
amounts, notes, same bad records): usage to_csv.py IN_DIR OUT_DIR.

Header `id,ts,customer,amount,note`. A good line becomes one row. A bad line keeps its
kind: a malformed JSON line becomes a row with too few fields (column_count), a line with
a missing field gets an empty field there (missing_field, since `infer_types` reads it as
null), a negative amount stays negative. Notes that hold a delimiter or quote are quoted.
"""
import csv
import json
import os
import sys

src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
cols = ["id", "ts", "customer", "amount", "note"]
for name in sorted(os.listdir(src)):
    if not name.endswith(".jsonl") or name.startswith(("_", ".")):
        continue
    with open(os.path.join(src, name)) as f, open(os.path.join(dst, name[:-6] + ".csv"), "w", newline="") as o:
        w = csv.writer(o, lineterminator="\n")
        w.writerow(cols)
        for line in f:
            try:
                v = json.loads(line)
            except ValueError:
                w.writerow([line.split(",")[0].split(":")[-1].strip(), "malformed"])
                continue
            w.writerow(["" if v.get(c) is None else v[c] for c in cols])
