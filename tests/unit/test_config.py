"""The plugin's network config: the schema, defaults, each key, and the errors a bad key gives."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from deviceid_inject import config as configuration
from deviceid_inject.config import (
    DEFAULT_DATA_DIR,
    DEFAULT_DEVICE_INFO_ROOT,
    Attachment,
    Config,
    load,
)
from deviceid_inject.protocol import ERR_INVALID_CONFIG, CniError

MINIMAL = {"cniVersion": "1.1.0", "type": "deviceid-inject"}


def conf(**keys: Any) -> dict[str, Any]:
    return {**MINIMAL, **keys}


def parse_error(raw: dict[str, Any]) -> CniError:
    with pytest.raises(CniError) as err:
        load(raw)
    assert err.value.code == ERR_INVALID_CONFIG
    return err.value


# --- the schema file ------------------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = configuration.load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_allows_unknown_keys() -> None:
    assert configuration.load_schema().get("additionalProperties", True) is not False


# --- defaults and parsed keys ---------------------------------------------------------------------


def test_defaults() -> None:
    assert load(MINIMAL) == Config(
        cni_version="1.1.0",
        name="",
        sysfs_root=None,
        device_info_root=DEFAULT_DEVICE_INFO_ROOT,
        data_dir=DEFAULT_DATA_DIR,
        required=True,
        device_id=None,
        pf_names=(),
        vhost_net=False,
        log_file=None,
        log_level="warning",
        prev_result=None,
        runtime_device_info_file=None,
        runtime_device_id=None,
        valid_attachments=None,
    )


def test_default_roots_are_the_documented_ones() -> None:
    assert DEFAULT_DEVICE_INFO_ROOT == "/var/run/k8s.cni.cncf.io/devinfo"
    assert DEFAULT_DATA_DIR == "/var/lib/cni/deviceid-inject"


def test_every_key_parsed() -> None:
    prev = {"cniVersion": "0.3.0", "interfaces": [{"name": "net1"}], "ips": []}
    raw = {
        "cniVersion": "0.3.0",
        "name": "n6-dpdk",
        "type": "deviceid-inject",
        "sysfsRoot": "/fixtures/sys",
        "deviceInfoRoot": "/run/k8s.cni.cncf.io/devinfo",
        "dataDir": "/var/lib/x",
        "required": False,
        "deviceID": "0000:3b:02.1",
        "pfNames": ["ens1f0", "ens1f1"],
        "vhostNet": True,
        "logFile": "/var/log/deviceid-inject.log",
        "logLevel": "debug",
        "prevResult": prev,
        "runtimeConfig": {
            "CNIDeviceInfoFile": "/run/k8s.cni.cncf.io/devinfo/cni/n6-x_net1",
            "deviceID": "0000:3b:02.2",
        },
        "cni.dev/valid-attachments": [{"containerID": "abc", "ifname": "net1"}],
    }
    assert load(raw) == Config(
        cni_version="0.3.0",
        name="n6-dpdk",
        sysfs_root="/fixtures/sys",
        device_info_root="/run/k8s.cni.cncf.io/devinfo",
        data_dir="/var/lib/x",
        required=False,
        device_id="0000:3b:02.1",
        pf_names=("ens1f0", "ens1f1"),
        vhost_net=True,
        log_file="/var/log/deviceid-inject.log",
        log_level="debug",
        prev_result=prev,
        runtime_device_info_file="/run/k8s.cni.cncf.io/devinfo/cni/n6-x_net1",
        runtime_device_id="0000:3b:02.2",
        valid_attachments=(Attachment("abc", "net1"),),
    )


@pytest.mark.parametrize("level", ["error", "warning", "info", "debug"])
def test_log_levels(level: str) -> None:
    assert load(conf(logLevel=level)).log_level == level


def test_unknown_keys_are_ignored() -> None:
    raw = conf(
        name="n6",
        capabilities={"CNIDeviceInfoFile": True, "deviceID": True},
        ipam={"type": "host-local"},
        iovnetworkname="n6",
        dpdk=True,
        somethingNew=[1, {"x": None}],
    )
    assert load(raw) == load(conf(name="n6"))


# --- wrong types and values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "path"),
    [
        ("cniVersion", 1.1, "$.cniVersion"),
        ("name", 5, "$.name"),
        ("name", "", "$.name"),
        ("type", None, "$.type"),
        ("type", "", "$.type"),
        ("sysfsRoot", True, "$.sysfsRoot"),
        ("deviceInfoRoot", ["/run"], "$.deviceInfoRoot"),
        ("dataDir", 0, "$.dataDir"),
        ("required", "false", "$.required"),
        ("required", 0, "$.required"),
        ("required", None, "$.required"),
        ("deviceID", 3, "$.deviceID"),
        ("deviceID", "", "$.deviceID"),
        ("pfNames", "ens1f0", "$.pfNames"),
        ("pfNames", {"ens1f0": True}, "$.pfNames"),
        ("vhostNet", "true", "$.vhostNet"),
        ("vhostNet", 1, "$.vhostNet"),
        ("logFile", False, "$.logFile"),
        ("logLevel", "verbose", "$.logLevel"),
        ("logLevel", "WARNING", "$.logLevel"),
        ("logLevel", 30, "$.logLevel"),
        ("prevResult", [], "$.prevResult"),
        ("prevResult", "{}", "$.prevResult"),
        ("runtimeConfig", [], "$.runtimeConfig"),
        ("runtimeConfig", {"CNIDeviceInfoFile": 1}, "$.runtimeConfig.CNIDeviceInfoFile"),
        ("runtimeConfig", {"deviceID": ["0000:3b:02.1"]}, "$.runtimeConfig.deviceID"),
    ],
)
def test_wrong_type_names_the_key(key: str, value: Any, path: str) -> None:
    err = parse_error(conf(**{key: value}))
    assert f"{path}:" in err.msg


@pytest.mark.parametrize(
    "value",
    [{}, "abc", [{"containerID": "abc"}], [{"ifname": "net1"}], [{"containerID": 1, "ifname": "net1"}], ["abc"]],
)
def test_wrong_valid_attachments_names_the_key(value: Any) -> None:
    err = parse_error(conf(**{"cni.dev/valid-attachments": value}))
    # jsonschema spells a key that is no identifier in brackets: $['cni.dev/valid-attachments']
    assert "$['cni.dev/valid-attachments']" in err.msg or "$.cni.dev/valid-attachments" in err.msg


@pytest.mark.parametrize("missing", ["cniVersion", "type"])
def test_required_keys(missing: str) -> None:
    raw = dict(MINIMAL)
    del raw[missing]
    assert missing in parse_error(raw).msg


def test_every_violation_is_reported() -> None:
    msg = parse_error(conf(required="yes", vhostNet="no", dataDir="x")).msg
    assert "$.required" in msg
    assert "$.vhostNet" in msg
    assert "$.dataDir" in msg


@pytest.mark.parametrize("key", ["sysfsRoot", "deviceInfoRoot", "dataDir", "logFile"])
@pytest.mark.parametrize("value", ["relative/path", "./x", "../x", "", "~/x", " /x"])
def test_relative_paths_are_rejected(key: str, value: str) -> None:
    assert f"$.{key}:" in parse_error(conf(**{key: value})).msg


@pytest.mark.parametrize("value", ["devinfo/cni/x", ""])
def test_relative_device_info_file_is_rejected(value: str) -> None:
    err = parse_error(conf(runtimeConfig={"CNIDeviceInfoFile": value}))
    assert "$.runtimeConfig.CNIDeviceInfoFile:" in err.msg


# --- pfNames --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "names",
    [[], ["ens1f0"], ["ens1f0", "ens1f1"], ["a" * 15], ["\u00e9" * 7 + "a"], ["eth0.100", "..."]],
)
def test_valid_pf_names(names: list[str]) -> None:
    assert load(conf(pfNames=names)).pf_names == tuple(names)


@pytest.mark.parametrize(
    "name",
    ["", "a" * 16, ".", "..", "a/b", "a:b", "a b", "a\tb", "\nab", 5, None],
)
def test_invalid_pf_names(name: Any) -> None:
    assert "$.pfNames[1]:" in parse_error(conf(pfNames=["ens1f0", name])).msg


def test_duplicate_pf_names() -> None:
    assert "$.pfNames:" in parse_error(conf(pfNames=["ens1f0", "ens1f0"])).msg


def test_pf_name_over_15_bytes_is_rejected() -> None:
    name = "\u00e9" * 15
    assert len(name) == 15
    assert len(name.encode()) == 30
    assert "$.pfNames[0]:" in parse_error(conf(pfNames=[name])).msg


def test_pf_name_with_trailing_newline_is_rejected() -> None:
    assert "$.pfNames[0]:" in parse_error(conf(pfNames=["ens1f0\n"])).msg


# --- runtimeConfig --------------------------------------------------------------------------------


def test_runtime_config_keys() -> None:
    config = load(conf(runtimeConfig={"CNIDeviceInfoFile": "/run/devinfo/cni/x", "deviceID": "0000:3b:02.1"}))
    assert config.runtime_device_info_file == "/run/devinfo/cni/x"
    assert config.runtime_device_id == "0000:3b:02.1"


def test_runtime_config_other_capabilities_are_ignored() -> None:
    config = load(conf(runtimeConfig={"ips": ["10.0.0.5/24"], "mac": "02:00:00:00:00:01", "portMappings": []}))
    assert config.runtime_device_info_file is None
    assert config.runtime_device_id is None


@pytest.mark.parametrize("runtime", [{}, {"deviceID": ""}])
def test_runtime_config_without_values(runtime: dict[str, Any]) -> None:
    config = load(conf(runtimeConfig=runtime))
    assert config.runtime_device_info_file is None
    assert config.runtime_device_id is None


def test_device_id_from_config_and_runtime_are_kept_apart() -> None:
    config = load(conf(deviceID="0000:3b:02.1", runtimeConfig={"deviceID": "0000:3b:02.2"}))
    assert (config.device_id, config.runtime_device_id) == ("0000:3b:02.1", "0000:3b:02.2")


# --- cni.dev/valid-attachments --------------------------------------------------------------------


def test_valid_attachments_parsed_in_order() -> None:
    raw = conf(
        **{
            "cni.dev/valid-attachments": [
                {"containerID": "abc", "ifname": "net1"},
                {"containerID": "abc", "ifname": "net2", "extra": "ignored"},
                {"containerID": "def", "ifname": "net1"},
            ]
        }
    )
    assert load(raw).valid_attachments == (
        Attachment("abc", "net1"),
        Attachment("abc", "net2"),
        Attachment("def", "net1"),
    )


def test_empty_valid_attachments_is_not_absent() -> None:
    # An empty list means "nothing is valid" for GC; absence means "GC was not told".
    assert load(conf(**{"cni.dev/valid-attachments": []})).valid_attachments == ()
    assert load(MINIMAL).valid_attachments is None


def test_prev_result_kept_as_given() -> None:
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "net1", "pciID": "0000:3b:02.1"}], "x": [1]}
    assert load(conf(prevResult=prev)).prev_result == prev


@pytest.mark.parametrize("key", ["deviceInfoRoot", "dataDir"])
def test_path_with_nul_byte_is_rejected(key: str) -> None:
    assert f"$.{key}:" in parse_error(conf(**{key: "/var/run/a\x00b"})).msg


# --- the validation cache: jsonschema once per config, not once per pod ---------------------


def cached_config(tmp_path, **extra):
    return {
        "cniVersion": "1.1.0",
        "name": "n6",
        "type": "deviceid-inject",
        "dataDir": str(tmp_path / "state"),
        "prevResult": {"interfaces": []},
        **extra,
    }


def forbid_jsonschema(monkeypatch):
    def fail(raw):
        raise AssertionError("jsonschema ran for a config already known to be valid")

    monkeypatch.setattr(configuration, "schema_errors", fail)


def test_a_valid_config_is_validated_by_jsonschema_once(tmp_path, monkeypatch):
    configuration.load(cached_config(tmp_path))
    assert len(list((tmp_path / "state" / configuration.VALIDATED_DIR).iterdir())) == 1
    forbid_jsonschema(monkeypatch)
    other_pod = cached_config(
        tmp_path,
        prevResult={"interfaces": [{"name": "net1"}]},
        runtimeConfig={"CNIDeviceInfoFile": "/run/x", "deviceID": "0000:3b:02.3"},
    )
    assert configuration.load(other_pod).runtime_device_id == "0000:3b:02.3"


def test_a_changed_static_key_is_validated_again(tmp_path, monkeypatch):
    configuration.load(cached_config(tmp_path))
    forbid_jsonschema(monkeypatch)
    with pytest.raises(AssertionError, match="jsonschema ran"):
        configuration.load(cached_config(tmp_path, logLevel="debug"))


def test_an_invalid_config_is_never_remembered(tmp_path):
    for _ in range(2):
        with pytest.raises(CniError) as err:
            configuration.load(cached_config(tmp_path, required="yes"))
        assert "$.required" in err.value.msg
    assert not (tmp_path / "state" / configuration.VALIDATED_DIR).exists()


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"prevResult": []}, "$.prevResult"),
        ({"runtimeConfig": "x"}, "$.runtimeConfig"),
        ({"runtimeConfig": {"CNIDeviceInfoFile": "relative"}}, "$.runtimeConfig.CNIDeviceInfoFile"),
        ({"runtimeConfig": {"CNIDeviceInfoFile": "/a\x00b"}}, "$.runtimeConfig.CNIDeviceInfoFile"),
        ({"runtimeConfig": {"CNIDeviceInfoFile": 5}}, "$.runtimeConfig.CNIDeviceInfoFile"),
        ({"runtimeConfig": {"deviceID": 5}}, "$.runtimeConfig.deviceID"),
        ({"cni.dev/valid-attachments": [{"containerID": 1, "ifname": "a"}]}, "valid-attachments"),
    ],
)
def test_per_attachment_keys_are_checked_on_a_cache_hit_too(tmp_path, monkeypatch, extra, path):
    configuration.load(cached_config(tmp_path))
    for forbid in (False, True):
        if forbid:
            forbid_jsonschema(monkeypatch)
        with pytest.raises(CniError) as err:
            configuration.load(cached_config(tmp_path, **extra))
        assert err.value.code == 7
        assert path in err.value.msg


def stricter_schema(tmp_path, monkeypatch) -> None:
    """The shipped schema, rebuilt stricter (logLevel may only be "error"), at the same version."""
    schema = configuration.load_schema()
    schema["properties"]["logLevel"]["enum"] = ["error"]
    path = tmp_path / "stricter-schema.json"
    path.write_text(json.dumps(schema))
    monkeypatch.setattr(configuration, "SCHEMA_PATH", str(path))


def test_an_entry_made_under_another_schema_is_not_trusted_and_is_pruned(tmp_path, monkeypatch):
    config = cached_config(tmp_path, logLevel="info")
    configuration.load(config)
    validated = tmp_path / "state" / configuration.VALIDATED_DIR
    (stale,) = validated.iterdir()
    stricter_schema(tmp_path, monkeypatch)
    with pytest.raises(CniError) as err:
        configuration.load(config)
    assert err.value.code == 7 and "$.logLevel" in err.value.msg
    assert not stale.exists()
    assert list(validated.iterdir()) == []


def test_a_new_schema_validates_again_and_keeps_only_its_own_entries(tmp_path, monkeypatch):
    configuration.load(cached_config(tmp_path))
    configuration.load(cached_config(tmp_path, logLevel="debug"))
    validated = tmp_path / "state" / configuration.VALIDATED_DIR
    old = sorted(validated.iterdir())
    assert len(old) == 2
    stricter_schema(tmp_path, monkeypatch)
    configuration.load(cached_config(tmp_path, logLevel="error"))
    (kept,) = validated.iterdir()
    assert kept not in old
    forbid_jsonschema(monkeypatch)
    configuration.load(cached_config(tmp_path, logLevel="error"))  # a hit under the new key


def test_the_cache_key_names_the_schema_bytes_and_the_build(tmp_path, monkeypatch):
    before = configuration._cache_key()
    assert configuration.__version__ in before and " build " in before
    stricter_schema(tmp_path, monkeypatch)
    assert configuration._cache_key() != before
