#!/usr/bin/env python3
"""Builds an OCI image archive for one Tollgate binary, offline: no registry, no base image.

The image holds the binary, the shared libraries it links (found with ldd, kept at the paths
the dynamic loader looks them up), the CA roots, an /etc/passwd with the non-root user 65532 and
a writable /tmp. The archive is an OCI image layout in a tar (what `ctr images import`,
`kind load image-archive`, `k3s ctr images import` and `podman load` read). It is reproducible:
every timestamp is 0, entries are sorted, owners are fixed, and gzip carries no name or time,
so the same binary and libraries give the same bytes.

    deploy/images/build.py BINARY --name tollgate-proxy --tag 0.1.0 --port 8080 --port 9090 --out DIR

prints the archive's path, its reference, its manifest digest and its size. The tests build their
own images the same way (the pods' sandbox, an echo backend, Redis from Debian's redis-server):
`--registry` names them, `--also` adds more binaries (with their libraries) to /usr/local/bin.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

USER = 65532
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
REGISTRY = "ghcr.io/tollgate-dev"


def shared_libraries(binary):
    """The files `binary` loads at start (ldd), the loader included; vDSO left out."""
    ran = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if ran.returncode != 0:
        if "not a dynamic executable" in ran.stdout + ran.stderr:
            return []  # a static binary needs nothing beside it
        sys.exit(f"build.py: ldd {binary} failed: {(ran.stderr or ran.stdout).strip()}")
    out = ran.stdout
    libs = set()
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                libs.add(target)
        elif parts and parts[0].startswith("/"):
            libs.add(parts[0])  # the dynamic loader
    return sorted(libs)


def tar_entry(tar, name, data=None, mode=0o644, directory=False, uid=0):
    info = tarfile.TarInfo(name.lstrip("/"))
    info.mtime = 0
    info.uid = info.gid = uid
    info.uname = info.gname = ""
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = mode
        tar.addfile(info)
    else:
        info.mode = mode
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def layer(binaries):
    """The image's one layer, as (uncompressed tar, gzip of it); `binaries` maps a path in the
    image to the file it is copied from."""
    files = {}
    for target_path, binary in binaries.items():
        files[target_path] = (open(binary, "rb").read(), 0o755)
        for lib in shared_libraries(binary):
            # Kept where the loader and the binary's NEEDED entries look (resolved through symlinks).
            files[lib] = (open(os.path.realpath(lib), "rb").read(), 0o755)
    files[CA_BUNDLE] = (open(CA_BUNDLE, "rb").read(), 0o644)
    files["/etc/passwd"] = (f"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{USER}:{USER}:nonroot:/home/nonroot:/sbin/nologin\n".encode(), 0o644)
    files["/etc/group"] = (f"root:x:0:\nnonroot:x:{USER}:\n".encode(), 0o644)
    dirs = {"/tmp", "/home/nonroot"}
    for path in files:
        parent = os.path.dirname(path)
        while parent not in ("", "/"):
            dirs.add(parent)
            parent = os.path.dirname(parent)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(dirs):
            mode = 0o1777 if d == "/tmp" else 0o755
            tar_entry(tar, d, mode=mode, directory=True, uid=USER if d == "/home/nonroot" else 0)
        for path in sorted(files):
            data, mode = files[path]
            tar_entry(tar, path, data, mode)
    raw = raw.getvalue()
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
        gz.write(raw)
    return raw, packed.getvalue()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build(binary, name, tag, ports, out_dir, registry=REGISTRY, also=()):
    target_path = f"/usr/local/bin/{name}"
    binaries = {target_path: binary}
    for extra in also:
        binaries[f"/usr/local/bin/{os.path.basename(extra)}"] = extra
    raw, packed = layer(binaries)
    ref = f"{registry}/{name}:{tag}"
    labels = {
        "org.opencontainers.image.title": name,
        "org.opencontainers.image.version": tag,
        "org.opencontainers.image.source": "https://github.com/tollgate-dev/tollgate",
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.description": f"Tollgate's {name.removeprefix('tollgate-')}, built offline from the release binary",
    }
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": f"{USER}:{USER}",
            "Entrypoint": [target_path],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", f"SSL_CERT_FILE={CA_BUNDLE}"],
            "WorkingDir": "/home/nonroot",
            "ExposedPorts": {f"{p}/tcp": {} for p in ports},
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(raw)]},
        "history": [{"created_by": "deploy/images/build.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(packed), "size": len(packed)}],
        "annotations": labels,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(manifest_bytes),
            "size": len(manifest_bytes),
            # The name importers give the image: containerd reads the second, most others the first.
            "annotations": {"org.opencontainers.image.ref.name": ref, "io.containerd.image.name": ref},
        }],
    }
    index_bytes = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    blobs = {manifest_bytes, config_bytes, packed}
    os.makedirs(out_dir, exist_ok=True)
    archive = os.path.join(out_dir, f"{name}-{tag}.oci.tar")
    with tarfile.open(archive + ".partial", mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar_entry(tar, "blobs", mode=0o755, directory=True)
        tar_entry(tar, "blobs/sha256", mode=0o755, directory=True)
        for blob in sorted(blobs, key=sha256):
            tar_entry(tar, "blobs/sha256/" + sha256(blob).removeprefix("sha256:"), blob)
        tar_entry(tar, "index.json", index_bytes)
        tar_entry(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    os.replace(archive + ".partial", archive)
    return archive, sha256(manifest_bytes), ref


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binary", help="the release binary (target/release/tollgate-proxy)")
    parser.add_argument("--name", required=True, help="image name: tollgate-proxy or tollgate-operator")
    parser.add_argument("--tag", required=True, help="image tag, e.g. 0.1.0")
    parser.add_argument("--port", type=int, action="append", default=[], help="a port the image listens on (repeat)")
    parser.add_argument("--out", required=True, help="directory for the archive")
    parser.add_argument("--registry", default=REGISTRY, help=f"the registry part of the image's name (default {REGISTRY})")
    parser.add_argument("--also", action="append", default=[], help="another binary for /usr/local/bin, e.g. redis-cli beside redis-server (repeat)")
    args = parser.parse_args()
    for binary in [args.binary, *args.also]:
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            sys.exit(f"build.py: {binary} is not an executable file (build it first: cargo build --release)")
    if not re.fullmatch(r"[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*", args.registry):
        sys.exit(f"build.py: --registry {args.registry!r} is not a registry name (host[:port][/path], lower case)")
    # The OCI grammar of a name component and of a tag: anything else would name no image.
    if not re.fullmatch(r"[a-z0-9]+([._-][a-z0-9]+)*", args.name):
        sys.exit(f"build.py: --name {args.name!r} is not an image name (lower-case letters, digits, '.', '_', '-')")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", args.tag):
        sys.exit(f"build.py: --tag {args.tag!r} is not an image tag (letters, digits, '.', '_', '-'; at most 128)")
    for port in args.port:
        if not 1 <= port <= 65535:
            sys.exit(f"build.py: --port {port} is not a TCP port (1-65535)")
    archive, digest, ref = build(args.binary, args.name, args.tag, args.port, args.out, args.registry, args.also)
    print(f"{archive} {ref} {digest} {os.path.getsize(archive)} bytes")


if __name__ == "__main__":
    main()
