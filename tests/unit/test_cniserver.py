"""The node's CNI server (`deviceid-inject cni-server`) and the launcher as its client.

Each test starts a server of its own from the binary under test (testbed.served). The CNI-facing tests
run through a server too (DEVICEID_INJECT_VIA_SERVER=1, Makefile); here is what only a server has:
who may connect, what a bad client costs, deadlines, a killed client or server, SIGTERM, another
build, and paths the server cannot see. Where a call must have been the server's, its log says so;
where it must not have been, a launcher cache the launcher refuses makes a fallback fail loudly.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deviceid_inject import wire
from testbed import harness, served
from testbed.helpers import NET1_PCI, cni_env, read_json, wait_for

pytestmark = pytest.mark.exec_path  # each test runs its own server, with or without the suite's


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> Path:
    return served.client_binary(tmp_path_factory.mktemp("client"))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return served.cache_folder(tmp_path / "cache")


@pytest.fixture
def start(binary: Path, tmp_path: Path) -> Iterator:
    """Start servers of this test's own; each is stopped afterwards, also when the test fails."""
    started: list[served.CniServer] = []

    def make(*args: str, sock: Path | None = None) -> served.CniServer:
        server = served.start_server(binary, tmp_path / f"server{len(started)}", *args, sock=sock)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def call(binary: Path, server: served.CniServer | None, command: str, config: dict, cache: Path, **env: str):
    """One CNI call through the launcher, as a runtime makes it."""
    socket_path = str(server.socket) if server else "/nonexistent/cni.sock"
    environ = cni_env(command, DEVICEID_INJECT_SOCKET=socket_path, DEVICEID_INJECT_CACHE=str(cache), **env)
    return harness.run([str(binary)], environ, timeout=90, stdin=json.dumps(config).encode())


@contextlib.contextmanager
def state_lock(data_dir: Path) -> Iterator[None]:
    """Hold the plugin's state lock, as a slow call would: calls wait on it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def served_count(server: served.CniServer, count: int) -> None:
    """The server's log names `count` calls served (its line follows the answer by a moment)."""
    wait_for(lambda: server.served() == count, timeout=10, why=server.service.tail())
    assert server.served() == count


def served_lines(server: served.CniServer, words: str) -> list[str]:
    return [line for line in server.service.log().splitlines() if words in line]


# --- one behaviour on both paths ------------------------------------------------------------------


def test_add_check_del_through_the_server_answer_as_the_plugin_does(binary, start, cache, make_config, roots):
    server = start()
    config = make_config()
    direct = call(binary, None, "ADD", config, cache, CNI_CONTAINERID="direct")
    via = call(binary, server, "ADD", config, cache, CNI_CONTAINERID="via")
    assert via.code == direct.code == 0, via.stdout + via.stderr
    assert via.json == direct.json
    assert via.json["interfaces"][0]["pciID"] == NET1_PCI
    assert read_json(roots["devinfo"] / "cni/n6-dpdk-via_net1") == read_json(
        roots["devinfo"] / "cni/n6-dpdk-direct_net1"
    )
    assert call(binary, server, "CHECK", make_config(prev=via.json), cache, CNI_CONTAINERID="via").code == 0
    assert call(binary, server, "DEL", config, cache, CNI_CONTAINERID="via").code == 0
    assert not (roots["devinfo"] / "cni/n6-dpdk-via_net1").exists()
    served_count(server, 3)


def test_an_error_comes_back_as_the_plugins_error_with_its_exit_code(binary, start, cache, make_config):
    server = start()
    run = call(binary, server, "ADD", make_config(prev=None), cache)
    assert run.code == 1
    assert run.json["code"] == 7 and "prevResult is missing" in run.json["msg"]
    assert "prevResult is missing" in run.stderr  # the plugin's log line, relayed
    wait_for(lambda: served_lines(server, "served ADD ctr-1/net1: exit 1"), timeout=10, why=server.service.tail())


def test_version_never_asks_the_server(binary, start, cache):
    server = start()
    run = call(binary, server, "VERSION", {"cniVersion": "1.0.0"}, cache)
    assert run.code == 0 and run.json["cniVersion"] == "1.0.0"
    assert server.served() == 0 and "VERSION" not in server.service.log()


# --- who may connect, and what a bad client costs -------------------------------------------------


def test_the_socket_is_roots_alone(start):
    server = start()
    folder = os.stat(server.socket.parent)
    assert (folder.st_uid, stat.S_IMODE(folder.st_mode)) == (0, 0o700)
    assert stat.S_ISSOCK(os.stat(server.socket).st_mode)
    assert stat.S_IMODE(os.stat(server.socket).st_mode) == 0o600


def raw_client(server: served.CniServer) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.socket))
    sock.settimeout(30)
    return sock


