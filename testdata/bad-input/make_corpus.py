"""Writes the bad-input corpus: cases/<id>.stdin (what the plugin reads on stdin) and manifest.json
(how each case is run and what it must answer). tests/unit/test_bad_input.py runs every case.

    python testdata/bad-input/make_corpus.py      # regenerate; commit the output

A manifest entry:
    id        unique name, also the stdin file's name
    group     what kind of bad input
    command   CNI_COMMAND (unless env overrides it)
    stdin     file under cases/
    pad_to    optional: append spaces until stdin is this many bytes (big inputs stay small in git)
    env       overrides of the defaults CNI_CONTAINERID=ctr-1 CNI_IFNAME=net1
              CNI_NETNS=/proc/self/ns/net; null removes the variable; bytes that are not UTF-8
              are written as surrogate escapes (\\udcff is the byte 0xff)
    setup     files to make first: {op: mkdir|write|symlink|mkfifo, path, target?, text?}
    expect    {"exit": "error", "codes": [...]}   exit non-zero, one error object, code in codes
              {"exit": "ok"}                      the documented success
              {"exit": "either", "codes": [...]}  the documented success or one of these errors
    bug       optional: why this case fails today (tests mark it xfail, strict)
    why       what the case is about

Placeholders in stdin, env and setup: @BASE@ (the case's scratch folder), @DEVINFO@ and @STATE@
(deviceInfoRoot and dataDir, @BASE@/devinfo and @BASE@/state), @SYSFS@ (testdata/sysfs).
Every case also gets @BASE@/outside/victim, a file nothing may touch.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, "cases")
MAX_STDIN = 4 * 1024 * 1024

PREV = {
    "cniVersion": "1.1.0",
    "interfaces": [{"name": "net1", "mac": "02:00:00:00:00:01", "sandbox": "/var/run/netns/pod"}],
    "ips": [{"address": "10.10.0.5/24", "gateway": "10.10.0.1", "interface": 0}],
    "dns": {"nameservers": ["10.96.0.10"]},
}
BASE: dict[str, Any] = {
    "cniVersion": "1.1.0",
    "name": "n6-dpdk",
    "type": "deviceid-inject",
    "sysfsRoot": "@SYSFS@/vf-iavf",
    "deviceInfoRoot": "@DEVINFO@",
    "dataDir": "@STATE@",
    "prevResult": PREV,
}

ERROR = "error"
OK = {"exit": "ok"}


cases: list[dict[str, Any]] = []


def error(*codes: int) -> dict[str, Any]:
    return {"exit": ERROR, "codes": list(codes)}


def either(*codes: int) -> dict[str, Any]:
    return {"exit": "either", "codes": list(codes)}


def config(**changes: Any) -> dict[str, Any]:
    """BASE with keys changed; a value of ... removes the key."""
    conf = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is ...:
            conf.pop(key, None)
        else:
            conf[key] = value
    return conf


def dump(obj: Any) -> bytes:
    try:
        return json.dumps(obj, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # lone surrogates: only escapes can carry them
        return json.dumps(obj).encode()


def add(
    group: str,
    slug: str,
    stdin: bytes | dict[str, Any],
    expect: dict[str, Any],
    why: str,
    command: str = "ADD",
    env: dict[str, str | None] | None = None,
    setup: list[dict[str, str]] | None = None,
    bug: str | None = None,
    pad_to: int | None = None,
) -> None:
    case: dict[str, Any] = {
        "id": f"{len(cases) + 1:03d}-{group}-{slug}",
        "group": group,
        "command": command,
        "stdin": stdin if isinstance(stdin, bytes) else dump(stdin),
        "env": env or {},
        "setup": setup or [],
        "expect": expect,
        "why": why,
    }
    if pad_to:
        case["pad_to"] = pad_to
    if bug:
        case["bug"] = bug
    cases.append(case)


def runtime(path: str, **more: Any) -> dict[str, Any]:
    return config(runtimeConfig={"CNIDeviceInfoFile": path, **more})


# --- malformed and truncated JSON -------------------------------------------------------------------

whole = json.dumps(BASE, separators=(",", ":")).encode()
for i in range(30):
    cut = 1 + (len(whole) - 2) * i // 29
    add("truncated", f"at-{cut}", whole[:cut], error(6), f"the config cut after {cut} of {len(whole)} bytes")

pretty = json.dumps(BASE, indent=2).encode()
malformed = {
    "empty": b"",
    "whitespace-only": b" \n\t\r\n",
    "trailing-comma": pretty[:-2] + b",\n}",
    "single-quotes": pretty.replace(b'"', b"'"),
    "unquoted-keys": b'{cniVersion: "1.1.0", type: "deviceid-inject"}',
    "line-comment": b"// the config\n" + pretty,
    "block-comment": pretty[:1] + b"/* x */" + pretty[1:],
    "missing-colon": b'{"cniVersion" "1.1.0"}',
    "missing-comma": b'{"cniVersion": "1.1.0" "type": "deviceid-inject"}',
    "extra-closing-brace": pretty + b"}",
    "two-objects": pretty + pretty,
    "object-then-garbage": pretty + b" x",
    "python-literals": b'{"cniVersion": "1.1.0", "type": "deviceid-inject", "required": True, "x": None}',
    "hex-number": b'{"cniVersion": "1.1.0", "type": "deviceid-inject", "x": 0x10}',
    "leading-zero": b'{"cniVersion": "1.1.0", "type": "deviceid-inject", "x": 01}',
    "plus-sign": b'{"cniVersion": "1.1.0", "type": "deviceid-inject", "x": +1}',
    "bare-fraction": b'{"cniVersion": "1.1.0", "type": "deviceid-inject", "x": .5}',
    "raw-newline-in-string": b'{"cniVersion": "1.1.0", "type": "deviceid-\ninject"}',
    "raw-tab-in-string": b'{"cniVersion": "1.1.0", "type": "deviceid-\tinject"}',
    "bad-escape": b'{"cniVersion": "1.1.0", "type": "deviceid-\\x41inject"}',
    "short-unicode-escape": b'{"cniVersion": "1.1.0", "type": "\\u12"}',
    "unterminated-string": b'{"cniVersion": "1.1.0", "type": "deviceid-inject}',
    "nested-5000-arrays": b'{"cniVersion": "1.1.0", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "nested-5000-objects": b'{"x":' * 5000 + b"1" + b"}" * 5000,
    "unclosed-nesting": b'{"x": ' + b"[" * 5000,
    "utf8-bom": b"\xef\xbb\xbf" + pretty,
    "nul-byte-between-tokens": pretty[:1] + b"\x00" + pretty[1:],
    "top-level-array": b"[" + pretty + b"]",
    "top-level-string": b'"deviceid-inject"',
    "top-level-number": b"42",
    "top-level-null": b"null",
    "top-level-true": b"true",
}
for slug, data in malformed.items():
    add("malformed", slug, data, error(6), "not one JSON object")

# --- bytes that are not UTF-8 --------------------------------------------------------------------------

non_utf8 = {
    "ff-in-string": pretty.replace(b"n6-dpdk", b"n6-\xffdpdk"),
    "latin1-name": pretty.replace(b"n6-dpdk", "n6-d\xe9pdk".encode("latin-1")),
    "utf16-le-bom": json.dumps(BASE).encode("utf-16"),
    "utf16-be": json.dumps(BASE).encode("utf-16-be"),
    "utf32": json.dumps(BASE).encode("utf-32"),
    "overlong-slash": pretty.replace(b"n6-dpdk", b"n6\xc0\xafdpdk"),
    "encoded-surrogate": pretty.replace(b"n6-dpdk", b"n6\xed\xa0\x80dpdk"),
    "truncated-multibyte": pretty.replace(b"n6-dpdk", b"n6\xe2\x82"),
    "lone-continuation-byte": pretty.replace(b"n6-dpdk", b"n6\x80dpdk"),
    "five-byte-sequence": pretty.replace(b"n6-dpdk", b"n6\xf8\x88\x80\x80\x80"),
}
for slug, data in non_utf8.items():
    add("non-utf8", slug, data, error(6), "stdin is not UTF-8")

# --- numbers JSON has no room for --------------------------------------------------------------------

for slug, token in {"nan": b"NaN", "infinity": b"Infinity", "minus-infinity": b"-Infinity", "1e999": b"1e999"}.items():
    data = pretty.replace(b'"/var/run/netns/pod"', token)
    assert data != pretty
    add("numbers", f"{slug}-in-prev-result", data, either(6), "echoed in the result")
add(
    "numbers",
    "nan-in-unknown-key",
    pretty[:-2] + b',\n  "x": NaN\n}',
    either(6),
    "not JSON, but in a key nobody reads: refusing or ignoring it are both fine",
)
huge = b"1" * 5000
add("numbers", "huge-int-in-unknown-key", pretty[:-2] + b',\n  "x": ' + huge + b"\n}", error(6), "")
add(
    "numbers",
    "huge-int-in-prev-result",
    pretty.replace(b'"interface": 0', b'"interface": ' + huge),
    error(6),
    "",
)
add(
    "numbers",
    "huge-int-to-version",
    b'{"cniVersion": "1.1.0", "x": ' + huge + b"}",
    OK,
    "VERSION answers whatever it is sent",
    command="VERSION",
)
add("numbers", "big-int-4000-digits", pretty[:-2] + b',\n  "x": ' + b"1" * 4000 + b"\n}", OK, "a big but legal number")
add("numbers", "float-with-exponent", config(x=1.5e300), OK, "an unknown key")

# --- wrong types for every key ---------------------------------------------------------------------------

WRONG = {"null": None, "int": 7, "float": 1.5, "bool": True, "string": "x", "list": [], "object": {}}
STRING_KEYS = ("name", "type", "sysfsRoot", "deviceInfoRoot", "dataDir", "deviceID", "logFile")
for key in ("cniVersion", *STRING_KEYS):
    for slug, value in WRONG.items():
        if slug == "string":
            continue
        add("wrong-type", f"{key}-{slug}", config(**{key: value}), error(1 if key == "cniVersion" else 7), key)
for key in ("required", "vhostNet"):
    for slug, value in {"null": None, "int-0": 0, "int-1": 1, "string": "true", "list": [], "object": {}}.items():
        add("wrong-type", f"{key}-{slug}", config(**{key: value}), error(7), key)
for slug, value in {
    "null": None,
    "string": "ens1f0",
    "int": 5,
    "object": {},
    "item-int": [5],
    "item-null": [None],
    "item-slash": ["a/b"],
    "item-empty": [""],
    "item-16-bytes": ["a" * 16],
    "item-16-bytes-in-8-chars": ["\xe9" * 8],
    "item-dotdot": [".."],
    "item-space": ["ens 1"],
    "item-trailing-newline": ["ens1f0\n"],
    "duplicates": ["ens1f0", "ens1f0"],
}.items():
    add("wrong-type", f"pfNames-{slug}", config(pfNames=value), error(7), "pfNames")
for slug, value in {"unknown": "trace", "upper-case": "WARNING", "int": 5, "null": None, "list": ["info"]}.items():
    add("wrong-type", f"logLevel-{slug}", config(logLevel=value), error(7), "logLevel")
for slug, value in {"null": None, "list": [], "string": "x", "int": 5, "bool": True}.items():
    add("wrong-type", f"prevResult-{slug}", config(prevResult=value), error(7), "prevResult")
    add("wrong-type", f"runtimeConfig-{slug}", config(runtimeConfig=value), error(7), "runtimeConfig")
for slug, value in {"null": None, "int": 5, "list": ["/x"], "object": {}, "relative": "cni/x"}.items():
    add("wrong-type", f"CNIDeviceInfoFile-{slug}", runtime(value), error(7), "runtimeConfig.CNIDeviceInfoFile")
for slug, value in {"null": None, "int": 5, "list": ["0000:3b:02.3"], "object": {}}.items():
    add("wrong-type", f"runtime-deviceID-{slug}", config(runtimeConfig={"deviceID": value}), error(7), "deviceID")
for slug, value in {
    "null": None,
    "object": {},
    "string": "ctr-1",
    "item-int": [5],
    "item-missing-ifname": [{"containerID": "ctr-1"}],
    "item-containerID-int": [{"containerID": 5, "ifname": "net1"}],
    "item-ifname-null": [{"containerID": "ctr-1", "ifname": None}],
}.items():
    add(
        "wrong-type",
        f"valid-attachments-{slug}",
        config(prevResult=..., **{"cni.dev/valid-attachments": value}),
        error(7),
        "cni.dev/valid-attachments",
        command="GC",
        env={"CNI_CONTAINERID": None, "CNI_IFNAME": None, "CNI_NETNS": None},
    )
add("wrong-type", "type-missing", config(type=...), error(7), "type is required")
add("wrong-type", "name-empty", config(name=""), error(7), "name must not be empty")
add("wrong-type", "type-empty", config(type=""), error(7), "type must not be empty")
add("wrong-type", "dataDir-relative", config(dataDir="state"), error(7), "dataDir must be absolute")
add("wrong-type", "deviceInfoRoot-relative", config(deviceInfoRoot="./devinfo"), error(7), "must be absolute")
add("wrong-type", "sysfsRoot-relative", config(sysfsRoot="sys"), error(7), "sysfsRoot must be absolute")
add("wrong-type", "logFile-relative", config(logFile="log"), error(7), "logFile must be absolute")
for command in ("DEL", "CHECK", "GC", "STATUS"):
    add("wrong-type", f"dataDir-int-{command}", config(dataDir=5), error(7), "every command validates", command)
    add("wrong-type", f"required-string-{command}", config(required="no"), error(7), "every command", command)

# --- prevResult: missing, of another version, odd ------------------------------------------------------

add("prev-result", "missing-add", config(prevResult=...), error(7), "a chained plugin needs it")
add("prev-result", "missing-check", config(prevResult=...), error(7), "CHECK always gets one", "CHECK")
add("prev-result", "missing-del", config(prevResult=...), OK, "DEL works without it", "DEL")
add("prev-result", "empty-object", config(prevResult={}), OK, "no interface: the address goes only into the file")
add("prev-result", "check-without-add", config(), error(101), "CHECK with no record of an ADD", "CHECK")
for conf_version, prev_version in (("0.3.0", "1.1.0"), ("1.1.0", "0.3.0"), ("0.4.0", "1.0.0"), ("1.0.0", "0.3.1")):
    prev = copy.deepcopy(PREV)
    prev["cniVersion"] = prev_version
    if prev_version.startswith("0."):
        prev["ips"][0]["version"] = "4"
    else:
        prev["interfaces"][0].update(mtu=1500, socketPath="/run/x.sock", pciID="0000:3b:02.3")
    add(
        "prev-result",
        f"config-{conf_version}-prev-{prev_version}",
        config(cniVersion=conf_version, prevResult=prev),
        OK,
        "converted to the config's version",
    )
add(
    "prev-result",
    "format-0.2.0",
    config(prevResult={"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/24"}}),
    error(1),
    "ip4/ip6 results are 0.2.0",
)
for slug, prev in {
    "version-missing": {k: v for k, v in PREV.items() if k != "cniVersion"},
    "version-int": {**PREV, "cniVersion": 5},
    "version-unknown": {**PREV, "cniVersion": "9.9.9"},
    "ips-string": {**PREV, "ips": "10.0.0.1"},
    "ips-item-int": {**PREV, "ips": [5]},
    "interface-name-int": {**PREV, "interfaces": [{"name": 5, "sandbox": "/x"}]},
    "interface-pciID-garbage": {**PREV, "interfaces": [{"name": "net1", "sandbox": "/x", "pciID": "zz:zz"}]},
    "interface-pciID-int": {**PREV, "interfaces": [{"name": "net1", "sandbox": "/x", "pciID": 5}]},
}.items():
    add("prev-result", slug, config(prevResult=prev), OK, "the rest of prevResult passes through")
for slug, interfaces in {"string": "net1", "item-int": [5], "item-null": [None], "object": {"name": "net1"}}.items():
    add("prev-result", f"interfaces-{slug}", config(prevResult={**PREV, "interfaces": interfaces}), error(7), "")

# --- cniVersion ------------------------------------------------------------------------------------------

for version in (
    "0.1.0",
    "0.2.0",
    "0.3.2",
    "0.4.1",
    "1.2.0",
    "2.0.0",
    "",
    "1.1",
    "v1.1.0",
    "1.1.0 ",
    "01.1.0",
    "1.1.0-rc1",
):
    slug = (version.strip() or "empty") + ("-space" if version != version.strip() else "")
    add("cni-version", f"add-{slug}", config(cniVersion=version), error(1), "not a version we speak")
add("cni-version", "missing", config(cniVersion=...), error(1), "cniVersion is required")
for command in ("DEL", "CHECK", "GC", "STATUS"):
    add("cni-version", f"unknown-{command}", config(cniVersion="9.9.9"), error(1), "", command)
add("cni-version", "check-at-0.3.0", config(cniVersion="0.3.0"), error(1), "CHECK needs 0.4.0", "CHECK")
add("cni-version", "check-at-0.3.1", config(cniVersion="0.3.1"), error(1), "CHECK needs 0.4.0", "CHECK")
add("cni-version", "gc-at-1.0.0", config(cniVersion="1.0.0", prevResult=...), error(1), "GC needs 1.1.0", "GC")
add("cni-version", "status-at-0.4.0", config(cniVersion="0.4.0"), error(1), "STATUS needs 1.1.0", "STATUS")
add("cni-version", "version-unknown", {"cniVersion": "9.9.9"}, OK, "VERSION answers anyway", "VERSION")
add("cni-version", "version-garbage-stdin", b"\xff{not json", OK, "VERSION answers anyway", "VERSION")
add("cni-version", "version-empty-stdin", b"", OK, "VERSION answers anyway", "VERSION")

# --- very large stdin ---------------------------------------------------------------------------------------

add("large", "over-4-MiB", pretty, error(6), "4 MiB + 1 byte", pad_to=MAX_STDIN + 1)
add("large", "exactly-4-MiB", pretty, OK, "the limit itself is fine", pad_to=MAX_STDIN)
add("large", "over-4-MiB-not-utf8", pretty + b"\xff", error(6), "", pad_to=MAX_STDIN + 2)
many = [{"name": f"if{i}", "mac": "02:00:00:00:00:02"} for i in range(2000)] + PREV["interfaces"]
add("large", "2000-interfaces", config(prevResult={**PREV, "interfaces": many}), OK, "big but legal")

# --- interface names ----------------------------------------------------------------------------------------

bad_ifnames = {
    "slash": "a/b",
    "dotdot": "..",
    "dot": ".",
    "only-slash": "/",
    "climb": "../../etc",
    "16-bytes": "a" * 16,
    "16-bytes-in-8-chars": "\xe9" * 8,
    "space": "net 1",
    "colon": "net:1",
    "tab": "net\t1",
    "trailing-newline": "net1\n",
    "nbsp": "\xa0net",
    "ideographic-space": "\u3000x",
    "empty": "",
}
for slug, name in bad_ifnames.items():
    add("ifname", f"add-{slug}", config(), error(4), "the kernel's rules", env={"CNI_IFNAME": name})
for slug in ("slash", "dotdot", "16-bytes", "empty", "climb"):
    add("ifname", f"del-{slug}", config(), error(4), "", "DEL", env={"CNI_IFNAME": bad_ifnames[slug]})
    add("ifname", f"check-{slug}", config(), error(4), "", "CHECK", env={"CNI_IFNAME": bad_ifnames[slug]})
add("ifname", "unset", config(), error(4), "CNI_IFNAME is required", env={"CNI_IFNAME": None})
add("ifname", "not-utf8", config(), error(4), "", env={"CNI_IFNAME": "n\udcffet"})
add("ifname", "15-bytes", config(), OK, "the longest name", env={"CNI_IFNAME": "a" * 15})
add("ifname", "14-bytes-in-7-chars", config(), OK, "multi-byte is allowed", env={"CNI_IFNAME": "\xe9" * 7})

# --- container IDs -------------------------------------------------------------------------------------------

bad_ids = {
    "climb": "../x",
    "slash": "a/b",
    "absolute": "/abs",
    "leading-dash": "-abc",
    "leading-dot": ".abc",
    "leading-underscore": "_abc",
    "space": "a b",
    "tab": "a\tb",
    "newline": "a\nb",
    "trailing-newline": "abc\n",
    "semicolon": "a;b",
    "colon": "a:b",
    "star": "a*",
    "dollar": "a$b",
    "non-ascii": "\xe9t\xe9",
    "delete-char": "a\x7f",
    "equals": "a=b",
    "pipe": "a|b",
    "not-utf8": "a\udcff",
    "empty": "",
}
for slug, cid in bad_ids.items():
    add("container-id", f"add-{slug}", config(), error(4), "libcni's rules", env={"CNI_CONTAINERID": cid})
for slug in ("climb", "slash", "leading-dot", "empty"):
    add("container-id", f"del-{slug}", config(), error(4), "", "DEL", env={"CNI_CONTAINERID": bad_ids[slug]})
add("container-id", "unset", config(), error(4), "", env={"CNI_CONTAINERID": None})
add("container-id", "dots", config(), OK, "valid", env={"CNI_CONTAINERID": "a.."})
add("container-id", "64-hex", config(), OK, "what runtimes make", env={"CNI_CONTAINERID": "0123456789abcdef" * 4})
add("container-id", "250-chars", config(), OK, "digest name", env={"CNI_CONTAINERID": "a" * 250})
add("container-id", "250-chars-del", config(), OK, "", "DEL", env={"CNI_CONTAINERID": "a" * 250})
add(
    "container-id",
    "300-chars",
    config(),
    either(4, 5),
    "longer than a file name: a clean error",
    env={"CNI_CONTAINERID": "a" * 300},
)
add("container-id", "lock", config(), OK, "a valid ID", env={"CNI_CONTAINERID": "lock"})
add("container-id", "lock-del", config(), OK, "", "DEL", env={"CNI_CONTAINERID": "lock"})

# --- CNIDeviceInfoFile outside the tree, at a symlink, at a directory ---------------------------------------

outside_paths = {
    "etc-passwd": "/etc/passwd",
    "the-victim": "@BASE@/outside/victim",
    "new-file-outside": "@BASE@/outside/new",
    "climb-from-root": "@DEVINFO@/../outside/f",
    "climb-from-cni": "@DEVINFO@/cni/../../outside/f",
    "sibling-with-root-as-prefix": "@DEVINFO@x/f",
    "the-root-itself": "@DEVINFO@",
    "root-with-slash": "@DEVINFO@/",
    "cni-with-slash": "@DEVINFO@/cni/",
    "ends-in-dotdot": "@DEVINFO@/cni/..",
    "ends-in-dot": "@DEVINFO@/.",
    "slash": "/",
    "double-slash": "//etc/passwd",
    "empty": "",
    "proc-cwd": "/proc/self/cwd/x",
    "dev-null": "/dev/null",
    "into-dataDir": "@STATE@/ctr-1/net1.json",
    "the-lock": "@STATE@/lock",
    "nul-byte": "@DEVINFO@/cni/a\x00b",
}
for slug, path in outside_paths.items():
    add("devinfo-path", slug, runtime(path), error(7), "outside deviceInfoRoot or not a file name")
add("devinfo-path", "lone-surrogate", runtime("@DEVINFO@/cni/\ud800"), either(6, 7), "")
add(
    "devinfo-path",
    "dotdot-through-a-new-folder-outside",
    runtime("@DEVINFO@/../outside/made-by-dotdot/../../devinfo/cni/f"),
    either(7),
    "resolves inside, but passes through a folder outside that does not exist",
)
add(
    "devinfo-path",
    "dataDir-dotdot-through-a-new-folder-outside",
    config(dataDir="@BASE@/outside/made-by-dotdot/../../state"),
    either(7),
    "",
)
for slug, path in {
    "fine": "@DEVINFO@/cni/multus-ctr-1_net1",
    "deeper": "@DEVINFO@/a/b/c/f",
    "dot-segment": "@DEVINFO@/cni/./f",
}.items():
    add("devinfo-path", f"inside-{slug}", runtime(path), OK, "inside the tree")
add(
    "devinfo-path",
    "dotdot-that-stays-inside",
    runtime("@DEVINFO@/cni/x/../f"),
    error(7),
    "'..' components are refused outright: os.makedirs would walk them as given",
)

VICTIM = "@BASE@/outside/victim"
symlink_cases = {
    "to-victim-outside": ("@DEVINFO@/cni/link", VICTIM),
    "to-file-inside": ("@DEVINFO@/cni/link", "@DEVINFO@/cni/real"),
    "dangling-outside": ("@DEVINFO@/cni/link", "@BASE@/outside/nothing"),
    "to-itself": ("@DEVINFO@/cni/link", "link"),
    "to-dev-null": ("@DEVINFO@/cni/link", "/dev/null"),
}
for slug, (link, target) in symlink_cases.items():
    setup = [
        {"op": "write", "path": "@DEVINFO@/cni/real", "text": "{}"},
        {"op": "symlink", "path": link, "target": target},
    ]
    add("symlink", f"given-{slug}", runtime(link), error(7), "never written through a symlink", setup=setup)
add(
    "symlink",
    "fallback-is-a-link",
    config(),
    error(7),
    "our own path is a symlink",
    setup=[{"op": "symlink", "path": "@DEVINFO@/cni/n6-dpdk-ctr-1_net1", "target": VICTIM}],
)
for slug, given in {"fallback": None, "given": "@DEVINFO@/cni/f"}.items():
    add(
        "symlink",
        f"cni-folder-links-outside-{slug}",
        runtime(given) if given else config(),
        error(7),
        "the folder resolves outside",
        setup=[{"op": "symlink", "path": "@DEVINFO@/cni", "target": "@BASE@/outside"}],
    )
add(
    "symlink",
    "sub-folder-links-outside",
    runtime("@DEVINFO@/cni/sub/f"),
    error(7),
    "",
    setup=[{"op": "symlink", "path": "@DEVINFO@/cni/sub", "target": "../../outside"}],
)
add(
    "symlink",
    "cni-folder-links-inside",
    config(),
    OK,
    "resolved inside: fine",
    setup=[{"op": "mkdir", "path": "@DEVINFO@/real"}, {"op": "symlink", "path": "@DEVINFO@/cni", "target": "real"}],
)
add(
    "symlink",
    "root-is-a-link",
    config(deviceInfoRoot="@BASE@/devinfo-link"),
    OK,
    "judged after resolving both sides",
    setup=[{"op": "mkdir", "path": "@DEVINFO@"}, {"op": "symlink", "path": "@BASE@/devinfo-link", "target": "devinfo"}],
)

for slug, (given, setup) in {
    "at-a-directory": ("@DEVINFO@/cni/adir", [{"op": "mkdir", "path": "@DEVINFO@/cni/adir"}]),
    "fallback-is-a-directory": (None, [{"op": "mkdir", "path": "@DEVINFO@/cni/n6-dpdk-ctr-1_net1"}]),
    "at-a-fifo": ("@DEVINFO@/cni/fifo", [{"op": "mkfifo", "path": "@DEVINFO@/cni/fifo"}]),
}.items():
    add("not-a-file", slug, runtime(given) if given else config(), error(7), "not a regular file", setup=setup)
DEVICE_PLUGIN_FILE = {"type": "pci", "version": "1.0.0", "pci": {"pci-address": "0000:3b:02.3"}}
existing = {
    "garbage": "not json",
    "array": "[1, 2]",
    "empty": "",
    "device-plugin-1.0.0": json.dumps(DEVICE_PLUGIN_FILE),
}
for slug, text in existing.items():
    add(
        "not-a-file",
        f"existing-{slug}",
        runtime("@DEVINFO@/cni/f"),
        OK,
        "an existing file is updated or replaced",
        setup=[{"op": "write", "path": "@DEVINFO@/cni/f", "text": text}],
    )
add(
    "not-a-file",
    "root-is-a-file",
    config(),
    either(5, 7),
    "deviceInfoRoot is a regular file",
    setup=[{"op": "write", "path": "@DEVINFO@", "text": "x"}],
)
add("not-a-file", "dataDir-is-a-file", config(), error(5), "", setup=[{"op": "write", "path": "@STATE@", "text": "x"}])
add(
    "not-a-file",
    "dataDir-under-a-file",
    config(dataDir="@BASE@/outside/victim/state"),
    error(5),
    "",
)

# --- sysfsRoot loops ------------------------------------------------------------------------------------------

SYS = "@BASE@/sys"
NO_MAC = {**PREV, "interfaces": [{"name": "net1", "sandbox": "/var/run/netns/pod"}]}
loops = {
    "root-links-to-itself": [{"op": "symlink", "path": SYS, "target": "sys"}],
    "netdev-links-to-itself": [{"op": "symlink", "path": f"{SYS}/class/net/net1", "target": "net1"}],
    "netdev-links-to-the-root": [{"op": "symlink", "path": f"{SYS}/class/net/net1", "target": "../.."}],
    "device-links-to-itself": [
        {"op": "mkdir", "path": f"{SYS}/class/net/net1"},
        {"op": "symlink", "path": f"{SYS}/class/net/net1/device", "target": "device"},
    ],
    "device-links-to-its-netdev": [
        {"op": "mkdir", "path": f"{SYS}/class/net/net1"},
        {"op": "symlink", "path": f"{SYS}/class/net/net1/device", "target": "."},
    ],
    "two-links-in-a-ring": [
        {"op": "mkdir", "path": f"{SYS}/class/net"},
        {"op": "symlink", "path": f"{SYS}/class/net/net1", "target": "net2"},
        {"op": "symlink", "path": f"{SYS}/class/net/net2", "target": "net1"},
    ],
    "pci-function-links-to-itself": [
        {"op": "mkdir", "path": f"{SYS}/devices/pci0000:3b"},
        {"op": "symlink", "path": f"{SYS}/devices/pci0000:3b/0000:3b:02.3", "target": "0000:3b:02.3"},
        {"op": "mkdir", "path": f"{SYS}/class/net"},
        {"op": "symlink", "path": f"{SYS}/class/net/net1", "target": "../../devices/pci0000:3b/0000:3b:02.3/net/net1"},
    ],
}
for slug, setup in loops.items():
    add("sysfs-loop", slug, config(sysfsRoot=SYS, prevResult=NO_MAC), error(100), "nothing to find", setup=setup)
ring_pci = [
    {"op": "mkdir", "path": f"{SYS}/devices/pci0000:3b/0000:3b:02.3/net/net1"},
    {"op": "mkdir", "path": f"{SYS}/bus/pci/devices"},
    {"op": "mkdir", "path": f"{SYS}/class/net"},
    {"op": "symlink", "path": f"{SYS}/devices/pci0000:3b/0000:3b:02.3/net/net1/device", "target": "../.."},
    {"op": "symlink", "path": f"{SYS}/class/net/net1", "target": "../../devices/pci0000:3b/0000:3b:02.3/net/net1"},
    {
        "op": "symlink",
        "path": f"{SYS}/bus/pci/devices/0000:3b:02.3",
        "target": "../../../devices/pci0000:3b/0000:3b:02.3",
    },
    {"op": "symlink", "path": f"{SYS}/devices/pci0000:3b/0000:3b:02.3/physfn", "target": "physfn"},
    {"op": "symlink", "path": f"{SYS}/devices/pci0000:3b/0000:3b:02.3/infiniband", "target": "."},
    {"op": "symlink", "path": f"{SYS}/devices/pci0000:3b/0000:3b:02.3/driver", "target": "driver"},
]
add(
    "sysfs-loop",
    "pci-tree-links-in-circles",
    config(sysfsRoot=SYS),
    OK,
    "found; enrichment finds nothing",
    setup=ring_pci,
)
add("sysfs-loop", "missing-root", config(sysfsRoot="@BASE@/nothing", prevResult=NO_MAC), error(100), "")
add("sysfs-loop", "root-is-a-file", config(sysfsRoot=VICTIM, prevResult=NO_MAC), error(100), "")
add(
    "sysfs-loop",
    "root-climbs-out",
    config(sysfsRoot="@SYSFS@/vf-iavf/../../../../../../../../etc", prevResult=NO_MAC),
    error(7),
    "reads only",
)
add(
    "sysfs-loop",
    "status-with-a-looping-root",
    config(sysfsRoot=SYS),
    error(50),
    "",
    "STATUS",
    setup=loops["root-links-to-itself"],
)

# --- a missing netns (no sysfsRoot: the real lookup) ----------------------------------------------------------

for slug, netns in {
    "gone": "/var/run/netns/dit-no-such-netns",
    "relative": "netns/pod",
    "not-a-netns-folder": "/",
    "not-a-netns-file": VICTIM,
}.items():
    add(
        "netns",
        slug,
        config(sysfsRoot=..., prevResult=NO_MAC),
        error(100),
        "nothing to look at",
        env={"CNI_NETNS": netns},
    )
add("netns", "unset-for-add", config(), error(4), "ADD needs CNI_NETNS", env={"CNI_NETNS": None})
add("netns", "empty-for-check", config(), error(4), "CHECK needs CNI_NETNS", "CHECK", env={"CNI_NETNS": ""})
add(
    "netns",
    "gone-not-required",
    config(sysfsRoot=..., prevResult=NO_MAC, required=False),
    OK,
    "prevResult passes through",
    env={"CNI_NETNS": "/var/run/netns/dit-no-such-netns"},
)
add("netns", "gone-del", config(sysfsRoot=...), OK, "DEL needs no netns", "DEL", env={"CNI_NETNS": "/nonexistent"})
add("netns", "unset-del", config(prevResult=...), OK, "DEL needs no netns", "DEL", env={"CNI_NETNS": None})

# --- the rest of the environment -----------------------------------------------------------------------------

for slug, command in {
    "empty": "",
    "lower-case": "add",
    "trailing-space": "ADD ",
    "leading-space": " ADD",
    "unknown": "FROB",
    "mixed-case": "Add",
    "trailing-newline": "ADD\n",
    "delete": "DELETE",
    "not-utf8": "ADD\udcff",
}.items():
    add("env", f"command-{slug}", config(), error(4), "CNI_COMMAND", env={"CNI_COMMAND": command})
for slug, args in {"no-equals": "novalue", "no-key": "=v", "second-bad": "K=V;novalue", "word": "a"}.items():
    add("env", f"args-{slug}", config(), error(4), "CNI_ARGS", env={"CNI_ARGS": args})
for slug, args in {
    "kubernetes": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=abc",
    "empty-items": ";;",
    "empty-value": "K=",
    "equals-in-value": "K=a=b",
}.items():
    add("env", f"args-{slug}", config(), OK, "CNI_ARGS", env={"CNI_ARGS": args})
add("env", "path-junk", config(), OK, "CNI_PATH is not used", env={"CNI_PATH": "::/nonexistent:\udcff"})
gc_env = {"CNI_CONTAINERID": None, "CNI_IFNAME": None, "CNI_NETNS": None}
add("env", "gc-no-list", config(prevResult=...), OK, "removes nothing", "GC", env=gc_env)
add("env", "gc-empty-list", config(prevResult=..., **{"cni.dev/valid-attachments": []}), OK, "", "GC", env=gc_env)
add("env", "status-bare", config(prevResult=...), OK, "no container variables", "STATUS", env=gc_env)

# --- names, IDs and keys that are odd but valid ------------------------------------------------------------

for slug, name in {
    "slash": "a/b",
    "climb": "../../../x",
    "dot": ".",
    "dotdot": "..",
    "150-chars": "n" * 150,
    "newline": "n6\ndpdk",
    "non-ascii": "\u00fcbernetz-\u7db2",
}.items():
    add("odd-but-valid", f"name-{slug}", config(name=name), OK, "the file name is made safe")
for slug, length in {"1000-chars": 1000, "fallback-250-bytes": 250 - len("-ctr-1_net1")}.items():
    add("odd-but-valid", f"name-{slug}", config(name="n" * length), OK, "cut and digested")
add("odd-but-valid", "name-missing", config(name=...), OK, "an unnamed network")
add("odd-but-valid", "name-lone-surrogate", config(name="n6\ud800"), either(6, 7), "")
add("odd-but-valid", "name-nul", config(name="n6\x00dpdk"), error(7), "NUL in a name")
add("odd-but-valid", "deviceID-garbage", config(deviceID="zzzz"), OK, "falls through to sysfs")
add("odd-but-valid", "runtime-deviceID", config(runtimeConfig={"deviceID": "0000:3b:01.5"}), OK, "")
add("odd-but-valid", "runtime-deviceID-empty", config(runtimeConfig={"deviceID": ""}), OK, "")
add("odd-but-valid", "unknown-keys", config(x=1, capabilities={"mac": True}, ipam={"type": "x"}), OK, "ignored")
add("odd-but-valid", "same-root-for-both", config(dataDir="@DEVINFO@"), OK, "one folder for both")
add("odd-but-valid", "vhost-net", config(vhostNet=True, logLevel="debug"), OK, "")
add(
    "odd-but-valid",
    "not-required-nothing-found",
    config(sysfsRoot="@SYSFS@/dpdk", prevResult=NO_MAC, required=False),
    OK,
    "prevResult passes through",
)


def main() -> None:
    ids = [case["id"] for case in cases]
    assert len(ids) == len(set(ids)), "duplicate ids"
    shutil.rmtree(CASES, ignore_errors=True)
    os.makedirs(CASES)
    manifest = []
    for case in cases:
        entry = {k: v for k, v in case.items() if k != "stdin"}
        entry["stdin"] = f"cases/{case['id']}.stdin"
        with open(os.path.join(HERE, entry["stdin"]), "wb") as f:
            f.write(case["stdin"])
        manifest.append(entry)
    with open(os.path.join(HERE, "manifest.json"), "w", encoding="ascii") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"{len(manifest)} cases, {sum('bug' in c for c in manifest)} of them known bugs, in {HERE}")


if __name__ == "__main__":
    main()
