"""Fakes of the three providers' webhook-subscription APIs, after their
published API descriptions, for `tributary register`:

GitHub REST: GET/POST /repos/{owner}/{repo}/hooks (and /orgs/{org}/hooks),
  PATCH .../hooks/{id}; Bearer token; a create needs name "web", config.url,
  content_type; a second hook with the same URL is refused 422 ("Hook already
  exists on this repository"); config.secret is answered as "********".
Stripe: GET /v1/webhook_endpoints, POST /v1/webhook_endpoints (form-encoded:
  url, enabled_events[], description, metadata[...]), POST
  /v1/webhook_endpoints/{id}; Bearer sk_ key; the signing secret (whsec_) is in
  the create answer only.
Shopify Admin GraphQL: POST /admin/api/<version>/graphql.json with
  X-Shopify-Access-Token; the webhookSubscriptions query and the
  webhookSubscriptionCreate / webhookSubscriptionUpdate mutations, with
  userErrors for a topic that does not exist or a subscription taken.

Every request is logged as a JSON line to LOG: {"method", "path", "body"}.
Usage: provider_fake.py PORT TOKEN LOG
"""
import json
import re
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

port, token, log_path = sys.argv[1], sys.argv[2], sys.argv[3]
lock = threading.Lock()
github_hooks = {}  # path prefix -> list of hooks
stripe_endpoints = []
shopify_subscriptions = []
next_id = {"n": 1000}
SHOPIFY_TOPICS = {"ORDERS_CREATE", "ORDERS_UPDATED", "CUSTOMERS_CREATE", "CUSTOMERS_UPDATE", "APP_UNINSTALLED"}


