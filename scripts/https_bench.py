"""The HTTPS sink's benchmark: signed POSTs/s from `tributary run` to a
loopback receiver (examples/bare_server, which answers 202 to anything).

Posts EVENTS Shopify-style events (NDJSON, 1000 per request) to a pipeline
whose only sink is the HTTPS sink while that sink points at a closed port
(it retries; nothing is delivered), stops the server, points the sink at the
receiver and starts the server again: `seconds` runs from that start until
the sink's committed offset covers every event. So the sink is timed alone
with the receiver, as wrk is, not beside the ingest of its own events (on 2
cores the Python poster, the webhook path and the receiver took the cores
it needed). Prints JSON: {"events", "seconds", "ingest_seconds",
"posts_per_sec"}.

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


def configure(url):
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
url = "{url}"
allow_http = true
concurrency = {concurrency}
signing = {{ secret_env = "SIGNING_SECRET" }}
""")


env = dict(os.environ, SIGNING_SECRET="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", RUST_LOG="warn")


def start():
    server = subprocess.Popen([binary, "run"], cwd=work, env=env)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz")
            return server
        except OSError:
            time.sleep(0.05)
    server.terminate()
    raise SystemExit("tributary never answered /healthz")


lines = open(ndjson, "rb").read().splitlines()
ledger = f"{work}/data/forward/sinks/https.json"


def thread_cpu(pid, name):
    """CPU seconds (user + system) of the process's threads called `name`."""
    ticks = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            stat = f.read()
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if comm == name:
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def committed():
    try:
        return json.load(open(ledger))["committed"]
    except (OSError, ValueError):
        return 0


# 1. The events into the log; the sink cannot deliver (port 1 is closed).
configure("http://127.0.0.1:1/hook")
server = start()
try:
    start_ingest = time.perf_counter()
    for i in range(0, len(lines), 1000):
        body = b"\n".join(lines[i : i + 1000])
        request = urllib.request.Request(f"http://127.0.0.1:{port}/in", data=body, headers={"Content-Type": "application/x-ndjson"})
        urllib.request.urlopen(request).read()
    posted = time.perf_counter() - start_ingest
finally:
    server.terminate()
    server.wait()
if committed() >= len(lines):
    raise SystemExit("the sink delivered to a closed port: nothing was timed")
# 2. The sink alone with the receiver.
configure(receiver)
start_drain = time.perf_counter()
server = start()
ready = time.perf_counter() - start_drain
try:
    first = None
    while (now := committed()) < len(lines):
        if first is None and now > 0:
            first = (time.perf_counter(), now)
        time.sleep(0.005)
    end = time.perf_counter()
    seconds = end - start_drain
    sink_cpu = thread_cpu(server.pid, "https-https")
    # No commit seen before the last (a drain within one commit interval):
    # the whole drain's rate stands for it.
    steady = int((len(lines) - first[1]) / (end - first[0])) if first else int(len(lines) / seconds)
    print(json.dumps({"events": len(lines), "seconds": round(seconds, 2), "ready_seconds": round(ready, 2), "ingest_seconds": round(posted, 2), "posts_per_sec": int(len(lines) / seconds), "steady_posts_per_sec": steady, "sink_thread_cpu_seconds": round(sink_cpu, 2), "sink_thread_us_per_post": round(sink_cpu * 1e6 / len(lines), 2)}))
finally:
    server.terminate()
    server.wait()
