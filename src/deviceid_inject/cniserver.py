"""The node's CNI server: `deviceid-inject cni-server`, what the exec'd launcher asks first.

A CNI call exec'd by the runtime (or by Multus thick, inside its daemon's 50Mi container) costs a
Python runtime: about 45 ms of CPU and 15 MiB, charged to whoever runs it. The server pays for that
once: it imports everything at start, and the launcher (packaging/launcher.c) sends it the call's
CNI_* environment, stdin and two namespaces over a unix socket (wire.py), then relays the answer.
When no server answers, or it refuses, the launcher runs the embedded program as before.

Each call runs in a child forked for it: the child enters the client's network namespace (where
the PFs' VF tables are; so the server's own Pod needs no host network), gets the Pod's netns as an
open descriptor (no path to resolve in another mount namespace, and the netns cannot vanish
between the runtime's call and ours), and runs the same `cni.run` as the exec path. A crash, leak
or hang of one call dies with its child; a call over its deadline is killed with its process group,
its client then sees the connection end and runs the plugin itself (ADD and DEL are idempotent
per container and ifname, and the state lock serialises both paths).

The parent is one thread around a selector: it accepts only uid 0 (SO_PEERCRED), reads each
request under one deadline for the whole of it and a size bound, starts at most `max_calls`
children, queues the rest, and drops whatever overstays. SIGTERM: the socket goes at once (new
calls fall back), what is in flight finishes.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import gc
import io
import os
import selectors
import signal
import socket
import struct
import time
from dataclasses import dataclass, field

from . import cni, netns, views, wire
from . import config as configuration
from .log import Log

# What the launcher exports to the program it execs (launcher.c): its build id and unpacked folder.
BUILD_ID_ENV = "DEVICEID_INJECT_BUILD_ID"
BUILD_DIR_ENV = "DEVICEID_INJECT_BUILD_DIR"
MAX_CAPTURED_STDERR = 64 * 1024
MAX_FDS = 3  # the client's netns and root, the Pod's netns
MARK_USED_SECONDS = 60.0  # the launcher removes builds unused for ten minutes: ours is in use
_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Limits:
    max_calls: int = 16  # children at once; more complete requests wait for a slot
    max_connections: int = 64  # connections still sending their request
    read_seconds: float = 5.0  # to send the whole request, from acceptance
    call_seconds: float = 30.0  # for the whole call, from acceptance (the client waits longer)


@dataclass
class _Connection:
    sock: socket.socket
    deadline: float  # for the whole call
    read_deadline: float
    data: bytearray = field(default_factory=bytearray)
    fds: list[int] = field(default_factory=list)
    request: wire.Request | None = None

    def close(self) -> None:
        self.sock.close()
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


@dataclass
class _Call:
    label: str
    started: float
    deadline: float
    killed: str = ""  # why we killed it


@dataclass
class Listener:
    sock: socket.socket
    path: str
    inode: int  # of the socket file we put there: a newer server may have replaced it since

    def close(self) -> None:
        """Stop listening; the file goes unless a newer server has taken the path over."""
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass
        self.sock.close()


class Server:
    def __init__(self, listener: Listener, build_id: str, limits: Limits, log: Log):
        self.listener = listener.sock
        self.socket_file = listener
        self.build_id = build_id
        self.limits = limits
        self.log = log
        self.selector = selectors.DefaultSelector()
        self.reading: dict[int, _Connection] = {}
        self.waiting: collections.deque[_Connection] = collections.deque()
        self.calls: dict[int, _Call] = {}
        self.stopping = False
        self.stop_signal = 0  # set by the handler; the loop does the stopping
        self.served = 0
        self.wake_read, self.wake_write = socket.socketpair()

    # --- the loop ---------------------------------------------------------------------------------

    def serve(self) -> int:
        for sock in (self.listener, self.wake_read, self.wake_write):
            sock.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        self.selector.register(self.wake_read, selectors.EVENT_READ, self._woken)
        signal.set_wakeup_fd(self.wake_write.fileno())
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the selector
        self.log.warning(f"serving CNI calls on {self.socket_file.path} (build {self.build_id})")
        build_dir = os.environ.get(BUILD_DIR_ENV)
        next_mark = 0.0
        while not (self.stopping and not self.calls and not self.waiting):
            if self.stop_signal and not self.stopping:
                self._begin_stop()
            now = time.monotonic()
            if build_dir and now >= next_mark:
                _mark_used(build_dir)
                next_mark = now + MARK_USED_SECONDS
            for key, _ in self.selector.select(self._timeout(now)):
                key.data(key.fileobj)
            self._reap()
            self._expire(time.monotonic())
            self._start_waiting()
        self.log.warning(f"stopped after {self.served} calls")
        return 0

    def _timeout(self, now: float) -> float:
        deadlines = [c.read_deadline for c in self.reading.values()]
        deadlines += [c.deadline for c in self.waiting] + [c.deadline for c in self.calls.values() if not c.killed]
        return max(0.0, min([now + 1.0, *deadlines]) - now)

    def _woken(self, sock: socket.socket) -> None:
        try:
            while sock.recv(512):
                pass
        except BlockingIOError:
            pass

    def _stop(self, signum: int, frame: object) -> None:
        self.stop_signal = signum

    def _begin_stop(self) -> None:
        self.stopping = True
        in_flight = len(self.calls) + len(self.waiting)
        self.log.warning(f"signal {self.stop_signal}: no new calls; finishing {in_flight} in flight")
        self.selector.unregister(self.listener)
        self.socket_file.close()
        for conn in list(self.reading.values()):  # not in flight yet: their clients run the plugin
            self._drop(conn, None)

    # --- connections ------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: the client falls back; we go on
                self.log.error(f"accept failed: {exc}")
                return
            sock.setblocking(False)
            now = time.monotonic()
            conn = _Connection(sock, now + self.limits.call_seconds, now + self.limits.read_seconds)
            uid = _peer_uid(sock)
            if uid != 0:
                self.log.warning(f"refused a client of uid {uid}: only root may call")
                self._drop(conn, "only root may call this server")
            elif len(self.reading) >= self.limits.max_connections:
                self.log.warning(f"{len(self.reading)} connections still sending: one more dropped")
                self._drop(conn, None)
            else:
                self.reading[sock.fileno()] = conn
                self.selector.register(sock, selectors.EVENT_READ, self._receive)

    def _receive(self, sock: socket.socket) -> None:
        conn = self.reading[sock.fileno()]
        try:
            data, ancillary, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(MAX_FDS * 4))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.log.info(f"a client's connection failed: {exc}")
            self._drop(conn, None)
            return
        conn.fds += _received_fds(ancillary)
        if not data:
            self._drop(conn, None)
            return
        conn.data += data
        reason = None
        try:
            if len(conn.fds) > MAX_FDS:
                reason = f"{len(conn.fds)} descriptors sent, at most {MAX_FDS}"
            elif len(conn.data) > wire.MAX_REQUEST_BYTES:
                reason = f"a request of more than {wire.MAX_REQUEST_BYTES} bytes"
            else:
                conn.request = wire.decode_request(bytes(conn.data))
        except wire.BadRequest as exc:
            reason = f"bad request: {exc}"
        if reason is not None:
            self.log.warning(f"refused a request: {reason}")
            self._drop(conn, reason)
        elif conn.request is not None:
            self._unwatch(conn)
            if conn.request.build_id == wire.HEALTH_BUILD_ID:  # a probe: the loop itself answers
                in_flight = len(self.calls) + len(self.waiting)
                self._drop(
                    conn, f"{wire.ALIVE} build {self.build_id}, {self.served} calls served, {in_flight} in flight"
                )
            elif conn.request.build_id != self.build_id:
                reason = f"this server is build {self.build_id}, the client {conn.request.build_id}"
                self.log.info(f"handed {_label(conn.request.environ)} back to its client: {reason}")
                self._drop(conn, reason)
            elif len(conn.fds) < 2:
                self._drop(conn, "no network namespace and root sent")
            else:
                self.waiting.append(conn)

    def _unwatch(self, conn: _Connection) -> None:
        if self.reading.pop(conn.sock.fileno(), None) is not None:
            self.selector.unregister(conn.sock)

    def _drop(self, conn: _Connection, refusal: str | None) -> None:
        """Close a connection; with a refusal, tell the client first (it runs the plugin itself)."""
        self._unwatch(conn)
        if refusal is not None:
            with contextlib.suppress(OSError):
                conn.sock.send(wire.encode_refusal(refusal), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        conn.close()

    # --- calls ------------------------------------------------------------------------------------

    def _start_waiting(self) -> None:
        while self.waiting and len(self.calls) < self.limits.max_calls:
            conn = self.waiting.popleft()
            request = conn.request
            assert request is not None
            label = _label(request.environ)
            others = self._open_fds(besides=conn)
            pid = os.fork()
            if pid == 0:
                _child(conn, request, others, self.log)
            with contextlib.suppress(OSError):  # the child does it too: whichever runs first
                os.setpgid(pid, pid)
            conn.close()
            self.calls[pid] = _Call(label, time.monotonic(), conn.deadline)

    def _open_fds(self, besides: _Connection) -> list[int]:
        """What a child must close: everything of the server's that is not its own call."""
        socks = [self.listener, self.wake_read, self.wake_write, *(c.sock for c in self.reading.values())]
        socks += [c.sock for c in self.waiting if c is not besides]
        fds = [s.fileno() for s in socks if s.fileno() >= 0]
        fds += [fd for c in (*self.reading.values(), *self.waiting) if c is not besides for fd in c.fds]
        return [*fds, self.selector.fileno()]

    def _reap(self) -> None:
        while self.calls:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            call = self.calls.pop(pid, None)
            if call is None:
                continue
            ms = (time.monotonic() - call.started) * 1000
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, 1):
                self.served += 1
                self.log.info(f"served {call.label}: exit {os.WEXITSTATUS(status)} in {ms:.1f} ms")
            elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == _EXIT_REFUSED:
                pass  # the child said why
            else:
                why = call.killed or f"status {status}"
                self.log.error(f"{call.label} ended without an answer ({why}); its client runs the plugin itself")

    def _expire(self, now: float) -> None:
        for conn in [c for c in self.reading.values() if now >= c.read_deadline]:
            self.log.info(f"dropped a connection: no whole request within {self.limits.read_seconds:g} s")
            self._drop(conn, None)
        for conn in [c for c in self.waiting if now >= c.deadline]:
            self.waiting.remove(conn)
            self._drop(conn, None)
        for pid, call in self.calls.items():
            if now >= call.deadline and not call.killed:
                self._kill(pid, call, "over its deadline")

    def _kill(self, pid: int, call: _Call, why: str) -> None:
        call.killed = why
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


