"""The one-file launcher (packaging/launcher.c + pack.py), with a small stand-in program as payload.

Built here with the host's gcc, so the unpack-and-exec logic is tested without a Nuitka build;
the suite run against the real binary (DEVICEID_INJECT_EXE) covers the real payload.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from deviceid_inject import wire
from testbed.helpers import REPO

BUILD_ID = "0123456789abcdef0123"
PROGRAM = """#!/bin/sh
# stands in for the Nuitka program: proves args, stdin, exit code and its own data files arrive;
# SLEEP_FIRST makes it load its data late, as a program importing modules from its folder does
[ -z "$TRACE" ] || echo "$$ start $(date +%s%N)" >>"$TRACE"
sleep "${SLEEP_FIRST:-0}"
echo "args:$*"
echo "stdin:$(cat)"
echo "data:$(cat "$(dirname "$0")/lib/data.txt")"
[ -z "$TRACE" ] || echo "$$ end $(date +%s%N)" >>"$TRACE"
exit "${EXIT_WITH:-0}"
"""


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> str:
    if shutil.which("gcc") is None:
        pytest.fail("gcc builds the launcher here: run make setup")
    out = tmp_path_factory.mktemp("launcher") / "launcher"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(out), str(REPO / "packaging/launcher.c")], check=True)
    return str(out)


def stand_in_folder(folder: Path) -> Path:
    """A standalone folder as pack.py takes it: the stand-in program and the data file it reads."""
    (folder / "lib").mkdir(parents=True)
    (folder / "deviceid-inject").write_text(PROGRAM)
    (folder / "deviceid-inject").chmod(0o755)
    (folder / "lib" / "data.txt").write_text("schema-ok")
    return folder


@pytest.fixture
def binary(tmp_path, launcher) -> str:
    folder = stand_in_folder(tmp_path / "folder")
    (folder / "lib" / "big.bin").write_bytes(os.urandom(3 << 20))
    out = tmp_path / "deviceid-inject"
    subprocess.run(
        [sys.executable, str(REPO / "packaging/pack.py"), launcher, str(folder), BUILD_ID, str(out)], check=True
    )
    return str(out)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def run(binary: str, cache, *args: str, stdin: str = "in", **env: str) -> subprocess.CompletedProcess:
    environ = {"PATH": "/usr/bin:/bin", "DEVICEID_INJECT_CACHE": str(cache), **env}
    return subprocess.run([binary, *args], input=stdin, env=environ, capture_output=True, text=True, timeout=60)


def test_runs_the_payload_with_args_stdin_and_exit_code(binary, cache):
    proc = run(binary, cache, "a", "b c", EXIT_WITH="3")
    assert proc.returncode == 3
    assert proc.stdout.splitlines() == ["args:a b c", "stdin:in", "data:schema-ok"]
    unpacked = cache / BUILD_ID
    assert stat.S_IMODE(unpacked.stat().st_mode) == 0o755
    assert stat.S_IMODE((unpacked / "deviceid-inject").stat().st_mode) == 0o755
    assert sorted(os.listdir(cache)) == [BUILD_ID]


def test_concurrent_first_runs_all_succeed_and_leave_one_folder(binary, cache):
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        runs = list(pool.map(lambda i: run(binary, cache, str(i)), range(40)))
    assert [r.returncode for r in runs] == [0] * 40
    assert all(r.stdout.splitlines()[2] == "data:schema-ok" for r in runs)
    assert sorted(os.listdir(cache)) == [BUILD_ID], "no temporary folder may be left behind"


@pytest.mark.parametrize("damage", ["delete", "truncate", "half-unpacked"])
def test_a_damaged_cache_is_unpacked_again(binary, cache, damage):
    assert run(binary, cache).returncode == 0
    big = cache / BUILD_ID / "lib" / "big.bin"
    if damage == "delete":
        big.unlink()
    elif damage == "truncate":
        big.write_bytes(big.read_bytes()[: 1 << 20])
    else:  # as if a run had been killed mid-unpack: a stray temporary folder, the real one incomplete
        (cache / f".tmp-{BUILD_ID}-abcdef").mkdir()
        shutil.rmtree(cache / BUILD_ID / "lib")
    proc = run(binary, cache)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines()[2] == "data:schema-ok"
    assert big.stat().st_size == 3 << 20


@pytest.mark.parametrize("unsafe", ["world-writable", "symlink", "file"])
def test_an_unsafe_cache_folder_is_refused_with_a_cni_error(binary, cache, tmp_path, unsafe):
    if unsafe == "world-writable":
        cache.mkdir(mode=0o777)
        cache.chmod(0o777)
    elif unsafe == "symlink":
        (tmp_path / "real").mkdir()
        cache.symlink_to(tmp_path / "real")
    else:
        cache.write_text("")
    proc = run(binary, cache)
    assert proc.returncode == 1
    error = json.loads(proc.stdout)
    assert error["code"] == 5
    assert str(cache) in error["msg"]


def test_a_launcher_without_payload_says_so(launcher, cache):
    proc = run(launcher, cache)
    assert proc.returncode == 1
    assert "no payload" in json.loads(proc.stdout)["msg"]


def pack(launcher: str, folder, build_id: str, out) -> str:
    subprocess.run(
        [sys.executable, str(REPO / "packaging/pack.py"), launcher, str(folder), build_id, str(out)], check=True
    )
    return str(out)


def test_runs_remove_other_builds_unused_for_ten_minutes_and_nothing_else(binary, cache):
    stale, recent = cache / "fedcba9876543210fedc", cache / "abcabcabcabc"
    for build in (stale, recent):
        (build / "lib").mkdir(parents=True)
        (build / "lib" / "big.bin").write_bytes(b"another build")
    (cache / "not-a-build-id").mkdir()
    cache.chmod(0o755)
    eleven_minutes_ago = time.time() - 11 * 60
    os.utime(stale, (eleven_minutes_ago, eleven_minutes_ago))
    assert run(binary, cache).returncode == 0
    assert sorted(os.listdir(cache)) == sorted([BUILD_ID, "abcabcabcabc", "not-a-build-id"])
    # Every run marks its own folder used, so no other build's run removes it while it runs.
    os.utime(cache / BUILD_ID, (eleven_minutes_ago, eleven_minutes_ago))
    assert run(binary, cache).returncode == 0
    assert (cache / BUILD_ID).stat().st_mtime > time.time() - 60


def test_a_new_builds_first_run_leaves_the_old_builds_running_programs_their_files(launcher, binary, cache, tmp_path):
    """An upgrade: the old build runs (it loads its files late), and the new build's first run unpacks
    meanwhile. The old run must still find its files (before: removed at once, the run failed)."""
    assert run(binary, cache).returncode == 0  # the old build, unpacked long before the upgrade
    old_folder = cache / BUILD_ID
    long_ago = time.time() - 3600
    os.utime(old_folder, (long_ago, long_ago))
    newer = pack(launcher, tmp_path / "folder", "feedfacefeedface", tmp_path / "newer")
    environ = {"PATH": "/usr/bin:/bin", "DEVICEID_INJECT_CACHE": str(cache), "SLEEP_FIRST": "1"}
    old_run = subprocess.Popen([binary], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=environ, text=True)
    time.sleep(0.3)  # the old run has exec'd its program, which has not read its data yet
    assert run(newer, cache).returncode == 0
    out, _ = old_run.communicate(timeout=30)
    assert old_run.returncode == 0
    assert out.splitlines()[-1] == "data:schema-ok"
    assert sorted(os.listdir(cache)) == sorted([BUILD_ID, "feedfacefeedface"])


NOBODY = 65534


def as_nobody(binary: str, cache) -> subprocess.CompletedProcess:
    environ = {"PATH": "/usr/bin:/bin", "DEVICEID_INJECT_CACHE": str(cache)}
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", binary]
    return subprocess.run(argv, input="in", env=environ, capture_output=True, text=True, timeout=60)


@pytest.fixture
def reachable(binary):
    """The binary and a cache folder where another user can reach them (pytest's tmp is root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="dit-launcher-"))
    try:
        folder.chmod(0o755)
        shutil.copy(binary, folder / "deviceid-inject")
        yield str(folder / "deviceid-inject"), folder / "cache"
    finally:
        shutil.rmtree(folder)


def test_another_user_runs_the_build_root_unpacked_and_cannot_unpack_there(reachable):
    """An image holds the build unpacked in a root-owned cache; a workload running as another user
    runs it from there. Where that cache is not complete, it fails with a CNI error, never a crash."""
    binary, cache = reachable
    assert run(binary, cache).returncode == 0  # root unpacks
    proc = as_nobody(binary, cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[2] == "data:schema-ok"
    shutil.rmtree(cache / BUILD_ID)
    proc = as_nobody(binary, cache)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["code"] == 5
    assert not (cache / BUILD_ID).exists()


def spans(trace) -> list[tuple[int, int]]:
    """(start, end) in ns of each stand-in run that wrote to `trace`, by start."""
    times: dict[str, dict[str, int]] = {}
    for line in trace.read_text().splitlines():
        pid, what, ns = line.split()
        times.setdefault(pid, {})[what] = int(ns)
    return sorted((t["start"], t["end"]) for t in times.values())


def concurrently(binary: str, cache, runs: int, **env: str) -> list[subprocess.CompletedProcess]:
    assert run(binary, cache).returncode == 0  # unpacked before, so only the runs themselves overlap or not
    with concurrent.futures.ThreadPoolExecutor(runs) as pool:
        return list(pool.map(lambda _: run(binary, cache, SLEEP_FIRST="0.3", **env), range(runs)))


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_cni_calls_on_a_node_run_one_at_a_time(binary, cache, tmp_path, command):
    """Each holds a Python runtime charged to its caller's memory cgroup (Multus thick: 50Mi)."""
    trace = tmp_path / "trace"
    runs = concurrently(binary, cache, 4, CNI_COMMAND=command, TRACE=str(trace))
    assert [r.returncode for r in runs] == [0] * 4
    intervals = spans(trace)
    assert len(intervals) == 4
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(intervals)), intervals


@pytest.mark.parametrize("command", ["VERSION", None])
def test_version_the_bridge_and_the_command_line_do_not_queue(binary, cache, tmp_path, command):
    trace = tmp_path / "trace"
    env = {"TRACE": str(trace), **({"CNI_COMMAND": command} if command else {})}
    assert [r.returncode for r in concurrently(binary, cache, 4, **env)] == [0] * 4
    intervals = spans(trace)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(intervals)), intervals


