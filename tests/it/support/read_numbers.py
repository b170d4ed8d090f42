"""Reads a table of the numbers test with engines we did not write: DuckDB
(the Parquet files) and delta-rs (the Delta table). Prints one JSON object
{"parquet": rows, "delta": rows}: each row a dict of its columns, every float
written as {"f": repr(value)} and every integer as {"i": str(value)}, so no
value is rounded on its way to the test (a JSON number could be).

Usage: read_numbers.py PARQUET_DIR DELTA_URI
"""
import glob
import json
import os
import sys

import duckdb
from deltalake import DeltaTable


def plain(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return {"f": repr(value)}
    if isinstance(value, int):
        return {"i": str(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


parquet_dir, delta_uri = sys.argv[1], sys.argv[2]
# Before the first flush there is nothing to read: no rows yet.
parquet = []
if glob.glob(parquet_dir + "/**/*.parquet", recursive=True):
    connection = duckdb.connect()
    source = "read_parquet($files, union_by_name = true, hive_partitioning = true)"
    files = {"files": parquet_dir + "/**/*.parquet"}
    # Zoned timestamps as text: Python's datetimes with a zone need pytz.
    zoned = [
        name
        for name, kind, *_ in connection.execute(f"DESCRIBE SELECT * FROM {source}", files).fetchall()
        if "TIME ZONE" in kind
    ]
    replace = ", ".join(f'CAST("{name}" AS VARCHAR) AS "{name}"' for name in zoned)
    relation = connection.sql(
        f"SELECT * {'REPLACE (' + replace + ')' if zoned else ''} FROM {source}",
        params=files,
    )
    parquet = [dict(zip(relation.columns, row)) for row in relation.fetchall()]
delta = []
if os.path.isdir(os.path.join(delta_uri, "_delta_log")):
    delta = DeltaTable(delta_uri).to_pyarrow_table().to_pylist()
print(json.dumps({"parquet": [plain(r) for r in parquet], "delta": [plain(r) for r in delta]}))
sys.stdout.flush()
# DuckDB's and delta-rs's native threads can abort the interpreter's normal exit
# after the output is printed (see tests/it/support/readers.rs).
os._exit(0)
