"""The plugin's network config: validated once against the shipped JSON schema, then a dataclass.

jsonschema is the validator of record. It is imported only here, when a config
is actually validated, because its import alone costs more than a whole ADD.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from .protocol import ERR_INVALID_CONFIG, IFNAME_MAX_BYTES, CniError

DEFAULT_DEVICE_INFO_ROOT = "/var/run/k8s.cni.cncf.io/devinfo"
DEFAULT_DATA_DIR = "/var/lib/cni/deviceid-inject"
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.json")


@dataclass(frozen=True)
class Attachment:
    container_id: str
    ifname: str


@dataclass(frozen=True)
class Config:
    cni_version: str
    name: str
    sysfs_root: str | None
    device_info_root: str
    data_dir: str
    required: bool
    device_id: str | None
    pf_names: tuple[str, ...]
    vhost_net: bool
    log_file: str | None
    log_level: str
    prev_result: dict[str, Any] | None
    runtime_device_info_file: str | None
    runtime_device_id: str | None
    valid_attachments: tuple[Attachment, ...] | None


def load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


def schema_errors(raw: dict[str, Any]) -> list[str]:
    """Every schema violation in `raw`, each led by the JSON path of the offending key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{error.json_path}: {error.message}" for error in errors] + _byte_length_errors(raw)


def _byte_length_errors(raw: dict[str, Any]) -> list[str]:
    """The kernel limits interface names in bytes; JSON Schema can only count characters."""
    names = raw.get("pfNames")
    if not isinstance(names, list):
        return []
    return [
        f"$.pfNames[{i}]: {name!r} is longer than {IFNAME_MAX_BYTES} bytes"
        for i, name in enumerate(names)
        if isinstance(name, str) and len(name.encode()) > IFNAME_MAX_BYTES
    ]


def parse(raw: dict[str, Any]) -> Config:
    """Validate the plugin's keys and build the Config; unknown keys are ignored, as CNI requires."""
    errors = schema_errors(raw)
    if errors:
        raise CniError(ERR_INVALID_CONFIG, "invalid deviceid-inject config: " + "; ".join(errors))
    runtime = raw.get("runtimeConfig") or {}
    valid = raw.get("cni.dev/valid-attachments")
    return Config(
        cni_version=raw["cniVersion"],
        name=raw.get("name", ""),
        sysfs_root=raw.get("sysfsRoot"),
        device_info_root=raw.get("deviceInfoRoot", DEFAULT_DEVICE_INFO_ROOT),
        data_dir=raw.get("dataDir", DEFAULT_DATA_DIR),
        required=raw.get("required", True),
        device_id=raw.get("deviceID"),
        pf_names=tuple(raw.get("pfNames", ())),
        vhost_net=raw.get("vhostNet", False),
        log_file=raw.get("logFile"),
        log_level=raw.get("logLevel", "warning"),
        prev_result=raw.get("prevResult"),
        runtime_device_info_file=runtime.get("CNIDeviceInfoFile") or None,
        runtime_device_id=runtime.get("deviceID") or None,
        valid_attachments=(None if valid is None else tuple(Attachment(a["containerID"], a["ifname"]) for a in valid)),
    )
