"""`deviceid-inject bridge`: the agent's process, from flags to a clean exit on SIGTERM.

The loops run in daemon threads; the main thread only waits for SIGTERM or SIGINT, so the
process ends at once even while a loop is blocked reading a watch.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

from ..exitcodes import EXIT_OK, EXIT_USAGE
from ..log import LEVELS, Log
from ..state import DEFAULT_DATA_DIR
from .settings import DEFAULT_LISTEN, DEFAULT_RESYNC, Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", help="this node's name (default: $NODE_NAME)")
    parser.add_argument("--kubeconfig", help="a kubeconfig file (default: the Pod's service account)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="the plugin's dataDir (default: %(default)s)")
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        help="/metrics, /healthz, /readyz; unauthenticated, so loopback unless probes need more (default: %(default)s)",
    )
    parser.add_argument("--resync", type=float, default=DEFAULT_RESYNC, help="seconds between looks at every Pod again")
    parser.add_argument(
        "--legacy-networks-status",
        action="store_true",
        help="also keep k8s.v1.cni.cncf.io/networks-status (the key Multus before v4 wrote too) equal to "
        "network-status, for readers written for Multus v3; the admission policy must allow it "
        "(docs/bridge.md)",
    )
    parser.add_argument("--log-level", choices=sorted(LEVELS), default="info")


def run(args: argparse.Namespace, log: Log) -> int:
    # Imported here, not at the top: `deviceid-inject --version` and the CLI's other commands
    # should not pay for the Kubernetes client.
    from lightkube.core.exceptions import ConfigError

    from .agent import connect
    from .metrics import Metrics, serve

    node = args.node or os.environ.get("NODE_NAME", "")
    if not node:
        log.error("bridge: no node name: give --node or set NODE_NAME (the downward API's spec.nodeName)")
        return EXIT_USAGE
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        log.error(f"bridge: --listen {args.listen!r} is not HOST:PORT")
        return EXIT_USAGE
    settings = Settings(
        node=node,
        data_dir=args.data_dir,
        kubeconfig=args.kubeconfig,
        resync=args.resync,
        legacy_networks_status=args.legacy_networks_status,
    )
    metrics = Metrics()
    try:
        bridge = connect(settings, metrics, log)
    except (ConfigError, OSError, ValueError) as err:
        log.error(f"bridge: no usable API configuration ({args.kubeconfig or 'in-cluster'}): {err}")
        return EXIT_USAGE
    try:
        server = serve((host, int(port)), metrics, bridge.health)
    except OSError as err:
        log.error(f"bridge: cannot listen on {args.listen}: {err.strerror}")
        return EXIT_USAGE
    bound_host, bound_port = server.server_address[:2]
    legacy = ", keeping networks-status equal to network-status" if settings.legacy_networks_status else ""
    log.info(f"bridge: node {node}, records in {settings.data_dir}{legacy}, serving on {bound_host}:{bound_port}")

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    worker = threading.Thread(target=bridge.run, args=(stop,), name="bridge-loop", daemon=True)
    worker.start()
    stop.wait()
    server.shutdown()
    log.info("bridge: stopped")
    return EXIT_OK
