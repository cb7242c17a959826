#!/usr/bin/env python3
"""Writes bench's `large` image into an OCI layout, built like real images rather than of
random data: compressible text, ~16k small files, semi-compressible data, zeros, and
whiteouts in the upper layers. 5 layers, about 1 GB uncompressed and 0.6 GB as gzip -6
(umoci's gzip would barely compress the semi-compressible data).

Usage: bench/layers.py LAYOUT TAG   (LAYOUT must exist: `umoci init --layout LAYOUT`)
"""
import base64
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile

MiB = 1024 * 1024
rng = random.Random(16)
WORDS = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 11)))
         for _ in range(4000)]


def text(size):
    """Log-like lines of words drawn from a vocabulary: gzip gets it to about a third."""
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choices(WORDS, k=rng.randint(4, 16)))
        line = f"{rng.randint(0, 86399):05d} {line}\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def semi(size):
    """base64 of random bytes: gzip keeps about three quarters."""
    return base64.b64encode(os.urandom(size * 3 // 4 + 3))[:size]


def add_bytes(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1700000000
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar, name):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
    tar.addfile(info)


def add_stream(tar, name, size, chunk):
    """A big file of `size` bytes made by `chunk(n)`, streamed through a temporary file."""
    path = os.path.join(OUT, ".big")
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(chunk(n))
            left -= n
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 1700000000
    with open(path, "rb") as f:
        tar.addfile(info, f)
    os.remove(path)


def layer(n):
    return tarfile.open(os.path.join(OUT, f"{n}.tar"), "w", format=tarfile.PAX_FORMAT)


LAYOUT, TAG = sys.argv[1], sys.argv[2]
OUT = os.path.join(LAYOUT, f".{TAG}-tars")
os.makedirs(OUT, exist_ok=True)

# 1: a static busybox (so `ferry run large true` runs), and 16,384 small text files
# (0.5-7 KiB) in 128 directories, like a package tree.
with layer(1) as tar:
    add_dir(tar, "bin")
    with open("/bin/busybox", "rb") as f:
        add_bytes(tar, "bin/busybox", f.read(), mode=0o755)
    for applet in ["sh", "true", "echo", "cat", "ls", "wc"]:
        link = tarfile.TarInfo(f"bin/{applet}")
        link.type, link.linkname, link.mtime = tarfile.SYMTYPE, "busybox", 1700000000
        tar.addfile(link)
    add_dir(tar, "usr")
    add_dir(tar, "usr/share")
    for d in range(128):
        add_dir(tar, f"usr/share/d{d:03d}")
        for f in range(128):
            add_bytes(tar, f"usr/share/d{d:03d}/f{f:03d}.txt", text(rng.randint(512, 7 * 1024)))
# 2: compressible text: 230 MiB of logs in 23 files.
with layer(2) as tar:
    add_dir(tar, "var")
    add_dir(tar, "var/log")
    for i in range(23):
        add_bytes(tar, f"var/log/app{i:02d}.log", text(10 * MiB))
# 3: semi-compressible data, 450 MiB.
with layer(3) as tar:
    add_dir(tar, "data")
    for i in range(3):
        add_stream(tar, f"data/blob{i}.b64", 140 * MiB, semi)
# 4: 64 MiB of zeros and 220 MiB more semi-compressible data; a whiteout of a log.
with layer(4) as tar:
    add_dir(tar, "data")
    add_stream(tar, "data/zeros.img", 64 * MiB, bytes)
    add_stream(tar, "data/blob3.b64", 220 * MiB, semi)
    add_dir(tar, "var")
    add_dir(tar, "var/log")
    add_bytes(tar, "var/log/.wh.app00.log", b"")
# 5: a small change: whiteouts of files and a whole directory, an opaque directory,
# rewritten files.
with layer(5) as tar:
    add_dir(tar, "usr")
    add_dir(tar, "usr/share")
    for d in range(0, 128, 8):
        add_bytes(tar, f"usr/share/.wh.d{d:03d}", b"")
    add_dir(tar, "usr/share/d001")
    add_bytes(tar, "usr/share/d001/.wh..wh..opq", b"")
    add_bytes(tar, "usr/share/d001/new.txt", text(4096))
    for d in range(2, 128, 8):
        add_dir(tar, f"usr/share/d{d:03d}")
        for f in range(0, 128, 4):
            add_bytes(tar, f"usr/share/d{d:03d}/.wh.f{f:03d}.txt", b"")
        add_bytes(tar, f"usr/share/d{d:03d}/f001.txt", text(2048))
    add_dir(tar, "etc")
    add_bytes(tar, "etc/bench-release", b"large\n")


def digest_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def put_blob(path):
    """Moves `path` into the layout's blobs; returns (digest, size)."""
    digest, size = digest_of(path), os.path.getsize(path)
    os.replace(path, os.path.join(LAYOUT, "blobs", "sha256", digest.split(":")[1]))
    return digest, size


def put_json(value):
    data = json.dumps(value, separators=(",", ":")).encode()
    path = os.path.join(OUT, "json")
    with open(path, "wb") as f:
        f.write(data)
    return put_blob(path)


diff_ids, layers = [], []
for n in range(1, 6):
    t = os.path.join(OUT, f"{n}.tar")
    diff_ids.append(digest_of(t))
    subprocess.run(["gzip", "-6", "-n", t], check=True)
    digest, size = put_blob(t + ".gz")
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                   "digest": digest, "size": size})
config = {
    "created": "2023-11-14T22:13:20Z", "architecture": "amd64", "os": "linux",
    "config": {"Cmd": ["/bin/sh"]},
    "rootfs": {"type": "layers", "diff_ids": diff_ids},
    "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"bench layer {n}"}
                for n in range(1, 6)],
}
config_digest, config_size = put_json(config)
manifest = {
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": config_digest, "size": config_size},
    "layers": layers,
}
manifest_digest, manifest_size = put_json(manifest)
index_path = os.path.join(LAYOUT, "index.json")
with open(index_path) as f:
    index = json.load(f)
index["manifests"] = [m for m in index["manifests"]
                      if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != TAG]
index["manifests"].append({
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": manifest_digest, "size": manifest_size,
    "annotations": {"org.opencontainers.image.ref.name": TAG},
})
with open(index_path, "w") as f:
    json.dump(index, f)
os.rmdir(OUT)
