"""What an application's Pod runs to wait for its device-info: read network-status from the
downward API's annotations file until the entry of an interface carries device-info.

The bridge adds device-info shortly after Multus writes network-status (docs/bridge.md gives
the measured gap), and the kubelet then refreshes the Pod's downward API files on its own schedule.
So a workload that reads device-info at start runs `deviceid-inject wait-device-info` first, as
an init container or at the top of its entrypoint: it returns the moment the entry is complete,
whichever route (device plugin, selection placeholder, bridge) put device-info there.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from .annotations import NETWORK_STATUS

_GO_ESCAPE = re.compile(r'\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|([abfnrtv"\\\']))')
_SIMPLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", '"': '"', "\\": "\\", "'": "'"}


def go_unquote(quoted: str) -> str:
    """The string a Go %q literal stands for (the downward API writes `key="value"` lines so)."""
    if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
        raise ValueError(f"not a Go quoted string: {quoted[:40]!r}")

    def one(match: re.Match[str]) -> str:
        byte, short, long, simple = match.groups()
        if byte:
            return chr(int(byte, 16))
        if short or long:
            return chr(int(short or long, 16))
        return _SIMPLE[simple]

    return _GO_ESCAPE.sub(one, quoted[1:-1])


def annotations(text: str) -> dict[str, str]:
    """The annotations of a downward API file: one `key="value"` line each."""
    found = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            found[key] = go_unquote(value)
    return found


@dataclass(frozen=True)
class Wanted:
    interface: str
    network: str | None = None  # "namespace/nad", when two networks could use one interface name


def device_info(annotation_file_text: str, wanted: Wanted) -> dict[str, Any] | None:
    """The device-info of the wanted entry, or None while it has none (or is not there yet)."""
    raw = annotations(annotation_file_text).get(NETWORK_STATUS)
    try:
        status = json.loads(raw) if raw else []
    except ValueError:
        return None
    for entry in status if isinstance(status, list) else []:
        if not isinstance(entry, dict) or entry.get("interface") != wanted.interface:
            continue
        if wanted.network and entry.get("name") != wanted.network:
            continue
        info = entry.get("device-info")
        if isinstance(info, dict):
            return info
    return None


def wait(path: str, wanted: Wanted, timeout: float, interval: float = 0.5) -> dict[str, Any] | None:
    """Poll `path` until the wanted entry has device-info; None when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, encoding="utf-8") as f:
                found = device_info(f.read(), wanted)
        except (OSError, ValueError):
            found = None  # not projected yet, or caught mid-rewrite: look again
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(interval)
