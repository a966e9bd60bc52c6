"""Test helpers (`from testbed.helpers import ...`); the fixtures are in tests/conftest.py.

- Paths and constants defined once: REPO (tools'), TESTDATA, SYSFS, CONFLISTS, the cnitool folder,
  the vf-iavf fixture's net1, the CNI versions we speak.
- Running the plugin as a runtime would: `cni_env` (the one builder of a CNI environment),
  `run_plugin`, `plugin_command`. DEVICEID_INJECT_EXE names the executable under test (the
  Nuitka binary); unset, it is `python -m deviceid_inject`.
- Conflist templates in testdata/conflists/*.conflist, rendered with `${key}` placeholders.
- `Cnitool`: runs cnitool in a private mount namespace with a scratch folder bound over
  /var/lib/cni, so its result cache never touches the host's and `gc` could reach nothing else.
- What a device-info tree and a dataDir hold, and the CNI output contract.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import json
import os
import shutil
import ssl
import string
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from deviceid_inject.protocol import SUPPORTED_VERSIONS
from testbed import harness, served, tools
from testbed.harness import Outcome, base_env
from testbed.tools import CNI_BIN, CNITOOL, REPO

TESTDATA = REPO / "testdata"
SYSFS = TESTDATA / "sysfs"
CONFLISTS = TESTDATA / "conflists"

# testdata/sysfs/vf-iavf: the pod's net1 is VF 11 (0000:3b:02.3) of the E810 PF 0000:3b:00.0.
SYSFS_IAVF = SYSFS / "vf-iavf"
NET1_PCI = "0000:3b:02.3"
NET1_PF = "0000:3b:00.0"
# Its 16 VFs (net1 is VFS[11]): Pods handed different ones side by side show any swap between them.
VFS = tuple(f"0000:3b:0{1 + n // 8}.{n % 8}" for n in range(16))
NET1_DEVICE_INFO = {"type": "pci", "version": "1.1.0", "pci": {"pci-address": NET1_PCI, "pf-pci-address": NET1_PF}}
# The selection route's deviceID: a PCI address no host has, which the plugin treats as absent.
PLACEHOLDER = "0000:00:00.0"

# Codes docs/discovery-and-state.md documents; 199 ("a bug of ours") is never acceptable.
DOCUMENTED_CODES = frozenset({1, 4, 5, 6, 7, 11, 50, 100, 101, 102})
OUTPUT_COMMANDS = ("ADD", "VERSION")  # the commands that print something on success


def have_cni_tools() -> bool:
    return all((CNI_BIN / name).is_file() for name in ("cnitool", "host-device", "tuning"))


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, mounts)")


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
PASSED_THROUGH = ("PYTHONPATH", "DEVICEID_INJECT_CACHE", "DEVICEID_INJECT_SOCKET")


def passed_through() -> dict[str, str]:
    return {key: os.environ[key] for key in PASSED_THROUGH if os.environ.get(key)}


def cni_env(
    command: str,
    *,
    container_id: str = "ctr-1",
    netns: str = "/proc/self/ns/net",
    ifname: str = "net1",
    **overrides: str | None,
) -> dict[str, str]:
    """The environment a runtime gives the plugin for one call: PATH, the CNI_* variables and what
    PASSED_THROUGH names. `overrides` (e.g. CNI_ARGS) win; a None value drops that variable."""
    environ = {
        "PATH": base_env()["PATH"],
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": "/opt/cni/bin",
        **passed_through(),
        **overrides,
    }
    return {key: value for key, value in environ.items() if value is not None}


def plugin_command() -> list[str]:
    exe = os.environ.get("DEVICEID_INJECT_EXE")
    return [exe] if exe else [sys.executable, "-m", "deviceid_inject"]


def run_plugin(
    command: str,
    config: dict[str, Any] | bytes | None,
    *,
    container_id: str = "ctr-1",
    ifname: str = "net1",
    netns: str = "/proc/self/ns/net",
    env: dict[str, str] | None = None,
) -> Outcome:
    """Run the plugin once, like a runtime: CNI_* in the environment, the config on stdin."""
    environ = cni_env(command, container_id=container_id, netns=netns, ifname=ifname, **(env or {}))
    stdin = config if isinstance(config, bytes) else json.dumps(config or {}).encode()
    run = harness.run(plugin_command(), environ, timeout=60, stdin=stdin)
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


# --- the implementation under test (conftest's `impl` fixture) ----------------------------------


@dataclass(frozen=True)
class Impl:
    name: str  # "python" or "exe"
    command: tuple[str, ...]


def implementations() -> list[Any]:
    if served.VIA_SERVER:  # the launcher in front of a running server (served.py, tests/conftest.py)
        return [pytest.param("served", id="served")]
    impls = [pytest.param("python", id="python")]
    if os.environ.get("DEVICEID_INJECT_EXE"):
        impls.append(pytest.param("exe", id="exe"))
    return impls


# --- conflists -----------------------------------------------------------------------------------


def render_conflist(template: str, **values: Any) -> dict[str, Any]:
    """testdata/conflists/<template>.conflist with each `${key}` replaced by `values[key]`
    (JSON-escaped, so a value always stays one JSON string)."""
    text = (CONFLISTS / f"{template}.conflist").read_text()
    escaped = {key: json.dumps(str(value))[1:-1] for key, value in values.items()}
    return json.loads(string.Template(text).substitute(escaped))


def write_conflist(
    folder: Path, template: str, inject: Mapping[str, Any] | None = None, **values: Any
) -> dict[str, Any]:
    """Render a template into `folder` (a NETCONFPATH) as <name>.conflist; returns the conflist.
    `inject` sets keys of the deviceid-inject entry; a None value removes the key (e.g. sysfsRoot,
    for the production path: the pod's own netns and the real /sys)."""
    conflist = render_conflist(template, **values)
    for plugin in conflist["plugins"]:
        if plugin["type"] == "deviceid-inject":
            for key, value in (inject or {}).items():
                if value is None:
                    plugin.pop(key, None)
                else:
                    plugin[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{conflist['name']}.conflist").write_text(json.dumps(conflist, indent=2))
    return conflist


# The production path: no sysfsRoot, so discovery forks into the pod's netns and mounts a private
# sysfs there; a veth is found to be no PCI function, which `required: false` lets pass.
POD_NETNS = {"sysfsRoot": None, "required": False}
VETH_NOT_PCI = "/sys/class/net/net1 has no device link: a virtual netdev"


# --- cnitool -------------------------------------------------------------------------------------


def cnitool_container_id(netns_path: str) -> str:
    """The container ID cnitool v1.3.1 derives from the netns path (cnitool/cmd/root.go)."""
    return "cnitool-" + hashlib.sha512(os.path.abspath(netns_path).encode()).hexdigest()[:20]


def fallback_name(network: str, container_id: str, ifname: str = "net1") -> str:
    """The documented device-info file name when Multus gives no path (short names only)."""
    return f"{network.replace('/', '-')}-{container_id}_{ifname}"


# cnitool has no flag or variable for its cache folder (libcni's /var/lib/cni): bind a scratch
# folder over it in a private mount namespace that dies with the command.
_ISOLATE = 'mount --bind "$1" /var/lib/cni && shift && exec "$@"'


@dataclass
class Cnitool:
    cni_path: str
    netconf_dir: Path
    cache_dir: Path

    def run(
        self,
        command: str,
        network: str,
        netns_path: str,
        *,
        ifname: str = "net1",
        cap_args: Mapping[str, Any] | None = None,
        cni_args: str | None = None,
        timeout: float = 120,
    ) -> Outcome:
        env = {
            "PATH": base_env()["PATH"],
            "CNI_PATH": self.cni_path,
            "NETCONFPATH": str(self.netconf_dir),
            "CNI_IFNAME": ifname,
        }
        env.update(passed_through())
        if cap_args is not None:
            env["CAP_ARGS"] = json.dumps(cap_args)
        if cni_args is not None:
            env["CNI_ARGS"] = cni_args
        argv = [
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", _ISOLATE, "sh", str(self.cache_dir),
            str(CNITOOL), command, network, netns_path,
        ]  # fmt: skip
        out = harness.run(argv, env, timeout)
        assert "Traceback" not in out.stdout + out.stderr, out.stderr
        return out

    def cached_results(self) -> list[str]:
        folder = self.cache_dir / "results"
        return sorted(os.listdir(folder)) if folder.is_dir() else []


# --- links and namespaces ------------------------------------------------------------------------


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def link_exists(name: str, netns: str | None = None) -> bool:
    argv = ["ip", *(["-n", netns] if netns else []), "link", "show", "dev", name]
    return subprocess.run(argv, capture_output=True).returncode == 0


# --- what the trees hold -------------------------------------------------------------------------


def files_under(root: Path | str) -> list[str]:
    """Every non-directory under `root`, relative, sorted (symlinks included)."""
    found = []
    for folder, dirs, names in os.walk(root):
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        found += [os.path.relpath(os.path.join(folder, n), root) for n in names + links]
    return sorted(found)


def attachment_state(data_dir: Path | str) -> list[str]:
    """What dataDir holds about attachments: everything but the lock and the validated-config cache."""
    left = [f for f in files_under(data_dir) if f != ".lock" and not f.startswith(".validated/")]
    left += [
        os.path.relpath(os.path.join(folder, d), data_dir) + "/"
        for folder, dirs, _ in os.walk(data_dir)
        for d in dirs
        if os.path.relpath(os.path.join(folder, d), data_dir) != ".validated"
    ]
    return sorted(left)


def read_json(path: Path | str) -> Any:
    with open(path, "rb") as f:
        return strict_json(f.read().decode())


# --- the CNI output contract ---------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str) -> Any:
    """json.loads that, like Go's encoding/json, refuses NaN, Infinity and -Infinity."""
    return json.loads(text, parse_constant=_no_constant)


def contract_violations(command: str, code: int, stdout: str, stderr: str) -> list[str]:
    """What is wrong with one plugin run's output by the CNI spec and docs/discovery-and-state.md;
    [] when nothing.

    Success: exit 0, a result object (ADD) or version object (VERSION) on stdout, else nothing.
    Failure: exit non-zero and exactly one error object {cniVersion, code, msg, details} with a
    documented code. Never a traceback, never anything but strict JSON on stdout.
    """
    problems = []
    if "Traceback" in stdout + stderr:
        problems.append("a traceback leaked")
    obj = None
    if stdout.strip():
        try:
            obj = strict_json(stdout)
        except ValueError as exc:
            return [*problems, f"stdout is not one strict JSON value: {exc}"]
        if not isinstance(obj, dict):
            return [*problems, f"stdout holds a {type(obj).__name__}, not an object"]
    if code == 0:
        if command in OUTPUT_COMMANDS and obj is None:
            problems.append(f"{command} succeeded without an object on stdout")
        if command not in OUTPUT_COMMANDS and stdout.strip():
            problems.append(f"{command} succeeded but printed {stdout[:200]!r}")
        if obj is not None and command == "ADD" and not isinstance(obj.get("cniVersion"), str):
            problems.append("the ADD result has no cniVersion")
        if obj is not None and command == "VERSION" and obj.get("supportedVersions") != list(SUPPORTED_VERSIONS):
            problems.append(f"VERSION lists {obj.get('supportedVersions')}")
        return problems
    if obj is None:
        return [*problems, "failed without an error object on stdout"]
    if set(obj) != {"cniVersion", "code", "msg", "details"}:
        problems.append(f"error object has keys {sorted(obj)}")
    if not isinstance(obj.get("code"), int) or obj.get("code") not in DOCUMENTED_CODES:
        problems.append(f"error code {obj.get('code')!r} is not a documented one")
    if not isinstance(obj.get("msg"), str) or not obj.get("msg"):
        problems.append("error msg is empty")
    if obj.get("cniVersion") not in SUPPORTED_VERSIONS:
        problems.append(f"error cniVersion {obj.get('cniVersion')!r}")
    return problems


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """What the real kubectl's kustomize builds of `folder`: the objects `kubectl apply -k` would apply."""
    if tools.missing(tools.kube("kubectl")):
        pytest.fail(f"{tools.kube('kubectl')} is not built: run make setup")
    with tempfile.TemporaryDirectory() as home:  # kubectl's cache goes under $HOME/.kube
        out = harness.run([str(tools.kube("kubectl")), "kustomize", str(folder)], base_env(HOME=home))
    assert out.code == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def wait_for(what: Callable[[], Any], timeout: float = 30, why: str = "", interval: float = 0.05) -> Any:
    """Call `what` until it returns something true, which is returned; AssertionError after `timeout`."""
    try:
        return harness.poll(what, timeout, interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s: {why}") from None


# An HTTP request's answer: (method, path, body) -> (status, body).
Answer = Callable[[str, str, bytes], "tuple[int, bytes]"]


def loopback_server(answer: Answer, tls: ssl.SSLContext | None = None) -> http.server.ThreadingHTTPServer:
    """An HTTP(S) server on 127.0.0.1 at a free port, serving from a daemon thread: `answer` gives
    each GET's or POST's status and body. Its caller stops it (shutdown, server_close)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            code, reply = answer(self.command, self.path, body)
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# A debootstrap --variant=minbase Debian 11 root: the no-Python host of test_binary.py, and the
# stand-in for the registry's debian:bullseye-slim in test_image.py.
MIN_ROOT = REPO / ".build" / "bullseye-min"
MIRROR = os.environ.get("MIRROR", "http://deb.debian.org/debian")


def minimal_bullseye() -> Path:
    """A debootstrap --variant=minbase bullseye root, made once (under a lock) and cached."""
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, chroot, mount)")
    for tool in ("debootstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (build.sh installs debootstrap): run make build")
    MIN_ROOT.parent.mkdir(parents=True, exist_ok=True)
    with open(MIN_ROOT.parent / "bullseye-min.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (MIN_ROOT / ".minbase-ok").exists():
            shutil.rmtree(MIN_ROOT, ignore_errors=True)
            log = MIN_ROOT.parent / "bullseye-min.log"
            with open(log, "w") as out:
                made = subprocess.run(
                    ["debootstrap", "--variant=minbase", "bullseye", str(MIN_ROOT), MIRROR],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=1200,
                )
            if made.returncode != 0:
                pytest.fail(f"debootstrap failed: {log.read_text()[-3000:]}")
            shutil.rmtree(MIN_ROOT / "var/cache/apt/archives", ignore_errors=True)
            (MIN_ROOT / ".minbase-ok").touch()
    return MIN_ROOT
