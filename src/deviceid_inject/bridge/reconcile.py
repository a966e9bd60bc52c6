"""What the bridge would change on one Pod, decided without the API: the plugin's records of the
node, indexed by Pod UID, and the annotations to write, with our device-info added.

Pure functions over annotation text and records, so every rule (whose entry, which record, what
is never touched, what is too big or too odd to touch) is tested without a server. The edit itself
is done in the text (jsontext.py): the value written equals the value read except for the one
member added to each entry of ours.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..protocol import CniError
from ..state import Record, Store
from .jsontext import Entry, NotUnderstood, add_member, entries

NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
# The key every Multus before v4 wrote next to NETWORK_STATUS, with the same value; v4 dropped it.
NETWORKS_STATUS = "k8s.v1.cni.cncf.io/networks-status"
DEVICE_INFO = "device-info"
# The API server refuses an object whose annotations (keys and values, in bytes) exceed this
# (apimachinery's TotalAnnotationSizeLimitB).
ANNOTATIONS_LIMIT = 256 * 1024
# network-status is [entry {dns {nameservers [..]}}] or [entry {device-info {pci {..}}}]: a few
# levels. What is nested deeper is not a network-status we would understand.
MAX_DEPTH = 64
# The plugin's records are a few hundred bytes; a record larger than this is not one of ours.
MAX_RECORD_BYTES = 64 * 1024


class Refused(ValueError):
    """The Pod's annotations are not something the bridge will change; it leaves the Pod alone.
    `reason` is the metric label (unparsable, too-large)."""

    def __init__(self, reason: str, why: str) -> None:
        super().__init__(why)
        self.reason = reason


@dataclass(frozen=True)
class Known:
    """A record of ours with a device-info to give, and when it was written (newest wins)."""

    record: Record
    written_ns: int


@dataclass(frozen=True)
class _Seen:
    """What the index knows of one record file, valid while the file's signature is unchanged."""

    signature: tuple[int, int, int]  # inode, size, mtime
    known: Known | None
    problem: str | None  # why the file is not used, when it is odd


class RecordIndex:
    """The plugin's records under `data_dir` by Pod UID, re-read only where a file changed.

    Every file is judged on its own: a directory, FIFO or symlink where a record should be, a
    record larger than MAX_RECORD_BYTES, or one that is not JSON costs only itself."""

    def __init__(self, data_dir: str) -> None:
        self.store = Store(data_dir)
        self._seen: dict[str, _Seen] = {}

    def refresh(self) -> list[str]:
        """Read what changed since the last refresh; returns what is newly wrong (one line per
        file or folder), for the caller to log. An unreadable data dir keeps the last index."""
        problems: list[str] = []
        try:
            attachments = self.store.attachments(unreadable=lambda exc: problems.append(exc.msg))
        except CniError as exc:
            return [exc.msg]
        current: dict[str, _Seen] = {}
        for container_id, ifname in attachments:
            path = self.store.path(container_id, ifname)
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # removed by a DEL since the listing
                continue
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror}")
                continue
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
            seen = self._seen.get(path)
            if seen is None or seen.signature != signature:
                seen = self._read(container_id, ifname, st, signature)
                if seen.problem is not None:
                    problems.append(f"{path}: {seen.problem}")
            current[path] = seen
        self._seen = current
        return problems

    def _read(self, container_id: str, ifname: str, st: os.stat_result, signature: tuple[int, int, int]) -> _Seen:
        if not stat.S_ISREG(st.st_mode):
            return _Seen(signature, None, "not a regular file; ignored")
        if st.st_size > MAX_RECORD_BYTES:
            return _Seen(signature, None, f"{st.st_size} bytes, more than a record's {MAX_RECORD_BYTES}; ignored")
        try:
            record = self.store.load(container_id, ifname, max_bytes=MAX_RECORD_BYTES)
        except CniError as exc:  # it became a symlink or a FIFO since the lstat
            return _Seen(signature, None, f"{exc.msg}; ignored")
        if record is None or not record.pod_uid or not _strict_json(record.device_info):
            return _Seen(signature, None, None)  # not ours to give: cnitool's, required: false, ...
        return _Seen(signature, Known(record, st.st_mtime_ns), None)

    def for_pod(self, uid: str) -> list[Known]:
        return [
            seen.known for seen in self._seen.values() if seen.known is not None and seen.known.record.pod_uid == uid
        ]

    def pod_uids(self) -> set[str]:
        return {seen.known.record.pod_uid for seen in self._seen.values() if seen.known is not None}


