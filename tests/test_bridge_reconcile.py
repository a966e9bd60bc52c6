"""The bridge's rules, without a server: which entry gets which device-info, and what is never touched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deviceid_inject import files
from deviceid_inject.bridge import reconcile
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


@pytest.mark.parametrize("raw", [None, "", "[]", status(DEFAULT), status({**N6, "interface": "net2"}), "[1, [2]]"])
def test_nothing_to_do_gives_none(raw):
    assert with_device_info(raw, [Known(record(), 1)]) is None


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        json.dumps({"name": "x"}),  # an object, not a list
        '[{"interface": "net1", "x": NaN}]',  # not JSON, though Python's json.loads takes it
        '[{"interface": "net1"},]',
        '[{"interface": "net1"}] trailing',
        '[{"interface":"net1","x":' + "[" * 3000 + "]" * 3000 + "}]",  # the 6 KB value
        "[" * 100_000,
    ],
    ids=["text", "object", "nan", "trailing-comma", "trailing-text", "nested-3000", "open-100000"],
)
def test_what_is_not_understood_is_refused_and_never_raises_anything_else(raw):
    with pytest.raises(reconcile.Refused) as refused:
        with_device_info(raw, [Known(record(), 1)])
    assert refused.value.reason == "unparsable"


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


def test_odd_files_in_the_data_dir_cost_only_themselves(data_dir: Path):
    """Issue 15, defect 2: a directory, a FIFO, a symlink (to a good record) and a folder that
    cannot be listed, where records live: each is named once, none is used, the rest is indexed."""
    store = Store(str(data_dir))
    store.save(record("sandbox1"))
    store.save(record("target", pod_uid="linked-pod"))
    for name in ("dir", "fifo", "link"):
        (data_dir / name).mkdir()
    os.mkdir(data_dir / "dir" / "net1.json")
    os.mkfifo(data_dir / "fifo" / "net1.json")
    os.symlink(store.path("target", "net1"), data_dir / "link" / "net1.json")
    index = RecordIndex(str(data_dir))
    problems = index.refresh()
    assert sorted(p.partition(":")[0] for p in problems) == [
        str(data_dir / name / "net1.json") for name in ("dir", "fifo", "link")
    ]
    assert [k.record.container_id for k in index.for_pod(UID)] == ["sandbox1"]
    assert [k.record.container_id for k in index.for_pod("linked-pod")] == ["target"]  # the real one only
    assert index.refresh() == []  # reported once, while they stay as they are


def test_a_record_folder_that_cannot_be_listed_costs_only_itself(data_dir: Path, monkeypatch):
    store = Store(str(data_dir))
    store.save(record("sandbox1"))
    store.save(record("sandbox2", pod_uid="other"))
    real = os.listdir

    def listdir(path):
        if str(path).endswith("sandbox2"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "listdir", listdir)  # root reads a 000 folder: only a stand-in can refuse it
    index = RecordIndex(str(data_dir))
    (problem,) = index.refresh()
    assert "sandbox2" in problem and "Permission denied" in problem
    assert [k.record.container_id for k in index.for_pod(UID)] == ["sandbox1"]


def test_a_record_larger_than_any_of_ours_is_not_read(data_dir: Path, monkeypatch):
    """Issue 15, defect 6: a 20 MiB record (valid JSON, padded) is ignored without reading it,
    and one that grows past the bound after the size check is read no further than the bound."""
    store = Store(str(data_dir))
    store.save(record("sandbox1", device_info=OTHER_VF))
    big = Path(store.path("sandbox1", "net1"))
    big.write_text(big.read_text() + " " * (20 << 20))
    reads: list[str] = []
    real_read = files.read_bytes
    monkeypatch.setattr(files, "read_bytes", lambda path, *args: reads.append(path) or real_read(path, *args))
    index = RecordIndex(str(data_dir))
    (problem,) = index.refresh()
    assert problem.startswith(f"{big}: {big.stat().st_size} bytes, more than a record's")
    assert index.for_pod(UID) == []
    assert reads == []  # refused from its size alone


def test_a_record_read_is_bounded_even_when_the_file_grows_after_the_size_check(data_dir: Path):
    store = Store(str(data_dir))
    store.save(record("sandbox1"))
    path = store.path("sandbox1", "net1")
    with open(path, "a") as f:
        f.write(" " * (reconcile.MAX_RECORD_BYTES + 10))
    assert store.load("sandbox1", "net1") is not None  # the CNI path reads whole records, as before
    assert store.load("sandbox1", "net1", max_bytes=reconcile.MAX_RECORD_BYTES) is None


def test_a_record_whose_device_info_is_not_strict_json_is_not_used(data_dir: Path):
    store = Store(str(data_dir))
    store.save(record("sandbox1", device_info={"type": "pci", "x": float("nan")}))
    index = RecordIndex(str(data_dir))
    assert index.refresh() == []
    assert index.for_pod(UID) == []


# --- every byte of another writer's stays (issue 15, defects 4 and 5) ---------------------------------

MULTUS_STYLE = (
    "[{\n"
    '    "name": "default/kindnet",\n'
    '    "interface": "eth0",\n'
    '    "ips": [\n'
    '        "10.244.1.5"\n'
    "    ],\n"
    '    "default": true,\n'
    '    "dns": {}\n'
    "},{\n"
    '    "name": "ran/n6-dpdk",\n'
    '    "interface": "net1",\n'
    '    "huge": 1e400,\n'
    '    "precise": 0.1000000000000000001,\n'
    '    "hundred": 1E2,\n'
    '    "mac": "02:00:00:00:00:01",\n'
    '    "dns": {}\n'
    "}]"
)
OUR_MEMBER_MULTUS_STYLE = (
    ',\n    "device-info": {\n'
    '        "type": "pci",\n'
    '        "version": "1.1.0",\n'
    '        "pci": {\n'
    '            "pci-address": "0000:3b:02.3",\n'
    '            "pf-pci-address": "0000:3b:00.0"\n'
    "        }\n"
    "    }"
)


def test_other_writers_numbers_and_layout_stay_byte_for_byte():
    """Issue 15, defect 4: 1e400 stayed `Infinity` (which Go, and so Multus, refuses),
    0.1000000000000000001 became 0.1 and 1E2 100.0. Now the value written is the value read
    with our member inserted, in the style of the entry's own members."""
    new = with_device_info(MULTUS_STYLE, [Known(record(), 1)])
    assert new == MULTUS_STYLE[:-3] + OUR_MEMBER_MULTUS_STYLE + "\n}]"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            '[{"name":"ran/n6-dpdk","interface":"net1"}]',
            '[{"name":"ran/n6-dpdk","interface":"net1","device-info":{"type":"pci","version":"1.1.0",'
            '"pci":{"pci-address":"0000:3b:02.3","pf-pci-address":"0000:3b:00.0"}}}]',
        ),
        (
            '[ { "interface" : "net1" , "x" : [ 1 ] } ]',
            '[ { "interface" : "net1" , "x" : [ 1 ] , "device-info" : {"type" : "pci" , "version" : "1.1.0" , '
            '"pci" : {"pci-address" : "0000:3b:02.3" , "pf-pci-address" : "0000:3b:00.0"}} } ]',
        ),
        (
            '[\n\t{\n\t\t"interface": "net1"\n\t}\n]',
            '[\n\t{\n\t\t"interface": "net1",\n\t\t"device-info": {\n\t\t\t"type": "pci",\n\t\t\t"version": '
            '"1.1.0",\n\t\t\t"pci": {\n\t\t\t\t"pci-address": "0000:3b:02.3",\n\t\t\t\t"pf-pci-address": '
            '"0000:3b:00.0"\n\t\t\t}\n\t\t}\n\t}\n]',
        ),
    ],
    ids=["compact", "spaced", "tabs"],
)
def test_our_member_follows_the_style_of_its_neighbours(raw, expected):
    assert with_device_info(raw, [Known(record(), 1)]) == expected


