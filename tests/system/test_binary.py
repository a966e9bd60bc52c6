"""The shipped binary (DEVICEID_INJECT_EXE, normally dist/deviceid-inject from build.sh) as a node runs it.

No Python on the node, glibc 2.31 or newer: it runs with an empty environment, says how it was
built, and every ELF it brings (the launcher and everything it unpacks) needs at most GLIBC_2.31.
The `bullseye` test runs it in a minimal Debian 11 root (glibc 2.31, no Python at all), made with
debootstrap once and cached under .build/bullseye-min.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from testbed.helpers import SYSFS, minimal_bullseye, prev_result

EXE = os.environ.get("DEVICEID_INJECT_EXE", "")
pytestmark = pytest.mark.skipif(not EXE, reason="set DEVICEID_INJECT_EXE to the binary under test")

GLIBC_MAX = (2, 31)
SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
MAGIC = b"DIDINJ\x00\x01"  # packaging/pack.py's trailer


def run_bare(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the binary with nothing but `env` in its environment (`env -i`): no PATH, so no python.
    The session's launcher cache is kept (unless `env` names another), so /var/cache stays untouched."""
    bare = {k: v for k, v in os.environ.items() if k == "DEVICEID_INJECT_CACHE"}
    bare.update(env or {})
    return subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in bare.items()), EXE, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def build_id(exe: str) -> str | None:
    """The launcher's build id (its cache folder name), or None for a binary without a payload."""
    with open(exe, "rb") as f:
        f.seek(-80, os.SEEK_END)
        trailer = f.read(80)
    if not trailer.startswith(MAGIC):
        return None
    return trailer[24:].rstrip(b"\0").decode()


def needs_launcher() -> str:
    found = build_id(EXE)
    if found is None:
        pytest.skip(f"{EXE} is not the one-file launcher (no payload trailer)")
    return found


def glibc_floor(path: Path) -> tuple[int, ...]:
    """The highest GLIBC_x.y symbol version an ELF file needs, from `objdump -T`."""
    out = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True).stdout
    versions = [tuple(int(n) for n in v.split(".")) for v in re.findall(r"\bGLIBC_(\d+(?:\.\d+)+)", out)]
    return max(versions, default=(0,))


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def test_runs_with_an_empty_environment_and_says_it_was_built_with_nuitka():
    proc = run_bare("--version")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("deviceid-inject ")
    # cli.version_text() with the _build.py that build.sh writes
    assert re.fullmatch(r"built \S+Z from [0-9a-f]+(-dirty)? with Nuitka [0-9.]+ on glibc [0-9.]+", lines[1]), lines
    # a CPython in security support (3.12 and later, December 2026): build.sh's, not the build root's 3.9
    python = re.fullmatch(r"Python (\d+)\.(\d+)\.\d+", lines[2])
    assert python and (int(python[1]), int(python[2])) >= (3, 12), lines
    assert proc.stderr == ""


