"""Durable ingest and Delta throughput on a JetStream log with 1, 2 and 3
tributary nodes, beside the local file log on one node (issue: scale-out).

A 3-server nats-server cluster on loopback (streams with 3 replicas); each
node runs the same pipeline (6 partitions, one Delta table on local disk).
wrk posts one ~1.2 KB Shopify customer per request at every node at once for
SECONDS; requests/s is wrk's sum. Events/s into Delta is the acknowledged
count over the time from the first request until the table (read by
delta-rs) holds them all. Everything runs on this machine's cores, so the
nodes, the servers and wrk compete for them: the figures say what one
machine does, not what N machines would.

Usage: cluster_bench.py TRIBUTARY_BINARY SCHEMA BODY_JSON [SECONDS] [CONNECTIONS]
Prints one line per configuration, with its figures as JSON.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from deltalake import DeltaTable

binary, schema, body = sys.argv[1], sys.argv[2], sys.argv[3]
seconds = int(sys.argv[4]) if len(sys.argv) > 4 else 10
connections = int(sys.argv[5]) if len(sys.argv) > 5 else 64
nats_binary = os.environ.get("TRIBUTARY_NATS_SERVER", "nats-server")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, limit=60):
    started = time.time()
    while time.time() - started < limit:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} never answered")


def start_nats(work):
    ports = [(free_port(), free_port(), free_port()) for _ in range(3)]
    routes = ", ".join(f'"nats://127.0.0.1:{c}"' for _, c, _ in ports)
    procs = []
    for i, (client, cluster, monitor) in enumerate(ports):
        conf = os.path.join(work, f"n{i}.conf")
        with open(conf, "w") as f:
            f.write(
                f"server_name: n{i}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n"
                f'jetstream {{ store_dir: "{work}/n{i}" }}\n'
                f"cluster {{ name: bench, listen: 127.0.0.1:{cluster}, routes: [{routes}] }}\n"
            )
        procs.append(subprocess.Popen([nats_binary, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for _, _, monitor in ports:
        wait_http(f"http://127.0.0.1:{monitor}/healthz")
    return procs, [f"nats://127.0.0.1:{c}" for c, _, _ in ports]


def node(work, i, lake, servers):
    project = os.path.join(work, f"node{i}")
    os.makedirs(os.path.join(project, "pipelines"))
    os.makedirs(os.path.join(project, "schemas"))
    shutil.copy(schema, os.path.join(project, "schemas", "customer.json"))
    port = free_port()
    log = ""
    if servers:
        urls = ", ".join(f'"{u}"' for u in servers)
        log = f'\n[log]\ntype = "jetstream"\nservers = [{urls}]\nreplicas = 3\n'
    with open(os.path.join(project, "tributary.toml"), "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\nlake = "{lake}"\n{log}')
    with open(os.path.join(project, "pipelines", "customers.toml"), "w") as f:
        f.write(
            'name = "customers"\nschema = "schemas/customer.json"\nrecord_path = "/customers"\n\n'
            '[source]\ntype = "webhook"\npath = "/hook"\n\n'
            "[log]\npartitions = 6\n\n"
            '[batch]\nmax_events = 10000\nmax_age = "1s"\n\n'
            '[buffer]\nmax_bytes = "4GiB"\n\n'
            '[[sink]]\ntype = "delta"\nname = "delta"\n'
        )
    env = dict(os.environ, RUST_LOG="warn")
    proc = subprocess.Popen([binary, "run"], cwd=project, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(project, "run.log"), "w"))
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc, port


def wrk_all(ports, lua):
    per = max(1, connections // len(ports))
    runs = [
        subprocess.Popen(["wrk", "-t1", f"-c{per}", f"-d{seconds}s", "--latency", "-s", lua,
                          f"http://127.0.0.1:{p}/hook"], stdout=subprocess.PIPE, text=True)
        for p in ports
    ]
    total, p99s, errors = 0.0, [], 0
    for r in runs:
        out = r.communicate()[0]
        total += float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
        p99s.append(float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)])
        n = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        errors += int(n.group(1)) if n else 0
        done = re.search(r"(\d+) requests in", out)
        r.requests = int(done.group(1)) if done else 0
    return total, max(p99s), errors, sum(r.requests for r in runs)


def rows(table):
    try:
        return DeltaTable(table).to_pyarrow_dataset().count_rows()
    except Exception:
        return 0


def run(nodes, clustered):
    work = tempfile.mkdtemp(prefix="cluster-bench-")
    lake = os.path.join(work, "lake")
    procs, servers = ([], None)
    if clustered:
        procs, servers = start_nats(work)
    lua = os.path.join(work, "post.lua")
    with open(lua, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f"local f = io.open({json.dumps(body)}, 'rb')\nwrk.body = f:read('*a')\nf:close()\n")
    started_nodes = [node(work, i, lake, servers) for i in range(nodes)]
    time.sleep(2 if clustered else 0.2)  # leases shared out
    begun = time.time()
    rps, p99, errors, requests = wrk_all([p for _, p in started_nodes], lua)
    acked = requests - errors
    table = os.path.join(lake, "customers")
    while rows(table) < acked and time.time() - begun < seconds + 300:
        time.sleep(0.5)
    held = rows(table)
    elapsed = time.time() - begun
    for proc, _ in started_nodes:
        proc.terminate()
        proc.wait()
    for p in procs:
        p.terminate()
        p.wait()
    shutil.rmtree(work, ignore_errors=True)
    return {
        "log": "jetstream" if clustered else "file",
        "nodes": nodes,
        "requests_per_sec": round(rps),
        "p99_ms": round(p99, 2),
        "non_2xx": errors,
        "acked": acked,
        "in_table": held,
        "delta_events_per_sec": round(held / elapsed),
    }


def show(r):
    print(f"{r['log']:9} {r['nodes']} node(s): {r['requests_per_sec']:7d} req/s (p99 {r['p99_ms']:7.2f} ms, "
          f"{r['non_2xx']} non-2xx), {r['delta_events_per_sec']:6d} events/s into Delta "
          f"({r['in_table']} of {r['acked']} acknowledged in the table)  {json.dumps(r)}", flush=True)


show(run(1, False))
for n in (1, 2, 3):
    show(run(n, True))
