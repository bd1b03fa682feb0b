#!/usr/bin/env python3
"""A Python package index on loopback for the workflow `requirements` tests.

  pyindex.py DIR

Builds one pure-Python wheel, drun_hello 1.0 (module `drun_hello` with GREETING = "hello from drun_hello"), lays
out a PEP 503 "simple" index for it under DIR, serves DIR on 127.0.0.1 on a free port and prints
"http://127.0.0.1:PORT/simple/" on stdout once it is listening. It serves until killed.
"""
import base64
import hashlib
import http.server
import os
import sys
import zipfile

NAME, VERSION = "drun_hello", "1.0"


def record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def build_wheel(out_dir):
    dist = f"{NAME}-{VERSION}.dist-info"
    files = {
        f"{NAME}/__init__.py": b'GREETING = "hello from drun_hello"\n',
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: drun-pyindex\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "\n".join(record_line(p, d) for p, d in files.items()) + f"\n{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    wheel = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(out_dir, wheel), "w") as z:
        for p, d in files.items():
            z.writestr(p, d)
    return wheel


def main():
    root = sys.argv[1]
    pkg_dir = os.path.join(root, "simple", "drun-hello")
    os.makedirs(pkg_dir, exist_ok=True)
    wheel = build_wheel(pkg_dir)
    with open(os.path.join(root, "simple", "index.html"), "w") as f:
        f.write('<html><body><a href="drun-hello/">drun-hello</a></body></html>\n')
    with open(os.path.join(pkg_dir, "index.html"), "w") as f:
        f.write(f'<html><body><a href="{wheel}">{wheel}</a></body></html>\n')

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=root, **kw)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"http://127.0.0.1:{srv.server_address[1]}/simple/", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