def test_a_compact_annotation_stays_compact_and_under_the_limit():
    """Issue 15, defect 5: a compact 174,218-byte network-status re-indented by four spaces was
    300,425 bytes, over the API server's 262,144-byte limit: refused at every resync."""
    raw = compact_status(174_218)
    new = with_device_info(raw, [Known(record(), 1)])
    assert len(new) - len(raw) == len(
        ',"device-info":{"type":"pci","version":"1.1.0","pci":{"pci-address":"0000:3b:02.3",'
        '"pf-pci-address":"0000:3b:00.0"}}'
    )
    assert reconcile.changes({reconcile.NETWORK_STATUS: raw}, [Known(record(), 1)]) == {reconcile.NETWORK_STATUS: new}


def compact_status(size: int) -> str:
    """A compact network-status of exactly `size` characters: many other entries, ours last."""
    ours = json.dumps({"name": "ran/n6-dpdk", "interface": "net1"}, separators=(",", ":"))
    entries, i = [], 0
    while True:
        entry = json.dumps(
            {"name": f"ran/other-{i}", "interface": f"o{i}", "mac": "02:00:00:00:00:01"}, separators=(",", ":")
        )
        if 2 + sum(len(e) + 1 for e in [*entries, entry]) + len(ours) > size:
            break
        entries.append(entry)
        i += 1
    text = "[" + ",".join([*entries, ours]) + "]"
    pad = size - len(text)
    return text[:1] + " " * pad + text[1:]


