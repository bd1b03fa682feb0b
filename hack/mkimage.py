#!/usr/bin/env python3
"""Build layer tarballs and OCI image layouts for drun's tests (stdlib only).

  mkimage.py layer RECIPE OUT.tar [--dir DIR] [--exclude GLOB]... [--busybox BIN] [--arch ARCH]
  mkimage.py build SPEC.json      -> assembles/updates an OCI layout, prints the digest

Layers are written by hand with tarfile so that odd entries (absolute names,
'..', whiteouts, hardlinks to outside paths) go into the archive verbatim.

Build spec (JSON):
  {"layout": DIR, "tag": "latest", "created": "2024-01-01T00:00:00Z",
   "index": false,            # true: wrap the manifest(s) in an image index
   "images": [{"os": "linux", "architecture": "amd64", "variant": null,
               "config": {"Env": [...], "Cmd": [...], "WorkingDir": "/"},
               "layers": [{"tar": PATH, "compression": "gzip|zstd|none",
                           "created_by": "..."}],
               "history_extra": [{"created_by": "...", "empty_layer": true}]}]}
"""
import argparse
import fnmatch
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

MTIME = 1704067200  # 2024-01-01T00:00:00Z: fixed so synthetic layers are reproducible

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
ESCAPE = "/tmp/drun-escape-target"  # host dir the hostile images aim at
UP = "../../../../../../"  # enough '..' to leave any rootfs