def test_carries_openssl_3_and_no_older_one(tmp_path):
    """The ssl module (the bridge's TLS) runs on the OpenSSL 3 build.sh builds (3.5, an LTS release),
    carried in the folder; nothing there links Debian 11's OpenSSL 1.1.1, past its end of life."""
    ident = needs_launcher()
    cache = tmp_path / "cache"
    proc = run_bare("--version", env={"DEVICEID_INJECT_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = cache / ident
    names = {path.name for path in folder.rglob("*")}
    assert {"libssl.so.3", "libcrypto.so.3"} <= names, sorted(names)
    assert not {name for name in names if ".so.1.1" in name}, sorted(names)
    assert re.search(rb"OpenSSL 3\.5\.\d+ ", (folder / "libcrypto.so.3").read_bytes())


def test_runs_with_no_python_on_path(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = run_bare("--version", env={"PATH": str(empty)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "with Nuitka" in proc.stdout


@pytest.mark.parametrize("asked", SUPPORTED)
def test_cni_version_prints_exactly_the_spec_shape(asked):
    proc = run_bare(stdin=json.dumps({"cniVersion": asked}), env={"CNI_COMMAND": "VERSION"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == {"cniVersion": asked, "supportedVersions": SUPPORTED}


def test_glibc_floor_of_the_launcher_and_every_unpacked_elf(tmp_path):
    if shutil.which("objdump") is None:  # make setup installs binutils: missing is a broken setup
        pytest.fail("objdump (binutils) is not installed: run make setup")
    ident = needs_launcher()
    cache = tmp_path / "cache"
    proc = run_bare("--version", env={"DEVICEID_INJECT_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = cache / ident
    assert sorted(os.listdir(cache)) == [ident]
    floors = {"launcher": glibc_floor(Path(EXE))}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and is_elf(path):
            floors[str(path.relative_to(folder))] = glibc_floor(path)
    assert "deviceid-inject" in floors
    assert len(floors) > 2, "expected the program and its extension modules"
    assert floors["launcher"] > (0,) and floors["deviceid-inject"] > (0,), "objdump found no GLIBC versions"
    too_new = {name: ".".join(map(str, v)) for name, v in floors.items() if v > GLIBC_MAX}
    assert too_new == {}, f"need more than glibc {'.'.join(map(str, GLIBC_MAX))}"


def test_install_puts_it_in_opt_cni_bin_and_warms_the_cache(tmp_path):
    """The one installer, run by the binary itself as on a node by hand or in a staging root:
    0755 in the CNI folder, no temporary file left, and its one run unpacked it into the cache
    DEVICEID_INJECT_CACHE names."""
    ident = needs_launcher()
    folder = tmp_path / "opt/cni/bin"
    folder.mkdir(parents=True)
    cache = tmp_path / "var/cache/deviceid-inject"
    cache.parent.mkdir(parents=True)  # the launcher makes its own folder, not the root's /var/cache
    env = {**os.environ, "DEVICEID_INJECT_CACHE": str(cache)}
    proc = subprocess.run(
        [EXE, "install", "--from", EXE, str(folder)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = folder / "deviceid-inject"
    assert installed.stat().st_mode & 0o7777 == 0o755
    assert installed.read_bytes() == Path(EXE).read_bytes()
    assert os.listdir(folder) == ["deviceid-inject"], "no temporary file may be left"
    assert (cache / ident / "deviceid-inject").is_file()
    assert proc.stdout.startswith(f"installed {installed}: deviceid-inject ")


# ---------------------------------------------------------------- Debian 11 with no Python


def in_root(root: Path, env: dict[str, str], argv: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    """Run argv in `root` with only `env`, /proc mounted in a private mount namespace of its own."""
    script = (
        'trap \'umount -l "$0/proc" 2>/dev/null || true\' EXIT; mount -t proc proc "$0/proc"; '
        'chroot "$0" /usr/bin/env -i "$@"'
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(root)]
        + [f"{k}={v}" for k, v in env.items()]
        + argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.bullseye
def test_runs_on_debian_bullseye_with_no_python():
    needs_launcher()
    root = minimal_bullseye()
    assert not (root / "usr/bin/python3").exists(), "the bullseye root must have no Python"
    assert not list((root / "usr/bin").glob("python*"))
    status = (root / "var/lib/dpkg/status").read_text()
    assert re.search(r"^Package: libc6\n(?:.+\n)*?Version: 2\.31-", status, re.M), "expected glibc 2.31"
    name = f"dit-{uuid.uuid4().hex[:8]}"
    work = root / "tmp" / name  # everything of this run, removed afterwards
    inside = f"/tmp/{name}"
    cache = root / "var/cache/deviceid-inject"
    try:
        (work / "bin").mkdir(parents=True)
        shutil.copy2(EXE, work / "bin/deviceid-inject")
        shutil.copytree(SYSFS / "vf-iavf", work / "sysfs/vf-iavf", symlinks=True)
        exe = f"{inside}/bin/deviceid-inject"

        proc = in_root(root, {}, [exe, "--version"])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "with Nuitka" in proc.stdout

        proc = in_root(root, {"CNI_COMMAND": "VERSION"}, [exe], stdin='{"cniVersion": "1.0.0"}')
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout) == {"cniVersion": "1.0.0", "supportedVersions": SUPPORTED}

        config = {
            "cniVersion": "1.1.0",
            "name": "n6-dpdk",
            "type": "deviceid-inject",
            "sysfsRoot": f"{inside}/sysfs/vf-iavf",
            "deviceInfoRoot": f"{inside}/devinfo",
            "dataDir": f"{inside}/state",
            "prevResult": prev_result("1.1.0"),
        }
        env = {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "ctr-1",
            "CNI_NETNS": "/proc/self/ns/net",
            "CNI_IFNAME": "net1",
            "CNI_PATH": "/opt/cni/bin",
        }
        proc = in_root(root, env, [exe], stdin=json.dumps(config))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result = json.loads(proc.stdout)
        assert result["cniVersion"] == "1.1.0"
        assert result["interfaces"][0]["pciID"] == "0000:3b:02.3"
        info = work / "devinfo/cni/n6-dpdk-ctr-1_net1"
        assert json.loads(info.read_text()) == {
            "type": "pci",
            "version": "1.1.0",
            "pci": {"pci-address": "0000:3b:02.3", "pf-pci-address": "0000:3b:00.0"},
        }
        assert info.stat().st_mode & 0o777 == 0o444
        # unpacked where a node would have it, by the launcher, inside the root
        assert (cache / needs_launcher() / "deviceid-inject").is_file()
    finally:
        if os.path.ismount(root / "proc"):  # only if the private namespace leaked it
            subprocess.run(["umount", "-l", str(root / "proc")], check=False)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
