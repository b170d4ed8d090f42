"""Reads a Delta table with two engines we did not write: delta-rs's Python
binding (`deltalake`) and DuckDB's own Delta reader (the `delta` extension,
delta-kernel-rs). Prints one JSON object:

  {"deltalake": {id: count}, "duckdb": {id: count}, "version": v,
   "files": active file count, "txn": {app_id: version}, "rows": [...],
   "received_at_type": Arrow type, "stats": every file has min/max stats}

Usage: read_delta.py URI APP_ID[,APP_ID...] [COLUMN,COLUMN...]
S3 settings come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
"""
import json
import os
import sys
from collections import Counter

import duckdb
import pyarrow as pa
import duckdb_ext
from deltalake import DeltaTable

uri, app_ids = sys.argv[1], sys.argv[2].split(",")
columns = sys.argv[3].split(",") if len(sys.argv) > 3 and sys.argv[3] else []
endpoint = os.environ.get("AWS_ENDPOINT_URL")
options = {}
if uri.startswith("s3://"):
    options = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
    }

dt = DeltaTable(uri, storage_options=options)
table = dt.to_pyarrow_table()
out = {
    "version": dt.version(),
    "files": len(dt.file_uris()),
    "deltalake": Counter(table.column("_event_id").to_pylist()),
    "txn": {a: dt.transaction_version(a) for a in app_ids},
    "received_at_type": str(table.schema.field("_received_at").type),
    # Every file carries min/max statistics (engines skip files with them).
    "stats": all(
        v is not None
        for column in ("num_records", "min._received_at", "max._received_at")
        for v in pa.table(dt.get_add_actions(flatten=True)).column(column).to_pylist()
    ),
    "rows": [
        {k: (v if v is None or isinstance(v, (int, float, str, bool)) else str(v)) for k, v in row.items()}
        for row in table.select(columns).to_pylist()
    ]
    if columns
    else [],
}

con = duckdb.connect(
    config={
        "extension_directory": list(duckdb_ext.__path__)[0] + "/extensions",
        "autoinstall_known_extensions": False,
    }
)
con.execute("LOAD delta")
if uri.startswith("s3://"):
    con.execute("LOAD httpfs")
    con.execute("LOAD aws")
    host = endpoint.split("://", 1)[1]
    con.execute(
        f"CREATE SECRET (TYPE s3, KEY_ID '{options['AWS_ACCESS_KEY_ID']}', "
        f"SECRET '{options['AWS_SECRET_ACCESS_KEY']}', REGION 'us-east-1', "
        f"ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false)"
    )
rows = con.execute(
    "SELECT _event_id, count(*) FROM delta_scan(?) GROUP BY 1", [uri]
).fetchall()
out["duckdb"] = dict(rows)
print(json.dumps(out))
sys.stdout.flush()
# DuckDB's and delta-rs's native threads can abort the interpreter's normal exit
# after the output is printed (see tests/it/support/readers.rs).
os._exit(0)
