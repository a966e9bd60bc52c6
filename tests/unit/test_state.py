"""The state store: records by container ID and ifname, listing for GC, and the one lock."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import stat
import time
from pathlib import Path

import pytest

from deviceid_inject import files
from deviceid_inject.state import STATE_MODE, Busy, Record, Store


def record(container_id: str = "abc123", ifname: str = "net1", **changes: object) -> Record:
    base = Record(
        container_id=container_id,
        ifname=ifname,
        network="n6-dpdk",
        pci_address="0000:3b:02.1",
        strategy="netdev-sysfs",
        device_info_file="/run/k8s.cni.cncf.io/devinfo/cni/n6-dpdk-abc123_net1",
        created_file=True,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "state"))


@pytest.fixture
def data_dir(store: Store) -> Path:
    return Path(store.data_dir)


# --- save / load / forget -------------------------------------------------------------------------


def test_path_layout(store: Store, data_dir: Path) -> None:
    assert store.path("abc123", "net1") == str(data_dir / "abc123" / "net1.json")


@pytest.mark.parametrize(
    "rec",
    [
        record(),
        record(pci_address=None, strategy=None, device_info_file=None, created_file=False),
        record(ifname="eth0.100", created_file=False),
        record(
            pod_namespace="ran",
            pod_name="upf-0",
            pod_uid="0d180aac-e816-4b5e-96d7-57958f908ac7",
            device_info={"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:3b:02.1"}},
        ),
    ],
)
def test_save_load_round_trip(store: Store, rec: Record) -> None:
    store.save(rec)
    assert store.load(rec.container_id, rec.ifname) == rec


def test_a_record_from_before_the_pod_fields_still_loads(store: Store, data_dir: Path) -> None:
    # An upgrade must not orphan what the previous version recorded: DEL still finds its file.
    old = {k: v for k, v in dataclasses.asdict(record()).items() if not k.startswith("pod_") and k != "device_info"}
    (data_dir / "abc123").mkdir(parents=True)
    (data_dir / "abc123" / "net1.json").write_text(json.dumps(old))
    assert store.load("abc123", "net1") == record()


@pytest.mark.parametrize(
    "bad",
    [
        {"created_file": "no"},
        {"device_info_file": 5},
        {"container_id": ["abc123"]},
        {"pod_uid": 5},
        {"device_info": "pci"},
        {"pod_colour": "blue"},
    ],
)
def test_a_record_with_a_field_of_the_wrong_type_or_unknown_is_not_ours(store: Store, data_dir: Path, bad: dict):
    (data_dir / "abc123").mkdir(parents=True)
    (data_dir / "abc123" / "net1.json").write_text(json.dumps({**dataclasses.asdict(record()), **bad}))
    assert store.load("abc123", "net1") is None


def test_save_writes_a_private_json_file(store: Store, data_dir: Path) -> None:
    store.save(record())
    path = data_dir / "abc123" / "net1.json"
    assert stat.S_IMODE(path.stat().st_mode) == STATE_MODE == 0o600
    assert json.loads(path.read_text())["pci_address"] == "0000:3b:02.1"
    assert sorted(os.listdir(data_dir / "abc123")) == ["net1.json"]


def test_save_replaces_an_existing_record(store: Store) -> None:
    store.save(record())
    store.save(record(pci_address="0000:3b:02.2"))
    loaded = store.load("abc123", "net1")
    assert loaded is not None
    assert loaded.pci_address == "0000:3b:02.2"


def test_load_unknown_is_none(store: Store) -> None:
    assert store.load("abc123", "net1") is None  # not even the data dir exists
    store.save(record())
    assert store.load("abc123", "net2") is None
    assert store.load("other", "net1") is None


def test_forget_removes_record_and_empty_container_folder(store: Store, data_dir: Path) -> None:
    store.save(record())
    store.forget("abc123", "net1")
    assert store.load("abc123", "net1") is None
    assert not (data_dir / "abc123").exists()
    assert data_dir.is_dir()


def test_forget_keeps_sibling_records(store: Store, data_dir: Path) -> None:
    store.save(record(ifname="net1"))
    store.save(record(ifname="net2"))
    store.save(record(container_id="other", ifname="net1"))
    store.forget("abc123", "net1")
    assert store.load("abc123", "net1") is None
    assert store.load("abc123", "net2") == record(ifname="net2")
    assert store.load("other", "net1") == record(container_id="other", ifname="net1")
    assert os.listdir(data_dir / "abc123") == ["net2.json"]


def test_forget_twice_and_forget_unknown_are_fine(store: Store) -> None:
    store.save(record())
    store.forget("abc123", "net1")
    store.forget("abc123", "net1")
    store.forget("never", "seen")
    assert store.attachments() == []


def test_forget_takes_leftover_temp_files_along(store: Store, data_dir: Path) -> None:
    store.save(record())
    (data_dir / "abc123" / ".net1.json.4242.tmp").write_text("{")
    store.forget("abc123", "net1")
    assert not (data_dir / "abc123").exists()


# --- corrupt records ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("", id="empty"),
        pytest.param('{"container_id": "abc1', id="truncated"),
        pytest.param("[]", id="array"),
        pytest.param("null", id="null"),
        pytest.param('"text"', id="string"),
        pytest.param('{"container_id": "abc123", "ifname": "net1"}', id="missing-fields"),
        pytest.param(
            json.dumps({**dataclasses.asdict(record()), "surprise": 1}),
            id="unknown-field",
        ),
    ],
)
def test_corrupt_record_is_none(store: Store, data_dir: Path, content: str) -> None:
    (data_dir / "abc123").mkdir(parents=True)
    (data_dir / "abc123" / "net1.json").write_text(content)
    assert store.load("abc123", "net1") is None


def test_symlinked_record_is_refused(store: Store, data_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(dataclasses.asdict(record())))
    (data_dir / "abc123").mkdir(parents=True)
    (data_dir / "abc123" / "net1.json").symlink_to(elsewhere)
    with pytest.raises(files.Refused, match="symlink"):
        store.load("abc123", "net1")


# --- attachments ----------------------------------------------------------------------------------


def test_attachments_of_an_empty_or_missing_store(store: Store) -> None:
    assert store.attachments() == []
    with store.locked():
        pass
    assert store.attachments() == []  # only the lock file is there


def test_attachments_lists_every_record_sorted(store: Store) -> None:
    for container_id, ifname in [("b", "net2"), ("a", "net1"), ("b", "net1"), ("c", "eth0.100")]:
        store.save(record(container_id=container_id, ifname=ifname))
    assert store.attachments() == [("a", "net1"), ("b", "net1"), ("b", "net2"), ("c", "eth0.100")]


def test_attachments_skip_what_is_no_record(store: Store, data_dir: Path, tmp_path: Path) -> None:
    store.save(record())
    folder = data_dir / "abc123"
    (folder / ".net2.json.4242.tmp").write_text("{")
    (folder / ".hidden.json").write_text("{}")
    (folder / "notes.txt").write_text("x")
    (data_dir / "stray-file.json").write_text("{}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "net9.json").write_text("{}")
    (data_dir / "linked").symlink_to(outside)
    with store.locked():
        assert store.attachments() == [("abc123", "net1")]


# --- the lock -------------------------------------------------------------------------------------


@pytest.fixture
def held_lock(store: Store, data_dir: Path):
    """Another run holding the store's lock, through its own open file description."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield fd
    finally:
        os.close(fd)


