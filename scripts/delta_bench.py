"""Delta sink benchmark driver (called by scripts/bench; figures are printed,
never asserted).

Against a running `tributary run` with one append-mode Delta sink
(max_events = 10000, max_age = 1s) on local disk or on an S3 server:

* throughput: N events posted as NDJSON (1000 per request, 2 connections);
  events/s = N / (first post -> the sink's ledger says all N are committed);
* freshness: under a steady 2000 events/s, a marker event every 200 ms with
  an id above every data id; a poller reads each new `_delta_log/N.json`
  (the commit files themselves, no reader cache) and takes the id maxValues
  from the add actions' statistics: a marker is visible once a commit holds
  it. Reports p50/p99 of accepted -> visible;
* commit latency: p50/p99 of the sink's `write_millis` (the Delta commit:
  Parquet encoding by delta-rs, upload, log write) over all flushes.

Usage: delta_bench.py BIN EVENTS_NDJSON SCHEMA WORKDIR [S3_ENDPOINT]
"""
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

bin_path, events_path, schema_path, work = sys.argv[1:5]
s3 = sys.argv[5] if len(sys.argv) > 5 else None
port = 18610 if s3 is None else 18611
os.makedirs(f"{work}/pipelines", exist_ok=True)
os.makedirs(f"{work}/schemas", exist_ok=True)
with open(schema_path) as f, open(f"{work}/schemas/customer.json", "w") as g:
    g.write(f.read())
sink = 'type = "delta"\n'
env = dict(os.environ)
env.pop("RUST_LOG", None)
if s3:
    sink += f'uri = "s3://bench/customers"\nstorage = {{ endpoint = "{s3}", allow_http = true, region = "us-east-1" }}\n'
    env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    urllib.request.urlopen(urllib.request.Request(f"{s3}/bench", method="PUT")).read()
with open(f"{work}/tributary.toml", "w") as f:
    f.write(f'listen = "127.0.0.1:{port}"\n')
with open(f"{work}/pipelines/bench.toml", "w") as f:
    f.write(
        'name = "bench"\nschema = "schemas/customer.json"\n'
        '[source]\ntype = "webhook"\npath = "/in"\n'
        '[batch]\nmax_events = 10000\nmax_age = "1s"\n'
        f"[[sink]]\n{sink}"
    )
log = open(f"{work}/run.log", "w")
server = subprocess.Popen([bin_path, "run"], cwd=work, stderr=log, env=env)


def post(conn, body):
    conn.request("POST", "/in", body, {"Content-Type": "application/x-ndjson"})
    r = conn.getresponse()
    r.read()
    if r.status != 202:
        raise SystemExit(f"POST answered {r.status}")


def committed():
    try:
        with open(f"{work}/data/bench/sinks/delta.json") as f:
            return json.load(f)["committed"]
    except (OSError, ValueError):
        return 0


try:
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").read()
            break
        except OSError:
            time.sleep(0.05)
    lines = open(events_path, "rb").read().splitlines()
    chunks = [b"\n".join(lines[i : i + 1000]) for i in range(0, len(lines), 1000)]

    # Throughput.
    def sender(part):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        for body in part:
            post(conn, body)

    start = time.perf_counter()
    threads = [threading.Thread(target=sender, args=(chunks[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    posted = time.perf_counter() - start
    while committed() < len(lines):
        time.sleep(0.01)
    drained = time.perf_counter() - start
    base = len(lines)

    # Freshness.
    if s3:
        import boto3

        client = boto3.client(
            "s3", endpoint_url=s3, aws_access_key_id="bench",
            aws_secret_access_key="bench", region_name="us-east-1",
        )

        def fetch(v):
            try:
                key = f"customers/_delta_log/{v:020}.json"
                return client.get_object(Bucket="bench", Key=key)["Body"].read()
            except client.exceptions.NoSuchKey:
                return None
    else:
        def fetch(v):
            try:
                with open(f"{work}/lake/bench/_delta_log/{v:020}.json", "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return None

    version = 0
    while fetch(version + 1) is not None:
        version += 1
    marker_base = 10**12
    accepted = {}
    visible = {}
    stop = threading.Event()

    def background():
        conn = http.client.HTTPConnection("127.0.0.1", port)
        i = 0
        while not stop.is_set():
            body = b"\n".join(lines[(i + k) % len(lines)] for k in range(100))
            post(conn, body)
            i += 100
            time.sleep(0.05)

    def poller():
        nonlocal_version = [version]
        seen = -1
        while not stop.is_set() or len(visible) < len(accepted):
            text = fetch(nonlocal_version[0] + 1)
            if text is None:
                time.sleep(0.02)
                continue
            now = time.perf_counter()
            nonlocal_version[0] += 1
            for line in text.splitlines():
                action = json.loads(line)
                stats = action.get("add", {}).get("stats")
                if stats:
                    top = json.loads(stats).get("maxValues", {}).get("id")
                    if top is not None and top >= marker_base:
                        seen = max(seen, top - marker_base)
            for k in list(accepted):
                if k <= seen and k not in visible:
                    visible[k] = now

    bg = threading.Thread(target=background)
    poll = threading.Thread(target=poller)
    bg.start()
    poll.start()
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for k in range(int(os.environ.get("BENCH_MARKERS", "75"))):
        record = json.dumps({"id": marker_base + k, "email": f"marker{k}@example.com"}).encode()
        post(conn, record)
        accepted[k] = time.perf_counter()
        time.sleep(0.2)
    stop.set()
    bg.join()
    poll.join(timeout=60)
    delays = sorted((visible[k] - accepted[k]) * 1000 for k in accepted if k in visible)
finally:
    server.terminate()
    server.wait()
    log.close()

commit_ms = sorted(
    int(m.group(1))
    for m in re.finditer(r"Committed batch\..*?write_millis=(\d+)", open(f"{work}/run.log").read())
)


def pct(values, p):
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


print(json.dumps({
    "events": base,
    "ingest_events_per_sec": round(base / posted),
    "delta_events_per_sec": round(base / drained),
    "commits": len(commit_ms),
    "commit_ms_p50": pct(commit_ms, 0.5),
    "commit_ms_p99": pct(commit_ms, 0.99),
    "markers": len(accepted),
    "markers_visible": len(delays),
    "freshness_ms_p50": round(statistics.median(delays)) if delays else None,
    "freshness_ms_p99": round(pct(delays, 0.99)) if delays else None,
}))
