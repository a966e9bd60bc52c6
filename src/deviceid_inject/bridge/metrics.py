"""What the bridge tells operators: Prometheus metrics on /metrics, liveness on /healthz and
readiness on /readyz (health.py decides both), served by one small HTTP server.

The server is reachable by whatever can reach its address, without authentication, so it holds
nothing for a client: a connection lives at most REQUEST_DEADLINE seconds from its accept to its
answer, whatever it sends or does not (issue 23: a deadline per read let a client trickling a byte
a second keep a thread for ever), costs a coroutine and no thread, and at MAX_CONNECTIONS open the
oldest is closed for the newest, so slow or idle clients cannot starve the kubelet's probes. A
client that hangs up mid-request or mid-answer is its own business, never a traceback.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .health import Health

PREFIX = "deviceid_inject_bridge"
REQUEST_DEADLINE = 5.0  # a connection's whole life: its request head sent and the answer taken
MAX_CONNECTIONS = 64  # open at once; the next closes the oldest
MAX_REQUEST_BYTES = 8 * 1024  # a request head longer than this is not a probe's or a scraper's
TEXT = "text/plain; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.patches = Counter(f"{PREFIX}_patches", "Pods whose annotations the bridge patched", registry=r)
        self.conflicts = Counter(f"{PREFIX}_conflicts", "patches refused with 409 and recomputed", registry=r)
        self.errors = Counter(
            f"{PREFIX}_errors",
            "failures by kind: api (list, watch), patch (refused by the API server), conflict-retries, "
            "pod (anything else while looking at one Pod), record (a file in the data dir it cannot use)",
            ["kind"],
            registry=r,
        )
        self.retries = Counter(
            f"{PREFIX}_retries", "Pods queued again after a failure, with their own backoff", registry=r
        )
        self.skipped = Counter(
            f"{PREFIX}_skipped",
            "Pods left alone by reason: unparsable (network-status), too-large (over the annotation limit)",
            ["reason"],
            registry=r,
        )
        self.lost = Counter(
            f"{PREFIX}_device_info_lost",
            "times a Pod's network-status lost the device-info we had added shortly before (another writer)",
            registry=r,
        )
        self.braked = Counter(
            f"{PREFIX}_braked",
            "patches held back by the per-Pod brake on a fight with another writer",
            registry=r,
        )
        self.relists = Counter(f"{PREFIX}_relists", "lists after a watch's 410 Gone or a refusal", registry=r)
        self.stale_records = Gauge(
            f"{PREFIX}_stale_records",
            "records in the data dir of Pods not on this node for a while (lost DELs; the plugin's GC removes them)",
            registry=r,
        )
        self.pods = Gauge(f"{PREFIX}_pods", "Pods on this node the watch knows of", registry=r)
        self.latency = Histogram(
            f"{PREFIX}_patch_latency_seconds",
            "from the watch event that showed network-status without our device-info to the patch's success",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.http_refused = Counter(
            f"{PREFIX}_http_refused",
            "connections closed unanswered for a newer one (too many open)",
            registry=r,
        )


class Server:
    """The HTTP server: one asyncio loop in a daemon thread, a coroutine per connection, no thread.

    Each connection gets `deadline` seconds in all to send a complete request head and take the
    answer (one request per connection), however it trickles; at most `max_connections` are open,
    and a new one closes the oldest (counted in http_refused). A probe sends its request at once
    and is answered within milliseconds, so no pattern of slow or idle clients can keep it out:
    they hold nothing longer than `deadline`, and the newest connection always gets in."""

    def __init__(
        self, address: tuple[str, int], answer: Callable[[str], tuple[int, bytes, str]], deadline: float,
        max_connections: int, refused: Counter,
    ) -> None:  # fmt: skip
        self._answer = answer
        self._deadline = deadline
        self._max = max_connections
        self._refused = refused
        self._open: dict[asyncio.StreamWriter, None] = {}  # in the order they came: the oldest first
        self._sock = socket.create_server(address, backlog=128)  # an OSError here is the caller's
        self.server_address = self._sock.getsockname()
        self._loop = asyncio.new_event_loop()
        self._stopped = threading.Event()
        threading.Thread(target=self._run, name="bridge-http", daemon=True).start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, sock=self._sock, limit=MAX_REQUEST_BYTES)
        )
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._stopped.set()

    def shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._stopped.wait(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= self._max:
            oldest = next(iter(self._open))
            del self._open[oldest]
            oldest.transport.abort()
            self._refused.inc()
        self._open[writer] = None
        try:
            await asyncio.wait_for(self._exchange(reader, writer), self._deadline)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
            pass  # too slow, too long, gone mid-request or mid-answer: its own business, never a traceback
        finally:
            self._open.pop(writer, None)
            writer.transport.abort()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            code, body, content_type = 400, b"bad request\n", TEXT
        elif parts[0] != b"GET":
            code, body, content_type = 405, b"only GET\n", TEXT
        else:
            code, body, content_type = self._answer(parts[1].decode("latin-1"))
        reason = HTTPStatus(code).phrase
        writer.write(
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode("latin-1")
            + body
        )
        await writer.drain()


def serve(
    address: tuple[str, int],
    metrics: Metrics,
    health: Health,
    deadline: float = REQUEST_DEADLINE,
    max_connections: int = MAX_CONNECTIONS,
) -> Server:
    """Start the HTTP server in a daemon thread; returns it (server_address has the real port)."""

    def answer(path: str) -> tuple[int, bytes, str]:
        if path == "/metrics":
            return 200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST
        if path in ("/healthz", "/readyz"):
            ok, why = health.alive() if path == "/healthz" else health.ready()
            return 200 if ok else 503, f"{why}\n".encode(), TEXT
        return 404, b"not found\n", TEXT

    return Server(address, answer, deadline, max_connections, metrics.http_refused)
