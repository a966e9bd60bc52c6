"""The bridge's HTTP server (/metrics, /healthz, /readyz), in the agent's own process (python -m
deviceid_inject, and the binary): idle clients time out, open connections are capped, a client
that hangs up leaves no traceback. No API server is needed: the agent serves while it retries one.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from deviceid_inject.bridge.metrics import MAX_CONNECTIONS, REQUEST_DEADLINE
from testbed.bridge import BridgeProcess
from testbed.helpers import Impl


@pytest.fixture
def agent(impl: Impl, tmp_path: Path) -> Iterator[BridgeProcess]:
    """The agent for node-a, its API server a closed port of loopback."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "clusters": [
                    {"name": "c", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    process = BridgeProcess(list(impl.command), kubeconfig, tmp_path / "state")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=REQUEST_DEADLINE + 10)


def test_it_answers_while_the_api_server_is_away(agent: BridgeProcess):
    assert agent.get("/healthz") == (200, "ok\n")
    code, why = agent.get("/readyz")
    assert code == 503 and why == "not synced with the API server yet\n"
    assert agent.get("/nothing")[0] == 404


def test_idle_connections_are_capped_and_cost_no_thread_each(agent: BridgeProcess):
    """Issue 15, defect 7: 400 idle connections gave 404 threads, and none timed out."""
    assert agent.proc is not None
    before = threads(agent.proc.pid)
    started = time.monotonic()
    with contextlib.ExitStack() as opened:
        for _ in range(400):
            opened.enter_context(connect(agent.port))
        time.sleep(1)  # the server has accepted them all
        assert threads(agent.proc.pid) <= before + MAX_CONNECTIONS
        took = time.monotonic() - started
    # Once they are gone the probes answer again, and the refusals were counted.
    deadline = time.monotonic() + REQUEST_DEADLINE + 10
    while agent.get("/healthz")[0] != 200:
        assert time.monotonic() < deadline, "the server did not recover after its clients left"
        time.sleep(0.1)
    # Each slot is held by an idle client until its read times out, then serves the next one.
    served_at_most = MAX_CONNECTIONS * (1 + int(took // REQUEST_DEADLINE) + 1)
    assert agent.metric("deviceid_inject_bridge_http_refused_total") >= 400 - served_at_most


def test_an_idle_connection_is_closed_after_the_read_timeout(agent: BridgeProcess):
    with connect(agent.port) as idle:
        idle.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
        started = time.monotonic()
        assert idle.recv(1024) == b""  # closed by the server, without an answer
        assert time.monotonic() - started < REQUEST_DEADLINE + 5
    assert agent.get("/healthz")[0] == 200


@pytest.mark.parametrize("request_bytes", [b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"])
def test_a_client_that_hangs_up_leaves_no_traceback(agent: BridgeProcess, request_bytes: bytes):
    for _ in range(20):
        with connect(agent.port) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
            client.sendall(request_bytes)
    time.sleep(0.5)
    assert agent.get("/healthz")[0] == 200
    log = agent.log()
    assert "Traceback" not in log, log
    assert [line for line in log.splitlines() if "API server:" not in line and "serving on" not in line] == [], log


def trickle(port: int, stop: threading.Event, lifetimes: list[float]) -> None:
    """A slowloris client: one byte of a never-ending request head a second, on one connection
    after another; how long the server kept each one."""
    while not stop.is_set():
        with connect(port) as sock:
            opened = time.monotonic()
            try:
                while not stop.is_set():
                    sock.sendall(b"X")
                    sock.settimeout(1.0)
                    try:
                        if sock.recv(1) == b"":
                            break
                    except TimeoutError:
                        pass  # still open: another byte
            except OSError:
                pass  # reset by the server
            if not stop.is_set():
                lifetimes.append(time.monotonic() - opened)


def idle_reconnecting(port: int, stop: threading.Event) -> None:
    """16 idle connections, all closed and opened again every 4 s."""
    while not stop.is_set():
        with contextlib.ExitStack() as opened:
            for _ in range(16):
                opened.enter_context(connect(port))
            stop.wait(4)


def probe(port: int, path: str) -> int:
    """One probe as the kubelet's: a fresh connection, 1 s for the answer (timeoutSeconds' default)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def test_slow_and_idle_clients_cannot_keep_a_probe_out(agent: BridgeProcess):
    """Issue 23, point 2: 20 connections trickling a byte a second, and 16 idle ones opened
    again every 4 s, held all 16 slots (a 5 s bound per read, not per request): 0 of 284 probes
    answered. Now every probe is answered, and no trickling connection outlives the deadline."""
    stop = threading.Event()
    lifetimes: list[float] = []
    clients = [threading.Thread(target=trickle, args=(agent.port, stop, lifetimes), daemon=True) for _ in range(20)]
    clients.append(threading.Thread(target=idle_reconnecting, args=(agent.port, stop), daemon=True))
    for client in clients:
        client.start()
    answers = []
    try:
        time.sleep(1)  # every client is in
        until = time.monotonic() + 2 * REQUEST_DEADLINE + 2
        while time.monotonic() < until:
            answers.append(probe(agent.port, "/healthz"))
            time.sleep(0.2)
    finally:
        stop.set()
        for client in clients:
            client.join(10)
    assert len(answers) >= 30
    assert answers == [200] * len(answers)
    assert lifetimes and max(lifetimes) < REQUEST_DEADLINE + 1.5  # dropped at the deadline, not kept alive