_EXIT_REFUSED = 3  # the child's exit status for "handed back": the plugin's own are 0 and 1


def _child(
    conn: _Connection,
    request: wire.Request,
    others: list[int],
    log: Log,
) -> None:
    """Run one call and answer it; never returns."""
    status = 70
    try:
        os.setpgid(0, 0)  # the deadline kills the call's whole group, probes included
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        for fd in others:
            _close_quietly(fd)
        working = _die_with_the_client(conn.sock, _label(request.environ), log)
        status, reply = _run_call(conn.fds, request, log)
        working.clear()
        conn.sock.setblocking(True)
        conn.sock.settimeout(max(0.1, conn.deadline - time.monotonic()))
        conn.sock.sendall(reply)
    except BaseException as exc:
        log.error(f"call failed in the server: {type(exc).__name__}: {exc}")
    finally:
        os._exit(status)


def _die_with_the_client(sock: socket.socket, label: str, log: Log) -> set[str]:
    """Kill this call's process group when its client goes away before the work is done, as an
    exec'd plugin dies with its runtime's kill: no ADD may land after the runtime's DEL. The client
    sends nothing after its request, so the socket turning readable (SIGIO) means it hung up.
    Returns the marker to clear once the work is done."""
    working = {label}

    def check(signum: int = 0, frame: object = None) -> None:
        if not working:
            return
        try:
            if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                return  # bytes a client never sends: not a hang-up
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        log.warning(f"{label}: its client went away; the call dies with it")
        os.killpg(0, signal.SIGKILL)

    signal.signal(signal.SIGIO, check)
    fcntl.fcntl(sock.fileno(), fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) | os.O_ASYNC)
    check()  # gone already, before the signal was armed
    return working


