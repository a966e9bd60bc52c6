"""wait-device-info: the downward API's annotations file, read as the kubelet writes it."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from deviceid_inject import wait as waiting
from deviceid_inject.annotations import NETWORK_STATUS
from deviceid_inject.wait import Wanted
from testbed.helpers import plugin_command

VF = {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:3b:02.3"}}
N6 = {"name": "ran/n6-dpdk", "interface": "net1", "mac": "02:00:00:00:00:01"}


def go_quote(value: str) -> str:
    """What Go's %q makes of `value` (the kubelet formats the file with it): the escapes it uses."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\x07":
            out.append("\\a")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def downward_file(path: Path, status: list | None, **others: str) -> None:
    values = dict(others)
    if status is not None:
        values[NETWORK_STATUS] = json.dumps(status, indent=4)
    path.write_text("\n".join(f"{k}={go_quote(v)}" for k, v in sorted(values.items())))


@pytest.mark.parametrize("value", ['[{"a": "b\\"c"}]', "tab\there\nnewline", "bell\x07", "ünïcode ✓", "nul\x01"])
def test_go_unquote_inverts_go_quote(value):
    assert waiting.go_unquote(go_quote(value)) == value


def test_go_unquote_reads_the_long_escapes_go_writes_for_unprintables():
    assert waiting.go_unquote('"\\u00a0\\U0001f600\\x7f"') == "\u00a0\U0001f600\x7f"


def test_device_info_of_the_wanted_interface(tmp_path: Path):
    path = tmp_path / "annotations"
    downward_file(path, [{"name": "default", "interface": "eth0"}, {**N6, "device-info": VF}], other='x="y"')
    assert waiting.device_info(path.read_text(), Wanted("net1")) == VF
    assert waiting.device_info(path.read_text(), Wanted("net1", "ran/n6-dpdk")) == VF
    assert waiting.device_info(path.read_text(), Wanted("net1", "ran/other")) is None
    assert waiting.device_info(path.read_text(), Wanted("net2")) is None


@pytest.mark.parametrize("status", [None, [], [N6]])
def test_no_device_info_yet(tmp_path: Path, status):
    path = tmp_path / "annotations"
    downward_file(path, status)
    assert waiting.device_info(path.read_text(), Wanted("net1")) is None


def run_wait(path: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [*plugin_command(), "wait-device-info", "--annotations", str(path), "--interface", "net1", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


def test_the_command_returns_as_soon_as_the_file_has_it(tmp_path: Path):
    path = tmp_path / "annotations"
    downward_file(path, [N6])

    def kubelet_refreshes() -> None:
        time.sleep(1.0)
        downward_file(path, [{**N6, "device-info": VF}])

    refresher = threading.Thread(target=kubelet_refreshes)
    refresher.start()
    done = run_wait(path, "--timeout", "30")
    refresher.join()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == VF


def test_the_command_times_out_with_exit_1_and_says_why(tmp_path: Path):
    path = tmp_path / "annotations"
    downward_file(path, [N6])
    done = run_wait(path, "--timeout", "1")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "no device-info for net1" in done.stderr


def test_a_missing_file_is_waited_for_not_an_error(tmp_path: Path):
    done = run_wait(tmp_path / "not-yet", "--timeout", "1")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
