"""Recomputes the report's figures with pandas from the same file and compares them.

Usage: report_figures.py DATASET_JSONL REPORT_JSON
Checks rows and languages, the class balance per table column (and per language), word-length
summaries per text column and language (count, min, median, p90, max, mean), the top tags and
their number, and the exact duplicates of the compared columns (normalised as ticketbuild does:
lower case, digit runs as 0, anything but letters and digits a separator). Exits non-zero on the
first mismatch; prints what it compared.
"""
import json
import math
import re
import sys

import pandas as pd

rows_path, report_path = sys.argv[1], sys.argv[2]
df = pd.read_json(rows_path, lines=True, dtype=False)
report = json.load(open(report_path))
compared = []


def check(ok, what):
    if not ok:
        sys.exit(f"report mismatch: {what}")
    compared.append(what.split(":")[0])


overview = report["overview"]
check(overview["rows"] == len(df), f"rows: {overview['rows']} vs {len(df)}")
check(overview["languages"] == df["language"].value_counts().to_dict(), "languages: counts")

for table in report["balance"]:
    column = table["column"]
    counts = df[column].value_counts().to_dict()
    for value in table["values"]:
        expected = counts.get(value["value"], 0)
        check(value["count"] == expected, f"balance {column}={value['value']}: {value['count']} vs {expected}")
        per_language = df[df[column] == value["value"]]["language"].value_counts().to_dict()
        check(value["by_language"] == per_language, f"balance {column}={value['value']} per language")


def nearest_rank(sorted_values, fraction):
    rank = max(1, math.ceil(len(sorted_values) * fraction))
    return sorted_values[rank - 1]


for lengths in report["lengths"]:
    column = lengths["column"]
    for summary in lengths["by_language"]:
        words = sorted(
            len(text.split())
            for text in df[df["language"] == summary["language"]][column]
            if isinstance(text, str)
        )
        what = f"lengths {column} {summary['language']}"
        check(summary["count"] == len(words), f"{what}: count")
        check(summary["min"] == words[0] and summary["max"] == words[-1], f"{what}: min/max")
        check(summary["median"] == nearest_rank(words, 0.5), f"{what}: median")
        check(summary["p90"] == nearest_rank(words, 0.9), f"{what}: p90")
        check(abs(summary["mean"] - sum(words) / len(words)) < 1e-9, f"{what}: mean")

for tags in report["tags"]:
    column = tags["column"]
    items = df[column].explode().dropna()
    counts = items.value_counts()
    check(tags["items"] == len(items), f"tags {column}: items")
    check(tags["distinct"] == len(counts), f"tags {column}: distinct")
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: len(tags["top"])]
    check([(t["tag"], t["count"]) for t in tags["top"]] == [(k, int(v)) for k, v in top], f"tags {column}: top")


def normalised(text):
    if not isinstance(text, str):
        return None
    words = [re.sub(r"\d+", "0", w) for w in re.findall(r"[^\W_]+", text.lower())]
    return tuple(words) or None


duplicates = report["duplicates"]
seen = [set() for _ in duplicates["columns"]]
exact = 0
for _, row in df.iterrows():
    values = [normalised(row[c]) for c in duplicates["columns"]]
    if any(v is not None and v in s for v, s in zip(values, seen)):
        exact += 1
        continue
    for v, s in zip(values, seen):
        if v is not None:
            s.add(v)
check(duplicates["exact"] == exact, f"duplicates exact: {duplicates['exact']} vs {exact}")
print(json.dumps({"compared": len(compared), "exact_duplicates": exact}))
