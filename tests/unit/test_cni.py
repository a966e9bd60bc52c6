"""The plugin as a runtime drives it: one subprocess per command, over fixture sysfs trees."""

from __future__ import annotations

import io
import json
import os

import pytest

from deviceid_inject import cni, files, protocol, vftable
from deviceid_inject.protocol import SUPPORTED_VERSIONS
from deviceid_inject.state import Busy
from testbed.helpers import cni_env, prev_result, run_plugin

FALLBACK = "cni/n6-dpdk-ctr-1_net1"


def read(path) -> dict:
    with open(path) as f:
        return json.load(f)


def all_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def records(state) -> list[str]:
    """The attachment records in dataDir, leaving out the lock and the validation cache."""
    return [f for f in all_files(state) if f != ".lock" and not f.startswith(".validated/")]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_puts_pciid_into_the_result_in_the_configs_version(make_config, version):
    run = run_plugin("ADD", make_config(version=version))
    assert run.code == 0, run.stdout
    result = run.json
    assert result["cniVersion"] == version
    assert result["interfaces"] == [
        {"name": "net1", "mac": "02:00:00:00:00:01", "sandbox": "/var/run/netns/pod", "pciID": "0000:3b:02.3"}
    ]
    expected_ip = {"address": "10.10.0.5/24", "gateway": "10.10.0.1", "interface": 0}
    if not version.startswith("1."):
        expected_ip["version"] = "4"
    assert result["ips"] == [expected_ip]
    assert result["dns"] == {"nameservers": ["10.96.0.10"]}


def test_add_records_whose_attachment_it_is_and_the_device_info_it_wrote(make_config, roots):
    # Multus hands every delegate its own CNI_ARGS followed by the runtime's: keys repeat.
    args = (
        "IgnoreUnknown=true;K8S_POD_NAMESPACE=ran;K8S_POD_NAME=upf-0;K8S_POD_INFRA_CONTAINER_ID=ctr-1;"
        "K8S_POD_UID=0d180aac;IgnoreUnknown=1;K8S_POD_NAMESPACE=ran;K8S_POD_NAME=upf-0;K8S_POD_UID=0d180aac"
    )
    assert run_plugin("ADD", make_config(), env={"CNI_ARGS": args}).code == 0
    record = read(roots["state"] / "ctr-1" / "net1.json")
    assert (record["pod_namespace"], record["pod_name"], record["pod_uid"]) == ("ran", "upf-0", "0d180aac")
    assert record["device_info"] == read(roots["devinfo"] / FALLBACK)


def test_add_without_kubernetes_args_records_no_pod(make_config, roots):
    assert run_plugin("ADD", make_config()).code == 0
    record = read(roots["state"] / "ctr-1" / "net1.json")
    assert (record["pod_namespace"], record["pod_name"], record["pod_uid"]) == (None, None, None)


def test_add_converts_a_prev_result_of_another_version(make_config):
    run = run_plugin("ADD", make_config(version="0.3.1", prev=prev_result("1.0.0")))
    assert run.json["cniVersion"] == "0.3.1"
    assert run.json["ips"][0]["version"] == "4"


def test_add_writes_the_fallback_file_when_multus_gives_no_path(make_config, roots):
    assert run_plugin("ADD", make_config()).code == 0
    path = roots["devinfo"] / FALLBACK
    assert read(path) == {
        "type": "pci",
        "version": "1.1.0",
        "pci": {"pci-address": "0000:3b:02.3", "pf-pci-address": "0000:3b:00.0"},
    }
    assert oct(path.stat().st_mode & 0o777) == "0o444"


def test_add_creates_the_file_multus_names(make_config, roots):
    given = roots["devinfo"] / "cni" / "n6-dpdk-abc_net1"
    run = run_plugin("ADD", make_config(runtimeConfig={"CNIDeviceInfoFile": str(given)}))
    assert run.code == 0, run.stdout
    assert read(given)["pci"]["pci-address"] == "0000:3b:02.3"
    assert all_files(roots["devinfo"]) == ["cni/n6-dpdk-abc_net1"]


