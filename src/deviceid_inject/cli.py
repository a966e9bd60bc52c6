"""The operator's command line: what the same executable does when no CNI_COMMAND is set.

    deviceid-inject --version
    deviceid-inject discover --netns PATH --ifname NAME [--mac MAC] [--sysfs-root DIR] ...
    deviceid-inject check-config FILE
    deviceid-inject bridge --node NODE [--kubeconfig FILE] [--data-dir DIR] [--listen HOST:PORT]
    deviceid-inject cni-server [--socket PATH] [--max-calls N] [--log-level L]
    deviceid-inject wait-device-info --annotations FILE --interface NAME [--network NS/NAD] [--timeout S]
    deviceid-inject install [--from FILE] FOLDER
    deviceid-inject probe [--timeout S] URL

Exit codes: 0 success (device found, config valid), 1 the answer is no (no device, config
invalid), 2 usage or unreadable input.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from . import __version__, config, deviceinfo, discovery, files, udev, vftable
from .exitcodes import EXIT_NO, EXIT_OK, EXIT_USAGE
from .log import Log
from .protocol import SUPPORTED_VERSIONS, CniError, check_ifname

PLUGIN_TYPE = "deviceid-inject"
IMAGE_BINARY = "/usr/local/bin/deviceid-inject"  # where the image (packaging/image.py) holds it
SERVER_SOCKET = "/run/deviceid-inject/cni.sock"  # the launcher's default too (launcher.c)


def version_text() -> str:
    try:
        from . import _build  # written by build.sh into the compiled binary only

        build = f"built {_build.DATE} from {_build.COMMIT} with Nuitka {_build.NUITKA} on glibc {_build.GLIBC}"
    except ImportError:
        build = "not compiled: running from source"
    return (
        f"deviceid-inject {__version__}\n{build}\nPython {platform.python_version()}\n"
        f"CNI spec versions: {' '.join(SUPPORTED_VERSIONS)}\n"
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="deviceid-inject",
        description="A chained CNI plugin that finds the PCI function behind a pod's interface and writes "
        "the NPWG device-info file. A CNI runtime runs it with CNI_COMMAND set; without it, it is "
        "this troubleshooting tool.",
        epilog="Exit codes: 0 success, 1 no device found or config invalid, 2 usage or unreadable input.",
    )
    top.add_argument("--version", action="store_true", help="print the version and build information")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")

    discover = commands.add_parser(
        "discover",
        help="show the device-info ADD would write, and why each discovery strategy did or did not apply",
        description="Run discovery as ADD would, read only: nothing is written.",
    )
    discover.add_argument("--netns", required=True, help="the pod's network namespace, e.g. /var/run/netns/x")
    discover.add_argument("--ifname", required=True, help="the interface name inside the pod, e.g. net1")
    discover.add_argument("--mac", help="the interface's MAC, for VFs with no netdev (DPDK)")
    discover.add_argument("--device-id", help="a PCI address known up front (as runtimeConfig.deviceID)")
    discover.add_argument("--pf-name", action="append", default=[], help="restrict the VF-table search (repeatable)")
    discover.add_argument("--sysfs-root", help="read this sysfs-shaped tree instead of the pod's sysfs")

    check = commands.add_parser(
        "check-config",
        help="validate the deviceid-inject entry of a conflist or NetworkAttachmentDefinition",
        description="FILE is a conflist, a single plugin config, or a NetworkAttachmentDefinition, "
        "in JSON or YAML. Each error is printed with its JSON path.",
    )
    check.add_argument("file", help="the file to check, or - for standard input")

    agent = commands.add_parser(
        "bridge",
        help="run the network-status bridge: the node agent that adds our device-info to Multus v4's network-status",
        description="Watches this node's Pods and adds device-info to each network-status entry of an "
        "attachment the plugin recorded. Runs until SIGTERM.",
    )
    # The bridge's modules load only for its own commands: the CNI server runs from this module
    # too, and nothing on the CNI path imports the bridge.
    from .bridge.main import add_arguments

    add_arguments(agent)

    server = commands.add_parser(
        "cni-server",
        help="serve the node's CNI calls from one resident process (the launcher asks it first)",
        description="Listens on a unix socket for the CNI calls the exec'd binary hands over, and runs "
        "each in a child of its own. Calls it cannot serve (another build, a path it does not see as the "
        "client does) run in their client, as do all calls while it is not running. Runs until SIGTERM.",
    )
    server.add_argument("--socket", default=SERVER_SOCKET, help="default: %(default)s")
    server.add_argument("--max-calls", type=int, default=16, help="calls run at once (default: %(default)s)")
    server.add_argument("--call-seconds", type=float, default=30.0, help="one call's deadline (default: %(default)s)")
    server.add_argument(
        "--read-seconds",
        type=float,
        default=5.0,
        help="to send a whole request (default: %(default)s)",
    )
    server.add_argument("--log-level", default="info", choices=["error", "warning", "info", "debug"])

    put = commands.add_parser(
        "install",
        help="install this executable into a node's CNI folder (what the DaemonSet's init container runs)",
        description="Copies FILE into FOLDER as deviceid-inject atomically (a temporary file, then a rename), "
        "then runs the installed copy once with --version.",
    )
    put.add_argument("folder", help="the node's CNI binary folder, e.g. /host/opt/cni/bin")
    put.add_argument("--from", dest="source", default=IMAGE_BINARY, help="the file to install (default: %(default)s)")

    probe = commands.add_parser(
        "probe",
        help="GET a URL and exit 0 on HTTP 200, or ask the CNI server at unix:PATH whether it answers: the "
        "DaemonSet's probes, from inside its containers",
        description="The DaemonSet's liveness and readiness probes: the bridge listens on loopback only, which "
        "the kubelet's httpGet cannot reach, and the image has no shell or wget.",
    )
    probe.add_argument("url", help="e.g. http://127.0.0.1:9909/healthz, or unix:/run/deviceid-inject/cni.sock")
    probe.add_argument("--timeout", type=float, default=5.0, help="seconds (default: %(default)s)")

    wait = commands.add_parser(
        "wait-device-info",
        help="wait until the Pod's network-status names the device-info of an interface, then print it",
        description="Reads the downward API's annotations file (a volume with fieldPath metadata.annotations) "
        "until the network-status entry of --interface carries device-info; prints that device-info as JSON. "
        "Run it as an init container, or first in the entrypoint, of a workload that reads device-info at start.",
    )
    wait.add_argument("--annotations", default="/etc/podinfo/annotations", help="default: %(default)s")
    wait.add_argument("--interface", required=True, help="the interface in the Pod, e.g. net1")
    wait.add_argument("--network", help="namespace/nad, when the interface name alone is ambiguous")
    wait.add_argument("--timeout", type=float, default=300.0, help="seconds (default: %(default)s)")
    return top


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = parser().parse_args(argv)
    if args.version:
        out.write(version_text())
        return EXIT_OK
    if args.command == "discover":
        return discover(args, out, err)
    if args.command == "check-config":
        return check_config(args.file, out, err)
    if args.command == "wait-device-info":
        return wait_device_info(args, out, err)
    if args.command == "install":
        return install(args, out, err)
    if args.command == "probe":
        return probe(args.url, args.timeout, out, err)
    if args.command == "cni-server":
        return cni_server(args, err)
    if args.command == "bridge":
        from .bridge.main import run as run_bridge

        return run_bridge(args, Log(args.log_level, stream=err))
    parser().print_help(err)
    return EXIT_USAGE


def _say(err: TextIO, message: str, code: int) -> int:
    """Tell the operator why on stderr (stdout carries only the answer); the exit code to return."""
    err.write(f"deviceid-inject: {message}\n")
    return code


def cni_server(args: argparse.Namespace, err: TextIO) -> int:
    from . import cniserver

    if args.max_calls < 1 or args.call_seconds <= 0 or args.read_seconds <= 0:
        return _say(err, "--max-calls, --call-seconds and --read-seconds must be positive", EXIT_USAGE)
    limits = cniserver.Limits(max_calls=args.max_calls, call_seconds=args.call_seconds, read_seconds=args.read_seconds)
    return cniserver.run(args.socket, limits, Log(args.log_level, stream=err))


def probe(url: str, timeout: float, out: TextIO, err: TextIO) -> int:
    if url.startswith("unix:"):
        return probe_cni_server(url[len("unix:") :], timeout, out, err)
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            out.write(answer.read(4096).decode(errors="replace"))
            return EXIT_OK
    except urllib.error.HTTPError as answer:
        return _say(err, f"{url}: {answer.code} {answer.read(4096).decode(errors='replace').strip()}", EXIT_NO)
    except (OSError, ValueError) as exc:
        return _say(err, f"{url}: {exc}", EXIT_USAGE if isinstance(exc, ValueError) else EXIT_NO)


def probe_cni_server(path: str, timeout: float, out: TextIO, err: TextIO) -> int:
    """The CNI server's probe: a health request, which its accept loop answers itself."""
    import socket

    from . import wire

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(wire.encode_request(wire.Request(wire.HEALTH_BUILD_ID, {}, b"")))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError as exc:
        return _say(err, f"{path}: {exc}", EXIT_NO)
    reply = wire.decode_reply(data)
    if not isinstance(reply, str) or not reply.startswith(wire.ALIVE):
        return _say(err, f"{path}: no health answer ({data[:200]!r})", EXIT_NO)
    out.write(reply + "\n")
    return EXIT_OK


