"""Container images without a registry or a container engine: one-layer image archives that
`ctr images import`, `podman load` and `docker load` all accept.

    python3 packaging/image.py deviceid-inject [--binary dist/deviceid-inject] [--root .build/trixie]
                                                [--tag REF] [--out dist/deviceid-inject-image.tar]
    python3 packaging/image.py files --tag REF --out FILE [--entrypoint JSON] [--symlink LINK=TARGET]...
                                     DEST=SRC...

The archive is laid out as `docker save` has written it since Docker 25: an OCI image layout
(oci-layout, index.json naming the image, blobs/sha256/...) with Docker's manifest.json beside it
pointing at the same blobs. The layer is an uncompressed tar made deterministically (sorted, owned by
root, mtime 0), so the same inputs give the same image digest.

`deviceid-inject` is the image deploy/ runs: the one-file binary at /usr/local/bin/deviceid-inject,
already unpacked into its cache folder (/var/cache/deviceid-inject/<build id>, as the launcher would),
so a container starts without unpacking and on a read-only root; and the runtime libraries the binary
does not carry itself, taken from the Debian 13 (trixie) minbase root build.sh makes for it (a release
in support; the binary, built against glibc 2.31, runs on trixie's 2.41). Which libraries: those in
packaging/image-libs.txt, which deploy/Containerfile copies too. The build computes what the binary
needs (every ELF's DT_NEEDED, transitively, plus libgcc_s.so.1, which glibc loads at a thread's exit)
and fails when that differs from the list, so the list can neither miss a library nor keep a stale
one.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIBS_LIST = REPO / "packaging" / "image-libs.txt"
DEFAULT_TAG = "localhost/deviceid-inject:0.1.0"
CACHE = "var/cache/deviceid-inject"
ENV_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib")
# Loaded with dlopen, so in no DT_NEEDED: glibc unwinds a thread's stack at pthread_exit with it and
# aborts ("libgcc_s.so.1 must be installed for pthread_exit to work") when it is missing.
DLOPENED = ("libgcc_s.so.1",)
EPOCH = "1970-01-01T00:00:00Z"


@dataclass(frozen=True)
class Entry:
    """One member of the layer: a file (its source on this machine), a folder or a symlink."""

    path: str  # inside the image, without the leading '/'
    kind: str  # "file", "dir", "symlink"
    mode: int = 0o755
    source: Path | None = None
    target: str = ""


def layer(entries: list[Entry], out: Path) -> str:
    """Write the layer tar to `out` (parent folders included, sorted, owned by root, mtime 0);
    returns its sha256."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        parts = entry.path.split("/")
        for i in range(1, len(parts)):
            by_path.setdefault("/".join(parts[:i]), Entry("/".join(parts[:i]), "dir"))
        by_path[entry.path] = entry
    with open(out, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(by_path):
            entry = by_path[path]
            info = tarfile.TarInfo(path)
            info.mode, info.mtime, info.uid, info.gid = entry.mode, 0, 0, 0
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
                tar.addfile(info)
            else:
                assert entry.source is not None
                info.size = entry.source.stat().st_size
                with open(entry.source, "rb") as data:
                    tar.addfile(info, data)
    return _sha256(out)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def archive(reference: str, entries: list[Entry], out: Path, entrypoint: list[str], labels: dict[str, str]) -> str:
    """Write the image archive; returns the manifest's digest (the image's identity)."""
    with tempfile.TemporaryDirectory() as scratch:
        layer_file = Path(scratch) / "layer.tar"
        layer_digest = layer(entries, layer_file)
        config = _json(
            {
                "architecture": "amd64",
                "os": "linux",
                "created": EPOCH,
                "config": {"Env": [ENV_PATH], "Entrypoint": entrypoint, "WorkingDir": "/", "Labels": labels},
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
                "history": [{"created": EPOCH, "created_by": "packaging/image.py"}],
            }
        )
        config_digest = hashlib.sha256(config).hexdigest()
        manifest = _json(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": f"sha256:{config_digest}",
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": f"sha256:{layer_digest}",
                        "size": layer_file.stat().st_size,
                    }
                ],
            }
        )
        manifest_digest = hashlib.sha256(manifest).hexdigest()
        index = _json(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": f"sha256:{manifest_digest}",
                        "size": len(manifest),
                        "annotations": {
                            "io.containerd.image.name": reference,
                            "org.opencontainers.image.ref.name": reference.rpartition(":")[2],
                        },
                    }
                ],
            }
        )
        docker = _json(
            [
                {
                    "Config": f"blobs/sha256/{config_digest}",
                    "RepoTags": [reference],
                    "Layers": [f"blobs/sha256/{layer_digest}"],
                }
            ]
        )
        tmp = out.with_name(f".{out.name}.tmp")
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in (
                ("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
                ("index.json", index),
                ("manifest.json", docker),
                (f"blobs/sha256/{config_digest}", config),
                (f"blobs/sha256/{manifest_digest}", manifest),
            ):
                _add_bytes(tar, name, data)
            tar.add(layer_file, f"blobs/sha256/{layer_digest}", filter=_owned_by_root)
        os.replace(tmp, out)
    return f"sha256:{manifest_digest}"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = info.mtime = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


# --- what the binary needs at run time ---------------------------------------------------------------


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def needed(path: Path) -> list[str]:
    """The DT_NEEDED names of an ELF file (objdump, from binutils)."""
    out = subprocess.run(["objdump", "-p", str(path)], check=True, capture_output=True, text=True).stdout
    return [line.split()[1] for line in out.splitlines() if line.strip().startswith("NEEDED")]


def interpreter(path: Path) -> str | None:
    """The PT_INTERP of an ELF executable (readelf, from binutils): where the kernel finds ld.so."""
    out = subprocess.run(["readelf", "-lW", str(path)], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "Requesting program interpreter:" in line:
            return line.split(":", 1)[1].strip(" ]").lstrip("/")
    return None


def _find(root: Path, name: str) -> str | None:
    """The path of library `name` in `root` (relative to it, as a loader would find it)."""
    for folder in LIB_DIRS:
        if resolve_in(root, f"{folder}/{name}").is_file():
            return f"{folder}/{name}"
    return None


def runtime_libraries(unpacked: Path, launcher: Path, root: Path) -> set[str]:
    """Root-relative paths of the libraries the binary loads that it does not carry itself."""
    carried = {p.name for p in unpacked.rglob("*") if p.is_file()}
    pending = [p for p in [launcher, *unpacked.rglob("*")] if p.is_file() and not p.is_symlink() and is_elf(p)]
    found: set[str] = set()
    names_done: set[str] = set()
    interpreters = {i for p in pending if (i := interpreter(p))}
    found.update(interpreters)
    # The interpreter is loaded already: a DT_NEEDED of its soname (libc's) is resolved to it, not searched.
    names_done.update(Path(i).name for i in interpreters)
    while pending:
        for name in needed(pending.pop()):
            if name in carried or name in names_done:
                continue
            names_done.add(name)
            where = _find(root, name)
            if where is None:
                raise SystemExit(f"image.py: {name} is needed but is not in {root}")
            found.add(where)
            pending.append(resolve_in(root, where))
    for name in DLOPENED:
        where = _find(root, name)
        if where is None:
            raise SystemExit(f"image.py: {name} is not in {root}")
        found.add(where)
    return found


def listed_libraries(path: Path = LIBS_LIST) -> set[str]:
    lines = path.read_text().splitlines()
    return {line.strip().lstrip("/") for line in lines if line.strip() and not line.startswith("#")}


def resolve_in(root: Path, relative: str, hops: int = 40) -> Path:
    """The file `relative` names inside `root`, following symlinks as the root itself would (an
    absolute target starts again at `root`, not at this machine's /)."""
    parts = [p for p in relative.split("/") if p]
    done: list[str] = []
    while parts:
        part = parts.pop(0)
        here = root.joinpath(*done, part)
        if here.is_symlink():
            hops -= 1
            if hops < 0:
                raise SystemExit(f"image.py: too many symlinks under {root} for {relative}")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
        elif part == "..":
            done = done[:-1]
        elif part != ".":
            done.append(part)
    return root.joinpath(*done)


def unpack(binary: Path, cache: Path) -> Path:
    """Let the launcher unpack `binary` into `cache`, as it does on first run; the folder it made."""
    cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DEVICEID_INJECT_CACHE": str(cache)}
    subprocess.run([str(binary), "--version"], check=True, capture_output=True, env=env)
    folders = [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(folders) != 1:
        raise SystemExit(f"image.py: expected one unpacked build in {cache}, found {folders}")
    return folders[0]


def deviceid_inject_image(binary: Path, root: Path, reference: str, out: Path, libs: Path = LIBS_LIST) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        unpacked = unpack(binary, Path(scratch) / "cache")
        needs = runtime_libraries(unpacked, binary, root)
        listed = listed_libraries(libs)
        if needs != listed:
            raise SystemExit(
                f"image.py: {libs} does not match what {binary} needs at run time:\n"
                f"  missing from the list: {sorted(needs - listed) or 'none'}\n"
                f"  listed but not needed: {sorted(listed - needs) or 'none'}\n"
                "Update the list (deploy/Containerfile copies the same files)."
            )
        entries = [
            Entry("usr/local/bin/deviceid-inject", "file", 0o755, binary),
            Entry(CACHE, "dir", 0o755),
            Entry("tmp", "dir", 0o1777),
        ]
        for path in sorted(unpacked.rglob("*")):
            rel = f"{CACHE}/{unpacked.name}/{path.relative_to(unpacked)}"
            if path.is_symlink():
                entries.append(Entry(rel, "symlink", 0o777, target=os.readlink(path)))
            elif path.is_dir():
                entries.append(Entry(rel, "dir", 0o755))
            else:
                entries.append(Entry(rel, "file", stat.S_IMODE(path.stat().st_mode), path))
        for lib in sorted(listed):  # at the path the loader looks for, symlinks followed: as `cp -L` copies
            real = resolve_in(root, lib)
            entries.append(Entry(lib, "file", stat.S_IMODE(real.stat().st_mode), real))
        passwd = Path(scratch) / "passwd"
        passwd.write_text("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n")
        group = Path(scratch) / "group"
        group.write_text("root:x:0:\nnogroup:x:65534:\n")
        entries += [Entry("etc/passwd", "file", 0o644, passwd), Entry("etc/group", "file", 0o644, group)]
        labels = {"org.opencontainers.image.title": "deviceid-inject", "io.deviceid-inject.build-id": unpacked.name}
        return archive(reference, entries, out, ["/usr/local/bin/deviceid-inject"], labels)


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="image.py", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    ours = commands.add_parser("deviceid-inject", help="the image deploy/ runs")
    ours.add_argument("--binary", type=Path, default=REPO / "dist" / "deviceid-inject")
    ours.add_argument(
        "--root", type=Path, default=REPO / ".build" / "trixie", help="build.sh's Debian 13 run-time root"
    )
    ours.add_argument("--tag", default=DEFAULT_TAG)
    ours.add_argument("--out", type=Path, default=REPO / "dist" / "deviceid-inject-image.tar")
    ours.add_argument("--libs", type=Path, default=LIBS_LIST, help="the runtime libraries it must hold")
    generic = commands.add_parser("files", help="an image of the files given")
    generic.add_argument("--tag", required=True)
    generic.add_argument("--out", type=Path, required=True)
    generic.add_argument("--entrypoint", default="[]", help="JSON list")
    generic.add_argument("--symlink", action="append", default=[], metavar="LINK=TARGET")
    generic.add_argument("files", nargs="+", metavar="DEST=SRC")
    args = top.parse_args(argv)
    if args.command == "deviceid-inject":
        digest = deviceid_inject_image(args.binary, args.root, args.tag, args.out, args.libs)
    else:
        entries = [Entry("tmp", "dir", 0o1777)]
        for spec in args.files:
            dest, _, src = spec.partition("=")
            mode = stat.S_IMODE(os.stat(src).st_mode)
            entries.append(Entry(dest.lstrip("/"), "file", mode, Path(src)))
        for spec in args.symlink:
            link, _, target = spec.partition("=")
            entries.append(Entry(link.lstrip("/"), "symlink", 0o777, target=target))
        digest = archive(args.tag, entries, args.out, json.loads(args.entrypoint), {})
    print(f"{args.tag} {digest} {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
