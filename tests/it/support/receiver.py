"""A receiver for the HTTPS sink's POSTs that verifies every signature with
libraries we did not write: the Standard Webhooks reference library
(`standardwebhooks`, v1 HMAC signatures), `cryptography` (Ed25519 for
Standard Webhooks' v1a signatures, which the reference library does not
check; RSA PKCS#1 v1.5 SHA-256), Python's `hmac`. Appends one JSON line per
request to OUT once it is answered:

  {"id": webhook-id, "verified": bool, "status": answered, "body": text}

and, as soon as a request has arrived (before any slow_ms wait), its
webhook-id as one line to OUT + ".arrived".

Answers from CONTROL (a JSON file, re-read on every request):
  {"answers": [500, 429, ...]}   statuses for the next requests, in order
  {"retry_after": 1}             Retry-After on 429/503 answers
  {"reset": n}                   close the next n connections without answering
  {"slow_ms": 0}                 wait before answering
Consumed answers are counted in CONTROL + ".used"; writing new content
to CONTROL starts the lists afresh.

Usage: receiver.py PORT OUT CONTROL SCHEME KEY [URL]
  with RECEIVER_TLS=CERT_PEM:KEY_PEM in the environment: HTTPS with that certificate
  SCHEME standard-webhooks: KEY = space-separated keys, each a whsec_ secret
       (a v1 signature must verify, by the reference library) or a whpk_
       public key (a v1a signature must verify: Ed25519 over
       "{webhook-id}.{webhook-timestamp}.{body}", timestamp within 5 minutes,
       as the Standard Webhooks specification writes it); a request is
       verified when every key verifies one of its signatures
  SCHEME rsa-sha256: KEY = path of the public key PEM; URL = the sink's url
  SCHEME hmac-sha256: KEY = the secret (header X-Signature, prefix sha256=, hex)
       receiver.py --gen-rsa PRIVATE_PEM PUBLIC_PEM   writes a 2048-bit key pair
       receiver.py --gen-ed25519   prints a new Ed25519 key pair as Standard
           Webhooks serialises it: "whsk_<base64 32-byte seed>" and
           "whpk_<base64 32-byte public key>", one a line
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

if sys.argv[1] == "--gen-rsa":
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with open(sys.argv[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(sys.argv[3], "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    sys.exit(0)

if sys.argv[1] == "--gen-ed25519":
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    seed = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    print("whsk_" + base64.b64encode(seed).decode())
    print("whpk_" + base64.b64encode(public).decode())
    sys.exit(0)

port, out_path, control_path, scheme, key = sys.argv[1:6]
url = sys.argv[6] if len(sys.argv) > 6 else ""
lock = threading.Lock()
used = {"answers": 0, "reset": 0}

if scheme == "standard-webhooks":
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from standardwebhooks.webhooks import Webhook

    # The reference library's tolerance, which the v1a check keeps too.
    TOLERANCE_SECONDS = 5 * 60

    def ed25519_check(public_key):
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key[len("whpk_"):]))

        def check(headers, body):
            msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
            if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
                raise ValueError("webhook-timestamp outside the tolerance")
            signed = f"{msg_id}.{timestamp}.".encode() + body
            for entry in headers["webhook-signature"].split(" "):
                version, _, signature = entry.partition(",")
                if version != "v1a":
                    continue
                try:
                    public.verify(base64.b64decode(signature), signed)
                    return
                except InvalidSignature:
                    pass
            raise ValueError("no v1a signature verifies with " + public_key)

        return check

    def hmac_check(secret):
        webhook = Webhook(secret)
        return lambda headers, body: webhook.verify(body, headers)

    checks = [ed25519_check(k) if k.startswith("whpk_") else hmac_check(k) for k in key.split()]

    def verify(headers, body):
        for check in checks:
            check(headers, body)

elif scheme == "rsa-sha256":
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    with open(key, "rb") as f:
        public = serialization.load_pem_public_key(f.read())

    def verify(headers, body):
        signature = bytes.fromhex(headers["x-tributary-signature"])
        public.verify(signature, b"POST" + url.encode() + body, padding.PKCS1v15(), hashes.SHA256())

else:

    def verify(headers, body):
        expected = "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, headers["x-signature"]):
            raise ValueError("bad signature")


seen_control = {"text": None}


def control():
    """The control file; a new content starts its answer lists afresh."""
    try:
        with open(control_path) as f:
            text = f.read()
        value = json.loads(text)
    except (OSError, ValueError):
        return {}
    with lock:
        if text != seen_control["text"]:
            seen_control["text"] = text
            used["answers"] = used["reset"] = 0
    return value


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        c = control()
        with lock:
            reset = used["reset"] < c.get("reset", 0)
            if reset:
                used["reset"] += 1
            answers = c.get("answers", [])
            status = 200
            if not reset and used["answers"] < len(answers):
                status = answers[used["answers"]]
                used["answers"] += 1
            with open(control_path + ".used", "w") as f:
                json.dump(used, f)
        if reset:
            self.close_connection = True
            self.connection.close()
            return
        with lock:
            with open(out_path + ".arrived", "a") as f:
                f.write(f"{self.headers.get('webhook-id')}\n")
        if c.get("slow_ms"):
            time.sleep(c["slow_ms"] / 1000)
        try:
            verify({k.lower(): v for k, v in self.headers.items()}, body)
            verified = True
        except Exception:
            verified = False
        line = json.dumps({
            "id": self.headers.get("webhook-id"),
            "verified": verified,
            "status": status,
            "body": body.decode("utf-8", "replace"),
        })
        with lock:
            with open(out_path, "a") as f:
                f.write(line + "\n")
        self.send_response(status)
        if status in (429, 503) and c.get("retry_after") is not None:
            self.send_header("Retry-After", str(c["retry_after"]))
        answer = b'{"ok": true}' if status < 300 else b'{"error": "injected"}'
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A sender that drops its connection mid-answer (the tests kill and
        # time out senders on purpose) is expected: no traceback, which would
        # bury the test's own failure message in the output.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


server = Server(("127.0.0.1", int(port)), Handler)
if os.environ.get("RECEIVER_TLS"):
    import ssl

    cert, private = os.environ["RECEIVER_TLS"].split(":")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, private)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
server.daemon_threads = True
server.serve_forever()