def can_take_lock(data_dir: Path) -> bool:
    fd = os.open(data_dir / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_locked_creates_the_data_dir_and_lock_file(store: Store, data_dir: Path) -> None:
    with store.locked():
        assert not can_take_lock(data_dir)
    assert stat.S_IMODE((data_dir / ".lock").stat().st_mode) == 0o600


def test_contention_gives_try_again_after_the_timeout(store: Store, held_lock: int) -> None:
    start = time.monotonic()
    with pytest.raises(Busy, match="held by another run"), store.locked(timeout=0.3):
        pytest.fail("the lock was taken while another run held it")
    waited = time.monotonic() - start
    assert 0.3 <= waited < 5


def test_lock_is_taken_once_the_holder_lets_go(store: Store, data_dir: Path, held_lock: int) -> None:
    fcntl.flock(held_lock, fcntl.LOCK_UN)
    with store.locked(timeout=0.3):
        assert not can_take_lock(data_dir)


def test_lock_released_afterwards(store: Store, data_dir: Path) -> None:
    with store.locked():
        pass
    assert can_take_lock(data_dir)
    with store.locked(timeout=0.1):  # and taken again
        pass


def test_lock_released_when_the_body_fails(store: Store, data_dir: Path) -> None:
    with pytest.raises(RuntimeError), store.locked():
        raise RuntimeError("boom")
    assert can_take_lock(data_dir)


def test_lock_released_after_timing_out(store: Store, data_dir: Path, held_lock: int) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(Busy), store.locked(timeout=0.05):
        pass
    assert len(os.listdir("/proc/self/fd")) == fds_before
    fcntl.flock(held_lock, fcntl.LOCK_UN)
    assert can_take_lock(data_dir)
