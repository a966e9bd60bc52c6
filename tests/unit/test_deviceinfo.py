"""NPWG device-info files: their names and paths, their content, and how they are written and read."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deviceid_inject import deviceinfo, files
from deviceid_inject.deviceinfo import FILE_MODE, SPEC_VERSION, fallback_name
from deviceid_inject.discovery import Device
from deviceid_inject.log import Log

CID = "6f1a0c2d9e8b7a65" * 4  # a 64-character container ID, as containerd and CRI-O make
VF = Device(pci_address="0000:3b:02.1", strategy="netdev-sysfs")
VF_FULL = Device(
    pci_address="0000:3b:02.1",
    strategy="vf-table",
    pf_pci_address="0000:3b:00.0",
    rdma_device="mlx5_3",
    representor_device="ens1f0_1",
    vhost_net="/dev/vhost-net",
)


def write_file(root: str, path: str, device: Device, log: Log) -> None:
    """What ADD does with a device-info file: compose the document, then write it."""
    deviceinfo.write(path, deviceinfo.compose(root, path, device, log))


@pytest.fixture
def log() -> Log:
    return Log("debug", stream=io.StringIO())


def logged(log: Log) -> str:
    return log.stream.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "devinfo"
    path.mkdir()
    return path


# --- fallback_name --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "container_id", "ifname", "expected"),
    [
        ("n6-dpdk", "abc", "net1", "n6-dpdk-abc_net1"),
        ("sriov-net", CID, "net1", f"sriov-net-{CID}_net1"),
        ("default/n6-dpdk", "abc", "net1", "default-n6-dpdk-abc_net1"),
        ("a/b/c", "abc", "eth0.100", "a-b-c-abc_eth0.100"),
        ("", "abc", "net1", "unnamed-abc_net1"),
    ],
)
def test_fallback_name_format(network: str, container_id: str, ifname: str, expected: str) -> None:
    assert fallback_name(network, container_id, ifname) == expected


# The name leaves room for the writer's temporary ".<name>.<pid>.tmp" within 255 bytes.
LIMIT = 255 - 17


def test_fallback_name_at_the_limit_is_not_cut() -> None:
    suffix = f"-{CID}_net1"
    network = "n" * (LIMIT - len(suffix))
    name = fallback_name(network, CID, "net1")
    assert name == network + suffix
    assert len(name.encode()) == LIMIT


@pytest.mark.parametrize(
    "network", ["n" * 300, "n" * (LIMIT - len(f"-{CID}_net1") + 1), "\u00e9" * 200, "\u20ac" * 150]
)
def test_over_long_fallback_name_is_cut_with_a_digest(network: str) -> None:
    name = fallback_name(network, CID, "net1")
    assert len(name.encode()) <= LIMIT
    assert name.endswith(f"-{CID}_net1")
    head = name[: -len(f"-{CID}_net1")]
    prefix, tilde, digest = head.rpartition("~")
    assert tilde == "~"
    assert len(digest) == 12
    assert all(c in "0123456789abcdef" for c in digest)
    assert network.startswith(prefix)


def test_two_long_names_sharing_their_start_stay_apart() -> None:
    first = fallback_name("n" * 300 + "-east", CID, "net1")
    second = fallback_name("n" * 300 + "-west", CID, "net1")
    assert first != second
    assert len(first.encode()) <= LIMIT
    assert len(second.encode()) <= LIMIT


@given(network=st.text(min_size=0, max_size=400), ifname=st.sampled_from(["net1", "a" * 15, "\u20ac" * 5]))
def test_fallback_name_always_fits_and_ends_with_the_attachment(network: str, ifname: str) -> None:
    name = fallback_name(network, CID, ifname)
    assert len(name.encode()) <= LIMIT
    assert name.endswith(f"-{CID}_{ifname}")
    assert "/" not in name


# --- target ---------------------------------------------------------------------------------------


def test_target_without_a_given_path_is_the_fallback(root: Path) -> None:
    target = deviceinfo.target(str(root), None, "default/n6", CID, "net1")
    assert target == str(root / "cni" / f"default-n6-{CID}_net1")


def test_target_with_an_empty_given_path_is_the_fallback(root: Path) -> None:
    assert deviceinfo.target(str(root), "", "n6", CID, "net1") == str(root / "cni" / f"n6-{CID}_net1")


@pytest.mark.parametrize("relative", ["cni/n6-abc_net1", "x", "cni/deeper/than/multus"])
def test_target_given_inside_root(root: Path, relative: str) -> None:
    path = str(root / relative)
    assert deviceinfo.target(str(root), path, "n6", CID, "net1") == path


@pytest.mark.parametrize(
    "given_path",
    ["/etc/passwd", "{root}/../outside/x", "{root}/cni/../../outside/x", "{outside}/x", "{root}", "{root}/cni/.."],
)
def test_target_given_outside_root(root: Path, outside: Path, given_path: str) -> None:
    with pytest.raises(files.Refused):
        deviceinfo.target(str(root), given_path.format(root=root, outside=outside), "n6", CID, "net1")


def test_target_given_relative_path(root: Path) -> None:
    with pytest.raises(files.Refused):
        deviceinfo.target(str(root), "cni/x", "n6", CID, "net1")


def test_target_given_through_a_symlink_out_of_root(root: Path, outside: Path) -> None:
    (root / "cni").symlink_to(outside)
    with pytest.raises(files.Refused):
        deviceinfo.target(str(root), str(root / "cni" / "x"), "n6", CID, "net1")


def test_fallback_target_through_a_symlinked_cni_folder_out_of_root(root: Path, outside: Path) -> None:
    (root / "cni").symlink_to(outside)
    with pytest.raises(files.Refused):
        deviceinfo.target(str(root), None, "n6", CID, "net1")


def test_target_with_root_reached_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "run" / "k8s.cni.cncf.io" / "devinfo").mkdir(parents=True)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to(tmp_path / "run")
    via_link = tmp_path / "var" / "run" / "k8s.cni.cncf.io" / "devinfo"
    resolved = tmp_path / "run" / "k8s.cni.cncf.io" / "devinfo"
    for root in (via_link, resolved):
        for base in (via_link, resolved):
            path = str(base / "cni" / f"n6-{CID}_net1")
            assert deviceinfo.target(str(root), path, "n6", CID, "net1") == path
        assert deviceinfo.target(str(root), None, "n6", CID, "net1") == str(root / "cni" / f"n6-{CID}_net1")


# --- pci_section ----------------------------------------------------------------------------------


def test_pci_section_with_only_an_address() -> None:
    assert deviceinfo.pci_section(VF) == {"pci-address": "0000:3b:02.1"}


def test_pci_section_with_every_optional_key() -> None:
    assert deviceinfo.pci_section(VF_FULL) == {
        "pci-address": "0000:3b:02.1",
        "pf-pci-address": "0000:3b:00.0",
        "rdma-device": "mlx5_3",
        "representor-device": "ens1f0_1",
        "vhost-net": "/dev/vhost-net",
    }


@pytest.mark.parametrize("key", ["pf_pci_address", "rdma_device", "representor_device", "vhost_net"])
def test_pci_section_leaves_out_each_empty_key(key: str) -> None:
    device = dataclasses.replace(VF_FULL, **{key: ""})
    section = deviceinfo.pci_section(device)
    assert key.replace("_", "-") not in section
    assert len(section) == 4


# --- merged ---------------------------------------------------------------------------------------


def test_merged_without_an_existing_file(log: Log) -> None:
    assert deviceinfo.merged(None, VF, log, "/p") == {
        "type": "pci",
        "version": "1.1.0",
        "pci": {"pci-address": "0000:3b:02.1"},
    }
    assert logged(log) == ""


@pytest.mark.parametrize("existing", [[], ["pci"], "text", 42, True])
def test_merged_replaces_non_object_content(log: Log, existing: object) -> None:
    assert deviceinfo.merged(existing, VF, log, "/the/file") == {
        "type": "pci",
        "version": SPEC_VERSION,
        "pci": {"pci-address": "0000:3b:02.1"},
    }
    assert "/the/file" in logged(log)


def test_merged_keeps_other_keys_and_updates_pci(log: Log) -> None:
    existing = {
        "type": "pci",
        "version": "1.0.0",
        "pci": {"pci-address": "0000:3b:02.7", "rdma-device": "mlx5_9", "x-dp": "kept"},
        "x-device-plugin": {"resource": "intel.com/sriov"},
    }
    before = copy.deepcopy(existing)
    merged = deviceinfo.merged(existing, VF, log, "/p")
    assert merged == {
        "type": "pci",
        "version": "1.1.0",
        "pci": {"pci-address": "0000:3b:02.1", "rdma-device": "mlx5_9", "x-dp": "kept"},
        "x-device-plugin": {"resource": "intel.com/sriov"},
    }
    assert existing == before  # the caller's document is not changed


def test_merged_adds_optional_keys_over_existing_ones(log: Log) -> None:
    existing = {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:3b:02.1", "rdma-device": "old"}}
    assert deviceinfo.merged(existing, VF_FULL, log, "/p")["pci"] == deviceinfo.pci_section(VF_FULL)


@pytest.mark.parametrize(("version", "expected"), [("1.0.0", "1.1.0"), (None, "1.1.0"), ("1.1.0", "1.1.0")])
def test_merged_version(log: Log, version: str | None, expected: str) -> None:
    existing = {"type": "pci", "pci": {"pci-address": "0000:3b:02.1"}}
    if version is not None:
        existing["version"] = version
    assert deviceinfo.merged(existing, VF, log, "/p")["version"] == expected


@pytest.mark.parametrize("pci", ["0000:3b:02.1", None, ["x"]])
def test_merged_replaces_a_pci_section_that_is_no_object(log: Log, pci: object) -> None:
    merged = deviceinfo.merged({"version": "1.0.0", "pci": pci}, VF, log, "/p")
    assert merged["pci"] == {"pci-address": "0000:3b:02.1"}
    assert merged["type"] == "pci"


def test_merged_empty_object_becomes_a_full_document(log: Log) -> None:
    assert deviceinfo.merged({}, VF, log, "/p") == {
        "type": "pci",
        "version": "1.1.0",
        "pci": {"pci-address": "0000:3b:02.1"},
    }


# --- write ----------------------------------------------------------------------------------------


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_write_creates_the_file_and_the_cni_folder(root: Path, log: Log) -> None:
    path = root / "cni" / f"n6-{CID}_net1"
    assert not path.parent.exists()
    write_file(str(root), str(path), VF_FULL, log)
    assert read(path) == {"type": "pci", "version": "1.1.0", "pci": deviceinfo.pci_section(VF_FULL)}
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE == 0o444
    assert os.listdir(root / "cni") == [path.name]


def test_write_over_an_existing_file_updates_it(root: Path, log: Log) -> None:
    path = root / "cni" / "from-device-plugin"
    path.parent.mkdir()
    path.write_text(json.dumps({"type": "pci", "version": "1.0.0", "pci": {"pci-address": "0000:3b:02.1"}, "x": 1}))
    os.chmod(path, 0o444)
    inode = path.stat().st_ino
    write_file(str(root), str(path), VF_FULL, log)
    assert read(path) == {"type": "pci", "version": "1.1.0", "pci": deviceinfo.pci_section(VF_FULL), "x": 1}
    assert path.stat().st_ino != inode
    assert os.listdir(path.parent) == [path.name]


def test_write_twice(root: Path, log: Log) -> None:
    path = root / "cni" / "f"
    write_file(str(root), str(path), VF, log)
    write_file(str(root), str(path), VF, log)
    assert os.listdir(path.parent) == [path.name]
    assert read(path)["pci"] == {"pci-address": "0000:3b:02.1"}


@pytest.mark.parametrize("content", ["", "{half", "[1, 2]"])
def test_write_over_unusable_content(root: Path, log: Log, content: str) -> None:
    path = root / "cni" / "f"
    path.parent.mkdir()
    path.write_text(content)
    write_file(str(root), str(path), VF, log)
    assert read(path) == {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:3b:02.1"}}
    assert str(path) in logged(log)


def test_write_refuses_a_symlink_at_the_target(root: Path, outside: Path, log: Log) -> None:
    victim = outside / "victim.json"
    victim.write_text('{"precious": true}')
    (root / "cni").mkdir()
    (root / "cni" / "f").symlink_to(victim)
    with pytest.raises(files.Refused):
        write_file(str(root), str(root / "cni" / "f"), VF, log)
    assert read(victim) == {"precious": True}
    assert (root / "cni" / "f").is_symlink()


def test_write_never_writes_through_a_symlinked_folder_out_of_root(root: Path, outside: Path, log: Log) -> None:
    (root / "cni").symlink_to(outside)
    with pytest.raises(files.Refused):
        write_file(str(root), str(root / "cni" / "f"), VF, log)
    assert os.listdir(outside) == []


def test_write_creates_no_folder_through_a_symlinked_folder_out_of_root(root: Path, outside: Path, log: Log) -> None:
    (root / "cni").symlink_to(outside)
    with pytest.raises(files.Refused):
        write_file(str(root), str(root / "cni" / "new" / "f"), VF, log)
    assert os.listdir(outside) == []


# --- read_address ---------------------------------------------------------------------------------


def test_read_address_of_a_written_file(root: Path, log: Log) -> None:
    path = root / "cni" / "f"
    write_file(str(root), str(path), VF_FULL, log)
    assert deviceinfo.read_address(str(path)) == "0000:3b:02.1"


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{half",
        "[]",
        "null",
        '{"type": "pci"}',
        '{"type": "pci", "pci": "0000:3b:02.1"}',
        '{"type": "pci", "pci": {"rdma-device": "mlx5_3"}}',
    ],
)
def test_read_address_when_the_file_names_none(tmp_path: Path, content: str) -> None:
    (tmp_path / "f").write_text(content)
    assert deviceinfo.read_address(str(tmp_path / "f")) is None


def test_read_address_of_a_missing_file(tmp_path: Path) -> None:
    assert deviceinfo.read_address(str(tmp_path / "missing")) is None


def test_read_address_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").write_text('{"pci": {"pci-address": "0000:3b:02.1"}}')
    (tmp_path / "f").symlink_to(tmp_path / "real")
    with pytest.raises(files.Refused):
        deviceinfo.read_address(str(tmp_path / "f"))