def _run_call(fds: list[int], request: wire.Request, log: Log) -> tuple[int, bytes]:
    try:
        netns.enter(fds[0])
    except OSError as exc:
        reason = f"cannot enter the client's network namespace: {exc.strerror}"
        log.warning(f"handed {_label(request.environ)} back to its client: {reason}")
        return _EXIT_REFUSED, wire.encode_refusal(reason)
    environ = {key: value for key, value in request.environ.items() if key.startswith("CNI_")}
    if len(fds) > 2:
        environ["CNI_NETNS"] = f"/proc/self/fd/{fds[2]}"

    def admit(raw: dict[str, object]) -> None:
        reason = views.differs(configuration.named_paths(raw), fds[1])
        if reason is not None:
            log.warning(f"handed {_label(environ)} back to its client: {reason}")
            raise cni.Declined(reason)

    stdout, stderr = io.StringIO(), _Tee(log.stream)
    try:
        code = cni.run(environ, io.BytesIO(request.stdin), stdout, stderr, admit)
    except cni.Declined as declined:
        return _EXIT_REFUSED, wire.encode_refusal(str(declined))
    answer = wire.Answer(code, stdout.getvalue().encode(), stderr.captured().encode())
    return (0 if code == 0 else 1), wire.encode_answer(answer)


