"""Fixtures shared by every test module, unit and system (plain helpers are in testbed.helpers):
the implementation under test, scratch configs and roots, real netns and veths, cnitool in an
isolated cache.

Every namespace and link a test makes is removed in the fixture's teardown, also when the test fails.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("testbed")

from testbed import served, tools  # noqa: E402
from testbed.admission import MultusParsers  # noqa: E402
from testbed.cluster import Cluster, build_multus_image, image_reference  # noqa: E402
from testbed.helpers import (  # noqa: E402
    CNI_BIN,
    SYSFS,
    Cnitool,
    Impl,
    have_cni_tools,
    implementations,
    ip,
    prev_result,
)
from testbed.kube import ApiServer, missing_tools  # noqa: E402
from testbed.multus import Scene  # noqa: E402
from testbed.node import Node  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def via_server(tmp_path_factory) -> Iterator[served.CniServer | None]:
    """With DEVICEID_INJECT_VIA_SERVER=1, every plugin call of the session goes through the launcher
    to one running CNI server. The launcher's own cache is one it refuses (writable by others), so a
    call that falls back instead of being served fails loudly: each test's own assertions prove the
    server path. Tests whose calls are never the server's (VERSION, the operator's commands) are
    marked exec_path and run only without it."""
    folder = tmp_path_factory.mktemp("via-server")
    if not served.VIA_SERVER:  # the exec path, whatever may listen on this host's default socket
        os.environ["DEVICEID_INJECT_SOCKET"] = str(folder / "no-server" / "cni.sock")
        yield None
        del os.environ["DEVICEID_INJECT_SOCKET"]
        return
    binary = served.client_binary(folder / "bin")
    server = served.start_server(binary, folder)
    refused = folder / "refused-cache"
    refused.mkdir()
    refused.chmod(0o777)
    keys = ("DEVICEID_INJECT_EXE", "DEVICEID_INJECT_SOCKET", "DEVICEID_INJECT_CACHE")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(
        DEVICEID_INJECT_EXE=str(binary), DEVICEID_INJECT_SOCKET=str(server.socket), DEVICEID_INJECT_CACHE=str(refused)
    )
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        code = server.stop()
    assert code == 0, f"the CNI server did not stop cleanly on SIGTERM ({code})\n{server.service.tail()}"
    assert "Traceback" not in server.service.log(), server.service.tail(80)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if served.VIA_SERVER:
        skip = pytest.mark.skip(reason="its calls never reach the CNI server (VERSION, the operator's commands)")
        for item in items:
            if item.get_closest_marker("exec_path"):
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def launcher_cache(tmp_path_factory, via_server):
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
def outside(tmp_path: Path) -> Path:
    """A folder beside the roots, for writes that must never land there."""
    path = tmp_path / "outside"
    path.mkdir()
    return path


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
def make_netns() -> Iterator[Callable[[], str]]:
    """Make fresh named network namespaces; every one is removed afterwards."""
    made: list[str] = []

    def make() -> str:
        name = f"dit-{uuid.uuid4().hex[:8]}"
        _ip("netns", "add", name)
        made.append(name)
        return f"/var/run/netns/{name}"

    try:
        yield make
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def netns(make_netns: Callable[[], str]) -> str:
    """A fresh named network namespace; removed afterwards."""
    return make_netns()


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


@pytest.fixture(params=implementations())
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Impl:
    """The implementation under test; conftest's run_plugin follows it for the whole test."""
    exe = os.environ.get("DEVICEID_INJECT_EXE")
    if request.param in ("exe", "served"):
        assert exe
        return Impl(request.param, (exe,))
    monkeypatch.delenv("DEVICEID_INJECT_EXE", raising=False)
    return Impl("python", (sys.executable, "-m", "deviceid_inject"))


@pytest.fixture
def cni_path(impl: Impl, tmp_path: Path) -> str:
    """CNI_PATH: a folder holding `deviceid-inject` for `impl`, then .tools/cni-bin."""
    folder = tmp_path / "plugin-bin"
    folder.mkdir()
    plugin = folder / "deviceid-inject"
    if impl.name in ("exe", "served"):
        plugin.symlink_to(impl.command[0])
    else:
        plugin.write_text(f'#!/bin/sh\nexec {shlex.join(impl.command)} "$@"\n')
        plugin.chmod(0o755)
    return f"{folder}:{CNI_BIN}"


@pytest.fixture
def cnitool(cni_path: str, tmp_path: Path) -> Cnitool:
    if not have_cni_tools():
        pytest.fail(f"cnitool and the reference plugins are not built in {CNI_BIN}: run make setup")
    os.makedirs("/var/lib/cni", exist_ok=True)  # the bind mount's target; libcni's default cache
    netconf = tmp_path / "net.d"
    cache = tmp_path / "cni-cache"
    netconf.mkdir()
    cache.mkdir()
    return Cnitool(cni_path, netconf, cache)


