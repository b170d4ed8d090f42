"""The HTTPS sink's benchmark: signed POSTs/s from `tributary run` to a
loopback receiver (examples/bare_server, which answers 202 to anything).

Posts EVENTS Shopify-style events (NDJSON, 1000 per request) to a pipeline
whose only sink is the HTTPS sink, then waits until the sink's committed
offset covers them all. Prints JSON: {"events", "seconds", "posts_per_sec"}.

Usage: https_bench.py TRIBUTARY_BIN NDJSON SCHEMA WORKDIR RECEIVER_URL [CONCURRENCY]
"""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

binary, ndjson, schema, work, receiver = sys.argv[1:6]
concurrency = sys.argv[6] if len(sys.argv) > 6 else "32"
port = 18640
shutil.rmtree(work, ignore_errors=True)
os.makedirs(f"{work}/pipelines")
os.makedirs(f"{work}/schemas")
shutil.copy(schema, f"{work}/schemas/customer.json")
with open(f"{work}/tributary.toml", "w") as f:
    f.write(f'listen = "127.0.0.1:{port}"\n')
with open(f"{work}/pipelines/forward.toml", "w") as f:
    f.write(f"""name = "forward"
schema = "schemas/customer.json"

[source]
type = "webhook"
path = "/in"

[buffer]
max_bytes = "4GiB"

[[sink]]
type = "https"
url = "{receiver}"
allow_http = true
concurrency = {concurrency}
signing = {{ secret_env = "SIGNING_SECRET" }}
""")
env = dict(os.environ, SIGNING_SECRET="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", RUST_LOG="warn")
server = subprocess.Popen([binary, "run"], cwd=work, env=env)
try:
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz")
            break
        except OSError:
            time.sleep(0.05)
    lines = open(ndjson, "rb").read().splitlines()
    start = time.perf_counter()
    for i in range(0, len(lines), 1000):
        body = b"\n".join(lines[i : i + 1000])
        request = urllib.request.Request(f"http://127.0.0.1:{port}/in", data=body, headers={"Content-Type": "application/x-ndjson"})
        urllib.request.urlopen(request).read()
    posted = time.perf_counter() - start
    ledger = f"{work}/data/forward/sinks/https.json"
    while True:
        try:
            if json.load(open(ledger))["committed"] >= len(lines):
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    print(json.dumps({"events": len(lines), "seconds": round(seconds, 2), "ingest_seconds": round(posted, 2), "posts_per_sec": int(len(lines) / seconds)}))
finally:
    server.terminate()
    server.wait()
