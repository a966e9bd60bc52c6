"""The image deploy/ runs (packaging/image.py, `make image`), checked as an archive and run from its
own files: what ctr, podman and docker read from it, the binary it holds, the build already unpacked
for a read-only root, and only the runtime libraries the binary needs. podman loads it, and builds
deploy/Containerfile into the same files. tests/system/test_node.py runs it under a real kubelet
(ctr)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed.harness import Outcome, base_env, run
from testbed.helpers import REPO
from testbed.node import build_our_image

EXE = os.environ.get("DEVICEID_INJECT_EXE", "")
pytestmark = pytest.mark.skipif(not EXE, reason="the image is built from the binary (set DEVICEID_INJECT_EXE)")
IMAGE_TOOL = REPO / "packaging" / "image.py"
LIBS = REPO / "packaging" / "image-libs.txt"
CONTAINERFILE = REPO / "deploy" / "Containerfile"
TRIXIE = REPO / ".build" / "trixie"  # build.sh's Debian 13 minbase root, where the image's libraries come from


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("image") / "image.tar"
    build_our_image(Path(EXE), "localhost/t:1", out)
    return out


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_the_archive_is_an_oci_layout_and_a_docker_archive_of_the_same_blobs(archive: Path):
    files = members(archive)
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rpartition("/")[2]
    index = json.loads(files["index.json"])
    (descriptor,) = index["manifests"]
    assert descriptor["annotations"]["io.containerd.image.name"] == "localhost/t:1"
    manifest = json.loads(files[f"blobs/sha256/{descriptor['digest'].split(':')[1]}"])
    (docker,) = json.loads(files["manifest.json"])
    assert docker["RepoTags"] == ["localhost/t:1"]
    assert docker["Config"] == f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"
    assert docker["Layers"] == [f"blobs/sha256/{layer['digest'].split(':')[1]}" for layer in manifest["layers"]]
    config = json.loads(files[docker["Config"]])
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in manifest["layers"]]
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/deviceid-inject"]


@pytest.fixture(scope="module")
def rootfs(archive: Path, tmp_path_factory) -> Path:
    files = members(archive)
    (layer_name,) = json.loads(files["manifest.json"])[0]["Layers"]
    root = tmp_path_factory.mktemp("rootfs")
    with tarfile.open(fileobj=io.BytesIO(files[layer_name])) as layer:
        layer.extractall(root, filter="tar")  # owners and modes as the image has them
    root.chmod(0o755)  # as a runtime makes a container's root folder
    return root


# What a runtime gives a container with readOnlyRootFilesystem: its image's files, read-only, and /proc.
READ_ONLY_CHROOT = """
root="$1"; user="$2"; shift 2
mkdir -p "$root/proc"
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
exec chroot --userspec="$user" "$root" "$@"
"""


def in_image(rootfs: Path, *argv: str, user: str = "0:0") -> subprocess.CompletedProcess:
    """Run argv with the image's files as the whole root, read-only, in a mount namespace of its own."""
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", READ_ONLY_CHROOT, "sh", str(rootfs), user]
    return subprocess.run([*command, *argv], capture_output=True, text=True, env=base_env(), timeout=60)


def test_the_image_holds_the_binary_and_runs_it_from_its_own_libraries_on_a_read_only_root(rootfs: Path):
    assert (rootfs / "usr/local/bin/deviceid-inject").read_bytes() == Path(EXE).read_bytes()
    for user in ("0:0", "65534:65534"):  # a workload's init container may run as anyone
        proc = in_image(rootfs, "/usr/local/bin/deviceid-inject", "--version", user=user)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith("deviceid-inject 0.")
    cache = rootfs / "var/cache/deviceid-inject"
    (build,) = [p for p in cache.iterdir()]
    assert cache.stat().st_mode & 0o777 == 0o755 and build.stat().st_uid == 0


def test_the_build_fails_when_the_library_list_misses_one_or_keeps_a_stale_one(tmp_path: Path):
    listed = (REPO / "packaging" / "image-libs.txt").read_text().splitlines()
    missing = [line for line in listed if not line.endswith("libgcc_s.so.1")]
    stale = [*listed, "lib/x86_64-linux-gnu/libudev.so.1"]
    for lines, words in ((missing, "missing from the list: ['lib/x86_64-linux-gnu/libgcc_s.so.1']"),
                         (stale, "listed but not needed: ['lib/x86_64-linux-gnu/libudev.so.1']")):  # fmt: skip
        libs = tmp_path / "libs.txt"
        libs.write_text("\n".join(lines) + "\n")
        out = run([sys.executable, str(IMAGE_TOOL), "deviceid-inject", "--binary", EXE, "--libs", str(libs),
                   "--out", str(tmp_path / "x.tar")])  # fmt: skip
        assert out.code != 0
        assert words in out.stderr
        assert not (tmp_path / "x.tar").exists()


