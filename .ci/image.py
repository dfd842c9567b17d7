#!/usr/bin/env python3
"""The controller image, described once and built without a container engine.

Standard library only, so it runs on CI, in the Dockerfile's build stage and in the release
workflow alike. Subcommands:

  rootfs --binary PATH --out DIR   lay out the image's whole file set in DIR: the binary,
                                   exactly the shared libraries `ldd` names (none for a static
                                   binary), the name-service files glibc needs to resolve
                                   names, the CA bundle, the nonroot user 65532, /tmp, the
                                   Debian copyright notices of the copied libraries and the
                                   CycloneDX SBOM at SBOM_PATH (written beside DIR too).
  pack --rootfs DIR --out OUTDIR   write the OCI image layout OUTDIR/oci and one tarball that is
                                   at once an oci-archive and a docker-archive; prints its path
  verify-config OUTDIR             check the written config and annotations against DESCRIPTION
  dockerfile                       print the Dockerfile generated from DESCRIPTION

Everything with a time in it takes SOURCE_DATE_EPOCH (the commit time): tar entries, the
config's `created`, the SBOM's timestamp. Entries are sorted, owners are numeric, gzip's
header carries no name and no time, so the same inputs give the same digest.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- the one description -------------------------------------------------------------------
BINARY_PATH = "usr/local/bin/redeliver"
SBOM_PATH = "usr/share/doc/redeliver/sbom.cdx.json"
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
USER = "65532:65532"
METRICS_PORT = "8080/tcp"
ENTRYPOINT = ["/" + BINARY_PATH]
CMD = ["controller"]
ENV = [
    "PATH=/usr/local/bin",
    "SSL_CERT_FILE=/" + CA_BUNDLE,
]
# Files written verbatim (path, mode, text). nsswitch: glibc >= 2.34 has the files and dns
# backends built into libc.so.6, so no libnss_*.so is needed; Kubernetes and Docker mount
# their own /etc/hosts and /etc/resolv.conf over these.
ETC_FILES = [
    ("etc/passwd", 0o644,
     "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"),
    ("etc/group", 0o644, "root:x:0:\nnonroot:x:65532:\n"),
    ("etc/nsswitch.conf", 0o644, "passwd: files\ngroup: files\nhosts: files dns\n"),
    ("etc/hosts", 0o644, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
]
# Directories with an owner or mode other than root 0755.
SPECIAL_DIRS = {"tmp": (0o1777, 0, 0), "home/nonroot": (0o700, 65532, 65532)}
# Budget for the uncompressed root filesystem (the binary is most of it).
SIZE_BUDGET_BYTES = 60 * 1024 * 1024
TITLE = "redeliver"
DESCRIPTION_TEXT = ("Kubernetes operator that keeps Microsoft Entra ID access package "
                    "assignments truly delivered")


def die(msg):
    print(f"image.py: {msg}", file=sys.stderr)
    sys.exit(2)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def crate_field(field):
    m = re.search(rf'^{field}\s*=\s*"([^"]*)"', read(os.path.join(ROOT, "Cargo.toml")), re.M)
    if not m:
        die(f"Cargo.toml has no {field} in [workspace.package]")
    return m.group(1)


def image_repository():
    """The chart's default image.repository: the one name the workflow and README use."""
    text = read(os.path.join(ROOT, "charts/redeliver/values.yaml"))
    m = re.search(r'^image:\n(?:[ ].*\n)*?  repository:\s*"?([^"\s]+)"?\s*$', text, re.M)
    if not m:
        die("charts/redeliver/values.yaml has no image.repository")
    return m.group(1)


def source_url():
    # ghcr.io/OWNER/NAME is published from github.com/OWNER/NAME.
    repo = image_repository()
    if not repo.startswith("ghcr.io/"):
        die(f"image.repository {repo} is not on ghcr.io: set the source URL for it here")
    return "https://github.com/" + repo[len("ghcr.io/"):]