def test_add_updates_a_device_plugin_file_and_del_leaves_it(make_config, roots):
    given = roots["devinfo"] / "cni" / "from-dp.json"
    given.parent.mkdir(parents=True)
    given.write_text(json.dumps({"type": "pci", "version": "1.0.0", "pci": {"pci-address": "0000:3b:02.3"}, "x": 1}))
    config = make_config(runtimeConfig={"CNIDeviceInfoFile": str(given)})
    assert run_plugin("ADD", config).code == 0
    assert read(given) == {
        "type": "pci",
        "version": "1.1.0",
        "x": 1,
        "pci": {"pci-address": "0000:3b:02.3", "pf-pci-address": "0000:3b:00.0"},
    }
    assert run_plugin("DEL", config).code == 0
    assert given.exists(), "a file Multus or a device plugin made is Multus's to remove"


def test_add_refuses_a_path_that_resolves_outside_the_tree(make_config, roots, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    roots["devinfo"].mkdir()
    (roots["devinfo"] / "cni").symlink_to(outside)
    run = run_plugin("ADD", make_config())
    assert run.code == 1
    assert run.json["code"] == 7
    assert "outside" in run.json["msg"] and str(roots["devinfo"]) in run.json["msg"]
    assert list(outside.iterdir()) == []


def test_add_refuses_a_symlink_at_the_target(make_config, roots, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("{}")
    (roots["devinfo"] / "cni").mkdir(parents=True)
    (roots["devinfo"] / FALLBACK).symlink_to(victim)
    run = run_plugin("ADD", make_config())
    assert run.json["code"] == 7
    assert "symlink" in run.json["msg"]
    assert victim.read_text() == "{}"


def test_add_without_prev_result_is_code_7(make_config):
    run = run_plugin("ADD", make_config(prev=None))
    assert run.json["code"] == 7
    assert "prevResult is missing" in run.json["msg"]


def test_add_without_a_device_fails_listing_every_way_tried(make_config, roots):
    run = run_plugin("ADD", make_config(sysfs="dpdk", prev=prev_result(mac="02:99:00:00:00:01"), pfNames=["nope0"]))
    assert run.json["code"] == 100
    for strategy in ("prevResult pciID", "runtimeConfig deviceID", "config deviceID", "netdev sysfs", "VF table"):
        assert strategy in run.json["msg"]
    assert "What would have helped" in run.json["msg"] and "mac in prevResult" in run.json["msg"]
    assert records(roots["state"]) == []
    assert not roots["devinfo"].exists()


def test_add_not_required_passes_prev_result_through(make_config, roots):
    prev = prev_result(mac="02:99:00:00:00:01")
    run = run_plugin("ADD", make_config(sysfs="dpdk", prev=prev, pfNames=["nope0"], required=False))
    assert run.code == 0
    assert run.json == prev
    assert "no PCI function found" in run.stderr
    assert not roots["devinfo"].exists()
    assert run_plugin("CHECK", make_config(sysfs="dpdk", prev=prev, required=False)).code == 0
    assert run_plugin("DEL", make_config(sysfs="dpdk", prev=prev, required=False)).code == 0
    assert records(roots["state"]) == []


def test_add_uses_runtime_device_id_first(make_config, roots):
    run = run_plugin("ADD", make_config(runtimeConfig={"deviceID": "0000:3b:01.5"}))
    assert run.json["interfaces"][0]["pciID"] == "0000:3b:01.5"


@pytest.mark.parametrize(
    ("interfaces", "picked"),
    [
        ([{"name": "net1"}, {"name": "net1", "sandbox": "/ns"}], 1),
        ([{"name": "eth0", "sandbox": "/ns"}, {"name": "net1"}], 1),
        ([{"name": "host-veth"}, {"name": "pod-side", "sandbox": "/ns"}], 1),
    ],
)
def test_interface_selection_rules(make_config, interfaces, picked):
    prev = {"cniVersion": "1.1.0", "interfaces": interfaces}
    result = run_plugin("ADD", make_config(prev=prev, runtimeConfig={"deviceID": "0000:3b:01.1"})).json
    assert [("pciID" in i) for i in result["interfaces"]] == [i == picked for i in range(len(interfaces))]


def test_no_matching_interface_leaves_interfaces_alone_but_writes_the_file(make_config, roots):
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "a", "sandbox": "/x"}, {"name": "b", "sandbox": "/y"}]}
    run = run_plugin("ADD", make_config(prev=prev))
    assert run.json["interfaces"] == prev["interfaces"]
    assert read(roots["devinfo"] / FALLBACK)["pci"]["pci-address"] == "0000:3b:02.3"


