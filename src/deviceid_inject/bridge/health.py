"""What /healthz and /readyz answer, from the bridge's own loops.

Liveness: each loop (the watch, the worker) beats whenever it makes progress, and only then. The
watch beats on every event, every new watch request (the server ends each watch after
WATCH_SECONDS and the client sends the next, so a quiet node's watch still comes round) and every
retry while the API server is away; the worker
beats on every Pod it takes and every second it waits for one. A loop that died, or is wedged in
one call, stops beating: after `stale_after` seconds /healthz says so and the kubelet restarts
the agent. An API server that is away does not make the agent unhealthy (a restart would not
bring it back), it only keeps it from being ready.

Readiness: the first list of the node's Pods succeeded, the API server's last answer to the
list or the watch was not a refusal of our credentials (401 or 403: an expired token, a removed
binding), and its last answer to a patch was not one either (a binding of `patch` on pods/status
removed while `watch` stays: issue 23 saw /readyz 200 for 217 s of refused patches). A patch
refusal ends with the next patch that goes through, whatever the watch does meanwhile. All of
it is the bridge's own business; the kubelet only reads it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

WATCH = "watch"  # the list and the watch
PATCH = "patch"


class Health:
    def __init__(self, loops: tuple[str, ...], stale_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = stale_after
        self._clock = clock
        started = clock()
        self._beats = dict.fromkeys(loops, started)  # a loop gets `stale_after` to show its first progress
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._refused: dict[str, str] = {}  # by what was refused: WATCH, PATCH

    def beat(self, loop: str) -> None:
        now = self._clock()
        with self._lock:
            if loop not in self._beats:
                raise KeyError(f"no loop named {loop!r}")
            self._beats[loop] = now

    def alive(self) -> tuple[bool, str]:
        now = self._clock()
        with self._lock:
            beats = sorted(self._beats.items())
        stale = [f"{loop} ({now - beat:.0f} s)" for loop, beat in beats if now - beat >= self.stale_after]
        if stale:
            return False, f"no progress for more than {self.stale_after:g} s: {', '.join(stale)}"
        return True, "ok"

    def refused(self, why: str, what: str = WATCH) -> None:
        """The API server refused our credentials or our RBAC (401 or 403) on `what`: WATCH (the
        list or the watch) or PATCH."""
        with self._lock:
            self._refused[what] = why

    def accepted(self, what: str = WATCH) -> None:
        """The API server answered the list or the watch (WATCH), or let a patch through (PATCH)."""
        with self._lock:
            self._refused.pop(what, None)

    def ready(self) -> tuple[bool, str]:
        with self._lock:
            refused = dict(self._refused)
        if WATCH in refused:
            return False, f"the API server refuses our credentials: {refused[WATCH]}"
        if PATCH in refused:
            return False, f"the API server refuses our patches: {refused[PATCH]}"
        if not self.synced.is_set():
            return False, "not synced with the API server yet"
        return True, "ok"