# ---------------------------------------------------------------- tar helpers
class Layer:
    """Thin wrapper that adds entries with exact names and numeric owners."""

    def __init__(self, path):
        self.tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)

    def _info(self, name, typ, mode, uid=0, gid=0, xattrs=None):
        ti = tarfile.TarInfo()
        ti.name = name  # set directly: no normalisation of '/' or '..'
        ti.type = typ
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = ""
        ti.mtime = MTIME
        if xattrs:
            ti.pax_headers = {"SCHILY.xattr." + k: v for k, v in xattrs.items()}
        return ti

    def dir(self, name, mode=0o755, **kw):
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, **kw))

    def file(self, name, data, mode=0o644, **kw):
        if isinstance(data, str):
            data = data.encode()
        ti = self._info(name, tarfile.REGTYPE, mode, **kw)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))

    def symlink(self, name, target):
        ti = self._info(name, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.tar.addfile(ti)

    def hardlink(self, name, target):
        ti = self._info(name, tarfile.LNKTYPE, 0o644)
        ti.linkname = target
        self.tar.addfile(ti)

    def close(self):
        self.tar.close()


def layer_from_dir(out, root, excludes):
    """Tar a directory tree (sorted, numeric owners, hardlinks, xattrs)."""
    tar = tarfile.open(out, "w", format=tarfile.PAX_FORMAT)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        names = sorted(dirnames + filenames)
        for n in names:
            full = os.path.join(dirpath, n)
            rel = n if rel_dir == "." else rel_dir + "/" + n
            if any(fnmatch.fnmatchcase(rel, g) for g in excludes):
                if n in dirnames:
                    dirnames.remove(n)
                continue
            ti = tar.gettarinfo(full, arcname=rel)  # also detects hardlinks
            if ti is None:  # sockets cannot be archived
                continue
            ti.uname = ti.gname = ""
            try:
                for k in os.listxattr(full, follow_symlinks=False):
                    v = os.getxattr(full, k, follow_symlinks=False)
                    ti.pax_headers["SCHILY.xattr." + k] = v.decode("utf-8", "surrogateescape")
            except OSError:
                pass
            if ti.isreg():
                with open(full, "rb") as f:
                    tar.addfile(ti, f)
            else:
                tar.addfile(ti)
    tar.close()


# -------------------------------------------------------------- layer recipes
def recipe_busybox(out, args):
    """Single-layer busybox rootfs; /etc/drun-arch says which variant it is."""
    applets = subprocess.run([args.busybox, "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    with open(args.busybox, "rb") as f:
        binary = f.read()
    L = Layer(out)
    for d, m in [("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("home", 0o755),
                 ("proc", 0o555), ("root", 0o700), ("sys", 0o555), ("tmp", 0o1777),
                 ("usr", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755), ("var", 0o755),
                 ("var/tmp", 0o1777)]:
        L.dir(d, m)
    L.file("bin/busybox", binary, 0o755)
    for a in sorted(set(applets)):
        if a != "busybox" and "/" not in a:
            L.symlink("bin/" + a, "busybox")
    L.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
                         "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    L.file("etc/group", "root:x:0:\nnobody:x:65534:\n")
    L.file("etc/drun-arch", args.arch)  # exactly 'amd64' / 'arm64', no newline
    L.close()


# Debian layer 2: fixtures on top of the debootstrap rootfs (layer 1).
#   /etc/issue                 overwritten: "drun test image\n"
#   /opt/keep/{stays,gone,changed}  "stays\n" "gone\n" "v1\n"
#   /opt/keep/empty            empty file
#   /opt/replaced/old          "old\n";  /opt/replaced/sub/deep "deep\n"
#   /opt/links/hard-a, hard-b  hardlink pair, content "hardlink content\n"
#   /opt/links/rel  -> ../keep/stays       (relative symlink)
#   /opt/links/abs  -> /opt/keep/stays     (absolute symlink)
#   /opt/links/dir  -> ../keep             (symlink to directory)
#   /opt/links/dangling -> /nonexistent/drun-dangling
#   /opt/perm/setuid           root:root 04755
#   /opt/perm/owned            1234:5678 0640, "owned\n"
#   /opt/perm/owned-dir/       1234:5678 0750
#   /opt/perm/sticky/          01777;  /opt/perm/readonly 0444
#   /opt/xattr/file            xattr user.drun="drun-xattr-value", content "xattr\n"
def recipe_debian_l2(out, args):
    L = Layer(out)
    L.dir("etc")
    L.file("etc/issue", "drun test image\n")
    L.dir("opt")
    L.dir("opt/keep")
    L.file("opt/keep/stays", "stays\n")
    L.file("opt/keep/gone", "gone\n")
    L.file("opt/keep/changed", "v1\n")
    L.file("opt/keep/empty", "")
    L.dir("opt/replaced")
    L.file("opt/replaced/old", "old\n")
    L.dir("opt/replaced/sub")
    L.file("opt/replaced/sub/deep", "deep\n")
    L.dir("opt/links")
    L.file("opt/links/hard-a", "hardlink content\n")
    L.hardlink("opt/links/hard-b", "opt/links/hard-a")
    L.symlink("opt/links/rel", "../keep/stays")
    L.symlink("opt/links/abs", "/opt/keep/stays")
    L.symlink("opt/links/dir", "../keep")
    L.symlink("opt/links/dangling", "/nonexistent/drun-dangling")
    L.dir("opt/perm")
    L.file("opt/perm/setuid", "#!/bin/sh\necho setuid\n", 0o4755)
    L.file("opt/perm/owned", "owned\n", 0o640, uid=1234, gid=5678)
    L.dir("opt/perm/owned-dir", 0o750, uid=1234, gid=5678)
    L.dir("opt/perm/sticky", 0o1777)
    L.file("opt/perm/readonly", "readonly\n", 0o444)
    L.dir("opt/xattr")
    L.file("opt/xattr/file", "xattr\n", xattrs={"user.drun": "drun-xattr-value"})
    L.close()


# Debian layer 3: deletions and overrides.
#   /etc/issue.net             deleted (file from layer 1)   via etc/.wh.issue.net
#   /usr/share/doc/apt/        deleted (dir from layer 1)    via usr/share/doc/.wh.apt
#   /opt/keep/gone             deleted (file from layer 2)   via opt/keep/.wh.gone
#   /opt/keep/changed          overwritten: "v2\n"
#   /opt/replaced/             opaque: old and sub/ vanish, only new ("new\n") remains
#   /opt/links/hard-lower      hardlink to /opt/keep/stays (target in a lower layer)
def recipe_debian_l3(out, args):
    L = Layer(out)
    L.file("etc/.wh.issue.net", "")
    L.file("usr/share/doc/.wh.apt", "")
    L.file("opt/keep/.wh.gone", "")
    L.file("opt/keep/changed", "v2\n")
    L.dir("opt/replaced")
    L.file("opt/replaced/.wh..wh..opq", "")
    L.file("opt/replaced/new", "new\n")
    L.hardlink("opt/links/hard-lower", "opt/keep/stays")
    L.close()


def recipe_innocent(out, args):
    """Harmless first layer of every hostile image."""
    L = Layer(out)
    L.dir("etc")
    L.file("etc/innocent", "innocent\n")
    L.dir("tmp", 0o1777)
    L.close()


# Hostile second layers.  A safe unpacker must leave ESCAPE (and ESCAPE/victim)
# untouched; each payload is the text "pwned-NAME\n".
def evil(name, fn):
    def recipe(out, args):
        L = Layer(out)
        fn(L, "pwned-%s\n" % name)
        L.close()
    return recipe


EVIL = {
    # absolute member name
    "abs": lambda L, p: L.file(ESCAPE + "/pwned-abs", p),
    # '..' member name
    "dotdot": lambda L, p: L.file(UP + ESCAPE[1:] + "/pwned-dotdot", p),
    # write through an absolute symlink created earlier in the same layer
    "symlink": lambda L, p: (L.symlink("link", ESCAPE), L.file("link/pwned-symlink", p)),
    # write through a relative symlink that climbs out
    "symlink-rel": lambda L, p: (L.symlink("up", "../../../../../../../.." + ESCAPE),
                                 L.file("up/pwned-symrel", p)),
    # symlink -> symlink -> outside
    "symlink-chain": lambda L, p: (L.symlink("a", "b"), L.symlink("b", ESCAPE),
                                   L.file("a/pwned-chain", p)),
    # a regular file entry replacing a symlink that points at the victim
    "symlink-file": lambda L, p: (L.symlink("victim-link", ESCAPE + "/victim"),
                                  L.file("victim-link", p)),
    # hardlink to a host file, then content written to the link name
    "hardlink": lambda L, p: (L.hardlink("hl", ESCAPE + "/victim"), L.file("hl", p)),
    "hardlink-dotdot": lambda L, p: (L.hardlink("hl", UP + ESCAPE[1:] + "/victim"),
                                     L.file("hl", p)),
    # whiteouts aimed outside, directly and through a symlink (incl. opaque)
    "whiteout": lambda L, p: (L.file(UP + ESCAPE[1:] + "/.wh.victim", ""),
                              L.symlink("link", ESCAPE),
                              L.file("link/.wh.victim", ""),
                              L.file("link/.wh..wh..opq", "")),
}

RECIPES = {
    "busybox": recipe_busybox,
    "debian-l2": recipe_debian_l2,
    "debian-l3": recipe_debian_l3,
    "innocent": recipe_innocent,
}
RECIPES.update({"evil-" + k: evil(k, v) for k, v in EVIL.items()})


def cmd_layer(args):
    tmp = args.out + ".tmp"
    if args.recipe == "dir":
        layer_from_dir(tmp, args.dir, args.exclude)
    else:
        RECIPES[args.recipe](tmp, args)
    os.replace(tmp, args.out)


# ----------------------------------------------------------------- OCI layout
class Layout:
    def __init__(self, root):
        self.root = root
        os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(root, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)

    def blob_path(self, digest):
        return os.path.join(self.root, "blobs", "sha256", digest.split(":", 1)[1])

    def put_bytes(self, data, media_type):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        p = self.blob_path(digest)
        if not os.path.exists(p):
            with open(p + ".tmp", "wb") as f:
                f.write(data)
            os.replace(p + ".tmp", p)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def put_file(self, path, media_type):
        h, size = hashlib.sha256(), 0
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
        digest = "sha256:" + h.hexdigest()
        p = self.blob_path(digest)
        if not os.path.exists(p):
            shutil.copyfile(path, p + ".tmp")
            os.replace(p + ".tmp", p)
        return {"mediaType": media_type, "digest": digest, "size": size}

    def tag(self, desc, tag):
        p = os.path.join(self.root, "index.json")
        idx = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}
        if os.path.exists(p):
            with open(p) as f:
                idx = json.load(f)
        key = "org.opencontainers.image.ref.name"
        idx["manifests"] = [m for m in idx["manifests"]
                            if m.get("annotations", {}).get(key) != tag]
        idx["manifests"].append(dict(desc, annotations={key: tag}))
        with open(p + ".tmp", "w") as f:
            json.dump(idx, f, indent=2)
        os.replace(p + ".tmp", p)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def compressed(tar, how, workdir):
    """Return the path of TAR compressed with HOW (written into WORKDIR)."""
    if how == "none":
        return tar
    out = os.path.join(workdir, os.path.basename(tar) + "." + {"gzip": "gz", "zstd": "zst"}[how])
    if how == "gzip":
        # mtime=0 and no file name: reproducible output
        with open(tar, "rb") as src, open(out + ".tmp", "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            shutil.copyfileobj(src, gz, 1 << 20)
    else:
        subprocess.run(["zstd", "-q", "-f", "-T0", "-o", out + ".tmp", tar], check=True)
    os.replace(out + ".tmp", out)
    return out


def dumps(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def cmd_build(args):
    with open(args.spec) as f:
        spec = json.load(f)
    lay = Layout(spec["layout"])
    created = spec.get("created", "2024-01-01T00:00:00Z")
    work = tempfile.mkdtemp(prefix="mkimage.", dir=os.path.dirname(os.path.abspath(spec["layout"])))
    try:
        manifests = []
        for img in spec["images"]:
            layers, diff_ids, history = [], [], []
            for ly in img["layers"]:
                diff_ids.append(sha256_file(ly["tar"]))
                blob = compressed(ly["tar"], ly["compression"], work)
                layers.append(lay.put_file(blob, MT_LAYER[ly["compression"]]))
                history.append({"created": created,
                                "created_by": ly.get("created_by", "drun hack/mkimage.py"),
                                "comment": "drun test layer"})
            for h in img.get("history_extra", []):
                history.append(dict({"created": created}, **h))
            config = {"created": created, "architecture": img["architecture"], "os": img["os"]}
            if img.get("variant"):
                config["variant"] = img["variant"]
            config["config"] = img.get("config", {})
            config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
            config["history"] = history
            manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST,
                        "config": lay.put_bytes(dumps(config), MT_CONFIG),
                        "layers": layers}
            desc = lay.put_bytes(dumps(manifest), MT_MANIFEST)
            plat = {"architecture": img["architecture"], "os": img["os"]}
            if img.get("variant"):
                plat["variant"] = img["variant"]
            manifests.append(dict(desc, platform=plat))
        if spec.get("index") or len(manifests) > 1:
            top = lay.put_bytes(dumps({"schemaVersion": 2, "mediaType": MT_INDEX,
                                       "manifests": manifests}), MT_INDEX)
        else:
            top = {k: manifests[0][k] for k in ("mediaType", "digest", "size")}
        lay.tag(top, spec["tag"])
        print(top["digest"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("layer")
    p.add_argument("recipe", choices=["dir"] + sorted(RECIPES))
    p.add_argument("out")
    p.add_argument("--dir")
    p.add_argument("--exclude", action="append", default=[])
    p.add_argument("--busybox", default="/bin/busybox")
    p.add_argument("--arch", default="amd64")
    p = sub.add_parser("build")
    p.add_argument("spec")
    args = ap.parse_args()
    if args.cmd == "layer":
        cmd_layer(args)
    else:
        cmd_build(args)


if __name__ == "__main__":
    sys.exit(main())