def _strict_json(value: Any) -> bool:
    """Whether `value` is an object we can write as strict JSON (no NaN, not absurdly deep)."""
    if not isinstance(value, dict):
        return False
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, RecursionError):
        return False
    return True


def pick(known: Iterable[Known], entry: Mapping[str, Any]) -> Record | None:
    """The record an entry of network-status is about: same interface; where several sandboxes of
    the Pod left one, the one whose network the entry names, then the newest."""
    interface = entry.get("interface")
    candidates = [k for k in known if k.record.ifname == interface]
    if not candidates:
        return None
    network = str(entry.get("name", "")).rpartition("/")[2]
    candidates.sort(key=lambda k: (k.record.network == network, k.written_ns), reverse=True)
    return candidates[0].record


def with_device_info(raw: str | None, known: Sequence[Known]) -> str | None:
    """`raw` (a network-status value) with device-info added to each entry of ours that has none;
    None when nothing would change. Every byte outside the members added stays as it was.

    An entry is ours when its `interface` is that of a record of the Pod. Entries that already
    carry device-info (a device plugin's, the selection route's) and entries of no record are left
    alone; so is an interface that two entries without device-info claim, unless the network one
    of them names is that of a record (a writer that confused them: never guess). Raises Refused
    when `raw` is not a JSON array, is nested deeper than MAX_DEPTH or is larger than
    ANNOTATIONS_LIMIT."""
    if not raw or not known:
        return None
    if len(raw) > ANNOTATIONS_LIMIT:  # no API server holds it; never scanned
        raise Refused("too-large", f"network-status holds {len(raw)} characters, more than any Pod's annotations")
    try:
        found = entries(raw, MAX_DEPTH)
    except NotUnderstood as err:
        raise Refused("unparsable", f"network-status is not one we understand: {err}") from None
    additions: list[tuple[Entry, dict[str, Any]]] = []
    for ifname in sorted({k.record.ifname for k in known}):
        claiming = [e for e in found if _text(e, "interface") == ifname]
        if not claiming or any(e.get(DEVICE_INFO) is not None for e in claiming):
            continue
        if len(claiming) > 1:
            networks = {k.record.network for k in known if k.record.ifname == ifname}
            claiming = [e for e in claiming if _network(e) in networks]
            if len(claiming) != 1:
                continue
        entry = claiming[0]
        record = pick(known, {"interface": ifname, "name": _text(entry, "name") or ""})
        if record is not None and record.device_info is not None:
            additions.append((entry, record.device_info))
    if not additions:
        return None
    value = raw
    for entry, device_info in sorted(additions, key=lambda a: a[0].start, reverse=True):  # last first: offsets hold
        value = add_member(value, entry, DEVICE_INFO, device_info)
    return value


def _text(entry: Entry, key: str) -> str | None:
    member = entry.get(key)
    return None if member is None else member.text


def _network(entry: Entry) -> str:
    return (_text(entry, "name") or "").rpartition("/")[2]


def changes(annotations: Mapping[str, str], known: Sequence[Known], legacy: bool = False) -> dict[str, str]:
    """The annotations to write on a Pod (only those that change; {} when none): network-status
    with our device-info, and with `legacy`, networks-status made equal to it (only where
    network-status exists: the bridge never removes a key).

    Raises Refused when network-status is not understood, or when our change would take the Pod's
    annotations over ANNOTATIONS_LIMIT (the API server would refuse it at every try). Where only
    the networks-status copy would not fit, network-status is still written."""
    current = annotations.get(NETWORK_STATUS)
    new = with_device_info(current, known)
    wanted = {} if new is None else {NETWORK_STATUS: new}
    status = current if new is None else new
    if wanted and _size(annotations, wanted) > ANNOTATIONS_LIMIT:
        raise Refused("too-large", f"device-info would take the annotations over {ANNOTATIONS_LIMIT} bytes")
    if legacy and status is not None and annotations.get(NETWORKS_STATUS) != status:
        mirrored = {**wanted, NETWORKS_STATUS: status}
        if _size(annotations, mirrored) <= ANNOTATIONS_LIMIT:
            return mirrored
        if not wanted:
            raise Refused("too-large", f"a copy as {NETWORKS_STATUS} would exceed {ANNOTATIONS_LIMIT} bytes")
    return wanted


def _size(annotations: Mapping[str, str], wanted: Mapping[str, str]) -> int:
    """The size the API server checks: every key and value in UTF-8 bytes."""
    merged = {**annotations, **wanted}
    try:
        return sum(len(k.encode()) + len(v.encode()) for k, v in merged.items())
    except UnicodeEncodeError:  # a lone surrogate: nothing the API server could hold
        raise Refused("unparsable", "an annotation is not valid Unicode") from None