def test_del_removes_what_add_made_and_is_idempotent(make_config, roots):
    config = make_config()
    assert run_plugin("ADD", config).code == 0
    assert all_files(roots["devinfo"]) == [FALLBACK]
    assert run_plugin("DEL", config).code == 0
    assert all_files(roots["devinfo"]) == []
    assert records(roots["state"]) == []
    assert run_plugin("DEL", config).code == 0
    assert run_plugin("DEL", make_config(prev=None), netns="").code == 0


def test_del_without_state_still_removes_our_documented_file(make_config, roots):
    config = make_config()
    assert run_plugin("ADD", config).code == 0
    (roots["state"] / "ctr-1" / "net1.json").unlink()
    assert run_plugin("DEL", make_config(prev=None), netns="/var/run/netns/gone-long-ago").code == 0
    assert all_files(roots["devinfo"]) == []


def test_del_for_another_attachment_leaves_ours(make_config, roots):
    config = make_config()
    assert run_plugin("ADD", config).code == 0
    assert run_plugin("DEL", config, container_id="ctr-2").code == 0
    assert run_plugin("DEL", config, ifname="net2").code == 0
    assert all_files(roots["devinfo"]) == [FALLBACK]


def test_check_passes_after_add(make_config):
    config = make_config()
    result = run_plugin("ADD", config).json
    check = run_plugin("CHECK", make_config(prev=result))
    assert (check.code, check.stdout) == (0, "")


def test_check_fails_clearly_when_the_file_is_gone(make_config, roots):
    result = run_plugin("ADD", make_config()).json
    (roots["devinfo"] / FALLBACK).unlink()
    run = run_plugin("CHECK", make_config(prev=result))
    assert run.json["code"] == 101
    assert f"{roots['devinfo'] / FALLBACK} is gone" in run.json["msg"]


def test_check_fails_when_the_interface_moved_to_another_function(make_config):
    result = run_plugin("ADD", make_config(sysfs="vf-iavf")).json
    run = run_plugin("CHECK", make_config(sysfs="mlx5-rdma", prev=result))
    assert run.json["code"] == 101
    assert "now 0001:af:01.2, ADD recorded 0000:3b:02.3" in run.json["msg"]


def test_check_fails_without_a_record_and_below_0_4_0(make_config):
    assert run_plugin("CHECK", make_config()).json["code"] == 101
    assert run_plugin("CHECK", make_config(version="0.3.1")).json["code"] == 1


def test_gc_removes_only_attachments_not_listed(make_config, roots):
    for container in ("keep", "drop"):
        assert run_plugin("ADD", make_config(), container_id=container).code == 0
    gc = make_config(prev=None, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "net1"}]})
    run = run_plugin("GC", gc, container_id="", ifname="", netns="")
    assert (run.code, run.stdout) == (0, "")
    assert all_files(roots["devinfo"]) == ["cni/n6-dpdk-keep_net1"]
    assert records(roots["state"]) == ["keep/net1.json"]


def test_gc_without_the_list_removes_nothing(make_config, roots):
    assert run_plugin("ADD", make_config()).code == 0
    assert run_plugin("GC", make_config(prev=None), container_id="", ifname="", netns="").code == 0
    assert all_files(roots["devinfo"]) == [FALLBACK]


