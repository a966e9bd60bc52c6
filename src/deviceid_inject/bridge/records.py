"""The plugin's records on this node, as the bridge reads them: indexed by Pod UID, re-read only
where a file changed, each odd file costing only itself. This reads files (the node's data dir,
which the bridge trusts); changes.py decides what to write from what it finds.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from typing import Any

from ..protocol import CniError
from ..state import Record, Store

# The plugin's records are a few hundred bytes; a record larger than this is not one of ours.
MAX_RECORD_BYTES = 64 * 1024


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
