#!/usr/bin/env python3
"""Fault-injecting HTTP/1.1 reverse proxy for drun's registry tests (stdlib only).

  testproxy.py --upstream 127.0.0.1:5000 --port-file FILE --log FILE [--fault SPEC]...
               [--max-seconds 600]

Listens on 127.0.0.1:<ephemeral>, writes the port to --port-file once ready,
and forwards requests verbatim (Host, Range, Authorization, bodies streamed;
only hop-by-hop headers are dropped).  One log line per request:
    METHOD TARGET STATUS RANGE      (RANGE is the client's Range header or '-')
with a 5th field 'fault=NAME[,NAME]' when faults fired.

Faults fire for the first N matching requests *per distinct path* (N defaults
to 1 unless given):
  reset-blob:BYTES[:N]      GET /v2/<name>/blobs/<digest>: relay status, headers and
                            BYTES body bytes, then abort the connection with RST
  status-blob:CODE[:N]      blob GET/HEAD answered with CODE (429 adds Retry-After: 1)
  status-manifest:CODE[:N]  same for /v2/<name>/manifests/<ref> (any method)
  no-range[:N]              strip Range/If-Range before forwarding (upstream
                            answers 200 with the full body); default: always
Exits on SIGTERM/SIGINT and after --max-seconds.
"""
import argparse
import fcntl
import http.client
import json
import os
import re
import signal
import socket
import struct
import sys
import termios
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from urllib.parse import urlsplit

HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
       "expect", "proxy-authenticate", "proxy-authorization"}
