"""Fakes of NetSuite's SuiteQL REST endpoint and Magento's (Adobe Commerce)
product search, shaped after their published API descriptions, that check
every request's OAuth 1.0a signature with oauthlib (a library we did not
write): its ResourceEndpoint validates the signature, the timestamp and the
nonce (a nonce seen before is refused, so a retry must be signed anew).

NetSuite: POST /services/rest/query/v1/suiteql?limit=L&offset=O, header
`Prefer: transient`, body {"q": "... TO_TIMESTAMP('<cursor>' ..."}; answers
{"links": [...], "count", "hasMore", "offset", "totalResults", "items": [...]}
with every value a string, as SuiteQL does; the realm must be the account id.
Magento: GET /rest/V1/products?searchCriteria[...]; filters on updated_at
(condition gt or gteq), pageSize/currentPage; answers {"items", "search_criteria",
"total_count"}; a page past the last answers the last page again, as Magento does.

Records: N of them; record i (1-based) was last modified i seconds after
2024-01-01T00:00:00Z. Every FAIL_EVERY-th request is answered 429 with the
provider's error body. Each request is logged as a JSON line to LOG.

Usage: erp_fake.py PORT KIND N LOG FAIL_EVERY
  KIND netsuite | magento; credentials in env FAKE_CONSUMER_KEY,
  FAKE_CONSUMER_SECRET, FAKE_TOKEN, FAKE_TOKEN_SECRET; FAKE_REALM (NetSuite).
"""
import datetime
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from oauthlib.oauth1 import RequestValidator, ResourceEndpoint

port, kind, count, log_path, fail_every = sys.argv[1:6]
count, fail_every = int(count), int(fail_every)
CK, CS = os.environ["FAKE_CONSUMER_KEY"], os.environ["FAKE_CONSUMER_SECRET"]
TK, TS = os.environ["FAKE_TOKEN"], os.environ["FAKE_TOKEN_SECRET"]
REALM = os.environ.get("FAKE_REALM")
BASE = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
lock = threading.Lock()
seen_nonces = set()
served = {"n": 0}


class Validator(RequestValidator):
    enforce_ssl = False
    client_key_length = (8, 128)
    access_token_length = (8, 128)
    nonce_length = (6, 64)

    @property
    def dummy_client(self):
        return "dummy-client-key"

    @property
    def dummy_access_token(self):
        return "dummy-access-token"

    def validate_client_key(self, client_key, request):
        return client_key == CK

    def validate_access_token(self, client_key, token, request):
        return token == TK

    def get_client_secret(self, client_key, request):
        return CS if client_key == CK else "dummy"

    def get_access_token_secret(self, client_key, token, request):
        return TS if token == TK else "dummy"

    def validate_timestamp_and_nonce(self, client_key, timestamp, nonce, request, request_token=None, access_token=None):
        with lock:
            if (timestamp, nonce) in seen_nonces:
                return False
            seen_nonces.add((timestamp, nonce))
            return True

    def validate_realms(self, client_key, token, request, uri=None, realms=None):
        return True


endpoint = ResourceEndpoint(Validator())


def modified(i):
    return BASE + datetime.timedelta(seconds=i)


