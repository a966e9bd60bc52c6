"""The cluster install manifests parse, and say what matters: image, hostPath, chain order."""

from __future__ import annotations

import json

import yaml
from helpers import REPO

from deviceid_inject import cli

DEPLOY = REPO / "deploy"


def load(name: str):
    return yaml.safe_load((DEPLOY / name).read_text())


def test_daemonset_installs_the_binary_into_the_hosts_cni_bin_atomically():
    ds = load("daemonset.yaml")
    assert ds["kind"] == "DaemonSet"
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cni-bin"]["hostPath"] == {"path": "/opt/cni/bin", "type": "DirectoryOrCreate"}
    (init,) = pod["initContainers"]
    assert init["image"].endswith(":0.1.0")
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    script = init["command"][-1]
    assert f"{mounts['cni-bin']}/.deviceid-inject.new" in script
    assert f"mv -f {mounts['cni-bin']}/.deviceid-inject.new {mounts['cni-bin']}/deviceid-inject" in script
    assert {"operator": "Exists"} in pod["tolerations"]


def test_image_ships_the_binary_where_the_daemonset_copies_it_from():
    containerfile = (DEPLOY / "Containerfile").read_text()
    ds_script = load("daemonset.yaml")["spec"]["template"]["spec"]["initContainers"][0]["command"][-1]
    assert "COPY dist/deviceid-inject /usr/local/bin/deviceid-inject" in containerfile
    assert "cp /usr/local/bin/deviceid-inject " in ds_script


def test_nad_puts_deviceid_inject_after_akshci_iov_at_0_3_0():
    nad = load("nad-n6-dpdk.yaml")
    assert nad["kind"] == "NetworkAttachmentDefinition"
    conf = json.loads(nad["spec"]["config"])
    assert conf["cniVersion"] == "0.3.0"
    assert [p["type"] for p in conf["plugins"]] == ["akshci-iov", "deviceid-inject"]
    assert conf["plugins"][0]["dpdk"] is True
    assert conf["plugins"][1]["capabilities"] == {"deviceID": True, "CNIDeviceInfoFile": True}
    entry, where = cli.plugin_entry(nad)
    assert where == "$.spec.config.plugins[1]"
    assert cli.config.schema_errors(entry) == []


def test_example_conflist_is_valid_and_ordered():
    conflist = json.loads((DEPLOY / "10-n6-dpdk.conflist").read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["sriov", "deviceid-inject"]
    entry, _ = cli.plugin_entry(conflist)
    assert cli.config.schema_errors(entry) == []
