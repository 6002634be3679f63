"""Reads a built dataset with pandas, polars and DuckDB, without hints, and checks they agree.

Usage: python3 read_all.py OUT_DIR NAME ROWS. Exits non-zero with a message on any disagreement.
"""
import json
import sys

import duckdb
import pandas as pd
import polars as pl

out, name, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = f"{out}/{name}"
columns = ["ticket_id", "subject", "body", "language", "type", "queue", "priority", "tags",
           "first_response", "business_type", "customer_name", "agent_name", "created_at",
           "order_id"]

frames = {
    "pandas parquet": pd.read_parquet(f"{base}.parquet"),
    "pandas csv": pd.read_csv(f"{base}.csv", dtype={"ticket_id": str}),
    "pandas jsonl": pd.read_json(f"{base}.jsonl", lines=True, dtype={"ticket_id": str}),
    "polars parquet": pl.read_parquet(f"{base}.parquet").to_pandas(),
    "polars csv": pl.read_csv(f"{base}.csv", schema_overrides={"ticket_id": pl.Utf8}).to_pandas(),
    "polars jsonl": pl.read_ndjson(f"{base}.jsonl").to_pandas(),
    "duckdb parquet": duckdb.sql(f"select * from '{base}.parquet'").df(),
    "duckdb csv": duckdb.sql(f"select * from read_csv('{base}.csv', types={{'ticket_id': 'VARCHAR'}})").df(),
    "duckdb jsonl": duckdb.sql(f"select * from read_json('{base}.jsonl')").df(),
}
reference = frames["pandas parquet"]
for label, frame in frames.items():
    if list(frame.columns) != columns:
        sys.exit(f"{label}: columns {list(frame.columns)}")
    if len(frame) != rows:
        sys.exit(f"{label}: {len(frame)} rows, expected {rows}")
    for column in ["ticket_id", "subject", "body", "first_response", "language", "queue"]:
        if [str(v) for v in frame[column]] != [str(v) for v in reference[column]]:
            sys.exit(f"{label}: column {column} differs from the Parquet file")
    tags = [list(t) if not isinstance(t, str) else t.split(",") for t in frame["tags"]]
    if tags != [list(t) for t in reference["tags"]]:
        sys.exit(f"{label}: tags differ from the Parquet file")
# created_at is a timestamp (with its time zone) in Parquet, RFC 3339 text elsewhere: the same
# moments either way.
moments = pd.to_datetime(reference["created_at"], utc=True)
if not str(reference["created_at"].dtype).startswith("datetime64[ms, Europe/Berlin]"):
    sys.exit(f"pandas parquet: created_at is {reference['created_at'].dtype}, not a timestamp")
kind = duckdb.sql(f"select typeof(created_at) from '{base}.parquet' limit 1").fetchall()[0][0]
if kind != "TIMESTAMP WITH TIME ZONE":
    sys.exit(f"duckdb parquet: created_at is {kind}")
for label, frame in frames.items():
    if list(pd.to_datetime(frame["created_at"], utc=True)) != list(moments):
        sys.exit(f"{label}: created_at differs from the Parquet file")
print(json.dumps({"ok": sorted(frames)}))