class _Tee(io.TextIOBase):
    """The plugin's stderr: to the server's own, and (bounded) back to the client."""

    def __init__(self, stream: object) -> None:
        self.stream = stream
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> int:
        self.stream.write(text)  # type: ignore[attr-defined]
        if self.size < MAX_CAPTURED_STDERR:
            self.parts.append(text[: MAX_CAPTURED_STDERR - self.size])
            self.size += len(self.parts[-1])
        return len(text)

    def flush(self) -> None:
        self.stream.flush()  # type: ignore[attr-defined]

    def captured(self) -> str:
        return "".join(self.parts)


# --- the socket and its folder --------------------------------------------------------------------


def listen(path: str) -> Listener:
    """Bind `path` in a folder of root's, mode 0700; a socket already there (a server being replaced)
    is taken over atomically: bound under a temporary name, then renamed over it."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o700, exist_ok=True)
    info = os.lstat(folder)
    if not os.path.isdir(folder) or os.path.islink(folder) or info.st_uid not in (0, os.geteuid()):
        raise OSError(errno.EPERM, f"{folder} is not a folder of root's")
    os.chmod(folder, 0o700)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        sock.bind(tmp)
        os.chmod(tmp, 0o600)
        sock.listen(128)
        inode = os.lstat(tmp).st_ino
        os.rename(tmp, path)
    except BaseException:
        sock.close()
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return Listener(sock, path, inode)


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        _, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return None
    return uid


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds += list(struct.unpack(f"{usable // 4}i", data[:usable]))
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds


def _label(environ: dict[str, str]) -> str:
    command = environ.get("CNI_COMMAND", "?")
    if environ.get("CNI_CONTAINERID"):
        return f"{command} {environ['CNI_CONTAINERID']}/{environ.get('CNI_IFNAME', '')}"
    return command


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _mark_used(folder: str) -> None:
    with contextlib.suppress(OSError):
        os.utime(folder)


def preload() -> None:
    """Import now what calls would import on their first use, so no child pays for it."""
    import hashlib  # noqa: F401 - deviceinfo, for long names

    import jsonschema  # noqa: F401 - config, for a config not validated before
    import pyroute2.netlink.exceptions  # noqa: F401 - vftable
    import pyudev  # noqa: F401 - udev, at log level info

    # What is imported now is shared by every child: keep the collector from touching (and so
    # copying) those pages in each of them.
    gc.collect()
    gc.freeze()


def run(socket_path: str, limits: Limits, log: Log) -> int:
    build_id = os.environ.get(BUILD_ID_ENV, "")
    if not build_id:
        log.error(f"no {BUILD_ID_ENV}: run the server through the deviceid-inject binary, whose launcher sets it")
        return 2
    preload()
    try:
        listener = listen(socket_path)
    except OSError as exc:
        log.error(f"cannot listen on {socket_path}: {exc}")
        return 1
    return Server(listener, build_id, limits, log).serve()
