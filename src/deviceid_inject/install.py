"""Installing the executable into a node's CNI folder: what the DaemonSet's init container runs, so
its image needs no shell.

A runtime may start the plugin at any moment, so the file there is never half written: a temporary
file in the same folder, flushed to disk and made 0755, is renamed over the old one (plugins already
running keep the old file's inode). The installed copy then runs once with --version, which proves it
starts on this node and, with the node's cache folder mounted where the launcher looks, leaves it
unpacked there, so the first pod does not pay for that.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

NAME = "deviceid-inject"
CHUNK = 1 << 20


class InstallError(Exception):
    """Installing failed; the message says where and why."""


def install(source: Path, folder: Path, name: str = NAME, timeout: float = 60) -> str:
    """Put `source` at `folder`/`name` atomically, run it once; returns its --version line."""
    if not folder.is_dir():
        raise InstallError(f"{folder} is not a folder (mount the node's CNI folder there)")
    target = folder / name
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    try:
        with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o755)
        os.rename(tmp, target)
    except OSError as err:
        _discard(tmp)
        raise InstallError(f"cannot install {source} as {target}: {err.strerror or err}") from None
    _sync_folder(folder)
    return _run_once(target, timeout)


def _discard(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable: a node that loses power keeps the new file or the old one."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _run_once(target: Path, timeout: float) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CNI_")}
    try:
        proc = subprocess.run([str(target), "--version"], capture_output=True, text=True, env=env, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise InstallError(f"{target} was installed but does not run: {err}") from None
    if proc.returncode != 0:
        raise InstallError(f"{target} was installed but --version failed: {(proc.stdout + proc.stderr).strip()}")
    return proc.stdout.splitlines()[0] if proc.stdout else ""
