"""`deviceid-inject install`: what the DaemonSet's init container runs to put the binary on the node."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from testbed.helpers import plugin_command


def install(source: Path, folder: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    argv = [*plugin_command(), "install", "--from", str(source), str(folder)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def executable(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o700)
    return path


def test_installs_a_copy_made_0755_and_runs_it_once(tmp_path: Path):
    source = executable(tmp_path / "new", 'echo "deviceid-inject 9.9.9 (stand-in)"')
    folder = tmp_path / "cni-bin"
    folder.mkdir()
    proc = install(source, folder)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"installed {folder}/deviceid-inject: deviceid-inject 9.9.9 (stand-in)\n"
    target = folder / "deviceid-inject"
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_mode & 0o777 == 0o755
    assert sorted(os.listdir(folder)) == ["deviceid-inject"]  # no temporary file left


def test_the_binary_installs_itself(tmp_path: Path):
    exe = os.environ.get("DEVICEID_INJECT_EXE")
    source = Path(exe) if exe else executable(tmp_path / "src", 'echo "deviceid-inject 0.1.0"')
    folder = tmp_path / "bin"
    folder.mkdir()
    proc = install(source, folder)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"installed {folder}/deviceid-inject: deviceid-inject 0.")
    assert (folder / "deviceid-inject").read_bytes() == source.read_bytes()


def test_a_runtime_executing_the_plugin_meanwhile_never_finds_it_missing_or_half_written(tmp_path: Path):
    """While installs replace the file again and again, every exec of it runs a whole file."""
    folder = tmp_path / "cni-bin"
    folder.mkdir()
    versions = [executable(tmp_path / f"v{i}", f'echo "deviceid-inject {i}"; exit 0') for i in range(2)]
    assert install(versions[0], folder).returncode == 0
    target = folder / "deviceid-inject"
    stop = threading.Event()
    failures: list[str] = []

    def execute() -> None:
        while not stop.is_set():
            proc = subprocess.run([str(target)], capture_output=True, text=True)
            if proc.returncode != 0 or not proc.stdout.startswith("deviceid-inject "):
                failures.append(f"{proc.returncode} {proc.stdout!r} {proc.stderr!r}")

    runner = threading.Thread(target=execute)
    runner.start()
    try:
        for i in range(20):
            assert install(versions[i % 2], folder).returncode == 0
    finally:
        stop.set()
        runner.join()
    assert failures == []


def test_a_missing_folder_or_a_copy_that_does_not_run_fails_with_the_reason(tmp_path: Path):
    source = executable(tmp_path / "ok", 'echo "deviceid-inject 1"')
    proc = install(source, tmp_path / "nowhere")
    assert proc.returncode == 1
    assert f"{tmp_path / 'nowhere'} is not a folder" in proc.stderr
    broken = executable(tmp_path / "broken", 'echo "no such luck" >&2; exit 3')
    folder = tmp_path / "bin"
    folder.mkdir()
    proc = install(broken, folder)
    assert proc.returncode == 1
    assert "installed but --version failed: no such luck" in proc.stderr