def install(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .install import InstallError
    from .install import install as put

    try:
        version = put(Path(args.source), Path(args.folder))
    except InstallError as exc:
        return _say(err, str(exc), EXIT_NO)
    out.write(f"installed {Path(args.folder) / 'deviceid-inject'}: {version}\n")
    return EXIT_OK


def wait_device_info(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from . import wait as waiting

    found = waiting.wait(args.annotations, waiting.Wanted(args.interface, args.network), args.timeout)
    if found is None:
        return _say(err, f"no device-info for {args.interface} in {args.annotations} after {args.timeout:g} s", EXIT_NO)
    out.write(json.dumps(found) + "\n")
    return EXIT_OK


def discover(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        check_ifname(args.ifname, "--ifname")
    except CniError as exc:
        return _say(err, exc.msg, EXIT_USAGE)
    log = Log("warning", stream=err)
    host = discovery.Host(
        netns_path=args.netns,
        sysfs_root=args.sysfs_root,
        pf_names=args.pf_name,
    )
    clues = discovery.Clues(ifname=args.ifname, mac=args.mac, runtime_device_id=args.device_id)
    try:
        found = discovery.discover(clues, host)
    except (vftable.Ambiguous, files.FileError) as exc:
        return _say(err, str(exc), EXIT_NO)
    report: dict[str, Any] = {
        "strategies": [
            {"strategy": a.strategy, "applied": a.outcome.startswith("found "), "outcome": a.outcome}
            for a in found.attempts
        ],
        "device-info": None,
        "description": None,
    }
    if found.device is not None:
        report["device-info"] = deviceinfo.merged(None, found.device, log, "")
        # Found through plain sysfs, as ADD finds it; libudev only adds the hwdb's names.
        report["description"] = asdict(udev.describer(args.sysfs_root, log).describe(found.device.pci_address))
    out.write(json.dumps(report, indent=2) + "\n")
    return EXIT_OK if found.device else EXIT_NO


def check_config(path: str, out: TextIO, err: TextIO) -> int:
    try:
        document = _load_document(path)
        entry, where = plugin_entry(document)
    except (OSError, ValueError) as exc:
        return _say(err, f"{path}: {exc}", EXIT_USAGE)
    errors = config.schema_errors(entry)
    for line in errors:
        out.write(f"{where}{line[1:]}\n" if line.startswith("$") else f"{where}: {line}\n")
    if errors:
        return EXIT_NO
    out.write(f"{path}: the deviceid-inject entry ({where}) is valid\n")
    return EXIT_OK


def _load_document(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except ValueError:
        pass
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"neither JSON nor YAML: {exc}") from None


def plugin_entry(document: Any) -> tuple[dict[str, Any], str]:
    """The deviceid-inject entry of a NAD, a conflist or a single config, with the JSON path it
    sits at; a conflist's cniVersion is carried into the entry, as runtimes do."""
    if not isinstance(document, dict):
        raise ValueError("not a JSON or YAML object")
    prefix = "$"
    if document.get("kind") == "NetworkAttachmentDefinition":
        raw = (document.get("spec") or {}).get("config")
        if not isinstance(raw, str):
            raise ValueError("the NetworkAttachmentDefinition has no spec.config string")
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"spec.config is not JSON: {exc}") from None
        prefix = "$.spec.config"
    plugins = document.get("plugins")
    if plugins is None:
        if document.get("type") != PLUGIN_TYPE:
            raise ValueError(f"no plugin of type {PLUGIN_TYPE} in it")
        return document, prefix
    if not isinstance(plugins, list):
        raise ValueError(f"{prefix}.plugins is not a list")
    for index, plugin in enumerate(plugins):
        if isinstance(plugin, dict) and plugin.get("type") == PLUGIN_TYPE:
            if index == 0:
                raise ValueError(
                    f"{prefix}.plugins[0] is deviceid-inject: it must follow the plugin that creates the interface"
                )
            inherited = {key: document[key] for key in ("cniVersion", "name") if key in document}
            entry = {**inherited, **plugin}
            return entry, f"{prefix}.plugins[{index}]"
    raise ValueError(f"no plugin of type {PLUGIN_TYPE} in {prefix}.plugins")
