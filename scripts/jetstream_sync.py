"""What an fsync per message costs JetStream: pipelined publishes/s to a
3-replica stream on a 3-server cluster on loopback, with the servers' default
sync (every 2 minutes) and with `sync_interval: always`. The figure behind the
README's "Durability, stated plainly".

Usage: python3 scripts/jetstream_sync.py [NATS_SERVER] [MESSAGES]
Needs nats-py (pip install nats-py) and nats-server 2.11+.
"""
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def quiet(_error):
    pass


async def run(server, messages, sync):
    import nats

    store = tempfile.mkdtemp()
    ports = [(free_port(), free_port()) for _ in range(3)]
    routes = ", ".join(f"nats://127.0.0.1:{c}" for _, c in ports)
    procs = []
    for i, (client, cluster) in enumerate(ports):
        conf = os.path.join(store, f"n{i}.conf")
        extra = "sync_interval: always" if sync else ""
        with open(conf, "w") as f:
            f.write(f"server_name: n{i}\nlisten: 127.0.0.1:{client}\n"
                    f"jetstream {{ store_dir: \"{store}/n{i}\"\n{extra}\n}}\n"
                    f"cluster {{ name: c, listen: 127.0.0.1:{cluster}, routes: [{routes}] }}\n")
        procs.append(subprocess.Popen([server, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        for (client, _), proc in zip(ports, procs):
            while socket.socket().connect_ex(("127.0.0.1", client)) != 0:
                if proc.poll() is not None:
                    raise SystemExit(f"nats-server exited; its configuration: {open(os.path.join(store, 'n0.conf')).read()}")
                await asyncio.sleep(0.1)
        nc = await nats.connect(f"nats://127.0.0.1:{ports[0][0]}", error_cb=quiet)
        js = nc.jetstream()
        for _ in range(100):
            try:
                await js.add_stream(name="S", subjects=["s"], num_replicas=3)
                break
            except Exception:
                await asyncio.sleep(0.5)
        body = b"x" * 1400
        window = 256
        start = time.perf_counter()
        for first in range(0, messages, window):
            await asyncio.gather(*(js.publish("s", body) for _ in range(min(window, messages - first))))
        rate = messages / (time.perf_counter() - start)
        await nc.close()
        return rate
    finally:
        for p in procs:
            p.kill()


async def main():
    server = sys.argv[1] if len(sys.argv) > 1 else "nats-server"
    messages = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    default = await run(server, messages, False)
    always = await run(server, messages, True)
    print(f"{messages} pipelined 1.4 KB publishes, R3, 3 servers on loopback:")
    print(f"  default sync (2 min): {default:8.0f}/s")
    print(f"  sync_interval always: {always:8.0f}/s  ({default / always:.1f}x slower)")


asyncio.run(main())
