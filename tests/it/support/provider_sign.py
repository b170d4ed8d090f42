"""Signs webhook requests as the providers do, with code we did not write:
Stripe's and HubSpot's own Python SDKs make their signatures; Shopify (whose
Python SDK has no webhook signing) and the generic `hmac` scheme are made
with Python's hmac as the providers' documentation writes them. tributary's
Rust code is not consulted, so the tests that post these requests check its
verifier against the providers' layout, not against itself.

Reads a JSON array of requests on stdin; writes a JSON array of header
objects on stdout, one per request, in order. A request:

  {"scheme": "stripe", "secret": "whsec_…", "body": "…", "timestamp": 1700000000}
      Stripe-Signature from stripe.WebhookSignature.generate_signature_header,
      checked with stripe.Webhook.construct_event (its 300 s tolerance) when
      the timestamp is fresh, with stripe.WebhookSignature.verify_header
      without a tolerance when it is not.
  {"scheme": "hubspot-v3", "secret": "…", "body": "…", "method": "POST",
   "uri": "https://host/path", "timestamp": 1700000000}
      X-HubSpot-Signature-v3 and X-HubSpot-Request-Timestamp from
      hubspot.utils.signature.Signature.get_signature(…, "v3", …), checked
      with Signature.is_valid when the timestamp is fresh; HubSpot's
      timestamp is in milliseconds.
  {"scheme": "shopify", "secret": "…", "body": "…"}
      X-Shopify-Hmac-Sha256: base64 HMAC-SHA256 of the raw body (Shopify's
      "Verify webhooks" documentation).
  {"scheme": "hmac", "secret": "…", "body": "…", "header": "X-Signature",
   "prefix": "sha256=", "encoding": "hex" | "base64"}
      header: prefix + the HMAC-SHA256 of the raw body in that encoding.

"timestamp" (Unix seconds) defaults to now; Shopify and hmac sign none. A package that is missing
stops the script with exit status 3 and a message naming it and scripts/test,
which installs it.

Usage: provider_sign.py < requests.json
"""
import base64
import hashlib
import hmac
import json
import sys
import time

try:
    import stripe
    from hubspot.utils.signature import Signature
except ImportError as e:
    sys.stderr.write(
        f"provider_sign.py: {e}; the signing tests need the providers' SDKs: "
        "scripts/test installs them (pip install 'stripe==16.1.0' 'hubspot-api-client==12.0.0')\n"
    )
    sys.exit(3)

# Both SDKs refuse a timestamp older than five minutes.
FRESH_SECONDS = 300


def stripe_headers(r):
    body, secret = r["body"], r["secret"]
    t = int(r.get("timestamp", time.time()))
    header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=t)
    if abs(time.time() - t) < FRESH_SECONDS:
        # The SDK's own entry point for a received webhook accepts it.
        stripe.Webhook.construct_event(body, header, secret)
    else:
        stripe.WebhookSignature.verify_header(body, header, secret, tolerance=None)
    return {"Stripe-Signature": header}


def hubspot_headers(r):
    body, secret = r["body"], r["secret"]
    method, uri = r.get("method", "POST"), r["uri"]
    ms = str(int(r["timestamp"] * 1000 if "timestamp" in r else time.time() * 1000))
    signature = Signature.get_signature(secret, body, "v3", http_uri=uri, http_method=method, timestamp=ms)
    if abs(time.time() - int(ms) / 1000) < FRESH_SECONDS:
        assert Signature.is_valid(
            signature, secret, body, http_uri=uri, http_method=method, signature_version="v3", timestamp=ms
        ), "the HubSpot SDK refuses its own signature"
    return {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": ms}


def shopify_headers(r):
    digest = hmac.new(r["secret"].encode("utf-8"), r["body"].encode("utf-8"), hashlib.sha256).digest()
    return {"X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode()}


def hmac_headers(r):
    digest = hmac.new(r["secret"].encode("utf-8"), r["body"].encode("utf-8"), hashlib.sha256).digest()
    text = base64.b64encode(digest).decode() if r.get("encoding") == "base64" else digest.hex()
    return {r["header"]: r.get("prefix", "") + text}


SIGNERS = {
    "stripe": stripe_headers,
    "hubspot-v3": hubspot_headers,
    "shopify": shopify_headers,
    "hmac": hmac_headers,
}

requests = json.load(sys.stdin)
json.dump([SIGNERS[r["scheme"]](r) for r in requests], sys.stdout)
