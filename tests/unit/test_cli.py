"""The operator's command line: the same executable without CNI_COMMAND."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from deviceid_inject.protocol import SUPPORTED_VERSIONS
from testbed.helpers import REPO, TESTDATA, loopback_server, passed_through, plugin_command
from testbed.kube import free_port

NAD = REPO / "deploy" / "nad-n6-dpdk.yaml"


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    proc = subprocess.run([*plugin_command(), *args], input=stdin, env=env, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def test_help_reads_well_and_names_the_commands():
    proc = cli("--help")
    assert proc.returncode == 0
    for words in ("discover", "check-config", "--version", "Exit codes"):
        assert words in proc.stdout


def test_no_arguments_prints_usage_and_exits_2():
    proc = cli()
    assert proc.returncode == 2
    assert "usage: deviceid-inject" in proc.stderr


def test_version_names_the_version_and_the_build():
    proc = cli("--version")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("deviceid-inject 0.")
    # The protocol's own list, so the version text and what VERSION answers cannot drift apart.
    assert f"CNI spec versions: {' '.join(SUPPORTED_VERSIONS)}" in proc.stdout
    expected = "built " if os.environ.get("DEVICEID_INJECT_EXE") else "not compiled"
    assert lines[1].startswith(expected)


def test_discover_over_a_fixture_prints_device_info_and_every_strategy():
    proc = cli(
        "discover",
        "--netns",
        "/proc/self/ns/net",
        "--ifname",
        "net1",
        "--sysfs-root",
        str(TESTDATA / "sysfs/mlx5-rdma"),
    )
    assert proc.returncode == 0
    report = json.loads(proc.stdout)
    assert report["device-info"] == {
        "type": "pci",
        "version": "1.1.0",
        "pci": {"pci-address": "0001:af:01.2", "pf-pci-address": "0001:af:00.0", "rdma-device": "mlx5_4"},
    }
    assert [(s["strategy"], s["applied"]) for s in report["strategies"]][-1] == ("netdev sysfs", True)
    assert report["description"]["driver"] == "mlx5_core"


def test_discover_without_a_device_exits_1_and_says_why():
    proc = cli(
        "discover", "--netns", "/proc/self/ns/net", "--ifname", "net1", "--sysfs-root", str(TESTDATA / "sysfs/dpdk")
    )
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["device-info"] is None
    assert report["description"] is None
    outcomes = {s["strategy"]: s["outcome"] for s in report["strategies"]}
    assert outcomes["VF table by mac"].startswith("the interface in prevResult has no mac")


def test_discover_rejects_a_bad_ifname():
    proc = cli("discover", "--netns", "/proc/self/ns/net", "--ifname", "a/b")
    assert proc.returncode == 2
    assert "--ifname 'a/b'" in proc.stderr


def test_check_config_accepts_the_example_nad():
    proc = cli("check-config", str(NAD))
    assert proc.returncode == 0
    assert "$.spec.config.plugins[1]" in proc.stdout


def test_check_config_prints_each_error_with_its_json_path(tmp_path):
    conflist = {
        "cniVersion": "1.1.0",
        "name": "n",
        "plugins": [{"type": "sriov"}, {"type": "deviceid-inject", "required": "yes", "dataDir": "rel"}],
    }
    path = tmp_path / "bad.conflist"
    path.write_text(json.dumps(conflist))
    proc = cli("check-config", str(path))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert any(line.startswith("$.plugins[1].required: 'yes' is not of type 'boolean'") for line in lines)
    assert any(line.startswith("$.plugins[1].dataDir: 'rel' does not match") for line in lines)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"cniVersion": "1.1.0", "plugins": [{"type": "deviceid-inject"}]}', "must follow"),
        ('{"cniVersion": "1.1.0", "plugins": [{"type": "sriov"}]}', "no plugin of type deviceid-inject"),
        ("kind: NetworkAttachmentDefinition\nspec: {}\n", "no spec.config"),
        ("[: not yaml", "neither JSON nor YAML"),
    ],
)
def test_check_config_unusable_input_exits_2(tmp_path, text, words):
    path = tmp_path / "input"
    path.write_text(text)
    proc = cli("check-config", str(path))
    assert proc.returncode == 2
    assert words in proc.stderr


def test_check_config_reads_stdin_and_a_missing_file_is_exit_2():
    assert cli("check-config", "-", stdin=NAD.read_text()).returncode == 0
    assert cli("check-config", "/nonexistent/file").returncode == 2


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        ([], {}, "no node name"),
        (["--node", "node-a", "--listen", "9909"], {}, "is not HOST:PORT"),
        (["--node", "node-a", "--kubeconfig", "/nonexistent/kubeconfig"], {}, "no usable API configuration"),
        ([], {"NODE_NAME": "node-a", "KUBERNETES_SERVICE_HOST": ""}, "no usable API configuration (in-cluster)"),
    ],
)
def test_bridge_refuses_to_start_without_what_it_needs(args, env, words):
    """Usage errors exit 2 with one line that names the problem, never a traceback."""
    argv = [*plugin_command(), "bridge", "--listen", "127.0.0.1:0", *args]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **passed_through(), **env}
    )
    assert done.returncode == 2, done.stderr
    assert words in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.fixture
def answering():
    """An HTTP server on loopback answering /ok with 200 and anything else with 503."""
    server = loopback_server(lambda _, path, __: (200, b"ok\n") if path == "/ok" else (503, b"not synced\n"))
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_probe_exits_0_on_200_and_1_otherwise_saying_why(answering):
    ok = cli("probe", f"{answering}/ok")
    assert (ok.returncode, ok.stdout) == (0, "ok\n")
    refused = cli("probe", f"{answering}/readyz")
    assert refused.returncode == 1
    assert "503 not synced" in refused.stderr
    nobody = cli("probe", "--timeout", "2", f"http://127.0.0.1:{free_port()}/healthz")  # nothing listens
    assert nobody.returncode == 1
    assert "Connection refused" in nobody.stderr