def labels(revision):
    return {
        "org.opencontainers.image.title": TITLE,
        "org.opencontainers.image.description": DESCRIPTION_TEXT,
        "org.opencontainers.image.source": source_url(),
        "org.opencontainers.image.version": crate_field("version"),
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.licenses": crate_field("license"),
    }


def epoch():
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        die("SOURCE_DATE_EPOCH is not set (use the commit time: git log -1 --format=%ct)")
    return int(value)


def rfc3339(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def revision():
    return os.environ.get("REDELIVER_REVISION") or die(
        "REDELIVER_REVISION is not set (the commit the binary was built from)")


# --- rootfs ----------------------------------------------------------------------------------
def shared_libraries(binary):
    """Paths the dynamic loader opens for BINARY, as ldd names them; [] for a static one."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    text = out.stdout + out.stderr
    if "not a dynamic executable" in text or "statically linked" in text:
        return []
    if out.returncode != 0:
        die(f"ldd {binary} failed: {text.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" ")[0]
            if target == "not":
                die(f"{binary} needs a library that is not installed: {line}")
            if target.startswith("/"):
                libs.append(target)
        elif line.startswith("/"):
            libs.append(line.split(" ")[0])  # the ELF interpreter
    return sorted(set(libs))


def debian_package(path):
    """(package, version, arch) owning PATH, or None when dpkg does not know it."""
    for candidate in (path, os.path.realpath(path)):
        out = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        if out.returncode == 0:
            pkg = out.stdout.splitlines()[0].rsplit(": ", 1)[0]  # "libc6:amd64: /lib/..."
            return package_version(pkg)
    return None


def package_version(pkg):
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version} ${Architecture}", pkg],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    name, version, arch = out.stdout.split()
    return name, version, arch


def install(src, rootfs, rel, mode):
    dst = os.path.join(rootfs, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)  # follows symlinks: the image holds the file under the path asked for
    os.chmod(dst, mode)


def cmd_rootfs(args):
    if os.path.exists(args.out) and os.listdir(args.out):
        die(f"{args.out} is not empty: give a new directory")
    os.makedirs(args.out, exist_ok=True)
    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        die(f"{binary} is not an executable: build it first (cargo build --release --locked --bin redeliver)")
    # Debug info carries the build machine's paths; symbols stay for backtraces.
    install(binary, args.out, BINARY_PATH, 0o755)
    subprocess.run(["strip", "--strip-debug", os.path.join(args.out, BINARY_PATH)], check=True)
    debs = {}
    for lib in shared_libraries(binary):
        install(lib, args.out, lib.lstrip("/"), 0o755)
        owner = debian_package(lib)
        if owner:
            debs[owner[0]] = owner
    ca = "/" + CA_BUNDLE
    if not os.path.isfile(ca):
        die(f"{ca} is missing: install Debian's ca-certificates")
    install(ca, args.out, CA_BUNDLE, 0o644)
    certs = package_version("ca-certificates")
    if certs:
        debs[certs[0]] = certs
    for name in sorted(debs):
        notice = f"/usr/share/doc/{name}/copyright"
        if os.path.isfile(notice):
            install(notice, args.out, notice.lstrip("/"), 0o644)
    for rel, mode, text in ETC_FILES:
        dst = os.path.join(args.out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(dst, mode)
    for rel in SPECIAL_DIRS:
        os.makedirs(os.path.join(args.out, rel), exist_ok=True)
    # Modes and owners as the layer records them, so the Dockerfile's COPY --from=build keeps them.
    for dirpath, dirnames, _ in os.walk(args.out):
        for n in dirnames:
            rel = os.path.relpath(os.path.join(dirpath, n), args.out)
            mode, uid, gid = SPECIAL_DIRS.get(rel, (0o755, 0, 0))
            os.chmod(os.path.join(dirpath, n), mode)
            if os.geteuid() == 0:
                os.chown(os.path.join(dirpath, n), uid, gid)
    sbom = make_sbom(sorted(debs.values()))
    dst = os.path.join(args.out, SBOM_PATH)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(sbom, f, indent=1, sort_keys=True)
        f.write("\n")
    os.chmod(dst, 0o644)
    print(f"rootfs: {len(sbom['components'])} SBOM components, "
          f"{len(debs)} Debian packages ({', '.join(sorted(debs))})", file=sys.stderr)


# --- SBOM ------------------------------------------------------------------------------------
def lock_checksums():
    sums, name, version = {}, None, None
    for line in read(os.path.join(ROOT, "Cargo.lock")).splitlines():
        if line == "[[package]]":
            name = version = None
        elif line.startswith('name = "'):
            name = line.split('"')[1]
        elif line.startswith('version = "'):
            version = line.split('"')[1]
        elif line.startswith('checksum = "'):
            sums[(name, version)] = line.split('"')[1]
    return sums


def make_sbom(debs):
    """CycloneDX 1.5: every crate linked into the binary (cargo's resolver for this target,
    normal dependencies; proc-macros and build scripts run at build time only and are left
    out), and the Debian packages whose files the image copies."""
    fmt = "{p}\t{l}\t{r}"
    out = subprocess.run(
        ["cargo", "tree", "--locked", "-e", "normal", "--prefix", "none", "--no-dedupe",
         "-p", "redeliver", "--format", fmt],
        cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        die(f"cargo tree failed: {out.stderr.strip()}")
    sums = lock_checksums()
    components = {}
    for line in out.stdout.splitlines():
        if not line.strip() or "(proc-macro)" in line:
            continue
        p, lic, repo = (line.split("\t") + ["", ""])[:3]
        words = p.split()
        name, version = words[0], words[1].lstrip("v")
        if (name, version) in components:
            continue
        c = {"type": "library", "name": name, "version": version,
             "bom-ref": f"pkg:cargo/{name}@{version}", "purl": f"pkg:cargo/{name}@{version}"}
        if lic:
            c["licenses"] = [{"expression": lic.replace("/", " OR ")}]
        digest = sums.get((name, version))
        if digest:
            c["hashes"] = [{"alg": "SHA-256", "content": digest}]
        if repo:
            c["externalReferences"] = [{"type": "vcs", "url": repo}]
        if "(" in p:  # a workspace path dependency: built from this repository
            c["purl"] = c["bom-ref"]
        components[(name, version)] = c
    root = components.pop(("redeliver", crate_field("version")), None)
    if root is None:
        die("cargo tree did not list the redeliver package itself")
    for name, version, arch in debs:
        ref = f"pkg:deb/debian/{name}@{version}?arch={arch}"
        components[(name, version)] = {"type": "library", "name": name, "version": version,
                                       "bom-ref": ref, "purl": ref}
    ts = epoch()
    rev = revision()
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"redeliver/{rev}/{ts}")),
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(ts),
            "tools": {"components": [{"type": "application", "name": ".ci/image.py (cargo tree, dpkg-query)"}]},
            "component": dict(root, type="application",
                              properties=[{"name": "org.opencontainers.image.revision", "value": rev}]),
        },
        "components": [components[k] for k in sorted(components)],
    }


# --- pack ------------------------------------------------------------------------------------
def layer_tar(rootfs, mtime):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = []
        for dirpath, dirnames, filenames in os.walk(rootfs):
            for n in dirnames + filenames:
                entries.append(os.path.relpath(os.path.join(dirpath, n), rootfs))
        for rel in sorted(entries):
            full = os.path.join(rootfs, rel)
            st = os.lstat(full)
            info = tarfile.TarInfo(rel)
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if os.path.islink(full):
                die(f"{rel} is a symlink: the rootfs holds regular files only")
            if os.path.isdir(full):
                info.type = tarfile.DIRTYPE
                info.mode, info.uid, info.gid = SPECIAL_DIRS.get(rel, (0o755, 0, 0))
                tar.addfile(info)
            else:
                info.size = st.st_size
                info.mode = st.st_mode & 0o7777
                with open(full, "rb") as f:
                    tar.addfile(info, f)
    return buf.getvalue()


def blob(outdir, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(outdir, "blobs", "sha256", digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def goarch(binary):
    with open(binary, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        die(f"{binary} is not an ELF executable")
    machine = int.from_bytes(head[18:20], "little")
    arches = {0x3E: "amd64", 0xB7: "arm64"}
    return arches.get(machine) or die(f"unsupported ELF machine {machine:#x}")


def cmd_pack(args):
    ts, rev = epoch(), revision()
    version = crate_field("version")
    repo = image_repository()
    arch = goarch(os.path.join(args.rootfs, BINARY_PATH))
    layout = os.path.join(args.out, "oci")
    if os.path.exists(layout):
        shutil.rmtree(layout)
    os.makedirs(layout)
    raw = layer_tar(args.rootfs, ts)
    if len(raw) > SIZE_BUDGET_BYTES:
        die(f"the root filesystem is {len(raw)} bytes, over the budget of {SIZE_BUDGET_BYTES}: "
            "find what grew (tar -tvf on the layer) before raising SIZE_BUDGET_BYTES")
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0, compresslevel=9) as z:
        z.write(raw)
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    layer_digest, layer_size = blob(layout, gz.getvalue())
    lab = labels(rev)
    config = {
        "architecture": arch,
        "os": "linux",
        "created": rfc3339(ts),
        "config": {
            "User": USER,
            "ExposedPorts": {METRICS_PORT: {}},
            "Env": ENV,
            "Entrypoint": ENTRYPOINT,
            "Cmd": CMD,
            "WorkingDir": "/",
            "Labels": lab,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": rfc3339(ts), "created_by": ".ci/image (daemonless)"}],
    }
    config_digest, config_size = blob(layout, canonical(config))
    annotations = dict(lab, **{"org.opencontainers.image.created": rfc3339(ts)})
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_size}],
        "annotations": annotations,
    }
    manifest_digest, manifest_size = blob(layout, canonical(manifest))
    name = f"{repo}:{version}"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": arch, "os": "linux"},
            # ref.name for oci-archive/skopeo/podman, image.name for containerd (kind) and docker.
            "annotations": {"org.opencontainers.image.ref.name": version,
                            "io.containerd.image.name": name},
        }],
    }
    files = {
        "oci-layout": canonical({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical(index),
        # docker-archive's index, so `docker load` of older engines reads the same tarball.
        "manifest.json": canonical([{"Config": "blobs/sha256/" + config_digest[7:],
                                     "RepoTags": [name],
                                     "Layers": ["blobs/sha256/" + layer_digest[7:]]}]),
    }
    for rel, data in files.items():
        with open(os.path.join(layout, rel), "wb") as f:
            f.write(data)
    archive = os.path.join(args.out, f"redeliver-{version}-linux-{arch}.tar")
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(["oci-layout", "index.json", "manifest.json", "blobs", "blobs/sha256"]
                          + ["blobs/sha256/" + d for d in sorted(os.listdir(os.path.join(layout, "blobs/sha256")))]):
            full = os.path.join(layout, rel)
            info = tarfile.TarInfo(rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = ts, 0, 0, "", ""
            if os.path.isdir(full):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = os.path.getsize(full), 0o644
                with open(full, "rb") as f:
                    tar.addfile(info, f)
    with open(os.path.join(args.out, "digest"), "w", encoding="utf-8") as f:
        f.write(manifest_digest + "\n")
    print(f"image {name} linux/{arch}: manifest {manifest_digest}, layer {layer_size} bytes "
          f"gzip ({len(raw)} bytes uncompressed, budget {SIZE_BUDGET_BYTES})", file=sys.stderr)
    print(archive)


def cmd_verify_config(args):
    """Checks the written image against DESCRIPTION; prints one line per check."""
    layout = os.path.join(args.outdir, "oci")
    index = json.loads(read(os.path.join(layout, "index.json")))
    manifest_digest = index["manifests"][0]["digest"]
    blob_path = lambda d: os.path.join(layout, "blobs", "sha256", d.split(":", 1)[1])
    manifest = json.loads(read(blob_path(manifest_digest)))
    config = json.loads(read(blob_path(manifest["config"]["digest"])))
    c = config["config"]
    failures = []

    def check(what, got, want):
        if got == want:
            print(f"  ok    {what}: {got}")
        else:
            failures.append(what)
            print(f"  FAIL  {what}: {got!r}, expected {want!r}")

    check("user", c.get("User"), USER)
    check("entrypoint", c.get("Entrypoint"), ENTRYPOINT)
    check("cmd", c.get("Cmd"), CMD)
    check("exposed metrics port", sorted(c.get("ExposedPorts", {})), [METRICS_PORT])
    want = labels(revision())
    for key in ("source", "version", "revision", "licenses"):
        k = "org.opencontainers.image." + key
        check(f"annotation {k}", manifest.get("annotations", {}).get(k), want[k])
        check(f"label {k}", c.get("Labels", {}).get(k), want[k])
    for d in [manifest_digest, manifest["config"]["digest"]] + [l["digest"] for l in manifest["layers"]]:
        with open(blob_path(d), "rb") as f:
            check(f"blob {d[:19]}… matches its digest", "sha256:" + hashlib.sha256(f.read()).hexdigest(), d)
    if failures:
        sys.exit(1)


# --- Dockerfile ------------------------------------------------------------------------------
def cmd_dockerfile(_args):
    lab = labels("${REVISION}")
    label_lines = " \\\n      ".join(f'{k}="{v}"' for k, v in lab.items())
    env_lines = " \\\n    ".join(ENV)
    print(f"""# syntax=docker/dockerfile:1
#
# GENERATED by `python3 .ci/image.py dockerfile > Dockerfile` from the description in
# .ci/image.py; .ci/chart-check fails when this file differs. Edit the description, not this.
#
# The Redeliver controller image, the same file set as the daemonless `bash .ci/image OUTDIR`:
# the build stage compiles the binary on Debian bookworm and runs the same `.ci/image.py rootfs`
# that lays out exactly what it needs at run time (the binary, the shared libraries ldd names,
# nsswitch/passwd/group/hosts, Debian's CA bundle, user 65532, /tmp, the SBOM); the image is
# that directory on `scratch`: no shell, no package manager.
#
#   docker build --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) \\
#     --build-arg REVISION=$(git rev-parse HEAD) -t {image_repository()}:{crate_field("version")} .
#
# The builder runs on the target platform, so `docker buildx build --platform
# linux/amd64,linux/arm64 .` needs no cross toolchain.

ARG RUST_VERSION=1
FROM rust:${{RUST_VERSION}}-bookworm AS build

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# python3 runs .ci/image.py; ca-certificates provides the bundle copied into the image.
# hadolint ignore=DL3008
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 ca-certificates \\
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

ARG SOURCE_DATE_EPOCH=0
ARG REVISION=unknown
RUN --mount=type=cache,target=/usr/local/cargo/registry \\
    --mount=type=cache,target=/usr/local/cargo/git \\
    --mount=type=cache,target=/src/target \\
    set -eux; \\
    cargo build --release --locked --bin redeliver; \\
    SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" REDELIVER_REVISION="$REVISION" \\
      python3 .ci/image.py rootfs --binary target/release/redeliver --out /rootfs

FROM scratch
ARG REVISION=unknown
COPY --from=build /rootfs/ /
LABEL {label_lines}
ENV {env_lines}
USER {USER}
# Metrics, /livez and /readyz (the chart passes --metrics-addr=0.0.0.0:8080).
EXPOSE {METRICS_PORT.split("/")[0]}
ENTRYPOINT {json.dumps(ENTRYPOINT)}
CMD {json.dumps(CMD)}""")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("rootfs")
    p.add_argument("--binary", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_rootfs)
    p = sub.add_parser("pack")
    p.add_argument("--rootfs", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_pack)
    p = sub.add_parser("verify-config")
    p.add_argument("outdir")
    p.set_defaults(fn=cmd_verify_config)
    p = sub.add_parser("dockerfile")
    p.set_defaults(fn=cmd_dockerfile)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
