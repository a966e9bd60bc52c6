"""The bridge's reading of the node's records (bridge/records.py), over a real dataDir: by Pod UID, following
changes, and every odd file costing only itself."""

from __future__ import annotations

import json
import os
import tracemalloc
from dataclasses import asdict
from pathlib import Path

import pytest

from deviceid_inject import files
from deviceid_inject.bridge import records
from deviceid_inject.bridge.inotify import IN_Q_OVERFLOW, Event
from deviceid_inject.bridge.records import RecordIndex
from deviceid_inject.state import Store
from testbed.bridge import OTHER_VF, UID, VF, record

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


def test_index_follows_every_kind_of_change_from_inotify_without_listing_again(data_dir: Path):
    """Issue 23, point 1: after the first listing, only the kernel's events lead to files: a new
    container folder, a second network in an existing one, a rewrite, a removal, a folder
    removed and made again; the data dir is never listed again."""
    store = Store(str(data_dir))
    store.save(record("sandbox1"))
    index = RecordIndex(str(data_dir))
    index.refresh()
    store.save(record("sandbox2", pod_uid="pod-2"))
    store.save(record("sandbox1", ifname="net2", device_info=OTHER_VF))
    index.refresh()
    assert [(k.record.ifname, k.record.device_info) for k in index.for_pod(UID)] == [("net1", VF), ("net2", OTHER_VF)]
    assert index.pod_uids() == {UID, "pod-2"}
    store.save(record("sandbox1", ifname="net2"))
    store.forget("sandbox2", "net1")
    index.refresh()
    assert [k.record.device_info for k in index.for_pod(UID)] == [VF, VF]
    assert index.pod_uids() == {UID}
    store.forget("sandbox1", "net1")
    store.forget("sandbox1", "net2")  # the folder goes with its last record
    store.save(record("sandbox1", device_info=OTHER_VF))  # and comes back
    index.refresh()
    assert [k.record.device_info for k in index.for_pod(UID)] == [OTHER_VF]
    assert index.full_listings == 1
    store.save(record("sandbox1"))
    index.refresh()  # the folder made again is watched too
    assert [k.record.device_info for k in index.for_pod(UID)] == [VF]


def test_index_lists_everything_again_when_the_kernel_dropped_events(data_dir: Path, monkeypatch):
    store = Store(str(data_dir))
    index = RecordIndex(str(data_dir))
    index.refresh()
    store.save(record("sandbox1"))
    assert index._inotify is not None
    monkeypatch.setattr(index._inotify, "read", lambda: [Event(-1, IN_Q_OVERFLOW, "")])
    index.refresh()
    assert index.full_listings == 2
    assert [k.record.container_id for k in index.for_pod(UID)] == ["sandbox1"]


def test_records_of_pods_nobody_asked_about_are_not_kept_parsed(data_dir: Path):
    """Issue 23, point 1: 10,000 stale records took the agent from 63 to 96 MiB (2.8 KiB each,
    against the DaemonSet's 128 Mi). The index keeps whose each record is; the record itself
    only for Pods asked about, until they are forgotten."""
    store = Store(str(data_dir))
    for i in range(2000):
        store.save(record(f"{i:064x}", pod_uid=f"gone-{i:05d}", pod_name=f"upf-gone-{i:05d}"))
    store.save(record("sandbox1"))
    tracemalloc.start()
    try:
        index = RecordIndex(str(data_dir))
        index.refresh()
        per_record = tracemalloc.get_traced_memory()[0] / 2001
    finally:
        tracemalloc.stop()
    assert per_record < 1600, per_record  # parsed and kept, each took 2,750 bytes
    assert [k.record.device_info for k in index.for_pod(UID)] == [VF]
    assert index.for_pod("gone-00007", keep=False)[0].record.pod_name == "upf-gone-00007"
    index.forget_pod(UID)
    assert [k.record.device_info for k in index.for_pod(UID)] == [VF]  # read again when asked again


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
        f.write(" " * (records.MAX_RECORD_BYTES + 10))
    assert store.load("sandbox1", "net1") is not None  # the CNI path reads whole records, as before
    assert store.load("sandbox1", "net1", max_bytes=records.MAX_RECORD_BYTES) is None


UNUSABLE = {
    "not JSON": lambda path: path.write_text('{"container_id": "sandbox1", '),
    "nested 30,000 deep": lambda path: path.write_text("[" * 30000 + "]" * 30000),
    "JSON, not a record": lambda path: path.write_text('{"hello": "world"}'),
    "device-info 500 deep": lambda path: path.write_text(
        json.dumps(asdict(record("sandbox1", device_info={}))).replace('"device_info": {}', deep(500))
    ),
    "device-info a list": lambda path: Store(str(path.parent.parent)).save(record("sandbox1", device_info=[])),
    "device-info NaN": lambda path: Store(str(path.parent.parent)).save(
        record("sandbox1", device_info={"type": "pci", "x": float("nan")})
    ),
}


def deep(levels: int) -> str:
    """device-info as JSON text nested `levels` deep (json.dumps would recurse as deep)."""
    return '"device_info": ' + '{"pci": ' * (levels - 1) + '{"type": "pci"}' + "}" * (levels - 1)


@pytest.mark.parametrize("how", sorted(UNUSABLE))
def test_every_record_the_bridge_cannot_use_is_named_once(data_dir: Path, how: str):
    """Issue 23, point 5: invalid JSON, a 30,000-deep record, device-info nested 500 deep were
    ignored silently. Every record not used is named once, whatever the reason."""
    store = Store(str(data_dir))
    store.save(record("sandbox2", pod_uid="good"))
    store.save(record("sandbox1"))
    UNUSABLE[how](Path(store.path("sandbox1", "net1")))
    index = RecordIndex(str(data_dir))
    (problem,) = index.refresh()
    assert problem.startswith(f"{store.path('sandbox1', 'net1')}: ") and problem.endswith("; ignored")
    assert index.for_pod(UID) == []
    assert [k.record.container_id for k in index.for_pod("good")] == ["sandbox2"]
    assert index.refresh() == []  # once, while it stays as it is


def test_records_that_are_not_ours_to_give_are_skipped_silently(data_dir: Path):
    """cnitool's (no Pod) and required: false without a device (no device-info) are no trouble."""
    store = Store(str(data_dir))
    store.save(record("sandbox1", pod_uid=None))
    store.save(record("sandbox2", device_info=None, pci_address=None))
    index = RecordIndex(str(data_dir))
    assert index.refresh() == []
    assert index.pod_uids() == set()
