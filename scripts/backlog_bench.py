"""Memory with a large backlog (issue 34's "RSS <= 200 MiB with a 10 M-event
backlog"), called by `scripts/bench backlog`; figures are printed, never
asserted.

One webhook pipeline with a Parquet sink (the shipped Shopify schema,
`_received_date` partitions, batches of 10,000), in two phases:

1. **fill**: the sink cannot write (its table directory is a plain file, so
   every flush fails and is retried) while N events are posted as NDJSON,
   1000 a request on 2 connections, each answered 202 only once fsynced: the
   backlog grows to N events in the log;
2. **drain**: the server is stopped (SIGTERM), the file removed and the
   server started again on the same data directory: it recovers the log and
   the sink writes the whole backlog; done when the sink's ledger has
   reached the log's end offset of the fill.

The process's memory is sampled every 0.2 s from /proc (RSS, split into
anonymous memory and mapped file pages, which the kernel can take back) and
its peak read from VmHWM just before each phase's end. Prints one JSON object.

Usage: backlog_bench.py BIN EVENTS_NDJSON SCHEMA WORKDIR N
"""
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

bin_path, events_path, schema_path, work, total = sys.argv[1:6]
total = int(total)
port = 18640
os.makedirs(f"{work}/pipelines", exist_ok=True)
os.makedirs(f"{work}/schemas", exist_ok=True)
shutil.copy(schema_path, f"{work}/schemas/customer.json")
with open(f"{work}/tributary.toml", "w") as f:
    f.write(f'listen = "127.0.0.1:{port}"\n')
with open(f"{work}/pipelines/bench.toml", "w") as f:
    f.write(
        'name = "bench"\nschema = "schemas/customer.json"\n'
        '[source]\ntype = "webhook"\npath = "/in"\nmax_body = "16MiB"\n'
        '[batch]\nmax_events = 10000\nmax_age = "5s"\n'
        # Room for the whole backlog: a full buffer would answer 503.
        '[buffer]\nmax_bytes = "64GiB"\n'
        '[[sink]]\ntype = "parquet"\npartition_by = ["_received_date"]\n'
    )
table = f"{work}/lake/bench"
env = dict(os.environ)
env["RUST_LOG"] = "error"


def memory(pid):
    """(rss, anon, file, hwm) in MiB from /proc/PID/status."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["RssAnon"], fields["RssFile"], fields["VmHWM"]


class Sampler(threading.Thread):
    """The largest RSS, anonymous and file figures seen, every 0.2 s."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.stop, self.peak = pid, threading.Event(), [0.0, 0.0, 0.0]
        self.start()

    def run(self):
        while not self.stop.wait(0.2):
            try:
                sample = memory(self.pid)[:3]
            except (OSError, KeyError):
                return
            self.peak = [max(p, s) for p, s in zip(self.peak, sample)]


def start():
    log = open(f"{work}/run.log", "a")
    server = subprocess.Popen([bin_path, "run"], cwd=work, stderr=log, env=env)
    for _ in range(6000):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").read()
            return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"tributary run exited; see {work}/run.log")
            time.sleep(0.05)
    raise SystemExit("tributary never answered /healthz")


def committed():
    try:
        with open(f"{work}/data/bench/sinks/parquet.json") as f:
            return json.load(f)["committed"]
    except (OSError, ValueError, KeyError):
        return 0


def end_offset():
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/pipelines") as r:
        return json.load(r)["pipelines"][0]["log"]["end_offset"]


def stop(server):
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=600)


lines = open(events_path, "rb").read().splitlines()
chunk = 1000
bodies = [b"\n".join(lines[i : i + chunk]) for i in range(0, len(lines) - chunk + 1, chunk)]
requests = total // chunk

# 1. Fill: the table directory is a plain file, so the sink cannot write.
os.makedirs(f"{work}/lake", exist_ok=True)
open(table, "w").close()
server = start()
sampler = Sampler(server.pid)
failures = []


def sender(k):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(k, requests, 2):
        conn.request("POST", "/in", bodies[i % len(bodies)], {"Content-Type": "application/x-ndjson"})
        r = conn.getresponse()
        r.read()
        if r.status != 202:
            failures.append(f"POST answered {r.status}")
            return


began = time.perf_counter()
threads = [threading.Thread(target=sender, args=(k,)) for k in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
fill_seconds = time.perf_counter() - began
if failures:
    stop(server)
    raise SystemExit(failures[0])
rss, anon, file, hwm = memory(server.pid)
sampler.stop.set()
end = end_offset()
if committed() >= end:
    raise SystemExit("the sink wrote during the fill: nothing is backlogged")
fill = {"seconds": round(fill_seconds, 1), "rss_mib": round(rss), "anon_mib": round(anon),
        "file_mib": round(file), "peak_rss_mib": round(hwm),
        "peak_anon_mib": round(sampler.peak[1])}
stop(server)
log_bytes = sum(
    os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(f"{work}/data") for f in fs
)

# 2. Drain: the same data directory, the sink able to write.
os.remove(table)
began = time.perf_counter()
server = start()
sampler = Sampler(server.pid)
while committed() < end:
    if server.poll() is not None:
        raise SystemExit(f"tributary run exited while draining; see {work}/run.log")
    time.sleep(0.1)
drain_seconds = time.perf_counter() - began
rss, anon, file, hwm = memory(server.pid)
sampler.stop.set()
drain = {"seconds": round(drain_seconds, 1),
         "events_per_sec": round(requests * chunk / drain_seconds),
         "rss_mib": round(rss), "peak_rss_mib": round(hwm),
         "peak_anon_mib": round(sampler.peak[1]), "peak_file_mib": round(sampler.peak[2])}
stop(server)
print(json.dumps({"events": requests * chunk, "log_gib": round(log_bytes / 2**30, 2),
                  "fill": fill, "drain": drain}))
