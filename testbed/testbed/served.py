"""The node's CNI server under test, and the launcher that is its client.

Against the binary (DEVICEID_INJECT_EXE) both are the binary itself: its launcher asks the server,
and the server is `<binary> cni-server`. Against the sources, the client is packaging/launcher.c
built here with gcc around a payload that runs `python -m deviceid_inject`: the same client code the
binary ships, in front of the same Python the rest of that suite runs. Either way the server starts
from the client's own binary, so the two share a build id.

`DEVICEID_INJECT_VIA_SERVER=1` runs the CNI-facing tests through such a server (conftest): every
call of theirs goes through the launcher, which asks a running server first.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from testbed import harness
from testbed.tools import REPO

VIA_SERVER = os.environ.get("DEVICEID_INJECT_VIA_SERVER") == "1"
SOURCE_BUILD_ID = "5011dce"  # the build id of a launcher made here around the sources
SERVED = re.compile(r"\bserved (ADD|DEL|CHECK|GC|STATUS)\b")
HANDED_BACK = re.compile(r"\bhanded (ADD|DEL|CHECK|GC|STATUS)\b.* back to its client")


def reaches_server(environ: dict[str, str]) -> bool:
    """Whether the launcher offers a call with this environment to the server (launcher.c's rule):
    ADD, DEL, CHECK, GC and STATUS, except an ADD or CHECK whose CNI_NETNS it cannot open (the
    plugin, run by the launcher itself, then says why in its own words)."""
    command, netns = environ.get("CNI_COMMAND"), environ.get("CNI_NETNS")
    if command not in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
        return False
    if command in ("ADD", "CHECK") and netns:
        try:
            os.close(os.open(netns, os.O_RDONLY))
        except OSError:
            return False
    return True


def cache_folder(folder: Path) -> Path:
    """A launcher cache the launcher accepts: root's, writable by nobody else."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    return folder


def source_binary(folder: Path, build_id: str = SOURCE_BUILD_ID) -> Path:
    """packaging/launcher.c around a payload that runs this checkout's sources."""
    folder.mkdir(parents=True, exist_ok=True)
    launcher = folder / "launcher"
    if not launcher.exists():
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-Werror", "-o", str(launcher), str(REPO / "packaging/launcher.c")], check=True
        )
    payload = folder / f"payload-{build_id}"
    payload.mkdir(exist_ok=True)
    program = payload / "deviceid-inject"
    program.write_text(f'#!/bin/sh\nexec {sys.executable} -m deviceid_inject "$@"\n')
    program.chmod(0o755)
    out = folder / f"deviceid-inject-{build_id}"
    subprocess.run(
        [sys.executable, str(REPO / "packaging/pack.py"), str(launcher), str(payload), build_id, str(out)], check=True
    )
    return out


def client_binary(folder: Path) -> Path:
    """The binary whose launcher is the client under test."""
    exe = os.environ.get("DEVICEID_INJECT_EXE")
    return Path(exe) if exe else source_binary(folder)


@dataclass
class CniServer:
    binary: Path
    socket: Path
    service: harness.Service

    def served(self) -> int:
        """Calls the server answered (exit 0 or 1 of the plugin), by its log."""
        return len(SERVED.findall(self.service.log()))

    def handed_back(self) -> int:
        return len(HANDED_BACK.findall(self.service.log()))

    def answers(self) -> bool:
        if not self.socket.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(str(self.socket))
            except OSError:
                return False
        return True

    def stop(self) -> int | None:
        return self.service.stop()


def start_server(binary: Path, folder: Path, *args: str, sock: Path | None = None) -> CniServer:
    """`<binary> cni-server` on `sock` (default: in `folder`), logging at info into `folder`;
    returns once it accepts."""
    sock = sock or folder / "run" / "cni.sock"
    env = harness.base_env(DEVICEID_INJECT_CACHE=str(cache_folder(folder / "server-cache")))
    argv = [str(binary), "cni-server", "--socket", str(sock), "--log-level", "info", *args]
    service = harness.Service("cni-server", argv, folder / "cni-server.log", env=env).start()
    server = CniServer(binary, sock, service)
    # Its own line first: another server may still answer on that path until this one takes it over.
    service.wait_until(lambda: "serving CNI calls on" in service.log() and server.answers(), 60, "accepting")
    return server