def new_id():
    with lock:
        next_id["n"] += 1
        return next_id["n"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_PATCH(self):
        self.route("PATCH")

    def route(self, method):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        url = urlsplit(self.path)
        with lock:
            with open(log_path, "a") as f:
                f.write(json.dumps({"method": method, "path": self.path, "body": raw}) + "\n")
        if url.path.startswith("/admin/api/"):
            if self.headers.get("X-Shopify-Access-Token") != token:
                return self.reply(401, {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"})
            return self.shopify(json.loads(raw))
        if self.headers.get("Authorization") != f"Bearer {token}":
            if url.path.startswith("/v1/"):
                return self.reply(401, {"error": {"message": "Invalid API Key provided", "type": "invalid_request_error"}})
            return self.reply(401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})
        if url.path.startswith("/v1/webhook_endpoints"):
            return self.stripe(method, url.path, parse_qs(raw, keep_blank_values=True))
        m = re.fullmatch(r"(/(?:repos/[^/]+/[^/]+|orgs/[^/]+)/hooks)(?:/(\d+))?", url.path)
        if m:
            return self.github(method, m.group(1), m.group(2), raw)
        self.reply(404, {"message": "Not Found"})

    def github(self, method, prefix, hook_id, raw):
        hooks = github_hooks.setdefault(prefix, [])
        shown = lambda h: {**h, "config": {**h["config"], **({"secret": "********"} if "secret" in h["config"] else {})}}
        if method == "GET" and hook_id is None:
            return self.reply(200, [shown(h) for h in hooks])
        body = json.loads(raw or "{}")
        if method == "POST" and hook_id is None:
            config = body.get("config") or {}
            if body.get("name", "web") != "web" or not config.get("url"):
                return self.reply(422, {"message": "Validation Failed", "errors": [{"resource": "Hook", "code": "custom", "message": "Config must contain url"}]})
            if any(h["config"]["url"] == config["url"] for h in hooks):
                return self.reply(422, {"message": "Validation Failed", "errors": [{"resource": "Hook", "code": "custom", "message": "Hook already exists on this repository"}]})
            hook = {"type": "Repository", "id": new_id(), "name": "web", "active": body.get("active", True),
                    "events": body.get("events") or ["push"], "config": config,
                    "url": f"https://api.github.com{prefix}/{next_id['n']}"}
            hooks.append(hook)
            return self.reply(201, shown(hook))
        if method == "PATCH" and hook_id is not None:
            for h in hooks:
                if str(h["id"]) == hook_id:
                    if "config" in body:
                        h["config"] = {**h["config"], **body["config"]}
                    for key in ("events", "active"):
                        if key in body:
                            h[key] = body[key]
                    return self.reply(200, shown(h))
        self.reply(404, {"message": "Not Found"})

    def stripe(self, method, path, form):
        if method == "GET" and path == "/v1/webhook_endpoints":
            shown = [{k: v for k, v in e.items() if k != "secret"} for e in stripe_endpoints]
            return self.reply(200, {"object": "list", "data": shown, "has_more": False, "url": "/v1/webhook_endpoints"})
        events = form.get("enabled_events[]")
        metadata = {k[len("metadata["):-1]: v[0] for k, v in form.items() if k.startswith("metadata[")}
        if method == "POST" and path == "/v1/webhook_endpoints":
            if not form.get("url") or not events:
                return self.reply(400, {"error": {"message": "Missing required param: enabled_events.", "param": "enabled_events", "type": "invalid_request_error"}})
            endpoint = {"id": f"we_{secrets.token_hex(12)}", "object": "webhook_endpoint", "api_version": None,
                        "application": None, "created": 1700000000, "description": form.get("description", [None])[0],
                        "enabled_events": events, "livemode": False, "metadata": metadata,
                        "secret": f"whsec_{secrets.token_hex(16)}", "status": "enabled", "url": form["url"][0]}
            stripe_endpoints.append(endpoint)
            return self.reply(200, endpoint)
        m = re.fullmatch(r"/v1/webhook_endpoints/(we_\w+)", path)
        if method == "POST" and m:
            for e in stripe_endpoints:
                if e["id"] == m.group(1):
                    if form.get("url"):
                        e["url"] = form["url"][0]
                    if events:
                        e["enabled_events"] = events
                    e["metadata"].update(metadata)
                    return self.reply(200, {k: v for k, v in e.items() if k != "secret"})
            return self.reply(404, {"error": {"message": f"No such webhook endpoint: '{m.group(1)}'", "type": "invalid_request_error"}})
        self.reply(404, {"error": {"message": "Unrecognized request URL", "type": "invalid_request_error"}})

    def shopify(self, body):
        query, variables = body.get("query", ""), body.get("variables") or {}
        node = lambda s: {"id": s["id"], "topic": s["topic"], "endpoint": {"__typename": "WebhookHttpEndpoint", "callbackUrl": s["callbackUrl"]}}
        if "webhookSubscriptionCreate" in query:
            topic, sub = variables.get("topic"), variables.get("webhookSubscription") or {}
            if topic not in SHOPIFY_TOPICS:
                return self.reply(200, {"errors": [{"message": f"Variable $topic of type WebhookSubscriptionTopic! was provided invalid value", "extensions": {"code": "INVALID_VARIABLE"}}]})
            if any(s["topic"] == topic and s["callbackUrl"] == sub.get("callbackUrl") for s in shopify_subscriptions):
                return self.reply(200, {"data": {"webhookSubscriptionCreate": {"webhookSubscription": None, "userErrors": [{"field": ["webhookSubscription", "callbackUrl"], "message": "Address for this topic has already been taken"}]}}})
            s = {"id": f"gid://shopify/WebhookSubscription/{new_id()}", "topic": topic, "callbackUrl": sub.get("callbackUrl"), "format": sub.get("format", "JSON")}
            shopify_subscriptions.append(s)
            return self.reply(200, {"data": {"webhookSubscriptionCreate": {"webhookSubscription": {"id": s["id"]}, "userErrors": []}}})
        if "webhookSubscriptionUpdate" in query:
            for s in shopify_subscriptions:
                if s["id"] == variables.get("id"):
                    s["callbackUrl"] = (variables.get("webhookSubscription") or {}).get("callbackUrl", s["callbackUrl"])
                    return self.reply(200, {"data": {"webhookSubscriptionUpdate": {"webhookSubscription": {"id": s["id"]}, "userErrors": []}}})
            return self.reply(200, {"data": {"webhookSubscriptionUpdate": {"webhookSubscription": None, "userErrors": [{"field": ["id"], "message": "Webhook subscription does not exist"}]}}})
        if "webhookSubscriptions" in query:
            return self.reply(200, {"data": {"webhookSubscriptions": {"edges": [{"node": node(s)} for s in shopify_subscriptions]}}})
        self.reply(200, {"errors": [{"message": "Parse error"}]})


ThreadingHTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()