def test_a_change_that_would_exceed_the_annotation_limit_is_refused_before_the_api_server_does():
    raw = compact_status(200_000)
    filler = "x" * (reconcile.ANNOTATIONS_LIMIT - len(raw) - len(reconcile.NETWORK_STATUS) - len("filler") - 50)
    annotations = {reconcile.NETWORK_STATUS: raw, "filler": filler}
    with pytest.raises(reconcile.Refused) as refused:
        reconcile.changes(annotations, [Known(record(), 1)])
    assert refused.value.reason == "too-large"


def test_a_value_larger_than_any_pods_annotations_is_not_scanned():
    with pytest.raises(reconcile.Refused) as refused:
        with_device_info("[" + " " * reconcile.ANNOTATIONS_LIMIT + "]", [Known(record(), 1)])
    assert refused.value.reason == "too-large"


def test_two_entries_claiming_our_interface_are_left_alone_unless_one_names_our_network():
    other = {"name": "ran/other", "interface": "net1"}
    assert with_device_info(status(other, {**other, "name": "ran/third"}), [Known(record(), 1)]) is None
    new = json.loads(with_device_info(status(other, N6), [Known(record(), 1)]))
    assert "device-info" not in new[0]
    assert new[1]["device-info"] == VF


# --- --legacy-networks-status -------------------------------------------------------------------------


def test_the_v3_key_is_kept_equal_to_network_status_only_when_asked():
    raw = status(DEFAULT, N6)
    known = [Known(record(), 1)]
    new = with_device_info(raw, known)
    annotations = {reconcile.NETWORK_STATUS: raw}
    assert reconcile.changes(annotations, known) == {reconcile.NETWORK_STATUS: new}
    assert reconcile.changes(annotations, known, legacy=True) == {
        reconcile.NETWORK_STATUS: new,
        reconcile.NETWORKS_STATUS: new,
    }
    # a Pod without a record of ours: network-status is copied as it is
    assert reconcile.changes(annotations, [], legacy=True) == {reconcile.NETWORKS_STATUS: raw}
    assert reconcile.changes({**annotations, reconcile.NETWORKS_STATUS: raw}, [], legacy=True) == {}
    # no network-status: the bridge never removes the v3 key, nor writes one
    assert reconcile.changes({reconcile.NETWORKS_STATUS: raw}, [], legacy=True) == {}


def test_the_v3_copy_is_dropped_where_it_alone_would_exceed_the_limit():
    raw = compact_status(140_000)
    known = [Known(record(), 1)]
    wanted = reconcile.changes({reconcile.NETWORK_STATUS: raw}, known, legacy=True)
    assert list(wanted) == [reconcile.NETWORK_STATUS]
