"""The bridge's settings: what `deviceid-inject bridge` is told, with the defaults an operator
gets, apart from the agent so that its command line (main.py) and the agent both read them
without importing each other, and the command line without loading the Kubernetes client.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_RESYNC = 30.0  # seconds between looks at every Pod again
DEFAULT_LISTEN = "127.0.0.1:9909"


@dataclass
class Settings:
    node: str
    data_dir: str
    kubeconfig: str | None = None
    resync: float = DEFAULT_RESYNC
    # The watch's retries while the API server is away: doubling from `backoff_initial`, at most
    # `backoff_max`, each drawn between half and all of that (jitter: a cluster's agents do not
    # come back in step). 5 s at most, so an agent is back within 10 s of the API server's return
    # however long it was away (issue 23: capped at 30 s, a 70 s outage cost 21.3 s more).
    backoff_initial: float = 0.5
    backoff_max: float = 5.0
    # A Pod's own retries after a failure (the work queue's per-item backoff).
    retry_initial: float = 1.0
    retry_max: float = 300.0
    legacy_networks_status: bool = False
    # The brake on a fight with another writer: a Pod that loses our device-info again within
    # `brake_streak` seconds of our last patch waits `brake_initial`, doubled per loss, at most
    # `brake_max`, before the next; a Pod that keeps it for `brake_streak` starts afresh.
    brake_initial: float = 1.0
    brake_max: float = 60.0
    brake_streak: float = 120.0
    # A record whose Pod has not been on this node for this long is stale (a lost DEL): counted in a
    # metric and logged, never removed (the mount is read-only; the plugin's DEL and GC own records).
    stale_records_after: float = 600.0
    # /healthz fails when a loop made no progress for this long: a quiet watch comes round every
    # agent.WATCH_SECONDS (+ the read timeout's 30 s when its connection died), a Pod's work is bounded
    # by the client's timeouts.
    stale_after: float = 600.0
