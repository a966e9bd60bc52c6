"""Shared test helpers: running the plugin as a runtime would, fixture configs, real netns and veths.

DEVICEID_INJECT_EXE names the executable under test (the Nuitka binary); unset, the
suite runs `python -m deviceid_inject`. Every namespace and link a test makes is removed
in the fixture's teardown, also when the test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTDATA = REPO / "testdata"
SYSFS = TESTDATA / "sysfs"
sys.path.insert(0, str(TESTDATA))


def host_pci_netdev() -> tuple[str, str]:
    """A PCI-backed netdev of this host and its address, read straight from the host's sysfs."""
    from deviceid_inject.pci import address_in_path

    for name in sorted(os.listdir("/sys/class/net")):
        device = f"/sys/class/net/{name}/device"
        if os.path.exists(device):
            address = address_in_path(os.path.realpath(device))
            if address:
                return name, address
    pytest.skip("this host has no PCI-backed netdev")


# Handed through to every plugin process: where the interpreter finds the package, and where
# the binary's launcher unpacks (a folder of the test session's, not the host's /var/cache).
PASSED_THROUGH = ("PYTHONPATH", "DEVICEID_INJECT_CACHE")


def passed_through() -> dict[str, str]:
    return {key: os.environ[key] for key in PASSED_THROUGH if os.environ.get(key)}


@pytest.fixture(scope="session", autouse=True)
def launcher_cache(tmp_path_factory):
    """The binary's unpacked folder lives in the session's tmp dir and goes with it."""
    if not os.environ.get("DEVICEID_INJECT_EXE") or os.environ.get("DEVICEID_INJECT_CACHE"):
        yield
        return
    cache = tmp_path_factory.mktemp("launcher-cache")
    cache.chmod(0o755)
    os.environ["DEVICEID_INJECT_CACHE"] = str(cache)
    try:
        yield
    finally:
        del os.environ["DEVICEID_INJECT_CACHE"]


def plugin_command() -> list[str]:
    exe = os.environ.get("DEVICEID_INJECT_EXE")
    return [exe] if exe else [sys.executable, "-m", "deviceid_inject"]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def run_plugin(
    command: str,
    config: dict[str, Any] | bytes | None,
    *,
    container_id: str = "ctr-1",
    ifname: str = "net1",
    netns: str = "/proc/self/ns/net",
    env: dict[str, str] | None = None,
) -> Run:
    """Run the plugin once, like a runtime: CNI_* in the environment, the config on stdin."""
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": "/opt/cni/bin",
    }
    environ.update(passed_through())
    environ.update(env or {})
    environ = {k: v for k, v in environ.items() if v is not None}
    stdin = config if isinstance(config, bytes) else json.dumps(config or {}).encode()
    proc = subprocess.run(plugin_command(), input=stdin, env=environ, capture_output=True, timeout=60)
    run = Run(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
    # Whatever happened, the protocol channel holds one JSON object or nothing, and no traceback leaks.
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    if run.stdout.strip():
        assert isinstance(run.json, dict), run.stdout
    if run.code != 0:
        assert set(run.json) == {"cniVersion", "code", "msg", "details"}, run.stdout
    return run


def prev_result(version: str = "1.1.0", ifname: str = "net1", mac: str = "02:00:00:00:00:01", **iface: Any) -> dict:
    ip: dict[str, Any] = {"address": "10.10.0.5/24", "gateway": "10.10.0.1", "interface": 0}
    if not version.startswith("1."):
        ip["version"] = "4"
    return {
        "cniVersion": version,
        "interfaces": [{"name": ifname, "mac": mac, "sandbox": "/var/run/netns/pod", **iface}],
        "ips": [ip],
        "dns": {"nameservers": ["10.96.0.10"]},
    }


@pytest.fixture(autouse=True)
def no_validation_cache_on_the_host(monkeypatch):
    """In-process parses of configs without dataDir would remember their validation under the
    host's /var/lib/cni/deviceid-inject: tests never write there."""
    from deviceid_inject import config

    real = config._validation_entry
    monkeypatch.setattr(config, "_validation_entry", lambda raw: real(raw) if "dataDir" in raw else None)


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    return {"devinfo": tmp_path / "devinfo", "state": tmp_path / "state"}


@pytest.fixture
def make_config(roots: dict[str, Path]):
    """A deviceid-inject config over a fixture sysfs tree, with scratch device-info and state roots."""

    def make(sysfs: str | None = "vf-iavf", version: str = "1.1.0", prev: Any = "default", **keys: Any) -> dict:
        config: dict[str, Any] = {
            "cniVersion": version,
            "name": "n6-dpdk",
            "type": "deviceid-inject",
            "deviceInfoRoot": str(roots["devinfo"]),
            "dataDir": str(roots["state"]),
        }
        if sysfs is not None:
            config["sysfsRoot"] = str(SYSFS / sysfs)
        if prev == "default":
            prev = prev_result(version)
        if prev is not None:
            config["prevResult"] = prev
        config.update(keys)
        return config

    return make


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns():
    """A fresh named network namespace; removed afterwards."""
    name = f"dit-{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", name)
    try:
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def veth_in(netns: str):
    """Put one end of a new veth pair into `netns` under the given name; both ends go afterwards."""
    made: list[str] = []

    def make(ifname: str) -> str:
        host = f"dih{uuid.uuid4().hex[:8]}"
        peer = f"dip{uuid.uuid4().hex[:8]}"
        _ip("link", "add", host, "type", "veth", "peer", "name", peer)
        made.append(host)
        _ip("link", "set", peer, "netns", os.path.basename(netns), "name", ifname)
        return host

    yield make
    for host in made:
        subprocess.run(["ip", "link", "del", host], capture_output=True)
