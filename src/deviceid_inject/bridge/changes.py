"""What the bridge changes on one Pod, decided without the API and without files: from the Pod's
annotations and the records of ours about it (records.py), the annotations to write.

Pure functions over annotation text and records, so every rule (whose entry, which record, what
is never touched, what is too big or too odd to touch) is tested without a server. The edit itself
is done in the text (jsontext.py): the value written equals the value read except for the one
member added to each entry of ours.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..annotations import ANNOTATIONS_LIMIT, NETWORK_STATUS, NETWORKS_STATUS
from ..state import Record
from .jsontext import Entry, NotUnderstood, add_member, entries
from .records import Known

DEVICE_INFO = "device-info"
# network-status is [entry {dns {nameservers [..]}}] or [entry {device-info {pci {..}}}]: a few
# levels. What is nested deeper is not a network-status we would understand.
MAX_DEPTH = 64


class Refused(ValueError):
    """The Pod's annotations are not something the bridge will change; it leaves the Pod alone.
    `reason` is the metric label (unparsable, too-large)."""

    def __init__(self, reason: str, why: str) -> None:
        super().__init__(why)
        self.reason = reason


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
    carry device-info (a device plugin's, the selection route's: a JSON object under any ASCII
    case of the name, which Go's decoder reads as the same field; `null` is none) and entries of
    no record are left alone; so is an interface that two entries without device-info claim, unless the network one
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
        if not claiming or any(_has_device_info(raw, e) for e in claiming):
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


def _has_device_info(raw: str, entry: Entry) -> bool:
    """Whether a reader finds device-info in `entry`: the member Go's decoder keeps for the field
    (the last under any ASCII case of its name) holds a JSON object. `null` or another type is
    none (Go leaves the field nil, or fails on it): ours is added after it, and is the one kept."""
    member = entry.get_folded(DEVICE_INFO)
    return member is not None and raw[member.value_start] == "{"


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