@pytest.fixture
def host_veth() -> Iterator[Callable[[], tuple[str, str]]]:
    """Make veth pairs on the host: (host end, end for host-device to move). Both go afterwards."""
    made: list[str] = []

    def make() -> tuple[str, str]:
        token = uuid.uuid4().hex[:8]
        host, peer = f"dth{token}", f"dtp{token}"
        ip("link", "add", host, "type", "veth", "peer", "name", peer)
        made.append(host)
        return host, peer

    try:
        yield make
    finally:
        for host in made:  # deleting one end deletes both, wherever the other end is
            subprocess.run(["ip", "link", "del", host], capture_output=True)


# --- the Kubernetes test bed (testbed.kube, testbed.multus) --------------------------------------


@pytest.fixture(scope="session")
def kube(tmp_path_factory) -> Iterator[ApiServer]:
    """etcd and kube-apiserver on loopback for the whole session, with the NAD CRD installed;
    both stopped at the end, also when a test failed."""
    missing = missing_tools()
    if missing:
        pytest.fail(f"the Kubernetes test bed is not installed ({', '.join(missing)}): run make setup")
    server = ApiServer(tmp_path_factory.mktemp("kube"))
    try:
        server.start()
        served = server.api().get("/version")["gitVersion"]
        assert served == tools.APISERVER_VERSION, f"the test bed runs kube-apiserver {served}"
        server.install_nad_crd()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def multus_parsers() -> Iterator[MultusParsers]:
    """Multus's own parser of a Pod's network selection, of every v4 version (testbed.admission)."""
    parsers = MultusParsers().start()
    try:
        yield parsers
    finally:
        parsers.close()


@pytest.fixture
def scene(kube: ApiServer, cni_path: str, make_netns, host_veth, tmp_path: Path) -> Iterator[Scene]:
    """A namespace of its own on the test bed and what a node holds; sandboxes (netns, veth pair) are
    made on demand. Afterwards a thick-mode daemon it started is stopped, every netns and veth goes,
    and the namespace (and so its Pods and NADs) is deleted."""
    made = Scene.create(kube.api(), tmp_path, cni_path, host_veth, make_netns)
    try:
        yield made
    finally:
        made.close()
        made.api.delete(f"/api/v1/namespaces/{made.ns}")


# --- the real node (testbed.node, testbed.cluster) -----------------------------------------------


@pytest.fixture(scope="session")
def image_archive() -> Path:
    """The image deploy/ runs, built from the binary under test by `make image`."""
    exe = os.environ.get("DEVICEID_INJECT_EXE")
    if not exe:
        pytest.skip("the node runs the image built from the binary (make test-binary builds both)")
    archive = Path(os.environ.get("DEVICEID_INJECT_IMAGE") or Path(exe).parent / "deviceid-inject-image.tar")
    if not archive.is_file():
        pytest.fail(f"no image archive at {archive}: run make image")
    return archive


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, image_archive: Path) -> Iterator[Cluster]:
    """One node for the session: started, the images imported, deploy/ applied through an overlay.
    Stopped at the end, also when a test failed, and checked to have left nothing behind."""
    missing = tools.missing(*tools.NODE_TOOLS)
    if missing:
        pytest.fail(f"the test node's tools are not installed ({', '.join(missing)}): run make setup")
    root = tmp_path_factory.mktemp("node")
    node = Node(root)
    try:
        node.start()
        made = Cluster(node, root / "user")
        images = root / "images"
        made.import_images([image_archive] + [build_multus_image(v, images / f"multus-{v}.tar") for v in NODE_MULTUS])
        made.deploy_ours(image_reference(image_archive))
        yield made
    finally:
        node.stop()
    left = node.leftovers()
    assert not left, f"the test node left behind: {left}"


NODE_MULTUS = (tools.THICK_MULTUS, tools.FIELD_MULTUS)


@pytest.fixture(scope="session", params=NODE_MULTUS, ids=[f"multus-{v}" for v in NODE_MULTUS])
def multus_node(request: pytest.FixtureRequest, cluster: Cluster) -> Cluster:
    """The node with Multus of each version in turn, in thick mode from its own manifest."""
    cluster.use_multus(request.param)
    return cluster


@pytest.fixture
def on_node(cluster: Cluster) -> Cluster:
    """The node with whichever Multus is deployed (the newest if none is yet)."""
    cluster.use_multus(cluster.multus or tools.THICK_MULTUS)
    return cluster


@pytest.fixture
def node_ns(cluster: Cluster) -> Iterator[str]:
    """A namespace of the test's own on the node; deleted afterwards (its Pods with it, so every
    attachment is DELeted), and the veth pairs the test made are removed."""
    name = cluster.namespace()
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", timeout=150)
        cluster.remove_links()