# --- podman: the archive loaded, and deploy/Containerfile built into the same files -----------------------


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Callable[..., Outcome]]:
    """podman with a store of the test's own (vfs, no daemon, no events), removed afterwards."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run make setup")
    store = tmp_path / "podman"
    runroot = Path(tempfile.mkdtemp(prefix="dit-podman-"))  # podman refuses a runroot over 50 characters
    base = ["podman", "--root", str(store / "root"), "--runroot", str(runroot), "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs", "--events-backend", "none"]  # fmt: skip

    def call(*args: str, timeout: float = 300) -> Outcome:
        out = run([*base, *args], base_env(HOME=str(store)), timeout=timeout)
        assert out.code == 0, f"podman {' '.join(args)}: {out.stdout}{out.stderr}"
        return out

    try:
        yield call
    finally:
        run([*base, "image", "unmount", "--all"], base_env(HOME=str(store)))
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)


def trixie_root() -> Path:
    if not (TRIXIE / ".minbase-ok").exists():
        pytest.fail(f"no {TRIXIE}: run ./build.sh (it makes the image's Debian 13 root)")
    return TRIXIE


def test_the_images_libraries_are_debian_13s(rootfs: Path):
    """The loader and libc come from Debian 13 (glibc 2.41, in support), not from the Debian 11 root the
    binary is built in; the binary runs on them (the read-only root test above)."""
    libc = (rootfs / "lib/x86_64-linux-gnu/libc.so.6").read_bytes()
    assert b"GNU C Library (Debian GLIBC 2.41-" in libc
    assert libc == (trixie_root() / "usr/lib/x86_64-linux-gnu/libc.so.6").read_bytes()


def files_of(root: Path) -> dict[str, tuple[str, ...]]:
    """Every path under `root`: its kind, mode, and content digest or link target."""
    found: dict[str, tuple[str, ...]] = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder, name)
            info = path.lstat()
            mode = oct(stat.S_IMODE(info.st_mode))
            if stat.S_ISLNK(info.st_mode):
                found[str(path.relative_to(root))] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[str(path.relative_to(root))] = ("dir", mode)
            else:
                found[str(path.relative_to(root))] = ("file", mode, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def test_podman_loads_the_archive(podman, archive: Path):
    podman("load", "-i", str(archive))
    (image,) = json.loads(podman("image", "inspect", "localhost/t:1").stdout)
    assert image["Config"]["Entrypoint"] == ["/usr/local/bin/deviceid-inject"]


def test_the_containerfile_builds_the_same_files_as_make_image(podman, archive: Path, tmp_path: Path):
    """deploy/Containerfile as a user builds it (podman, from a clone after ./build.sh), its base
    debian:trixie-slim stood in for by build.sh's Debian 13 minbase root (no registry here): the image
    has exactly the files, modes and contents of make image's."""
    base = trixie_root()
    tarball = tmp_path / "trixie-slim.tar"
    with tarfile.open(tarball, "w") as tar:
        for entry in sorted(os.listdir(base)):
            if entry not in ("proc", "sys", "dev"):
                tar.add(base / entry, arcname=entry)
    podman("import", str(tarball), "docker.io/library/debian:trixie-slim")
    context = tmp_path / "clone"
    for name, source in (("dist/deviceid-inject", Path(EXE)), ("packaging/image-libs.txt", LIBS),
                         ("deploy/Containerfile", CONTAINERFILE)):  # fmt: skip
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, context / name)
    podman("build", "--pull=never", "--isolation", "chroot", "-f", "deploy/Containerfile", "-t", "localhost/built:1",
           str(context), timeout=600)  # fmt: skip
    podman("load", "-i", str(archive))
    built = Path(podman("image", "mount", "localhost/built:1").stdout.strip())
    made = Path(podman("image", "mount", "localhost/t:1").stdout.strip())
    ours, theirs = files_of(made), files_of(built)
    assert "usr/local/bin/deviceid-inject" in ours
    assert theirs == ours
    (image,) = json.loads(podman("image", "inspect", "localhost/built:1").stdout)
    assert image["Config"]["Entrypoint"] == ["/usr/local/bin/deviceid-inject"]
