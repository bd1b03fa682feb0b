#!/usr/bin/env python3
"""Minimal Docker registry token server for drun's tests (stdlib only).

GET /token?service=S&scope=repository:NAME:pull,push[&scope=...]
  - anonymous: grants 'pull' of the requested repositories (never push)
  - Basic USER:PASSWORD matching --user/--password: grants pull,push,delete
  - wrong Basic credentials: 401
POST /token (OAuth2 form, grant_type=password) is accepted too.

Tokens are RS256 JWTs signed with `openssl dgst -sha256 -sign KEY`; the header
carries the signing cert in `x5c`, which distribution verifies against its
`rootcertbundle` (the same self-signed cert).
"""
import argparse
import base64
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ARGS = None
LOG_LOCK = threading.Lock()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cert_der_b64(pem_path):
    # The PEM body already is base64(DER); x5c wants standard base64.
    lines, inside = [], False
    with open(pem_path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("-----BEGIN CERTIFICATE"):
                inside = True
            elif line.startswith("-----END CERTIFICATE"):
                break
            elif inside:
                lines.append(line)
    return "".join(lines)


def sign(data):
    return subprocess.run(["openssl", "dgst", "-sha256", "-sign", ARGS.key, "-binary"],
                          input=data, capture_output=True, check=True).stdout


def parse_scope(scope):
    # type:name:actions -- the name may itself contain ':' (e.g. host:port)
    typ, rest = scope.split(":", 1) if ":" in scope else (scope, "")
    name, _, actions = rest.rpartition(":")
    return typ, name, [a for a in actions.split(",") if a]


def grant(scopes, authenticated):
    allowed = {"pull", "push", "delete", "*"} if authenticated else {"pull"}
    access = []
    for s in scopes:
        typ, name, actions = parse_scope(s)
        if typ == "repository" and name:
            ok = [a for a in actions if a in allowed]
        elif typ == "registry" and authenticated:
            ok = actions
        else:
            ok = []
        if ok:
            access.append({"type": typ, "name": name, "actions": ok})
    return access


def make_token(subject, access):
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "x5c": [cert_der_b64(ARGS.cert)]}
    claims = {"iss": ARGS.issuer, "sub": subject, "aud": ARGS.service,
              "exp": now + ARGS.ttl, "nbf": now - 10, "iat": now,
              "jti": secrets.token_hex(16), "access": access}
    signing_input = (b64url(json.dumps(header).encode()) + "." +
                     b64url(json.dumps(claims).encode())).encode()
    return signing_input.decode() + "." + b64url(sign(signing_input)), now


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "drun-token-issuer/1"

    def log_message(self, fmt, *a):
        line = "%s %s\n" % (datetime.now(timezone.utc).isoformat(), fmt % a)
        with LOG_LOCK:
            sys.stderr.write(line)
            sys.stderr.flush()

    def send_json(self, code, obj, extra=()):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def credentials(self, form):
        """(user, ok): user is None when anonymous."""
        h = self.headers.get("Authorization", "")
        if h.lower().startswith("basic "):
            try:
                user, _, pw = base64.b64decode(h[6:].strip()).decode().partition(":")
            except ValueError:
                return "", False
        elif form.get("grant_type", [""])[0] == "password":
            user, pw = form.get("username", [""])[0], form.get("password", [""])[0]
        else:
            return None, True
        return user, (user == ARGS.user and pw == ARGS.password)

    def issue(self, query, form):
        if urlsplit(self.path).path != "/token":
            return self.send_json(404, {"errors": [{"code": "NOT_FOUND"}]})
        service = (query.get("service") or form.get("service") or [ARGS.service])[0]
        if service != ARGS.service:
            return self.send_json(400, {"errors": [{"code": "UNSUPPORTED",
                                                    "message": "unknown service"}]})
        user, ok = self.credentials(form)
        if not ok:
            return self.send_json(401, {"errors": [{"code": "UNAUTHORIZED",
                                                    "message": "bad credentials"}]},
                                  [("WWW-Authenticate", 'Basic realm="drun-test-token"')])
        scopes = []
        for s in query.get("scope", []) + form.get("scope", []):
            scopes.extend(s.split(" "))  # OAuth2 form joins scopes with spaces
        access = grant([s for s in scopes if s], user is not None)
        token, now = make_token(user or "", access)
        self.log_message("issued sub=%r access=%s", user or "", json.dumps(access))
        issued = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.send_json(200, {"token": token, "access_token": token,
                             "expires_in": ARGS.ttl, "issued_at": issued})

    def do_GET(self):
        self.issue(parse_qs(urlsplit(self.path).query), {})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(n).decode()) if n else {}
        self.issue(parse_qs(urlsplit(self.path).query), form)


def main():
    global ARGS
    ap = argparse.ArgumentParser(description="drun test token issuer")
    ap.add_argument("--listen", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5003)
    ap.add_argument("--key", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--issuer", default="drun-test-issuer")
    ap.add_argument("--service", default="drun-test-registry")
    ap.add_argument("--user", default="drun")
    ap.add_argument("--password", default=os.environ.get("DRUN_TEST_PASSWORD", "drun-secret"))
    ap.add_argument("--ttl", type=int, default=300)
    ARGS = ap.parse_args()
    srv = ThreadingHTTPServer((ARGS.listen, ARGS.port), Handler)
    srv.daemon_threads = True
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
