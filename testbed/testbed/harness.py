"""Running the test bed's processes: the one way the tests start, wait for, and stop a server, and run
a tool once.

`Service` is a long-running process (etcd, kube-apiserver, containerd, kubelet, multus-daemon, the
bridge, ...): started in a process group of its own with an environment given in full, its output in a
log file, ready when a check passes before a deadline (or failing with the log's tail), stopped with
SIGTERM to the whole group and SIGKILL when it lingers. `run` is one command (cnitool, Multus, kubectl,
ctr) in a process group of its own, killed with everything it started when it runs past its timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base_env(**extra: str) -> dict[str, str]:
    """A minimal environment: PATH (the caller's, or the system's) and what `extra` adds."""
    return {"PATH": os.environ.get("PATH", DEFAULT_PATH), **extra}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclass
class Outcome:
    """What one command run printed and how it ended."""

    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        """stdout as JSON, refusing NaN and Infinity as Go's encoding/json (and so every runtime) does."""
        return json.loads(self.stdout, parse_constant=_no_constant)


def run(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    stdin: bytes = b"",
    cwd: Path | str | None = None,
) -> Outcome:
    """Run `argv` once in a process group of its own; on a timeout the whole group (the plugins a
    runtime started too) is killed before the error is raised."""
    proc = subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else base_env(),
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(stdin, timeout=timeout)
    except BaseException:
        kill_group(proc)
        raise
    return Outcome(proc.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace"))


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `proc` leads (started with start_new_session) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.kill()
    proc.communicate()


def poll(
    ready: Callable[[], Any], timeout: float, interval: float, gone: Callable[[], str | None] = lambda: None
) -> Any:
    """Call `ready` until it returns something true, which is returned. TimeoutError once `timeout`
    passes; NotReady as soon as `gone` names a reason that waiting longer is pointless."""
    deadline = time.monotonic() + timeout
    while True:
        reason = gone()
        if reason:
            raise NotReady(reason)
        value = ready()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not after {timeout:g} s")
        time.sleep(interval)


class NotReady(RuntimeError):
    """A service exited or missed its deadline; the message carries the tail of its log."""


@dataclass
class Service:
    """One long-running process of the test bed."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=base_env)
    cwd: Path | None = None
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    def start(self) -> Service:
        if self.alive():
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                list(self.argv),
                env=dict(self.env),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_until(
        self, ready: Callable[[], Any], timeout: float = 60, what: str = "ready", interval: float = 0.1
    ) -> Any:
        """Poll `ready` until it returns something true, which is returned; NotReady with the log's
        tail when the process exits first or `timeout` passes."""

        def exited() -> str | None:
            if self.proc is None or self.proc.poll() is None:
                return None
            return f"{self.name} exited with {self.proc.returncode} before it was {what}\n{self.tail()}"

        try:
            return poll(ready, timeout, interval, exited)
        except TimeoutError:
            raise NotReady(f"{self.name} not {what} after {timeout:g} s\n{self.tail()}") from None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return f"--- last lines of {self.log_path}:\n" + "\n".join(self.log().splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signum)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM to the group, SIGKILL if it does not end in time; the exit code SIGTERM got (None
        when it had to be killed or never ran)."""
        if self.proc is None:
            return None
        code: int | None = self.proc.poll()
        if code is None:
            self.signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()
                code = None
        return code