def reply_of(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    sock.close()
    return data


def request_bytes(server: served.CniServer) -> bytes:
    return wire.encode_request(wire.Request(build_id_of(server), cni_env("STATUS"), b"{}"))


def build_id_of(server: served.CniServer) -> str:
    line = served_lines(server, "serving CNI calls on")[0]
    return line.split("(build ", 1)[1].split(",", 1)[0]


def test_a_client_that_is_not_root_is_refused(start, tmp_path):
    """uid 65534 keeping the capabilities that pass the folder's 0700: only SO_PEERCRED stops it."""
    server = start()
    probe = tmp_path / "probe.py"
    probe.write_text(  # it only reads: the refusal comes at once, before any request
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect(sys.argv[1])\n"
        "s.settimeout(30)\n"
        "data = b''\n"
        "while (chunk := s.recv(65536)):\n"
        "    data += chunk\n"
        "sys.stdout.buffer.write(data)\n"
    )
    caps = "+dac_override,+dac_read_search"
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    argv += [f"--inh-caps={caps}"]
    argv += [f"--ambient-caps={caps}", "python3", str(probe), str(server.socket)]
    answer = subprocess.run(argv, capture_output=True, timeout=60)
    assert answer.returncode == 0, answer.stderr
    assert wire.decode_reply(answer.stdout) == "only root may call this server"
    assert served_lines(server, "refused a client of uid 65534")


def test_bad_clients_are_dropped_or_refused_while_a_good_one_is_served(binary, start, cache, make_config):
    server = start("--read-seconds", "2")
    silent = [raw_client(server) for _ in range(10)]
    tricklers = [raw_client(server) for _ in range(5)]
    garbage = raw_client(server)
    garbage.sendall(b"GET / HTTP/1.1\r\n\r\n")
    oversized = raw_client(server)
    oversized.sendall(wire.MAGIC + struct.pack("<I", 4) + b"abcd" + struct.pack("<I", 0) + struct.pack("<I", 1 << 30))
    assert "bad request" in wire.decode_reply(reply_of(garbage))
    assert "more than" in wire.decode_reply(reply_of(oversized))
    # The tricklers send a byte every 0.2 s, forever: one deadline for the whole request ends them.
    started = time.monotonic()
    prefix = request_bytes(server)
    closed: set[int] = set()
    for i in range(len(prefix)):
        for n, sock in enumerate(tricklers):
            if n not in closed:
                try:
                    sock.send(prefix[i : i + 1])
                except OSError:
                    closed.add(n)
        if len(closed) == len(tricklers) or time.monotonic() - started > 20:
            break
        time.sleep(0.2)
    assert len(closed) == len(tricklers), "a client trickling a byte at a time kept its connection"
    assert time.monotonic() - started < 10
    run = call(binary, server, "ADD", make_config(), cache)  # meanwhile, a real call
    assert run.code == 0 and run.json["interfaces"][0]["pciID"] == NET1_PCI
    for sock in silent:
        assert reply_of(sock) == b""  # dropped, no answer, no traceback
    served_count(server, 1)
    assert server.service.alive() and "Traceback" not in server.service.log()


def test_more_connections_than_the_bound_are_dropped_at_once_and_the_server_goes_on(binary, start, cache, make_config):
    server = start("--read-seconds", "3")
    idle = [raw_client(server) for _ in range(64)]
    extra = [raw_client(server) for _ in range(16)]
    for sock in extra:
        sock.settimeout(2)
        assert sock.recv(1) == b""  # closed at once, not after the read deadline
    for sock in idle:
        sock.close()
    run = wait_for(lambda: (r := call(binary, server, "ADD", make_config(), cache)).code == 0 and r, timeout=30)
    assert run.json["interfaces"][0]["pciID"] == NET1_PCI
    served_count(server, 1)


# --- calls the server hands back: the client runs them itself --------------------------------------


def test_a_server_of_another_build_hands_the_call_back(start, binary, cache, make_config, tmp_path):
    server = start()
    other = served.source_binary(tmp_path / "other", build_id="0dd")
    run = call(other, server, "ADD", make_config(), cache)
    assert run.code == 0 and run.json["interfaces"][0]["pciID"] == NET1_PCI
    assert "handed the call back (this server is build" in run.stderr
    assert server.served() == 0 and served_lines(server, "the client 0dd")


def test_a_path_the_server_sees_otherwise_is_handed_back_having_done_nothing(
    start, binary, make_config, roots, tmp_path
):
    """The client runs with a tmpfs over the device-info root: the same path is another folder for it
    (as for a runtime with a /run of its own). The server must not write its own view of it."""
    server = start()
    roots["devinfo"].mkdir()
    script = 'mount -t tmpfs view "$1" && exec "$2"'
    in_a_view_of_its_own = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    in_a_view_of_its_own += [str(roots["devinfo"]), str(binary)]

    def add(cache: Path) -> harness.Outcome:
        env = cni_env("ADD", DEVICEID_INJECT_SOCKET=str(server.socket), DEVICEID_INJECT_CACHE=str(cache))
        return harness.run(in_a_view_of_its_own, env, timeout=90, stdin=json.dumps(make_config()).encode())

    refused = tmp_path / "refused-cache"
    refused.mkdir()
    refused.chmod(0o777)
    run = add(refused)
    # The launcher then runs the call itself, and refuses this cache: so nothing at all was written.
    assert run.json["code"] == 5 and "refusing the cache folder" in run.json["msg"], run.stdout + run.stderr
    assert "handed the call back (deviceInfoRoot" in run.stderr
    assert os.listdir(roots["devinfo"]) == [] and not roots["state"].exists()
    assert served_lines(server, "handed ADD ctr-1/net1 back to its client: deviceInfoRoot")
    # With a cache it accepts, the client makes the call whole in its own view.
    run = add(served.cache_folder(tmp_path / "cache"))
    assert run.code == 0 and run.json["interfaces"][0]["pciID"] == NET1_PCI
    assert os.listdir(roots["devinfo"]) == [] and server.served() == 0


# --- deadlines, killed clients and servers, SIGTERM ------------------------------------------------


def launch(binary: Path, server: served.CniServer, command: str, config: dict, cache: Path) -> subprocess.Popen:
    environ = cni_env(command, DEVICEID_INJECT_SOCKET=str(server.socket), DEVICEID_INJECT_CACHE=str(cache))
    proc = subprocess.Popen(
        [str(binary)], env=environ, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(config).encode())
    proc.stdin.close()
    return proc


def finish(proc: subprocess.Popen) -> tuple[int, dict]:
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    proc.stderr.read()
    assert proc.wait(timeout=90) is not None
    return proc.returncode, json.loads(out) if out.strip() else {}


def test_a_call_over_its_deadline_is_killed_and_its_client_makes_it_whole(binary, start, cache, make_config, roots):
    server = start("--call-seconds", "1")
    with state_lock(roots["state"]):
        proc = launch(binary, server, "ADD", make_config(), cache)
        wait_for(lambda: served_lines(server, "over its deadline"), timeout=20, why=server.service.tail())
        time.sleep(0.5)  # the client, running the call itself now, waits on the same lock
    code, result = finish(proc)
    assert code == 0 and result["interfaces"][0]["pciID"] == NET1_PCI
    assert read_json(roots["devinfo"] / "cni/n6-dpdk-ctr-1_net1")["pci"]["pci-address"] == NET1_PCI
    assert server.served() == 0


def test_a_killed_client_kills_its_call_which_then_writes_nothing(binary, start, cache, make_config, roots):
    server = start()
    with state_lock(roots["state"]):
        proc = launch(binary, server, "ADD", make_config(), cache)
        time.sleep(1.0)  # the call is in the server, waiting for the lock
        proc.kill()
        proc.wait()
        wait_for(lambda: served_lines(server, "its client went away"), timeout=20, why=server.service.tail())
    time.sleep(0.5)
    assert not (roots["devinfo"] / "cni").exists()
    assert [f for f in os.listdir(roots["state"]) if not f.startswith(".")] == []


def test_the_server_killed_mid_call_leaves_the_call_to_its_client(binary, start, cache, make_config, roots):
    server = start()
    with state_lock(roots["state"]):
        proc = launch(binary, server, "ADD", make_config(), cache)
        time.sleep(1.0)
        server.service.signal(signal.SIGKILL)  # the server and its calls, as the kubelet's OOM kill would
    code, result = finish(proc)
    assert code == 0 and result["interfaces"][0]["pciID"] == NET1_PCI
    assert server.served() == 0


def test_sigterm_stops_new_calls_at_once_and_finishes_those_in_flight(binary, start, cache, make_config, roots):
    server = start()
    with state_lock(roots["state"]):
        proc = launch(binary, server, "ADD", make_config(), cache)
        time.sleep(1.0)
        server.service.signal(signal.SIGTERM)
        wait_for(lambda: not server.socket.exists(), timeout=10, why="the socket is still there")
        assert server.service.alive()  # its call is still in flight
    code, result = finish(proc)
    assert code == 0 and result["interfaces"][0]["pciID"] == NET1_PCI
    assert server.service.proc.wait(timeout=30) == 0
    assert server.served() == 1


def test_a_new_server_takes_the_socket_over_and_the_old_ones_stop_leaves_it(
    binary, start, cache, make_config, tmp_path
):
    old = start()
    new = start(sock=old.socket)
    assert old.service.stop() == 0
    assert new.socket.exists()
    run = call(binary, new, "ADD", make_config(), cache)
    assert run.code == 0
    served_count(new, 1)
    assert old.served() == 0
