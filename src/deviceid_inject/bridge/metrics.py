"""What the bridge tells operators: Prometheus metrics on /metrics, liveness on /healthz and
readiness on /readyz, served by one small HTTP server thread.

/healthz answers 200 while the loop is alive (it beat within `stale_after` seconds), also when
the API server is away: restarting the agent would not bring the API server back. /readyz answers
200 once the first list of the node's Pods succeeded.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "deviceid_inject_bridge"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.patches = Counter(f"{PREFIX}_patches", "network-status annotations given device-info", registry=r)
        self.conflicts = Counter(f"{PREFIX}_conflicts", "patches refused with 409 and recomputed", registry=r)
        self.errors = Counter(
            f"{PREFIX}_errors", "failures by kind: api, patch, conflict-retries", ["kind"], registry=r
        )
        self.relists = Counter(f"{PREFIX}_relists", "lists after a watch's 410 Gone", registry=r)
        self.pods = Gauge(f"{PREFIX}_pods", "Pods on this node the watch knows of", registry=r)
        self.latency = Histogram(
            f"{PREFIX}_patch_latency_seconds",
            "from the watch event that showed network-status without our device-info to the patch's success",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self._beat = time.monotonic()

    def heartbeat(self) -> None:
        self._beat = time.monotonic()

    def alive(self, stale_after: float) -> bool:
        return time.monotonic() - self._beat < stale_after


def serve(
    address: tuple[str, int], metrics: Metrics, ready: threading.Event, stale_after: float
) -> ThreadingHTTPServer:
    """Start the HTTP server in a daemon thread; returns it (server_address has the real port)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                ok = metrics.alive(stale_after)
                self._answer(200 if ok else 503, b"ok\n" if ok else b"loop stalled\n")
            elif self.path == "/readyz":
                ok = ready.is_set()
                self._answer(200 if ok else 503, b"ok\n" if ok else b"not synced with the API server yet\n")
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

    server = ThreadingHTTPServer(address, Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="bridge-http", daemon=True).start()
    return server
