"""The CNI protocol: environment, stdin, result versions and error objects.

Everything a runtime hands us or expects back is shaped here, so the commands
never touch os.environ, sys.stdin or sys.stdout themselves.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

# Names for annotations only: typing costs milliseconds to import on every ADD.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, BinaryIO, TextIO

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

# Error codes from the CNI spec; 100 and up are ours.
ERR_INCOMPATIBLE_VERSION = 1
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_PLUGIN_NOT_AVAILABLE = 50
ERR_NO_DEVICE = 100
ERR_CHECK_FAILED = 101
ERR_AMBIGUOUS_MAC = 102  # two VFs carry the MAC looked for
ERR_INTERNAL = 199  # a bug of ours, still reported as one error object

# A plugin config is a few KiB; prevResults with many IPs stay far below this.
MAX_STDIN_BYTES = 4 * 1024 * 1024
MAX_INT_DIGITS = 4300

# libcni's rules: containerd and CRI-O never send anything else.
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
IFNAME_MAX_BYTES = 15


class CniError(Exception):
    """A failure that becomes one CNI error object on stdout."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details}


@dataclass(frozen=True)
class Env:
    """The CNI_* variables of one invocation, validated for its command."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = field(default_factory=dict)
    path: str = ""


def parse_env(environ: Mapping[str, str]) -> Env:
    for key in ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"):
        if not _is_utf8(environ.get(key, "")):
            raise CniError(ERR_INVALID_ENV, f"{key} is not valid UTF-8")
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(ERR_INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    env = Env(
        command=command,
        container_id=environ.get("CNI_CONTAINERID", ""),
        netns=environ.get("CNI_NETNS", ""),
        ifname=environ.get("CNI_IFNAME", ""),
        args=_parse_args(environ.get("CNI_ARGS", "")),
        path=environ.get("CNI_PATH", ""),
    )
    if command in ("ADD", "DEL", "CHECK"):
        _require(env.container_id, "CNI_CONTAINERID")
        if not _CONTAINER_ID.fullmatch(env.container_id):
            raise CniError(
                ERR_INVALID_ENV,
                f"CNI_CONTAINERID {env.container_id!r} must start with a letter or digit and hold only "
                "letters, digits, '_', '.' and '-'",
            )
        _require(env.ifname, "CNI_IFNAME")
        check_ifname(env.ifname, "CNI_IFNAME")
    if command in ("ADD", "CHECK"):
        _require(env.netns, "CNI_NETNS")
    return env


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # os.environ keeps undecodable bytes as lone surrogates
        return False
    return True


def ifname_problem(name: str) -> str | None:
    """What breaks the kernel's interface-name rules (as libcni applies them), or None: the one
    statement of the rule, for CNI_IFNAME, the config's pfNames and the command line's --ifname."""
    if not name or name in (".", ".."):
        return "is not a valid interface name"
    if len(name.encode()) > IFNAME_MAX_BYTES:
        return f"is longer than {IFNAME_MAX_BYTES} bytes"
    if any(c in name for c in "/:\0") or any(c.isspace() for c in name):
        return "must not contain '/', ':', NUL or whitespace"
    return None


def check_ifname(name: str, what: str) -> None:
    problem = ifname_problem(name)
    if problem:
        raise CniError(ERR_INVALID_ENV, f"{what} {name!r} {problem}")


def _require(value: str, name: str) -> None:
    if not value:
        raise CniError(ERR_INVALID_ENV, f"{name} is required for this command but is not set")


def _parse_args(raw: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in filter(None, raw.split(";")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS item {item!r} is not of the form KEY=VALUE")
        pairs[key] = value
    return pairs


def read_config(stream: BinaryIO) -> dict[str, Any]:
    """Read stdin as the network config object; only decoding is judged here."""
    raw = stream.read(MAX_STDIN_BYTES + 1)
    if len(raw) > MAX_STDIN_BYTES:
        raise CniError(ERR_DECODE, f"stdin is larger than {MAX_STDIN_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CniError(ERR_DECODE, f"stdin is not UTF-8: {exc}") from None
    if not text.strip():
        raise CniError(ERR_DECODE, "stdin is empty: the network config is missing")
    try:
        config = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int)
        # A lone surrogate (a "\\ud800" escape) decodes, but can never become a path or a name.
        json.dumps(config, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as exc:
        raise CniError(ERR_DECODE, f"stdin is not valid JSON: {exc}") from None
    except UnicodeEncodeError:
        raise CniError(ERR_DECODE, "stdin holds a string that is not valid Unicode (a lone surrogate)") from None
    if not isinstance(config, dict):
        raise CniError(ERR_DECODE, f"the network config must be a JSON object, not {type(config).__name__}")
    return config


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _bounded_int(text: str) -> int:
    # Python refuses over 4300 digits by itself (since 3.11, and 3.9.14), with a message about
    # sys.set_int_max_str_digits; this check names the number's size and our limit instead.
    if len(text) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits is over the limit of {MAX_INT_DIGITS}")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} does not fit a float")
    return value


def version_at_least(version: str, floor: str) -> bool:
    return _version_key(version) >= _version_key(floor)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def require_version(cni_version: Any, command: str) -> None:
    """Check the config's cniVersion against what we speak and what the command needs."""
    if cni_version not in SUPPORTED_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"cniVersion {cni_version!r} is not supported; supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    needed = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}.get(command)
    if needed and not version_at_least(cni_version, needed):
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"cniVersion {cni_version} does not allow {command} (needs {needed})")


def convert_result(prev: dict[str, Any], cni_version: str) -> dict[str, Any]:
    """Re-shape a prevResult for `cni_version`, changing only what the versions disagree on.

    0.3.x and 0.4.0 carry ips[].version; 1.0.0 dropped it. Fields we do not know
    pass through untouched, as the spec asks of a chained plugin.
    """
    if "ip4" in prev or "ip6" in prev:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION, "prevResult is in the 0.2.0 format (ip4/ip6); 0.3.0 or later is needed"
        )
    result = dict(prev)
    result["cniVersion"] = cni_version
    ips = result.get("ips")
    if isinstance(ips, list):
        result["ips"] = [_convert_ip(ip, cni_version) for ip in ips]
    return result


def _convert_ip(ip: Any, cni_version: str) -> Any:
    if not isinstance(ip, dict):
        return ip
    ip = dict(ip)
    if version_at_least(cni_version, "1.0.0"):
        ip.pop("version", None)
    elif "version" not in ip and isinstance(ip.get("address"), str):
        ip["version"] = "6" if ":" in ip["address"] else "4"
    return ip


def write_json(out: TextIO, obj: Mapping[str, Any]) -> None:
    out.write(json.dumps(obj, indent=4, allow_nan=False))
    out.write("\n")
    out.flush()