def test_status_ok_and_code_50_when_the_tree_cannot_be_written(make_config, tmp_path):
    assert run_plugin("STATUS", make_config(prev=None), container_id="", ifname="", netns="").code == 0
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = run_plugin("STATUS", make_config(prev=None, dataDir=str(blocker / "sub")), container_id="")
    assert run.json["code"] == 50
    assert "dataDir" in run.json["msg"]
    run = run_plugin("STATUS", make_config(prev=None, sysfsRoot=str(tmp_path / "nosys")))
    assert run.json["code"] == 50


@pytest.mark.exec_path
@pytest.mark.parametrize("asked", ["0.4.0", "1.1.0"])
def test_version_echoes_the_asked_version_and_lists_ours(asked):
    run = run_plugin("VERSION", {"cniVersion": asked}, container_id="", ifname="", netns="")
    assert run.json == {"cniVersion": asked, "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


@pytest.mark.parametrize(
    ("command", "mutate", "code", "words"),
    [
        ("ADD", lambda c: c.update(cniVersion="0.2.0"), 1, "cniVersion '0.2.0' is not supported"),
        ("GC", lambda c: c.update(cniVersion="1.0.0"), 1, "does not allow GC"),
        ("ADD", lambda c: c.update(required="yes"), 7, "$.required"),
        ("ADD", lambda c: c.update(dataDir="relative/dir"), 7, "$.dataDir"),
        ("ADD", lambda c: c.update(pfNames="ens1f0"), 7, "$.pfNames"),
        ("ADD", lambda c: c["runtimeConfig"].update(CNIDeviceInfoFile="/etc/passwd"), 7, "outside"),
        ("ADD", lambda c: c.update(prevResult={"cniVersion": "1.1.0", "interfaces": "net1"}), 7, "interfaces"),
        ("ADD", lambda c: c.update(prevResult={"cniVersion": "0.2.0", "ip4": {}}), 1, "0.2.0 format"),
    ],
)
def test_bad_config_gets_the_right_code_and_names_the_problem(make_config, roots, command, mutate, code, words):
    config = make_config(runtimeConfig={})
    mutate(config)
    run = run_plugin(command, config)
    assert run.code != 0
    assert run.json["code"] == code
    assert words in run.json["msg"]
    assert not roots["devinfo"].exists()


@pytest.mark.parametrize(
    ("env", "words"),
    [
        pytest.param({"CNI_COMMAND": "FROB"}, "CNI_COMMAND 'FROB'", marks=pytest.mark.exec_path),
        ({"CNI_IFNAME": "../etc"}, "CNI_IFNAME"),
        ({"CNI_IFNAME": "a" * 16}, "longer than 15 bytes"),
        ({"CNI_CONTAINERID": "../../x"}, "CNI_CONTAINERID"),
        ({"CNI_NETNS": ""}, "CNI_NETNS is required"),
        ({"CNI_ARGS": "novalue"}, "CNI_ARGS"),
    ],
)
def test_bad_environment_is_code_4(make_config, roots, env, words):
    run = run_plugin("ADD", make_config(), env=env)
    assert run.json["code"] == 4
    assert words in run.json["msg"]
    assert records(roots["state"]) == []


@pytest.mark.parametrize(
    ("stdin", "words"),
    [(b"", "empty"), (b"{not json", "not valid JSON"), (b"\xff\xfe{}", "not UTF-8"), (b"[1]", "JSON object")],
)
def test_undecodable_stdin_is_code_6(stdin, words):
    run = run_plugin("ADD", stdin)
    assert run.json["code"] == 6
    assert words in run.json["msg"]


def test_errors_carry_the_configs_version(make_config):
    run = run_plugin("ADD", make_config(version="0.4.0", prev=None))
    assert run.json["cniVersion"] == "0.4.0"


def test_logs_go_to_the_log_file_and_stderr_never_stdout(make_config, tmp_path):
    log = tmp_path / "logs" / "plugin.log"
    run = run_plugin("ADD", make_config(logFile=str(log), logLevel="debug"))
    assert "netdev sysfs: found 0000:3b:02.3" in log.read_text()
    assert "netdev sysfs: found 0000:3b:02.3" in run.stderr
    assert json.loads(run.stdout)["interfaces"][0]["pciID"] == "0000:3b:02.3"


@pytest.mark.parametrize(
    ("sysfs", "mac", "pci"),
    [
        ("vf-iavf", None, {"pci-address": "0000:3b:02.3", "pf-pci-address": "0000:3b:00.0"}),
        (
            "mlx5-rdma",
            None,
            {"pci-address": "0001:af:01.2", "pf-pci-address": "0001:af:00.0", "rdma-device": "mlx5_4"},
        ),
        (
            "switchdev",
            None,
            {"pci-address": "0000:5e:02.2", "pf-pci-address": "0000:5e:00.0", "representor-device": "ens3f0r10"},
        ),
        ("dpdk", "02:aa:00:00:00:0c", {"pci-address": "0000:3b:02.4", "pf-pci-address": "0000:3b:00.0"}),
        ("virtio", None, {"pci-address": "0000:00:03.0"}),
    ],
)
def test_every_shape_yields_its_device_info_and_pciid(make_config, roots, monkeypatch, sysfs, mac, pci):
    """In-process, so the netlink VF table can be replaced at its one seam for the DPDK VF."""
    monkeypatch.setattr(vftable, "netlink_tables", lambda pfs: [vftable.VfEntry("ens1f0", 12, "02:aa:00:00:00:0c")])
    ifname = "eth0" if sysfs == "virtio" else "net1"
    prev = prev_result(ifname=ifname, mac=mac or "02:00:00:00:00:01")
    environ = cni_env("ADD", ifname=ifname)
    stdin = io.BytesIO(json.dumps(make_config(sysfs=sysfs, prev=prev)).encode())
    stdout, stderr = io.StringIO(), io.StringIO()
    assert cni.run(environ, stdin, stdout, stderr) == 0, stdout.getvalue()
    assert json.loads(stdout.getvalue())["interfaces"][0]["pciID"] == pci["pci-address"]
    written = read(roots["devinfo"] / f"cni/n6-dpdk-ctr-1_{ifname}")
    assert written == {"type": "pci", "version": "1.1.0", "pci": pci}


def test_the_common_add_path_imports_no_bridge_client_netlink_schema_or_udev(make_config, roots):
    """ADD, once the config's validation is remembered, loads none of the heavy packages: not the
    bridge or its Kubernetes client, not pyroute2 (only the DPDK VF-table strategy), not jsonschema
    (only a config not seen before), not pyudev (only `discover`)."""
    import subprocess
    import sys

    config = json.dumps(make_config()).encode()
    env = cni_env("ADD")
    argv = [sys.executable, "-X", "importtime", "-m", "deviceid_inject"]
    runs = [subprocess.run(argv, input=config, env=env, capture_output=True, timeout=60) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stdout
    first, second = ({line.split("|")[-1].strip() for line in r.stderr.decode().splitlines()} for r in runs)
    assert "jsonschema" in first  # the proof that importtime lists what was imported
    heavy = ("deviceid_inject.bridge", "lightkube", "httpx2", "msgspec", "prometheus_client")
    heavy += ("pyroute2", "jsonschema", "pyudev")
    assert [m for m in second if m.split(".")[0] in heavy or m.startswith(heavy)] == []


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (files.Refused("/run/x is a symlink; deviceid-inject never follows one"), protocol.ERR_INVALID_CONFIG),
        (files.CannotAccess("cannot write /run/x: Read-only file system"), protocol.ERR_IO),
        (Busy("/var/lib/cni/deviceid-inject/.lock is held by another run"), protocol.ERR_TRY_AGAIN),
        (vftable.Ambiguous("mac 02:aa:00:00:00:0c is on more than one VF"), protocol.ERR_AMBIGUOUS_MAC),
        (PermissionError(13, "Permission denied"), protocol.ERR_IO),
        (KeyError("pci"), protocol.ERR_INTERNAL),
    ],
)
def test_the_errors_of_the_modules_below_become_protocol_errors_here(error: Exception, code: int) -> None:
    """files, state and vftable raise errors of their own; the CNI boundary gives each its code,
    keeping the message that names what is wrong."""
    converted = cni.as_cni_error(error)
    assert converted.code == code
    assert str(error) in converted.msg
