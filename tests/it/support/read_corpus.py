"""Reads tables of real webhook payloads with engines we did not write and
compares every event, rebuilt from its row, with the JSON that was posted.

Readers: DuckDB `read_parquet(union_by_name)` over the Parquet sink's files,
DuckDB `delta_scan`, delta-rs (`deltalake`) and Polars (`read_delta`, and
`read_parquet` over the Parquet files). A row is rebuilt as the JSON object
of its record columns, then every `_extra` entry (JSON pointer → value) is
put back at its pointer. Nulls, `{}` and `[]` as object members count as
absent on both sides; every other value must be equal (1 == 1.0).

Usage: read_corpus.py INPUT.json, where INPUT holds
  {"tables": [{"name", "ids": [event id], "parquet": dir, "delta": dir}],
   "originals": {event id: record}}
Every row must be in the table whose "ids" name it.
Prints {"readers": {reader: {"rows", "missing", "duplicates", "mismatches",
"examples", "error"}}, "tables": {name: {"columns", "rows_with_extra", "extra_values"}}}.
"""
import glob
import json
import os
import sys
import traceback
from collections import Counter

import duckdb
import duckdb_ext
import polars as pl
from deltalake import DeltaTable

METADATA = {"_event_id", "_received_at", "_received_date", "_source"}

spec = json.load(open(sys.argv[1]))
originals = spec["originals"]


def normalize(value):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = normalize(v)
            if v is None or v == {} or v == []:
                continue
            out[k] = v
        return out
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def put(record, pointer, value):
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]
    at = record
    for i, token in enumerate(tokens):
        last = i + 1 == len(tokens)
        if isinstance(at, list):
            index = int(token)
            if last:
                at[index] = value
            else:
                if at[index] is None:
                    at[index] = {}
                at = at[index]
        else:
            if last:
                at[token] = value
            else:
                if at.get(token) is None:
                    at[token] = {}
                at = at[token]


def rebuild(row):
    extra = row.get("_extra")
    record = {k: v for k, v in row.items() if k not in METADATA and k != "_extra"}
    extras = json.loads(extra) if extra else {}
    for pointer, value in extras.items():
        put(record, pointer, value)
    return record, len(extras)


def has_leaf(value):
    if isinstance(value, dict):
        return any(has_leaf(v) for v in value.values())
    if isinstance(value, list):
        return any(has_leaf(v) for v in value)
    return value is not None


def first_difference(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}/{k}: {'missing in the table' if k not in b else 'only in the table'}"
            d = first_difference(a[k], b[k], f"{path}/{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items posted, {len(b)} in the table"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}/{i}")
            if d:
                return d
        return None
    if a != b:
        return f"{path}: posted {json.dumps(a)[:80]}, table {json.dumps(b, default=str)[:80]}"
    return None


def compare(tagged, ids_wanted, ids_by_table):
    rows = [row for _, row in tagged]
    counts = Counter(r["_event_id"] for r in rows)
    report = {
        "rows": len(rows),
        "duplicates": sorted(i for i, n in counts.items() if n > 1)[:5],
        "missing": sorted(ids_wanted - set(counts))[:5],
        "missing_count": len(ids_wanted - set(counts)),
        "mismatches": 0,
        "examples": [],
        "error": None,
    }
    for table, row in tagged:
        event_id = row["_event_id"]
        if event_id not in ids_by_table[table]:
            report["mismatches"] += 1
            report["examples"].append(f"{event_id}: in table {table}, where it does not belong")
            continue
        if event_id not in originals:
            report["examples"].append(f"{event_id}: a row no accepted event has")
            report["mismatches"] += 1
            continue
        rebuilt, _ = rebuild(row)
        diff = first_difference(normalize(originals[event_id]), normalize(rebuilt))
        if diff:
            report["mismatches"] += 1
            if len(report["examples"]) < 8:
                report["examples"].append(f"{event_id}: {diff}")
    return report


con = duckdb.connect(
    config={
        "extension_directory": list(duckdb_ext.__path__)[0] + "/extensions",
        "autoinstall_known_extensions": False,
    }
)
con.execute("LOAD delta")


def parquet_files(directory):
    return sorted(glob.glob(f"{directory}/**/*.parquet", recursive=True))


def newest(files):
    return max(files, key=lambda f: f.rsplit("-", 1)[1])


readers = {
    "duckdb read_parquet": lambda t: con.execute(
        "SELECT * FROM read_parquet(?, union_by_name = true, hive_partitioning = true)",
        [f"{t['parquet']}/**/*.parquet"],
    ).fetch_arrow_table().to_pylist(),
    "duckdb delta_scan": lambda t: con.execute(
        "SELECT * FROM delta_scan(?)", [t["delta"]]
    ).fetch_arrow_table().to_pylist(),
    "deltalake": lambda t: DeltaTable(t["delta"]).to_pyarrow_table().to_pylist(),
    "polars read_delta": lambda t: pl.read_delta(t["delta"]).to_dicts(),
    # Schemas only grow and every file has the whole schema of its time, so
    # the newest file (highest offsets) has every column: Polars takes it as
    # the table's schema and fills what older files lack.
    "polars read_parquet": lambda t: pl.scan_parquet(
        parquet_files(t["parquet"]),
        schema=pl.read_parquet_schema(newest(parquet_files(t["parquet"]))),
        missing_columns="insert",
        cast_options=pl.ScanCastOptions(missing_struct_fields="insert"),
        hive_partitioning=False,
    ).collect().to_dicts(),
}

out = {"readers": {}, "tables": {}}
ids_by_table = {t["name"]: set(t["ids"]) for t in spec["tables"]}
for name, read in readers.items():
    rows, wanted, error = [], set(), None
    for table in spec["tables"]:
        try:
            rows.extend((table["name"], row) for row in read(table))
        except Exception as e:  # reported, and the test fails on it
            error = f"{table['name']}: {type(e).__name__}: {e}"[:600]
            traceback.print_exc()
        wanted |= ids_by_table[table["name"]]
    report = compare(rows, wanted, ids_by_table)
    report["error"] = error
    out["readers"][name] = report

for table in spec["tables"]:
    rows = DeltaTable(table["delta"]).to_pyarrow_table()
    extras = [json.loads(e) for e in rows.column("_extra").to_pylist() if e] if "_extra" in rows.column_names else []
    out["tables"][table["name"]] = {
        "columns": len(rows.column_names),
        "rows_with_extra": len(extras),
        "extra_values": sum(len(e) for e in extras),
        # Entries holding a leaf value (not only [], {} or nulls of a field
        # no column exists for yet): the values that met another type.
        "extra_leaves": sum(1 for e in extras for v in e.values() if has_leaf(v)),
    }
print(json.dumps(out))
sys.stdout.flush()
# DuckDB's and Polars' native threads can abort the interpreter's normal exit.
os._exit(0)
