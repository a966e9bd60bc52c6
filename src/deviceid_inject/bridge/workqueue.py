"""The bridge's work queue: which Pods to look at, each at most once, and when.

The model is client-go's rate-limited work queue as kubernetes/sample-controller uses it: the
watch adds a key for every event, the worker takes keys one at a time, and a key whose work
failed comes back after a delay of its own that doubles with each consecutive failure (per-item
exponential backoff, capped), until the work succeeds and `forget` resets it. So one Pod that
keeps failing waits longer and longer while every other Pod is served at once.

One consumer (the bridge's worker thread); any number of producers.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable


class WorkQueue:
    def __init__(self, initial: float, maximum: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.initial = initial
        self.maximum = maximum
        self._clock = clock
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._later: list[tuple[float, int, str]] = []  # (due, tie-breaker, key), a heap
        self._order = itertools.count()
        self._failures: dict[str, int] = {}
        self._held: set[str] = set()  # keys in `_later` by add_after
        self._changed = threading.Condition()

    def add(self, key: str) -> None:
        """Look at `key` as soon as the worker is free (once, however often it is added meanwhile)."""
        with self._changed:
            if key not in self._queued:
                self._queued.add(key)
                self._ready.append(key)
                self._changed.notify()

    def add_rate_limited(self, key: str) -> float:
        """Look at `key` again after its own backoff: `initial`, doubled for each failure since
        the last `forget`, at most `maximum`. Returns the delay."""
        with self._changed:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
            delay = min(self.maximum, self.initial * 2.0**failures)
            heapq.heappush(self._later, (self._clock() + delay, next(self._order), key))
            self._changed.notify()
        return delay

    def add_after(self, key: str, delay: float) -> None:
        """Look at `key` once `delay` seconds have passed (once, however often it is added
        meanwhile: a Pod held back while its events keep coming costs one entry)."""
        with self._changed:
            if key in self._held:
                return
            self._held.add(key)
            heapq.heappush(self._later, (self._clock() + delay, next(self._order), key))
            self._changed.notify()

    def forget(self, key: str) -> None:
        """The work on `key` succeeded (or the key is gone): its next failure starts from `initial`."""
        with self._changed:
            self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        with self._changed:
            return self._failures.get(key, 0)

    def get(self, timeout: float) -> str | None:
        """The next key to work on, waiting at most `timeout` seconds; None when there is none."""
        deadline = self._clock() + timeout
        with self._changed:
            while True:
                now = self._clock()
                while self._later and self._later[0][0] <= now:
                    key = heapq.heappop(self._later)[2]
                    self._held.discard(key)
                    if key not in self._queued:
                        self._queued.add(key)
                        self._ready.append(key)
                if self._ready:
                    key = self._ready.popleft()
                    self._queued.discard(key)  # added again while it is worked on: worked on again
                    return key
                wait = deadline - now
                if self._later:
                    wait = min(wait, self._later[0][0] - now)
                if wait <= 0:
                    return None
                self._changed.wait(wait)

    def __len__(self) -> int:
        with self._changed:
            return len(self._ready) + len(self._later)
