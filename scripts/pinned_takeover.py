"""Measures how long a JetStream pinned-client consumer (nats-server 2.11+,
ADR-42) takes to move to a second client after the pinned one is killed,
beside tributary's own choice, a KV lease (issue 16 asked to measure both).

One nats-server, one stream, one pull consumer with priority_policy
"pinned_client" and a pinned TTL equal to tributary's minimum lease (3 s).
Two worker processes pull in the same priority group; messages are published
every 10 ms; the pinned worker is killed with SIGKILL and the script reports
the gap until the other worker receives its first message. Each worker acks
what it gets and logs (time, pin id, sequence) lines.

Usage: python3 scripts/pinned_takeover.py [NATS_SERVER] [ROUNDS]
Needs nats-py (pip install nats-py) and nats-server 2.11+.
"""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

TTL_S = 3.0


async def quiet(_error):
    """nats-py logs each refused connect while the server starts."""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def worker(url, name, out_path):
    import nats

    nc = await nats.connect(url, error_cb=quiet)
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    pin = None
    with open(out_path, "a", buffering=1) as out:
        while True:
            request = {"batch": 10, "expires": 500_000_000, "group": "g"}
            if pin:
                request["id"] = pin
            await nc.publish("$JS.API.CONSUMER.MSG.NEXT.S.C", json.dumps(request).encode(), reply=inbox)
            deadline = time.monotonic() + 0.6
            while time.monotonic() < deadline:
                try:
                    msg = await sub.next_msg(timeout=max(0.01, deadline - time.monotonic()))
                except nats.errors.TimeoutError:
                    break
                status = (msg.headers or {}).get("Status")
                if status:
                    if status == "423":  # pinned to another client
                        pin = None
                    if status in ("404", "408", "409", "423"):
                        break
                    continue
                pin = (msg.headers or {}).get("Nats-Pin-Id", pin)
                await msg.respond(b"+ACK")
                out.write(json.dumps({"t": time.time(), "worker": name, "pin": pin}) + "\n")


async def main(server, rounds):
    results = []
    for _ in range(rounds):
        import nats

        port = free_port()
        store = tempfile.mkdtemp()
        srv = subprocess.Popen([server, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"nats://127.0.0.1:{port}"
        for _ in range(100):
            try:
                nc = await nats.connect(url, error_cb=quiet, allow_reconnect=False)
                break
            except Exception:
                await asyncio.sleep(0.1)
        js = nc.jetstream()
        await js.add_stream(name="S", subjects=["s"])
        config = {"durable_name": "C", "ack_policy": "explicit", "ack_wait": 30_000_000_000,
                  "priority_policy": "pinned_client", "priority_groups": ["g"],
                  "priority_timeout": int(TTL_S * 1e9)}
        answer = await nc.request("$JS.API.CONSUMER.CREATE.S.C", json.dumps({"stream_name": "S", "config": config}).encode())
        assert b"error" not in answer.data, answer.data
        out = os.path.join(store, "got.jsonl")
        workers = {name: subprocess.Popen([sys.executable, __file__, "--worker", url, name, out])
                   for name in ("a", "b")}

        async def publish():
            while True:
                await js.publish("s", b"x")
                await asyncio.sleep(0.01)

        pub = asyncio.create_task(publish())
        await asyncio.sleep(3)
        got = [json.loads(line) for line in open(out)]
        pinned = got[-1]["worker"]
        killed_at = time.time()
        workers[pinned].send_signal(signal.SIGKILL)
        other = "b" if pinned == "a" else "a"
        took = None
        for _ in range(400):
            await asyncio.sleep(0.05)
            after = [json.loads(line) for line in open(out)]
            firsts = [g["t"] for g in after if g["worker"] == other and g["t"] > killed_at]
            if firsts:
                took = min(firsts) - killed_at
                break
        pub.cancel()
        for w in workers.values():
            w.kill()
        await nc.close()
        srv.kill()
        results.append(took)
        print(f"pinned TTL {TTL_S:.0f} s: the other client got its first message {took:.2f} s after the kill" if took else "no takeover within 20 s")
    done = sorted(r for r in results if r is not None)
    if done:
        print(f"takeover after kill -9, {len(done)} rounds: min {done[0]:.2f} s, median {done[len(done) // 2]:.2f} s, max {done[-1]:.2f} s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        asyncio.run(worker(*sys.argv[2:5]))
    else:
        server = sys.argv[1] if len(sys.argv) > 1 else "nats-server"
        rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
        asyncio.run(main(server, rounds))
