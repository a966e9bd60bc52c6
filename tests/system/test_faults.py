"""Faults: the plugin killed at random moments of ADD, a device-info tree or dataDir that is
read-only or full, and two ADDs of one attachment racing. The plugin runs as a runtime runs it
(a subprocess, CNI_* in the environment) over the vf-iavf fixture, so net1 is 0000:3b:02.3.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import random
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.harness import kill_group
from testbed.helpers import (
    NET1_DEVICE_INFO,
    NET1_PCI,
    Impl,
    attachment_state,
    cni_env,
    fallback_name,
    files_under,
    needs_root,
    plugin_command,
    read_json,
    run_plugin,
    strict_json,
)

pytestmark = [pytest.mark.faults]

NETWORK = "n6-dpdk"  # conftest's make_config names the network so
KILL_TRIALS = 40


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_plugin_outlives_its_test() -> Iterator[None]:
    """Whatever happens in a test, every plugin process it started is gone afterwards."""
    try:
        yield
    finally:
        while STARTED:
            proc = STARTED.pop()
            if proc.poll() is None:
                kill_group(proc)


def start_plugin(command: str, config: dict[str, Any], container_id: str) -> subprocess.Popen:
    """Start one plugin run in its own process group (so a kill reaches any child it has)."""
    proc = subprocess.Popen(
        plugin_command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cni_env(command, container_id=container_id),
        start_new_session=True,
    )
    STARTED.append(proc)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(config).encode())
    proc.stdin.close()
    proc.stdin = None  # written and closed: communicate() only reads
    return proc


class Reader(threading.Thread):
    """Polls folders and JSON-parses every file a reader such as Multus could pick up (names not
    starting with '.': temporary files and the validated-config cache are no one's to read)."""

    def __init__(self, *folders: Path) -> None:
        super().__init__(daemon=True)
        self.folders = folders
        self.halt = threading.Event()
        self.reads = 0
        self.failures: list[tuple[str, bytes, str]] = []

    def run(self) -> None:
        try:
            self._poll()
        except Exception as exc:  # a reader that died must fail the test, not go quiet
            self.failures.append(("reader", b"", repr(exc)))

    def _poll(self) -> None:
        while not self.halt.is_set():
            for folder in self.folders:
                for path in self._candidates(folder):
                    try:
                        with open(path, "rb") as f:
                            data = f.read()
                    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                        continue
                    self.reads += 1
                    try:
                        strict_json(data.decode())
                    except ValueError as exc:
                        self.failures.append((path, data[:300], str(exc)))
            time.sleep(0.0005)  # leave the plugin under test most of the CPU

    @staticmethod
    def _candidates(folder: Path) -> Iterator[str]:
        for parent, dirs, names in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            yield from (os.path.join(parent, n) for n in names if not n.startswith("."))

    def __enter__(self) -> Reader:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join(timeout=10)


def leftovers_of(roots: dict[str, Path], container_id: str) -> dict[str, bool]:
    """What a killed ADD of `container_id` left: its record, its device-info file, temp files."""
    record_dir = roots["state"] / container_id
    cni = roots["devinfo"] / "cni"
    name = fallback_name(NETWORK, container_id)
    temps = [n for d in (record_dir, cni) if d.is_dir() for n in os.listdir(d) if n.startswith(".") and "tmp" in n]
    temps = [n for n in temps if n.startswith((f".{name}.", ".net1.json."))]
    return {
        "record": (record_dir / "net1.json").exists(),
        "file": (cni / name).exists(),
        "temp": bool(temps),
    }


# --- SIGKILL during ADD ----------------------------------------------------------------------------


def kill_after(proc: subprocess.Popen, delay: float) -> None:
    time.sleep(delay)
    with contextlib.suppress(ProcessLookupError):  # it may have finished already
        os.killpg(proc.pid, signal.SIGKILL)


def kill_once_written(proc: subprocess.Popen, path: Path) -> None:
    """SIGKILL `proc` as soon as `path` exists (or when it has exited without making it)."""
    while not path.exists() and proc.poll() is None:
        time.sleep(0.0002)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def test_sigkill_at_random_moments_of_add(impl: Impl, make_config, roots, capsys) -> None:
    """However ADD is cut short, DEL afterwards succeeds and leaves nothing, and a concurrent
    reader never sees a partly written file. The kills land where they matter: some after the
    record was written, some after the device-info file was written too."""
    config = make_config()
    del_config = make_config(prev=None)  # after a failed ADD the runtime has no result to pass

    seed = random.randrange(2**32)
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()

    def trial(container_id: str, kill: Callable[[subprocess.Popen], None]) -> list[str]:
        """One ADD cut short by `kill`, then a DEL that must leave nothing; what the kill left."""
        proc = start_plugin("ADD", config, container_id)
        kill(proc)
        out, _ = proc.communicate(timeout=60)
        STARTED.remove(proc)
        left = leftovers_of(roots, container_id)
        killed = proc.returncode != 0
        if not killed:
            outcomes["finished before the kill"] += 1
            assert strict_json(out.decode())["interfaces"][0]["pciID"] == NET1_PCI
        else:
            assert proc.returncode == -signal.SIGKILL, (proc.returncode, out)
            kind = "+".join(k for k, v in left.items() if v) or "nothing"
            outcomes[f"killed, left {kind}"] += 1
        if left["file"]:
            assert read_json(roots["devinfo"] / "cni" / fallback_name(NETWORK, container_id)) == NET1_DEVICE_INFO

        delete = run_plugin("DEL", del_config, container_id=container_id)
        assert (delete.code, delete.stdout) == (0, ""), delete.stdout
        assert leftovers_of(roots, container_id) == {"record": False, "file": False, "temp": False}
        assert not (roots["state"] / container_id).exists()
        return [what for what, key in (("after record", "record"), ("after file", "file")) if killed and left[key]]

    landed: Counter[str] = Counter()
    with Reader(roots["devinfo"], roots["state"]) as reader:
        # Calibrate, with the reader running: how long a whole ADD takes here, so the kills
        # spread over all of it.
        durations = []
        for i in range(3):
            start = time.monotonic()
            proc = start_plugin("ADD", config, f"calib-{i}")
            proc.communicate(timeout=60)
            durations.append(time.monotonic() - start)
            assert proc.returncode == 0
            assert run_plugin("DEL", del_config, container_id=f"calib-{i}").code == 0
        lifetime = statistics.median(durations)
        for trial_no in range(KILL_TRIALS):
            # Stratified: the first half of the trials over all of ADD's lifetime, the second half
            # over 40-100 % of it (interpreter start-up takes the first; the writes come last).
            half = KILL_TRIALS // 2
            low, high, slot = (0.0, 1.1, trial_no) if trial_no < half else (0.4, 1.0, trial_no - half)
            delay = lifetime * (low + (high - low) * (slot + rng.random()) / half)
            landed.update(trial(f"kill-{trial_no}", functools.partial(kill_after, delay=delay)))
        # Timed kills may miss the short windows after the writes on a fast or a loaded machine;
        # these kills wait for the write itself, so both windows are always hit.
        for what, path_of in (
            ("after record", lambda cid: roots["state"] / cid / "net1.json"),
            ("after file", lambda cid: roots["devinfo"] / "cni" / fallback_name(NETWORK, cid)),
        ):
            for attempt in range(10):
                if landed[what]:
                    break
                cid = f"kill-{what.split()[1]}-{attempt}"
                landed.update(trial(cid, functools.partial(kill_once_written, path=path_of(cid))))
    assert landed["after record"] >= 1, outcomes
    assert landed["after file"] >= 1, outcomes
    assert reader.failures == [], reader.failures[:3]
    assert reader.reads > 0
    assert files_under(roots["devinfo"]) == []
    assert attachment_state(roots["state"]) == []
    with capsys.disabled():
        summary = ", ".join(f"{n} {what}" for what, n in sorted(outcomes.items()))
        print(
            f"\n[faults] {impl.name}: {sum(outcomes.values())} SIGKILLs over ADD's {lifetime * 1000:.0f} ms "
            f"(seed {seed}): {summary}; DEL cleaned all; reader parsed {reader.reads} files, 0 partial"
        )


# --- read-only and full filesystems -----------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs folders under tmp_path; every one is unmounted afterwards."""
    mounted: list[Path] = []

    def mount(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=128k,nr_inodes=4096,mode=0755", "dit-faults", str(folder)],
            check=True,
            capture_output=True,
        )
        mounted.append(folder)
        return folder

    try:
        yield mount
    finally:
        for folder in reversed(mounted):
            if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write zeros into `folder` until its filesystem is full; the filler file is returned."""
    filler = folder / "filler"
    chunk = bytes(4096)
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return filler


@pytest.mark.parametrize(
    ("where", "how"),
    [
        pytest.param("deviceInfoRoot", "read-only"),
        pytest.param("deviceInfoRoot", "full"),
        pytest.param("dataDir", "read-only"),
        pytest.param("dataDir", "full"),
    ],
)
@needs_root
def test_read_only_or_full_filesystem(impl: Impl, make_config, roots, small_tmpfs, where: str, how: str) -> None:
    """A clean code 5, no partial state, and ADD works again once the space is back."""
    mount = small_tmpfs("small")
    key = {"deviceInfoRoot": "devinfo", "dataDir": "state"}[where]
    roots[key] = mount / key
    config = make_config(**{where: str(roots[key])})
    if how == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)
    else:
        filler = fill(mount)

    run = run_plugin("ADD", config)
    assert run.code != 0
    assert run.json["code"] == 5, run.json
    assert str(roots[key]) in run.json["msg"]
    assert files_under(roots["devinfo"]) == [], "a device-info file (or a piece of one) is left"
    assert attachment_state(roots["state"]) == [], "a failed ADD left state behind"

    if how == "read-only":
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True, capture_output=True)
    else:
        filler.unlink()
    again = run_plugin("ADD", config)
    assert again.code == 0, again.stdout
    assert again.json["interfaces"][0]["pciID"] == NET1_PCI
    assert read_json(roots["devinfo"] / "cni" / fallback_name(NETWORK, "ctr-1")) == NET1_DEVICE_INFO
    assert run_plugin("DEL", config).code == 0
    assert files_under(roots["devinfo"]) == []
    assert attachment_state(roots["state"]) == []


@pytest.mark.parametrize(("where", "how"), [("deviceInfoRoot", "read-only"), ("deviceInfoRoot", "full")])
@needs_root
def test_a_failed_add_then_del_leaves_nothing(impl: Impl, make_config, roots, small_tmpfs, where, how) -> None:
    """What a runtime does after a failed ADD (DEL) cleans up whatever the ADD left."""
    mount = small_tmpfs("small")
    roots["devinfo"] = mount / "devinfo"
    config = make_config(deviceInfoRoot=str(roots["devinfo"]))
    if how == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)
    else:
        fill(mount)
    assert run_plugin("ADD", config).json["code"] == 5
    assert run_plugin("DEL", make_config(prev=None, deviceInfoRoot=str(roots["devinfo"]))).code == 0
    assert files_under(roots["devinfo"]) == []
    assert attachment_state(roots["state"]) == []


# --- racing ADDs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("multus_path", [False, True], ids=["fallback", "multus-path"])
def test_two_adds_of_one_attachment_at_once(impl: Impl, make_config, roots, multus_path: bool) -> None:
    """The same ADD twice at once (a runtime retrying while the first still runs): both succeed
    with the same result, one file naming the right device, one consistent record."""
    given = roots["devinfo"] / "cni" / "n6-dpdk-sandbox_net1"
    runtime = {"runtimeConfig": {"CNIDeviceInfoFile": str(given)}} if multus_path else {}
    config = make_config(**runtime)
    expected = given if multus_path else roots["devinfo"] / "cni" / fallback_name(NETWORK, "ctr-1")
    with Reader(roots["devinfo"], roots["state"]) as reader:
        for _ in range(4):
            procs = [start_plugin("ADD", config, "ctr-1") for _ in range(2)]
            outputs = [p.communicate(timeout=60) for p in procs]
            assert [p.returncode for p in procs] == [0, 0], outputs
            results = [strict_json(out.decode()) for out, _ in outputs]
            assert results[0] == results[1]
            assert results[0]["interfaces"][0]["pciID"] == NET1_PCI
            assert files_under(roots["devinfo"]) == [str(expected.relative_to(roots["devinfo"]))]
            assert read_json(expected) == NET1_DEVICE_INFO
            record = read_json(roots["state"] / "ctr-1" / "net1.json")
            assert (record["pci_address"], record["device_info_file"], record["created_file"]) == (
                NET1_PCI,
                str(expected),
                True,
            )
            assert attachment_state(roots["state"]) == ["ctr-1/", "ctr-1/net1.json"]
    assert reader.failures == [], reader.failures[:3]
    assert reader.reads > 0
    assert run_plugin("DEL", make_config(prev=None, **runtime)).code == 0
    assert files_under(roots["devinfo"]) == []
    assert attachment_state(roots["state"]) == []
