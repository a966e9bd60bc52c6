"""What the bridge tells operators: Prometheus metrics on /metrics, liveness on /healthz and
readiness on /readyz (health.py decides both), served by one small HTTP server.

The server is reachable by whatever can reach its address, without authentication, so it holds
nothing for a client: each connection gets a thread only while fewer than `max_connections` are
open (others are closed at once and counted), a read waits at most `read_timeout` seconds, and a
client that hangs up mid-request or mid-answer is its own business, never a traceback.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .health import Health

PREFIX = "deviceid_inject_bridge"
READ_TIMEOUT = 5.0
MAX_CONNECTIONS = 16


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
            f"{PREFIX}_http_refused", "connections to this server closed unanswered: too many open", registry=r
        )


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with a bound on the threads it starts and quiet about clients that leave."""

    daemon_threads = True
    request_queue_size = 64  # a burst of clients is accepted (and refused) at once, not left in the kernel

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int, refused: Counter) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._refused = refused
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refused.inc()
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a reset, a broken pipe or a timeout of one client's connection: nothing to report


def serve(
    address: tuple[str, int],
    metrics: Metrics,
    health: Health,
    read_timeout: float = READ_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> ThreadingHTTPServer:
    """Start the HTTP server in a daemon thread; returns it (server_address has the real port)."""

    class Handler(BaseHTTPRequestHandler):
        timeout = read_timeout  # StreamRequestHandler puts it on the socket: every read waits at most this

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path in ("/healthz", "/readyz"):
                ok, why = health.alive() if self.path == "/healthz" else health.ready()
                self._answer(200 if ok else 503, f"{why}\n".encode())
            else:
                self._answer(404, b"not found\n")

        def _answer(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would drown the log

    server = _Server(address, Handler, max_connections, metrics.http_refused)
    threading.Thread(target=server.serve_forever, name="bridge-http", daemon=True).start()
    return server
