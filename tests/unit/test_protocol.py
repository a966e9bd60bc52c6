"""The CNI protocol layer: environment, stdin, versions, result conversion and error objects."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess

import pytest

from deviceid_inject import protocol
from deviceid_inject.protocol import (
    ERR_DECODE,
    ERR_INCOMPATIBLE_VERSION,
    ERR_INVALID_ENV,
    MAX_STDIN_BYTES,
    SUPPORTED_VERSIONS,
    CniError,
    convert_result,
    parse_env,
    read_config,
    require_version,
)
from testbed.helpers import cni_env
from testbed.tools import CNI_BIN

CONTAINER_ID = "0d5f0a7e1c2b"


def environ(command: str, **overrides: str | None) -> dict[str, str]:
    """A full CNI environment for `command`; an override of None drops that variable."""
    return cni_env(command, container_id=CONTAINER_ID, netns="/var/run/netns/pod", **overrides)


# --- parse_env: commands and required variables ---------------------------------------------------


@pytest.mark.parametrize("command", ["", "add", "Add", "INIT", "DELETE"])
def test_unknown_or_missing_command_is_invalid_env(command: str) -> None:
    with pytest.raises(CniError) as err:
        parse_env(environ(command))
    assert err.value.code == ERR_INVALID_ENV


def test_missing_cni_command_is_invalid_env() -> None:
    with pytest.raises(CniError) as err:
        parse_env(environ("ADD", CNI_COMMAND=None))
    assert err.value.code == ERR_INVALID_ENV


def test_add_keeps_every_variable() -> None:
    env = parse_env(environ("ADD", CNI_ARGS="K8S_POD_NAME=web"))
    assert env.command == "ADD"
    assert env.container_id == CONTAINER_ID
    assert env.netns == "/var/run/netns/pod"
    assert env.ifname == "net1"
    assert env.path == "/opt/cni/bin"
    assert dict(env.args) == {"K8S_POD_NAME": "web"}


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        ("ADD", "CNI_CONTAINERID"),
        ("ADD", "CNI_IFNAME"),
        ("ADD", "CNI_NETNS"),
        ("CHECK", "CNI_CONTAINERID"),
        ("CHECK", "CNI_IFNAME"),
        ("CHECK", "CNI_NETNS"),
        ("DEL", "CNI_CONTAINERID"),
        ("DEL", "CNI_IFNAME"),
    ],
)
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_required_variable_missing(command: str, missing: str, how: str) -> None:
    with pytest.raises(CniError) as err:
        parse_env(environ(command, **{missing: None if how == "unset" else ""}))
    assert err.value.code == ERR_INVALID_ENV
    assert missing in err.value.msg


def test_del_does_not_need_a_netns() -> None:
    env = parse_env(environ("DEL", CNI_NETNS=None))
    assert env.command == "DEL"
    assert env.netns == ""


@pytest.mark.parametrize("command", ["GC", "STATUS", "VERSION"])
def test_commands_without_container_need_no_container_variables(command: str) -> None:
    env = parse_env({"CNI_COMMAND": command})
    assert env.command == command
    assert (env.container_id, env.netns, env.ifname) == ("", "", "")


# --- CNI_CONTAINERID ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "container_id",
    ["a", "0", "abc", "a_b.c-d", "0123456789abcdef" * 4, "Pod-1.2_x"],
)
def test_valid_container_ids(container_id: str) -> None:
    assert parse_env(environ("ADD", CNI_CONTAINERID=container_id)).container_id == container_id


@pytest.mark.parametrize(
    "container_id",
    ["-abc", "_abc", ".abc", "a/b", "../etc", "a b", "a:b", "a;b", "\u00e4bc", "ab\u00e4", " abc"],
)
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_invalid_container_ids(command: str, container_id: str) -> None:
    with pytest.raises(CniError) as err:
        parse_env(environ(command, CNI_CONTAINERID=container_id))
    assert err.value.code == ERR_INVALID_ENV
    assert "CNI_CONTAINERID" in err.value.msg


def test_container_id_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(CniError) as err:
        parse_env(environ("DEL", CNI_CONTAINERID="abc\n"))
    assert err.value.code == ERR_INVALID_ENV


# --- CNI_IFNAME -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ifname",
    [
        "eth0",
        "net1",
        "eth0.100",
        "a" * 15,
        "\u00e9" * 7 + "a",  # 7 x 2 bytes + 1 = 15 bytes
        "a" * 13 + "\u00e9",  # 15 bytes
        "\u20ac" * 5,  # 5 x 3 bytes = 15 bytes
        "-",
        "...",
    ],
)
def test_valid_ifnames(ifname: str) -> None:
    assert parse_env(environ("ADD", CNI_IFNAME=ifname)).ifname == ifname


@pytest.mark.parametrize(
    "ifname",
    [
        "a" * 16,
        "\u00e9" * 8,  # 8 characters, 16 bytes
        "a" * 14 + "\u00e9",  # 15 characters, 16 bytes
        "\u20ac" * 5 + "a",  # 6 characters, 16 bytes
        ".",
        "..",
        "a/b",
        "/",
        "a:b",
        "eth0:1",
        "a b",
        " eth0",
        "eth0 ",
        "a\tb",
        "a\nb",
        "a\u00a0b",  # no-break space
    ],
)
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_invalid_ifnames(command: str, ifname: str) -> None:
    with pytest.raises(CniError) as err:
        parse_env(environ(command, CNI_IFNAME=ifname))
    assert err.value.code == ERR_INVALID_ENV
    assert "CNI_IFNAME" in err.value.msg


def test_check_ifname_names_what_it_checks() -> None:
    with pytest.raises(CniError) as err:
        protocol.check_ifname("a/b", "pfNames[0]")
    assert err.value.code == ERR_INVALID_ENV
    assert "pfNames[0]" in err.value.msg


# --- CNI_ARGS -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", {}),
        ("IgnoreUnknown=1", {"IgnoreUnknown": "1"}),
        (
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;"
            "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234-5678",
            {
                "IgnoreUnknown": "1",
                "K8S_POD_NAMESPACE": "ns",
                "K8S_POD_NAME": "web-0",
                "K8S_POD_INFRA_CONTAINER_ID": "abc",
                "K8S_POD_UID": "1234-5678",
            },
        ),
        ("A=1;", {"A": "1"}),
        (";A=1;;B=2", {"A": "1", "B": "2"}),
        ("A=", {"A": ""}),
        ("A=x=y", {"A": "x=y"}),
        ("A=1;A=2", {"A": "2"}),
    ],
)
def test_cni_args_parsed(raw: str, expected: dict[str, str]) -> None:
    assert dict(parse_env(environ("ADD", CNI_ARGS=raw)).args) == expected


@pytest.mark.parametrize("raw", ["novalue", "A=1;novalue", "=1", "A=1;=2"])
def test_malformed_cni_args(raw: str) -> None:
    with pytest.raises(CniError) as err:
        parse_env(environ("ADD", CNI_ARGS=raw))
    assert err.value.code == ERR_INVALID_ENV
    assert "CNI_ARGS" in err.value.msg


# --- read_config ----------------------------------------------------------------------------------


def test_read_config_returns_the_object() -> None:
    config = {"cniVersion": "1.1.0", "name": "n6", "type": "deviceid-inject", "prevResult": {"ips": []}}
    assert read_config(io.BytesIO(json.dumps(config).encode())) == config


def test_read_config_accepts_utf8() -> None:
    assert read_config(io.BytesIO('{"name": "r\u00e9seau"}'.encode())) == {"name": "r\u00e9seau"}


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"  \n\t", id="whitespace"),
        pytest.param(b'{"name": "r\xe9seau"}', id="latin-1"),
        pytest.param(b"\xff\xfe{}", id="utf-16-bom"),
        pytest.param(b'{"cniVersion": "1.1.0", "name": ', id="truncated"),
        pytest.param(b"{'a': 1}", id="not-json"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'"config"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"42", id="number"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested"),
    ],
)
def test_read_config_rejects(raw: bytes) -> None:
    with pytest.raises(CniError) as err:
        read_config(io.BytesIO(raw))
    assert err.value.code == ERR_DECODE


def test_read_config_accepts_exactly_the_limit() -> None:
    raw = b"{}" + b" " * (MAX_STDIN_BYTES - 2)
    assert len(raw) == MAX_STDIN_BYTES
    assert read_config(io.BytesIO(raw)) == {}


def test_read_config_rejects_one_byte_over_the_limit() -> None:
    raw = b"{}" + b" " * (MAX_STDIN_BYTES - 1)
    with pytest.raises(CniError) as err:
        read_config(io.BytesIO(raw))
    assert err.value.code == ERR_DECODE
    assert "larger" in err.value.msg


# --- require_version ------------------------------------------------------------------------------


# The CNI spec's versions (SPEC.md, "Version"; libcni's version.All), written out here and not taken
# from the code under test. prevResult, and with it chaining, came with 0.3.0: a chained plugin
# speaks every version from there on.
SPEC_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CHAINED_VERSIONS = SPEC_VERSIONS[SPEC_VERSIONS.index("0.3.0") :]


@pytest.mark.parametrize("version", CHAINED_VERSIONS)
@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_every_version_of_the_spec_since_chaining_is_accepted(command: str, version: str) -> None:
    require_version(version, command)  # raises CniError when refused


def test_version_answers_the_spec_versions_since_chaining() -> None:
    assert SUPPORTED_VERSIONS == CHAINED_VERSIONS
    assert SPEC_VERSIONS[-1] == protocol.LATEST_VERSION


@pytest.mark.skipif(not (CNI_BIN / "tuning").is_file(), reason="no reference plugins: make setup builds them")
def test_we_speak_what_the_reference_chained_plugin_speaks_since_chaining() -> None:
    """The reference `tuning` plugin (a chained plugin too, built from containernetworking/plugins)
    lists the versions libcni knows: ours are the same from 0.3.0 on, so a new spec version fails
    here until we speak it."""
    proc = subprocess.run(
        [str(CNI_BIN / "tuning")],
        input=b'{"cniVersion": "1.1.0"}',
        env={"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    theirs = json.loads(proc.stdout)["supportedVersions"]
    assert "0.3.0" in theirs
    assert tuple(theirs[theirs.index("0.3.0") :]) == SUPPORTED_VERSIONS


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "1.1", "", None, 1.1, ["1.1.0"]])
def test_unknown_versions_are_incompatible(version: object) -> None:
    with pytest.raises(CniError) as err:
        require_version(version, "ADD")
    assert err.value.code == ERR_INCOMPATIBLE_VERSION


@pytest.mark.parametrize(
    ("command", "version", "allowed"),
    [
        ("CHECK", "0.3.0", False),
        ("CHECK", "0.3.1", False),
        ("CHECK", "0.4.0", True),
        ("CHECK", "1.0.0", True),
        ("CHECK", "1.1.0", True),
        *[(cmd, v, v == "1.1.0") for cmd in ("GC", "STATUS") for v in CHAINED_VERSIONS],
    ],
)
def test_commands_with_a_version_floor(command: str, version: str, allowed: bool) -> None:
    if allowed:
        require_version(version, command)  # raises CniError when refused
    else:
        with pytest.raises(CniError) as err:
            require_version(version, command)
        assert err.value.code == ERR_INCOMPATIBLE_VERSION
        assert command in err.value.msg


# --- convert_result -------------------------------------------------------------------------------


def result_with_ips(*ips: dict) -> dict:
    return {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "net1", "mac": "02:00:00:00:00:01", "sandbox": "/var/run/netns/pod"}],
        "ips": list(ips),
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.96.0.10"]},
    }


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_old_versions_derive_ip_versions(version: str) -> None:
    prev = result_with_ips(
        {"address": "10.0.0.5/24", "gateway": "10.0.0.1", "interface": 0},
        {"address": "2001:db8::5/64", "gateway": "2001:db8::1", "interface": 0},
        {"address": "::ffff:10.0.0.5/128", "interface": 0},
    )
    result = convert_result(prev, version)
    assert result["cniVersion"] == version
    assert [ip["version"] for ip in result["ips"]] == ["4", "6", "6"]
    assert result["ips"][0] == {"version": "4", "address": "10.0.0.5/24", "gateway": "10.0.0.1", "interface": 0}


@pytest.mark.parametrize("version", ["0.3.0", "0.4.0"])
def test_old_versions_keep_a_given_ip_version(version: str) -> None:
    prev = result_with_ips({"version": "4", "address": "10.0.0.5/24"}, {"version": "6", "address": "fd00::5/64"})
    assert [ip["version"] for ip in convert_result(prev, version)["ips"]] == ["4", "6"]


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_new_versions_drop_ip_version(version: str) -> None:
    prev = result_with_ips({"version": "4", "address": "10.0.0.5/24"}, {"version": "6", "address": "fd00::5/64"})
    prev["cniVersion"] = "0.4.0"
    result = convert_result(prev, version)
    assert result["cniVersion"] == version
    assert result["ips"] == [{"address": "10.0.0.5/24"}, {"address": "fd00::5/64"}]


@pytest.mark.parametrize("version", CHAINED_VERSIONS)
def test_unknown_fields_pass_through_untouched(version: str) -> None:
    prev = result_with_ips({"address": "10.0.0.5/24", "x-extra": {"deep": [1, 2]}}, "not-an-object")
    prev["interfaces"][0].update({"mtu": 9000, "socketPath": "/run/x.sock", "pciID": "0000:3b:02.1"})
    prev["x-vendor"] = {"anything": True}
    result = convert_result(prev, version)
    assert result["x-vendor"] == {"anything": True}
    assert result["interfaces"] == prev["interfaces"]
    assert result["routes"] == prev["routes"]
    assert result["dns"] == prev["dns"]
    assert result["ips"][0]["x-extra"] == {"deep": [1, 2]}
    assert result["ips"][1] == "not-an-object"


@pytest.mark.parametrize("ips", [None, "nope", {"address": "10.0.0.5/24"}])
def test_ips_that_are_not_a_list_pass_through(ips: object) -> None:
    prev = {"cniVersion": "1.0.0", "ips": ips}
    assert convert_result(prev, "0.3.0")["ips"] == ips


def test_result_without_ips_only_changes_version() -> None:
    result = convert_result({"cniVersion": "1.1.0", "interfaces": []}, "0.4.0")
    assert result == {"cniVersion": "0.4.0", "interfaces": []}


@pytest.mark.parametrize("key", ["ip4", "ip6"])
def test_0_2_0_results_are_rejected(key: str) -> None:
    prev = {"cniVersion": "0.2.0", key: {"ip": "10.0.0.5/24", "gateway": "10.0.0.1"}}
    with pytest.raises(CniError) as err:
        convert_result(prev, "0.3.0")
    assert err.value.code == ERR_INCOMPATIBLE_VERSION


@pytest.mark.parametrize("version", CHAINED_VERSIONS)
def test_convert_result_does_not_mutate_its_input(version: str) -> None:
    prev = result_with_ips({"version": "4", "address": "10.0.0.5/24"}, {"address": "fd00::5/64"})
    before = copy.deepcopy(prev)
    convert_result(prev, version)
    assert prev == before


# --- errors and output ----------------------------------------------------------------------------


def test_cni_error_to_json_shape() -> None:
    err = CniError(7, "bad config", "key x")
    assert err.to_json("0.4.0") == {"cniVersion": "0.4.0", "code": 7, "msg": "bad config", "details": "key x"}
    assert str(err) == "bad config"


def test_cni_error_details_default_to_empty() -> None:
    doc = CniError(11, "busy").to_json("1.1.0")
    assert list(doc) == ["cniVersion", "code", "msg", "details"]
    assert doc["details"] == ""
    json.dumps(doc)  # serialisable as is


def test_write_json_prints_one_object_and_a_newline() -> None:
    out = io.StringIO()
    protocol.write_json(out, {"cniVersion": "1.1.0", "code": 4})
    assert out.getvalue().endswith("}\n")
    assert json.loads(out.getvalue()) == {"cniVersion": "1.1.0", "code": 4}
