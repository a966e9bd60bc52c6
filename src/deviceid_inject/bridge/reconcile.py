"""What the bridge would change on one Pod, decided without the API: the plugin's records of the
node, indexed by Pod UID, and the network-status value with our device-info added.

Pure functions over JSON text and records, so every rule (whose entry, which record, what is
never touched) is tested without a server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..state import Record, Store

NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"


@dataclass(frozen=True)
class Known:
    """A record of ours with a device-info to give, and when it was written (newest wins)."""

    record: Record
    written_ns: int


class RecordIndex:
    """The plugin's records under `data_dir` by Pod UID, re-read only where a file changed."""

    def __init__(self, data_dir: str) -> None:
        self.store = Store(data_dir)
        self._seen: dict[str, tuple[int, Known | None]] = {}

    def refresh(self) -> None:
        current: dict[str, tuple[int, Known | None]] = {}
        for container_id, ifname in self.store.attachments():
            path = self.store.path(container_id, ifname)
            try:
                mtime = os.stat(path).st_mtime_ns
            except FileNotFoundError:  # removed by a DEL since the listing
                continue
            cached = self._seen.get(path)
            if cached is not None and cached[0] == mtime:
                current[path] = cached
                continue
            record = self.store.load(container_id, ifname)
            usable = record is not None and record.pod_uid and record.device_info is not None
            current[path] = (mtime, Known(record, mtime) if usable else None)
        self._seen = current

    def for_pod(self, uid: str) -> list[Known]:
        return [known for _, known in self._seen.values() if known is not None and known.record.pod_uid == uid]

    def pod_uids(self) -> set[str]:
        return {known.record.pod_uid for _, known in self._seen.values() if known is not None}


def pick(known: Iterable[Known], entry: dict[str, Any]) -> Record | None:
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
    None when nothing would change. Entries that already carry device-info (a device plugin's),
    entries of no record, and every other field stay exactly as they are."""
    if not raw or not known:
        return None
    try:
        status = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(status, list):
        return None
    changed = False
    for entry in status:
        if not isinstance(entry, dict) or "device-info" in entry:
            continue
        record = pick(known, entry)
        if record is not None and record.device_info is not None:
            entry["device-info"] = record.device_info
            changed = True
    # Multus writes the value indented by four spaces; so do we, so a diff shows only our key.
    return json.dumps(status, indent=4) if changed else None