def netsuite_item(i):
    item = {
        "links": [],
        "id": str(i),
        "companyname": f"Company {i}",
        "email": f"ap{i}@example.com",
        "isinactive": "F" if i % 10 else "T",
        "lastmodified": modified(i).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if i % 10 == 0:
        del item["email"]  # SuiteQL leaves null columns out of an item
    return item


def magento_item(i):
    item = magento_simple(i)
    if i % 100 == 0:
        # As Magento's grouped-product tutorial shows it: no price, no weight.
        item["type_id"] = "grouped"
        for key in ("price", "weight", "product_links", "tier_prices"):
            del item[key]
    return item


def magento_simple(i):
    stamp = modified(i).strftime("%Y-%m-%d %H:%M:%S")
    return {
        "id": i,
        "sku": f"SKU-{i:05d}",
        "name": f"Product {i}",
        "attribute_set_id": 4,
        "price": round(9.5 + i / 100, 2),
        "status": 1,
        "visibility": 4,
        "type_id": "simple",
        "created_at": BASE.strftime("%Y-%m-%d %H:%M:%S"),
        "updated_at": stamp,
        "weight": 1.25,
        "extension_attributes": {
            "website_ids": [1],
            "stock_item": {"item_id": i, "product_id": i, "stock_id": 1, "qty": float(i % 40),
                           "is_in_stock": i % 40 != 0, "manage_stock": True, "low_stock_date": None},
            "category_links": [{"position": 0, "category_id": str(2 + i % 3)}],
        },
        "product_links": [],
        "options": [],
        "media_gallery_entries": [],
        "tier_prices": [],
        "custom_attributes": [
            {"attribute_code": "description", "value": f"<p>Product {i}</p>"},
            {"attribute_code": "category_ids", "value": [str(2 + i % 3)]},
            {"attribute_code": "url_key", "value": f"product-{i}"},
        ],
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, entry):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        entry["status"] = status
        with lock:
            with open(log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def handle_any(self, method):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        uri = f"http://127.0.0.1:{port}{self.path}"
        headers = {k: v for k, v in self.headers.items()}
        valid, request = endpoint.validate_protected_resource_request(
            uri, http_method=method, body=body.decode() or None, headers=headers
        )
        auth = self.headers.get("Authorization", "")
        realm = re.search(r'realm="([^"]*)"', auth)
        method_used = re.search(r'oauth_signature_method="([^"]*)"', auth)
        with lock:
            served["n"] += 1
            n = served["n"]
        entry = {
            "n": n,
            "method": method,
            "path": self.path,
            "valid": bool(valid),
            "realm": realm.group(1) if realm else None,
            "signature_method": method_used.group(1) if method_used else None,
            "body": body.decode(errors="replace"),
        }
        if REALM is not None and entry["realm"] != REALM:
            valid = False
        if not valid:
            if kind == "netsuite":
                return self.answer(401, {
                    "type": "https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.2",
                    "title": "Unauthorized", "status": 401,
                    "o:errorDetails": [{"detail": "Invalid login attempt. For more details, see the Login Audit Trail in the NetSuite UI at Setup > Users/Roles > User Management > View Login Audit Trail.", "o:errorCode": "INVALID_LOGIN"}],
                }, entry)
            return self.answer(401, {
                "message": "The consumer isn't authorized to access %resources.",
                "parameters": {"resources": "Magento_Catalog::products"},
            }, entry)
        if fail_every and n % fail_every == 0:
            if kind == "netsuite":
                return self.answer(429, {
                    "type": "https://www.rfc-editor.org/rfc/rfc6585.html#section-4",
                    "title": "Too Many Requests", "status": 429,
                    "o:errorDetails": [{"detail": "Concurrent request limit exceeded. Request blocked.", "o:errorCode": "CONCURRENCY_LIMIT_EXCEEDED"}],
                }, entry)
            return self.answer(429, {"message": "Too many requests"}, entry)
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if kind == "netsuite":
            return self.suiteql(method, url, query, body, entry)
        return self.products(method, url, query, entry)

    def suiteql(self, method, url, query, body, entry):
        if method != "POST" or url.path != "/services/rest/query/v1/suiteql":
            return self.answer(404, {"title": "Not Found", "status": 404}, entry)
        if self.headers.get("Prefer") != "transient":
            return self.answer(400, {
                "title": "Bad Request", "status": 400,
                "o:errorDetails": [{"detail": "The request header 'Prefer: transient' is missing.", "o:errorCode": "INVALID_HEADER"}],
            }, entry)
        q = json.loads(body)["q"]
        since = re.search(r"TO_TIMESTAMP\('([^']*)'", q)
        lower = datetime.datetime.strptime(since.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc) if since else BASE
        ids = [i for i in range(1, count + 1) if modified(i) >= lower]
        limit, offset = int(query.get("limit", 1000)), int(query.get("offset", 0))
        page = ids[offset:offset + limit]
        more = offset + limit < len(ids)
        base = f"http://127.0.0.1:{port}{url.path}"
        links = [{"rel": "self", "href": f"{base}?limit={limit}&offset={offset}"}]
        if more:
            links.insert(0, {"rel": "next", "href": f"{base}?limit={limit}&offset={offset + limit}"})
        self.answer(200, {
            "links": links, "count": len(page), "hasMore": more, "offset": offset,
            "totalResults": len(ids), "items": [netsuite_item(i) for i in page],
        }, entry)

    def products(self, method, url, query, entry):
        if method != "GET" or url.path != "/rest/V1/products":
            return self.answer(404, {"message": "Request does not match any route."}, entry)
        f = "searchCriteria[filter_groups][0][filters][0]"
        field, value = query.get(f + "[field]"), query.get(f + "[value]")
        condition = query.get(f + "[condition_type]", "eq")
        ids = list(range(1, count + 1))
        if field == "updated_at" and value:
            lower = datetime.datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc)
            keep = {"gt": lambda t: t > lower, "gteq": lambda t: t >= lower}[condition]
            ids = [i for i in ids if keep(modified(i))]
        size = int(query.get("searchCriteria[pageSize]", 20))
        current = int(query.get("searchCriteria[currentPage]", 1))
        last = max(1, -(-len(ids) // size))
        current = min(current, last)  # Magento answers the last page again
        page = ids[(current - 1) * size:current * size]
        self.answer(200, {
            "items": [magento_item(i) for i in page],
            "search_criteria": {"filter_groups": [], "page_size": size, "current_page": current},
            "total_count": len(ids),
        }, entry)


ThreadingHTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()