BLOB_RE = re.compile(r"^/v2/.+/blobs/[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
MANIFEST_RE = re.compile(r"^/v2/.+/manifests/[^/]+$")
MAX_THREADS = 64
ARGS = None


class Fault:
    def __init__(self, spec):
        parts = spec.split(":")
        self.kind = parts[0]
        self.counts = {}
        self.lock = threading.Lock()
        if self.kind == "reset-blob" and len(parts) in (2, 3):
            self.value, self.limit = int(parts[1]), int(parts[2]) if len(parts) == 3 else 1
        elif self.kind in ("status-blob", "status-manifest") and len(parts) in (2, 3):
            self.value, self.limit = int(parts[1]), int(parts[2]) if len(parts) == 3 else 1
        elif self.kind == "no-range" and len(parts) in (1, 2):
            self.value, self.limit = None, int(parts[1]) if len(parts) == 2 else None
        else:
            raise ValueError("bad --fault %r" % spec)

    def matches(self, method, path):
        if self.kind == "reset-blob":
            return method == "GET" and BLOB_RE.match(path)
        if self.kind == "status-blob":
            return method in ("GET", "HEAD") and BLOB_RE.match(path)
        if self.kind == "status-manifest":
            return MANIFEST_RE.match(path)
        return True  # no-range

    def take(self, method, path):
        """Count this request; True when the fault should fire for it."""
        if not self.matches(method, path):
            return False
        with self.lock:
            n = self.counts.get(path, 0)
            if self.limit is not None and n >= self.limit:
                return False
            self.counts[path] = n + 1
            return True


class Server(ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *a, **kw):
        self.slots = threading.BoundedSemaphore(MAX_THREADS)
        self.log_lock = threading.Lock()
        self.log_file = open(ARGS.log, "a", buffering=1) if ARGS.log else sys.stderr
        super().__init__(*a, **kw)

    def process_request(self, request, client_address):
        self.slots.acquire()  # bounded: the accept loop waits when all slots are busy
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def copy_exact(src, dst, n):
    while n > 0:
        chunk = src.read(min(n, 65536))
        if not chunk:
            raise ConnectionError("short body")
        dst.write(chunk)
        n -= len(chunk)


def copy_chunked(src, dst):
    """Relay a chunked body unchanged (sizes, extensions, trailers)."""
    while True:
        line = src.readline(65537)
        if not line:
            raise ConnectionError("short chunked body")
        dst.write(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailers end with an empty line
                t = src.readline(65537)
                if not t:
                    raise ConnectionError("short chunked trailer")
                dst.write(t)
                if t in (b"\r\n", b"\n"):
                    return
        copy_exact(src, dst, size + 2)  # data + CRLF


def copy_to_eof(src, dst):
    while True:
        chunk = src.read1(65536) if hasattr(src, "read1") else src.read(65536)
        if not chunk:
            return
        dst.write(chunk)


class Discard:
    def write(self, b):
        pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections must not pin a thread slot forever

    def log_message(self, fmt, *a):  # silence the default stderr access log
        pass

    def record(self, status, fault=None):
        rng = (self.headers.get("Range") or "-").replace(" ", "")
        line = "%s %s %s %s" % (self.command, self.path, status, rng)
        if fault:
            line += " fault=" + fault
        with self.server.log_lock:
            self.server.log_file.write(line + "\n")
            self.server.log_file.flush()

    def body_framing(self, headers):
        te = headers.get("Transfer-Encoding", "").lower()
        if "chunked" in te:
            return "chunked", None
        if headers.get("Content-Length") is not None:
            return "length", int(headers["Content-Length"])
        return None, 0

    def relay_request_body(self, dst):
        kind, n = self.body_framing(self.headers)
        if kind == "chunked":
            copy_chunked(self.rfile, dst)
        elif kind == "length":
            copy_exact(self.rfile, dst, n)

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (OSError, ValueError):  # client or upstream went away, or we aborted
            self.close_connection = True

    def __getattr__(self, name):
        if name.startswith("do_"):
            return self.proxy
        raise AttributeError(name)

    def proxy(self):
        path = urlsplit(self.path).path
        # Status faults first and one at a time, so several of them act in
        # sequence and a request answered by one does not use up the others.
        for f in ARGS.faults:
            if f.kind.startswith("status-") and f.take(self.command, path):
                self.relay_request_body(Discard())
                return self.inject_status(f)
        fired = [f for f in ARGS.faults
                 if not f.kind.startswith("status-") and f.take(self.command, path)]
        strip_range = any(f.kind == "no-range" for f in fired) and "Range" in self.headers
        reset = next((f for f in fired if f.kind == "reset-blob"), None)

        try:
            up = socket.create_connection(ARGS.upstream, timeout=60)
        except OSError:
            self.relay_request_body(Discard())
            self.send_error(502, "upstream unreachable")
            return self.record(502, "upstream-down")
        try:
            self.forward(up, path, strip_range, reset)
        finally:
            up.close()

    def inject_status(self, f):
        body = json.dumps({"errors": [{"code": "DRUN_TESTPROXY_FAULT",
                                       "message": "injected %s" % f.kind}]}).encode()
        self.send_response(f.value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if f.value == 429:
            self.send_header("Retry-After", "1")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.record(f.value, f.kind)

    def forward(self, up, path, strip_range, reset):
        upw = up.makefile("wb", buffering=65536)
        upr = up.makefile("rb", buffering=65536)
        # request line + headers, verbatim except hop-by-hop (and Range if asked)
        out = ["%s %s HTTP/1.1\r\n" % (self.command, self.path)]
        for k, v in self.headers.items():
            lk = k.lower()
            if lk in HOP or (strip_range and lk in ("range", "if-range")):
                continue
            out.append("%s: %s\r\n" % (k, v))
        out.append("Connection: close\r\n\r\n")
        upw.write("".join(out).encode("latin-1"))
        self.relay_request_body(upw)
        upw.flush()

        # response: skip interim 1xx (we already answered Expect ourselves)
        while True:
            status_line = upr.readline(65537)
            if not status_line:
                raise ConnectionError("upstream closed")
            parts = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            status = int(parts[1])
            headers = http.client.parse_headers(upr)
            if status >= 200 or status == 101:
                break
        reason = parts[2] if len(parts) > 2 else ""
        kind, length = self.body_framing(headers)
        no_body = self.command == "HEAD" or status in (204, 304)
        if not no_body and kind is None:
            self.close_connection = True  # body ends at EOF: must close ours too
        head = ["HTTP/1.1 %d %s\r\n" % (status, reason)]
        for k, v in headers.items():
            if k.lower() not in HOP:
                head.append("%s: %s\r\n" % (k, v))
        if self.close_connection:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        self.wfile.write("".join(head).encode("latin-1"))

        if reset is not None and status in (200, 206) and not no_body:
            copy_exact(upr, self.wfile, min(reset.value, length if kind == "length" else reset.value))
            self.record(status, "no-range,reset-blob" if strip_range else "reset-blob")
            return self.abort()
        if not no_body:
            if kind == "chunked":
                copy_chunked(upr, self.wfile)
            elif kind == "length":
                copy_exact(upr, self.wfile, length)
            else:
                copy_to_eof(upr, self.wfile)
        self.wfile.flush()
        self.record(status, "no-range" if strip_range else None)

    def abort(self):
        """Close the client connection with RST after the sent bytes are acked."""
        sock = self.connection
        deadline = time.time() + 5
        while time.time() < deadline:  # let the partial body actually reach the client
            pending = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                                     b"\0\0\0\0"))[0]
            if pending == 0:
                break
            time.sleep(0.01)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.wfile.close()
        self.rfile.close()
        sock.close()  # last reference: the kernel sends RST


def main():
    global ARGS
    ap = argparse.ArgumentParser(description="drun test reverse proxy")
    ap.add_argument("--upstream", required=True, help="HOST:PORT")
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log")
    ap.add_argument("--fault", action="append", default=[])
    ap.add_argument("--max-seconds", type=int, default=600)
    ARGS = ap.parse_args()
    host, _, port = ARGS.upstream.rpartition(":")
    ARGS.upstream = (host, int(port))
    ARGS.faults = [Fault(s) for s in ARGS.fault]

    def stop(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(ARGS.max_seconds)

    srv = Server(("127.0.0.1", 0), Handler)
    tmp = ARGS.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.replace(tmp, ARGS.port_file)  # atomic: readers never see a partial port
    try:
        srv.serve_forever(poll_interval=0.2)
    finally:
        srv.server_close()
        os._exit(0)  # do not wait for in-flight handler threads


if __name__ == "__main__":
    main()
