"""The plugin's network config: validated against the shipped JSON schema, then a dataclass.

jsonschema is the validator of record, but importing it costs more than a whole ADD,
and every pod of a network sends the same plugin config. So a config that passed is
remembered by its static part under <dataDir>/.validated/ (root-owned, like the state),
and jsonschema runs once per config, not once per pod. An entry is keyed by what decides
the outcome besides the config: a checksum of the schema file's own bytes and the build
(the binary's build id; from source, this module's source), so a stricter schema or new
validation code never trusts an old "valid"; a miss prunes entries of other keys.

The keys the runtime fills in per attachment (prevResult, runtimeConfig, the GC list)
differ on every run, so they are left out of the entry and checked on every run by
`_attachment_errors`, by hand, because only a hand-written check is cheaper than importing
jsonschema. Those checks are a second statement of what schema.json says of those keys; the
differential fuzz test in tests/unit/test_bad_input.py (a config first seen against the same
config answered from the cache) fails as soon as the two disagree.
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from dataclasses import dataclass

from . import __version__, files
from .protocol import ERR_INVALID_CONFIG, CniError, ifname_problem
from .state import DEFAULT_DATA_DIR

# Names for annotations only: typing costs milliseconds to import on every ADD.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_DEVICE_INFO_ROOT = "/var/run/k8s.cni.cncf.io/devinfo"
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.json")
PER_ATTACHMENT_KEYS = ("prevResult", "runtimeConfig", "cni.dev/valid-attachments")
VALIDATED_DIR = ".validated"  # container IDs never start with a dot


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
    return [f"{error.json_path}: {error.message}" for error in errors] + _ifname_errors(raw)


def _ifname_errors(raw: dict[str, Any]) -> list[str]:
    """pfNames are interface names: the kernel's rule (protocol.ifname_problem), which JSON Schema
    cannot state (it counts characters, the kernel bytes)."""
    names = raw.get("pfNames")
    if not isinstance(names, list):
        return []
    problems = [(i, name, ifname_problem(name)) for i, name in enumerate(names) if isinstance(name, str)]
    return [f"$.pfNames[{i}]: {name!r} {problem}" for i, name, problem in problems if problem]


def _attachment_errors(raw: dict[str, Any]) -> list[str]:
    """What the schema says of the per-attachment keys, checked without jsonschema."""
    errors = []
    for key in ("prevResult", "runtimeConfig"):
        if key in raw and not isinstance(raw[key], dict):
            errors.append(f"$.{key}: {raw[key]!r} is not of type 'object'")
    runtime = raw.get("runtimeConfig")
    if isinstance(runtime, dict):
        path = runtime.get("CNIDeviceInfoFile")
        if "CNIDeviceInfoFile" in runtime and not (isinstance(path, str) and _is_abs_path(path)):
            errors.append(f"$.runtimeConfig.CNIDeviceInfoFile: {path!r} is not an absolute path")
        if "deviceID" in runtime and not isinstance(runtime["deviceID"], str):
            errors.append(f"$.runtimeConfig.deviceID: {runtime['deviceID']!r} is not of type 'string'")
    valid = raw.get("cni.dev/valid-attachments")
    if "cni.dev/valid-attachments" in raw and not (
        isinstance(valid, list)
        and all(
            isinstance(a, dict) and isinstance(a.get("containerID"), str) and isinstance(a.get("ifname"), str)
            for a in valid
        )
    ):
        errors.append("$['cni.dev/valid-attachments']: not a list of {containerID, ifname} strings")
    return errors


def _is_abs_path(path: str) -> bool:
    """What the schema's absPath says: absolute, no NUL, no '..' component (which would let
    os.makedirs create folders outside a root the resolved path is inside of)."""
    return path.startswith("/") and "\0" not in path and ".." not in path.split("/")


def _cache_key() -> str:
    """What decides a config's outcome besides the config itself: the schema's bytes and the
    validating code. zlib's checksum, not hashlib (milliseconds to import on every ADD); an
    accidental match is harmless because the entry holds this key and is compared in full."""
    with open(SCHEMA_PATH, "rb") as f:
        schema = f.read()
    return f"{__version__} build {_build_id()} schema {zlib.crc32(schema):08x}-{len(schema)}"


def _build_id() -> str:
    try:
        from . import _build  # written by build.sh into the compiled binary only

        return str(getattr(_build, "BUILD_ID", _build.COMMIT))
    except ImportError:  # from source: the validating code is this file
        with open(__file__, "rb") as f:
            return f"source-{zlib.crc32(f.read()):08x}"


def _validation_entry(raw: dict[str, Any]) -> tuple[str, bytes] | None:
    """Where the fact "this config is valid" is kept and what that file holds: the cache key and
    the canonical static config. The name is only checksums (of the key, then of the content); the
    content is compared in full, so no collision can pass a config off as validated. None when
    dataDir is unusable."""
    data_dir = raw.get("dataDir", DEFAULT_DATA_DIR)
    if not isinstance(data_dir, str) or not _is_abs_path(data_dir):
        return None
    static = {key: value for key, value in raw.items() if key not in PER_ATTACHMENT_KEYS}
    key = _cache_key().encode()
    text = key + b"\n" + json.dumps(static, sort_keys=True, separators=(",", ":")).encode()
    name = f"{zlib.crc32(key):08x}-{zlib.crc32(text):08x}-{len(text)}"
    return os.path.join(data_dir, VALIDATED_DIR, name), text


def _known_valid(entry: tuple[str, bytes]) -> bool:
    path, text = entry
    try:
        return files.read_bytes(path) == text
    except files.FileError:  # a symlink or a folder there: not ours, so not trusted
        return False


def _remember_valid(entry: tuple[str, bytes]) -> None:
    path, text = entry
    try:
        files.make_dirs(os.path.dirname(path))
        files.write_bytes(path, text, 0o600)
    except files.FileError:
        pass  # only a cache: the next run validates again


def _prune_stale(entry: tuple[str, bytes]) -> None:
    """Remove entries made under another schema or build: they can never be trusted again. Only
    on a miss, which pays for jsonschema anyway; a hit never lists the folder."""
    folder, name = os.path.split(entry[0])
    prefix = name.split("-", 1)[0] + "-"
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for other in names:
        if not other.startswith((prefix, ".")):  # dot names: another run's temporary file
            with contextlib.suppress(files.FileError):  # a folder or worse: never read as an entry either
                files.remove(os.path.join(folder, other))


def validate(raw: dict[str, Any]) -> None:
    """Raise code 7 naming every offending key; jsonschema runs only for a config not seen before."""
    entry = _validation_entry(raw)
    if entry and _known_valid(entry):
        errors = _attachment_errors(raw)
    else:
        if entry:
            _prune_stale(entry)
        errors = schema_errors(raw)
        if not errors and entry:
            _remember_valid(entry)
    if errors:
        raise CniError(ERR_INVALID_CONFIG, "invalid deviceid-inject config: " + "; ".join(errors))


def named_paths(raw: dict[str, Any]) -> dict[str, str]:
    """Every host path the config makes the plugin read or write, by the key that names it, with
    the defaults filled in; values that are not strings are left to `load` to refuse. The CNI
    server serves only calls whose paths it sees as its client does (views.py)."""
    runtime = raw.get("runtimeConfig")
    named = {
        "deviceInfoRoot": raw.get("deviceInfoRoot", DEFAULT_DEVICE_INFO_ROOT),
        "dataDir": raw.get("dataDir", DEFAULT_DATA_DIR),
        "logFile": raw.get("logFile"),
        "sysfsRoot": raw.get("sysfsRoot"),
        "runtimeConfig.CNIDeviceInfoFile": runtime.get("CNIDeviceInfoFile") if isinstance(runtime, dict) else None,
    }
    return {key: value for key, value in named.items() if isinstance(value, str) and value}


def load(raw: dict[str, Any]) -> Config:
    """Validate the plugin's keys and build the Config; unknown keys are ignored, as CNI requires.
    Validation consults the record of configs known valid under dataDir, and a config not known yet
    is recorded there (see `validate`): this reads and may write files."""
    validate(raw)
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