def test_a_call_that_waits_too_long_for_the_one_before_runs_anyway(binary, cache):
    import fcntl

    assert run(binary, cache).returncode == 0
    with open(cache / ".cni-call.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a call that never ends
        started = time.monotonic()
        proc = run(binary, cache, CNI_COMMAND="ADD")
        waited = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines()[2] == "data:schema-ok"
    assert 9 < waited < 30


def test_another_users_cache_is_refused(binary, cache, tmp_path):
    cache.mkdir(mode=0o755)
    os.chown(cache, NOBODY, NOBODY)
    proc = run(binary, cache)
    assert proc.returncode == 1
    assert "not a directory of ours or root's" in json.loads(proc.stdout)["msg"]


def test_names_with_two_dots_unpack_and_a_dotdot_component_is_refused(launcher, tmp_path, cache):
    folder = stand_in_folder(tmp_path / "dots")
    (folder / "lib" / "libx..so.1").write_text("two dots in a name")
    (folder / "..hidden").write_text("and at its start")
    binary = pack(launcher, folder, BUILD_ID, tmp_path / "dots.bin")
    assert run(binary, cache).returncode == 0
    assert (cache / BUILD_ID / "lib" / "libx..so.1").read_text() == "two dots in a name"
    assert (cache / BUILD_ID / "..hidden").read_text() == "and at its start"
    # A payload whose record climbs out with a '..' component (pack.py never writes one).
    head = Path(launcher).read_bytes()
    path = b"../escape"
    body = b"f" + struct.pack("<IIQ", 0o644, len(path), 1) + path + b"z"
    trailer = b"DIDINJ\x00\x01" + struct.pack("<QQ", len(head), len(body)) + b"badbadbad".ljust(56, b"\0")
    crafted = tmp_path / "crafted"
    crafted.write_bytes(head + body + trailer)
    crafted.chmod(0o755)
    proc = run(str(crafted), cache)
    assert proc.returncode == 1
    assert "damaged payload" in json.loads(proc.stdout)["msg"]
    assert not (cache / "escape").exists()


# --- the launcher as the CNI server's client, against a stand-in server on a unix socket ---------


class StandInServer:
    """Accepts one connection at a time on a unix socket and answers it with what `reply` returns
    for the request's bytes and descriptors; records what it got. The real server is in
    test_cniserver.py: this one stands at the narrowest seam, the socket."""

    def __init__(self, path: Path, reply) -> None:
        self.path = path
        self.reply = reply
        self.requests: list[tuple[wire.Request, list[tuple[int, int]]]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data, fds = b"", []
                while (request := wire.decode_request(data)) is None:
                    chunk, ancillary, _, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(3 * 4))
                    if not chunk:
                        break
                    data += chunk
                    for _, _, raw in ancillary:
                        fds += struct.unpack(f"{len(raw) // 4}i", raw[: len(raw) // 4 * 4])
                identities = [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in fds]
                for fd in fds:
                    os.close(fd)
                if request is not None:
                    self.requests.append((request, identities))
                    conn.sendall(self.reply(request))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def stand_in_server(tmp_path):
    made: list[StandInServer] = []

    def make(reply) -> StandInServer:
        server = StandInServer(tmp_path / f"server{len(made)}.sock", reply)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def netns_identity(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def test_a_servers_answer_is_relayed_byte_for_byte_and_the_program_never_runs(binary, cache, stand_in_server, tmp_path):
    answer = wire.Answer(1, b'{"code": 7, "msg": "\\u00e9"}\n', b"the plugin's log line\n")
    server = stand_in_server(lambda request: wire.encode_answer(answer))
    trace = tmp_path / "trace"
    proc = subprocess.run(
        [binary],
        input=b'{"cniVersion": "1.1.0"}',
        env={"PATH": "/usr/bin:/bin", "DEVICEID_INJECT_CACHE": str(cache), "DEVICEID_INJECT_SOCKET": str(server.path),
             "CNI_COMMAND": "ADD", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "net1", "TRACE": str(trace)},
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, answer.stdout, answer.stderr)
    assert not trace.exists() and not cache.exists()  # nothing unpacked, nothing run
    ((request, namespaces),) = server.requests
    assert request.build_id == BUILD_ID and request.stdin == b'{"cniVersion": "1.1.0"}'
    assert request.environ == {"CNI_COMMAND": "ADD", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "net1"}
    # Its own netns, its root, then the Pod's netns (here the test's own).
    own = netns_identity("/proc/self/ns/net")
    assert namespaces == [own, netns_identity("/"), own]


@pytest.mark.parametrize("how", ["refused", "cut", "garbage"])
def test_a_refusal_or_a_broken_answer_runs_the_program_with_the_same_stdin(binary, cache, stand_in_server, how):
    whole = wire.encode_answer(wire.Answer(0, b"from the server", b""))
    replies = {"refused": wire.encode_refusal("another build"), "cut": whole[:-3], "garbage": b"HTTP/1.1 500\r\n"}
    server = stand_in_server(lambda request: replies[how])
    stdin = "x" * (5 << 20)  # over the 4 MiB the server is sent: the program still gets all of it
    proc = run(binary, cache, stdin=stdin, CNI_COMMAND="DEL", CNI_NETNS="", DEVICEID_INJECT_SOCKET=str(server.path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["args:", f"stdin:{stdin}", "data:schema-ok"]
    ((request, namespaces),) = server.requests
    assert len(request.stdin) == (4 << 20) + 1 and len(namespaces) == 2  # no Pod netns named
    assert ("handed the call back (another build)" in proc.stderr) == (how == "refused")


@pytest.mark.parametrize("command", ["VERSION", "FROB", None])
def test_version_unknown_commands_and_the_command_line_never_ask_the_server(binary, cache, stand_in_server, command):
    server = stand_in_server(lambda request: wire.encode_answer(wire.Answer(0, b"server", b"")))
    env = {"DEVICEID_INJECT_SOCKET": str(server.path), **({"CNI_COMMAND": command} if command else {})}
    proc = run(binary, cache, **env)
    assert proc.stdout.splitlines()[1] == "stdin:in"
    assert server.requests == []


def test_an_add_whose_netns_cannot_be_opened_runs_in_the_client(binary, cache, stand_in_server):
    server = stand_in_server(lambda request: wire.encode_answer(wire.Answer(0, b"server", b"")))
    proc = run(
        binary, cache, CNI_COMMAND="ADD", CNI_NETNS="/nonexistent/netns", DEVICEID_INJECT_SOCKET=str(server.path)
    )
    assert proc.stdout.splitlines()[1] == "stdin:in"
    assert server.requests == []
