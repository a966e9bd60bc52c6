"""The bridge's rules, without a server: which entry gets which device-info, and what is never touched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deviceid_inject.bridge.reconcile import Known, RecordIndex, pick, with_device_info
from deviceid_inject.state import Record, Store

UID = "0d180aac-e816-4b5e-96d7-57958f908ac7"
VF = {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:3b:02.3", "pf-pci-address": "0000:3b:00.0"}}
OTHER_VF = {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:3b:01.0"}}
DEVICE_PLUGINS = {"type": "pci", "version": "1.0.0", "pci": {"pci-address": "0000:af:00.2"}}


def record(container_id: str = "sandbox1", ifname: str = "net1", **changes) -> Record:
    fields = {
        "container_id": container_id,
        "ifname": ifname,
        "network": "n6-dpdk",
        "pci_address": VF["pci"]["pci-address"],
        "strategy": "netdev sysfs",
        "device_info_file": f"/run/k8s.cni.cncf.io/devinfo/cni/n6-dpdk-{container_id}_{ifname}",
        "created_file": True,
        "pod_namespace": "ran",
        "pod_name": "upf-0",
        "pod_uid": UID,
        "device_info": VF,
    }
    fields.update(changes)
    return Record(**fields)


def status(*entries: dict) -> str:
    return json.dumps(list(entries), indent=4)


DEFAULT = {"name": "default/kindnet", "interface": "eth0", "ips": ["10.244.1.5"], "mac": "aa:bb", "default": True}
N6 = {"name": "ran/n6-dpdk", "interface": "net1", "ips": ["10.10.0.5"], "mac": "02:00:00:00:00:01", "dns": {}}


def test_adds_device_info_to_our_entry_and_nothing_else():
    raw = status(DEFAULT, N6)
    new = with_device_info(raw, [Known(record(), 1)])
    assert json.loads(new) == [DEFAULT, {**N6, "device-info": VF}]


def test_an_entry_with_device_info_is_never_touched():
    raw = status(DEFAULT, {**N6, "device-info": DEVICE_PLUGINS})
    assert with_device_info(raw, [Known(record(), 1)]) is None


@pytest.mark.parametrize(
    "raw",
    [None, "", "not json", json.dumps({"name": "x"}), status(DEFAULT), status({**N6, "interface": "net2"})],
)
def test_nothing_to_do_gives_none(raw):
    assert with_device_info(raw, [Known(record(), 1)]) is None


def test_no_record_no_change():
    assert with_device_info(status(DEFAULT, N6), []) is None


def test_each_interface_gets_its_own_record():
    n7 = {"name": "ran/n7", "interface": "net2", "mac": "02:00:00:00:00:02"}
    known = [Known(record(ifname="net1"), 1), Known(record(ifname="net2", network="n7", device_info=OTHER_VF), 1)]
    new = json.loads(with_device_info(status(DEFAULT, N6, n7), known))
    assert new[1]["device-info"] == VF
    assert new[2]["device-info"] == OTHER_VF


def test_of_two_sandboxes_the_newest_record_wins():
    old, new = Known(record("sandbox1", device_info=OTHER_VF), 1), Known(record("sandbox2"), 2)
    assert pick([old, new], N6).device_info == VF
    assert pick([new, old], N6).device_info == VF


def test_a_record_of_the_named_network_beats_a_newer_one_of_another():
    ours = Known(record("sandbox1", network="n6-dpdk"), 1)
    other = Known(record("sandbox2", network="other", device_info=OTHER_VF), 2)
    assert pick([ours, other], N6).device_info == VF


# --- the index over a real dataDir ---------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_index_finds_records_by_pod_uid_and_skips_those_without_a_pod(data_dir: Path):
    store = Store(str(data_dir))
    store.save(record("sandbox1"))
    store.save(record("sandbox2", pod_uid=None))  # cnitool, or a runtime that passes no K8S_POD_UID
    store.save(record("sandbox3", device_info=None, pci_address=None))  # required: false, nothing found
    store.save(record("sandbox4", pod_uid="another-pod"))
    index = RecordIndex(str(data_dir))
    index.refresh()
    assert [k.record.container_id for k in index.for_pod(UID)] == ["sandbox1"]
    assert index.pod_uids() == {UID, "another-pod"}


def test_index_follows_changes_and_removals(data_dir: Path):
    store = Store(str(data_dir))
    store.save(record("sandbox1", device_info=OTHER_VF))
    index = RecordIndex(str(data_dir))
    index.refresh()
    store.save(record("sandbox1"))
    path = store.path("sandbox1", "net1")
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1))  # a coarse clock
    index.refresh()
    assert [k.record.device_info for k in index.for_pod(UID)] == [VF]
    store.forget("sandbox1", "net1")
    index.refresh()
    assert index.for_pod(UID) == []


def test_index_of_a_missing_data_dir_is_empty(tmp_path: Path):
    index = RecordIndex(str(tmp_path / "nothing-here"))
    index.refresh()
    assert index.pod_uids() == set()
