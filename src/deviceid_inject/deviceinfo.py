"""NPWG device-info files (Device Information Spec 1.1.0): where they go and what they say.

Multus gives the path as runtimeConfig.CNIDeviceInfoFile when it wants the file
(v3.7 always; v3.7.1+ and v4 only with a device plugin's deviceID). When it gives
none, the file goes to a documented path of our own under <deviceInfoRoot>/cni/.
Either way nothing is written outside deviceInfoRoot.
"""

from __future__ import annotations

import os

from . import files

# Names for annotations only: typing costs milliseconds to import on every ADD.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .discovery import Device
    from .log import Log

SPEC_VERSION = "1.1.0"
# Multus writes these files read-only; a rename replaces them all the same.
FILE_MODE = 0o444
# 255 bytes is the file-name limit; the temporary ".<name>.<pid>.tmp" needs 17 more.
_MAX_NAME_BYTES = 255 - 17


def fallback_name(network: str, container_id: str, ifname: str) -> str:
    """`<network>-<containerID>_<ifname>`: the name Multus v3.7 gives, '/' made '-'.

    Unique per attachment because container ID and ifname are. A network name so long
    that the whole (with room for the writer's temporary name) would pass the 255-byte
    file-name limit is cut and given a digest; a
    container ID that alone nearly fills it turns the name into `<digest>_<ifname>`.
    """
    network = network.replace("/", "-") or "unnamed"
    suffix = f"-{container_id}_{ifname}"
    room = _MAX_NAME_BYTES - len(suffix.encode())
    if room < 32:  # a container ID far longer than any runtime makes: the name becomes a digest
        return f"{_digest(network + suffix, 64)}_{ifname}"
    if len(network.encode()) > room:
        network = network.encode()[: room - 13].decode(errors="ignore") + "~" + _digest(network, 12)
    return network + suffix


def _digest(text: str, length: int) -> str:
    import hashlib  # only for names near the length limit: not worth its import on every ADD

    return hashlib.sha256(text.encode()).hexdigest()[:length]


def target(root: str, given_path: str | None, network: str, container_id: str, ifname: str) -> str:
    """Where the file goes: Multus's path when it gave one, else our documented fallback; inside `root`."""
    if given_path:
        files.require_inside(root, given_path, "CNIDeviceInfoFile")
        return given_path
    path = os.path.join(root, "cni", fallback_name(network, container_id, ifname))
    files.require_inside(root, path, "device-info file")
    return path


def pci_section(device: Device) -> dict[str, str]:
    section = {"pci-address": device.pci_address}
    optional = {
        "pf-pci-address": device.pf_pci_address,
        "rdma-device": device.rdma_device,
        "representor-device": device.representor_device,
        "vhost-net": device.vhost_net,
    }
    section.update({key: value for key, value in optional.items() if value})
    return section


def merged(existing: Any, device: Device, log: Log, path: str) -> dict[str, Any]:
    """The document to write: an existing file keeps every key but its pci section, which is
    updated; a 1.0.0 version is raised to 1.1.0."""
    if not isinstance(existing, dict):
        if existing is not None:
            log.warning(f"{path} holds no device-info object; writing a new one")
        return {"type": "pci", "version": SPEC_VERSION, "pci": pci_section(device)}
    document = dict(existing)
    pci = document.get("pci") if isinstance(document.get("pci"), dict) else {}
    document["pci"] = {**pci, **pci_section(device)}
    document.setdefault("type", "pci")
    if document.get("version") in (None, "1.0.0"):
        document["version"] = SPEC_VERSION
    return document


def compose(root: str, path: str, device: Device, log: Log) -> dict[str, Any]:
    """The document `write` will put at `path`: a new one, or the one there (a device plugin's copy)
    updated. Makes the folders, judging `path` before and after: one may have become a symlink."""
    files.require_inside(root, path, "device-info file")
    files.make_dirs(os.path.dirname(path))
    files.require_inside(root, path, "device-info file")
    try:
        existing = files.read_json(path)
    except files.NotJson as exc:
        log.warning(str(exc))
        existing = {}
    return merged(existing, device, log, path)


def write(path: str, document: dict[str, Any]) -> None:
    files.write_json(path, document, FILE_MODE)


def read_address(path: str) -> str | None:
    """The pci-address a device-info file names, or None when it names none."""
    try:
        document = files.read_json(path)
    except files.NotJson:
        return None
    pci = document.get("pci") if isinstance(document, dict) else None
    return pci.get("pci-address") if isinstance(pci, dict) else None
