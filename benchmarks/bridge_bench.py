"""The network-status bridge on the test bed: how soon device-info follows Multus, and what the agent costs.

    sudo .venv/bin/python benchmarks/bridge_bench.py [--quick] [--exe dist/deviceid-inject] [--stale N] [--out FILE]

One run, one implementation: `--exe PATH` (the binary, which is then also the plugin in the
NADs' chains), else `.venv/bin/python -m deviceid_inject`. On a scratch etcd + kube-apiserver
(testbed.kube) with deploy/'s RBAC and policy (testbed.bridge), the agent runs for node-a with
its own node-bound token at --log-level info, and real Multus v4.0.2 attaches N Pods (100, or 20
with --quick) a few at a time, each through a NAD of its own [host-device, deviceid-inject naming
its own VF of the vf-iavf fixture]; Multus writes network-status without device-info, the agent
adds it. `--stale N` first leaves N records of Pods that are not on the node (a node that lost
DELs) in the data dir: run with and without it side by side to see what they cost the agent.

- Latency: from Multus's ADD returning (monotonic, in the thread that ran it) to the moment a
  WATCH of the namespace's Pods, open the whole time in a thread of this script, shows the entry
  with device-info; also from the watch event that showed Multus's write (without device-info),
  and the agent's own histogram (deviceid_inject_bridge_patch_latency_seconds, from its watch
  event to its patch's success) as sum/count.
- Cost: the agent's process (for the binary the launcher execs the program, so it is the same
  PID) read from /proc/PID/status (VmRSS, VmHWM after resetting it) and /proc/PID/stat
  (utime + stime): idle after start, during the churn, idle again after it.

Medians are printed as a Markdown table; no number is asserted anywhere. Everything made
(processes, netns, veths, scratch folders) goes at the end, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deviceid_inject.bridge.settings import DEFAULT_RESYNC
from deviceid_inject.state import Store
from testbed.bridge import BridgeProcess, agent_api, device_info, install, record
from testbed.helpers import CNI_BIN, VFS, have_cni_tools
from testbed.kube import Api, ApiServer, missing_tools, network_status
from testbed.multus import NODE, Scene, host_device, multus_binary
from testbed.tools import FIELD_MULTUS

REPO = Path(__file__).resolve().parent.parent
MULTUS = FIELD_MULTUS
LATENCY = "deviceid_inject_bridge_patch_latency_seconds"
TICK = os.sysconf("SC_CLK_TCK")


# --- the agent's process, from /proc -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of proc(5)


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    raise KeyError(key)


class Sampler:
    """VmRSS of `pid` every `period` seconds in a thread, between start() and stop()."""

    def __init__(self, pid: int, period: float = 0.05) -> None:
        self.pid, self.period = pid, period
        self.rss_kib: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, KeyError):
                self.rss_kib.append(status_kib(self.pid, "VmRSS"))
            self._stop.wait(self.period)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Window:
    """The agent's cost over one stretch of wall time."""

    wall: float
    cpu: float
    rss_kib: int  # VmRSS at the end
    peak_kib: int  # VmHWM, reset at the start (and the sampler's highest reading, if higher)
    mean_kib: float

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu / self.wall if self.wall else 0.0


def measure_window(pid: int, body, *args: Any) -> tuple[Window, Any]:
    """Run `body(*args)` while watching `pid`: CPU seconds, RSS at the end, peak and mean RSS."""
    with contextlib.suppress(OSError):  # "5" resets VmHWM to the current RSS (proc(5), clear_refs)
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    sampler = Sampler(pid).start()
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    try:
        value = body(*args)
    finally:
        sampler.stop()
    wall, cpu = time.monotonic() - wall0, cpu_seconds(pid) - cpu0
    rss, hwm = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")
    samples = sampler.rss_kib or [rss]
    return Window(wall, cpu, rss, max(hwm, *samples), statistics.mean(samples)), value


# --- what this run makes, all of it removed at the end ------------------------------------------------


@dataclass
class Made:
    """netns and veth pairs of this run (distinct prefixes: dit-bench-*, dtbh*/dtbp*)."""

    netns: list[str] = field(default_factory=list)
    veths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def make_netns(self) -> str:
        name = f"dit-bench-{uuid.uuid4().hex[:8]}"
        with self.lock:
            self.netns.append(name)
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        return f"/var/run/netns/{name}"

    def make_veth(self) -> tuple[str, str]:
        token = uuid.uuid4().hex[:8]
        host, peer = f"dtbh{token}", f"dtbp{token}"
        with self.lock:
            self.veths.append(host)
        subprocess.run(
            ["ip", "link", "add", host, "type", "veth", "peer", "name", peer], check=True, capture_output=True
        )
        return host, peer

    def remove(self) -> None:
        for host in self.veths:  # deleting one end deletes both, wherever the other end is
            subprocess.run(["ip", "link", "del", host], capture_output=True)
        for name in self.netns:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def plugin_folder(scratch: Path, command: list[str]) -> str:
    """CNI_PATH for Multus's delegates: `deviceid-inject` of the implementation measured, then
    the reference plugins (host-device)."""
    folder = scratch / "plugin-bin"
    folder.mkdir()
    plugin = folder / "deviceid-inject"
    if len(command) == 1:
        plugin.symlink_to(command[0])
    else:
        plugin.write_text(f'#!/bin/sh\nexec {shlex.join(command)} "$@"\n')
        plugin.chmod(0o755)
    return f"{folder}:{CNI_BIN}"


# --- the watch that sees device-info arrive --------------------------------------------------------------


class PodWatch:
    """One raw HTTPS watch of the namespace's Pods: when each Pod's entry first showed Multus's
    write (network-status with our entry, no device-info) and first showed device-info."""

    def __init__(self, api: Api, ns: str) -> None:
        self.api, self.ns = api, ns
        self.multus_seen: dict[str, float] = {}
        self.device_info_seen: dict[str, float] = {}
        self.device_info: dict[str, Any] = {}
        self.events = 0
        self.error: str | None = None
        self.changed = threading.Condition()
        self._conn: http.client.HTTPSConnection | None = None
        self._thread: threading.Thread | None = None
        self._closing = False

    def start(self) -> PodWatch:
        version = self.api.get(f"/api/v1/namespaces/{self.ns}/pods")["metadata"]["resourceVersion"]
        url = urllib.parse.urlsplit(self.api.url)
        self._conn = http.client.HTTPSConnection(
            url.hostname, url.port, context=ssl.create_default_context(cafile=self.api.ca_file), timeout=None
        )
        query = urllib.parse.urlencode({"watch": "1", "resourceVersion": version, "timeoutSeconds": "3600"})
        self._conn.request(
            "GET",
            f"/api/v1/namespaces/{self.ns}/pods?{query}",
            headers={"Authorization": f"Bearer {self.api.token}", "Accept": "application/json"},
        )
        response = self._conn.getresponse()  # the watch is open before anything is attached
        if response.status != 200:
            raise RuntimeError(f"watch: HTTP {response.status}: {response.read()[:500]!r}")
        self._thread = threading.Thread(target=self._read, args=(response,), daemon=True)
        self._thread.start()
        return self

    def _read(self, response: http.client.HTTPResponse) -> None:
        try:
            for line in response:
                now = time.monotonic()
                event = json.loads(line)
                self.events += 1
                if event.get("type") not in ("ADDED", "MODIFIED"):
                    continue
                pod = event["object"]
                name = pod["metadata"]["name"]
                entries = [e for e in network_status(pod) or [] if e.get("name") == f"{self.ns}/n6-{name}"]
                if not entries:
                    continue
                with self.changed:
                    self.multus_seen.setdefault(name, now)
                    if "device-info" in entries[0] and name not in self.device_info_seen:
                        self.device_info_seen[name] = now
                        self.device_info[name] = entries[0]["device-info"]
                    self.changed.notify_all()
        except Exception as err:  # a closed socket at the end is expected; anything else is reported
            if not self._closing:
                self.error = f"{type(err).__name__}: {err}"
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not all(n in self.device_info_seen for n in names) and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0 or (self._thread is not None and not self._thread.is_alive()):
                    return
                self.changed.wait(min(left, 1.0))

    def stop(self) -> None:
        self._closing = True
        if self._conn is not None and self._conn.sock is not None:
            with contextlib.suppress(OSError):
                self._conn.sock.shutdown(socket.SHUT_RDWR)
            self._conn.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


# --- the run -------------------------------------------------------------------------------------------------


@dataclass
class Attached:
    name: str
    vf: str
    add_wall: float  # Multus ADD's own wall time
    returned: float  # monotonic, when Multus ADD returned


def attach(scene: Scene, i: int) -> Attached:
    """Pod upf-NNN, a NAD of its own naming VF i % 16, Multus ADD; when that returned."""
    name, vf = f"upf-{i:03d}", VFS[i % len(VFS)]
    network = f"n6-{name}"
    box = scene.sandbox(name, network, NODE)
    scene.create_nad(host_device(box.peer), name=network, device_id=vf)
    start = time.monotonic()
    out = scene.multus(MULTUS, "ADD", box)
    returned = time.monotonic()
    if out.code != 0:
        raise RuntimeError(f"Multus ADD of {name} exited {out.code}: {out.stdout}\n{out.stderr}")
    return Attached(name, vf, returned - start, returned)


def stale_records(data_dir: Path, count: int) -> int:
    """`count` records of Pods that are not on the node (a node that lost DELs), each in a
    container folder of its own, as ADD leaves them; the size of one, in bytes."""
    store = Store(str(data_dir))
    for i in range(count):
        uid = str(uuid.UUID(int=i + 1))
        vf = VFS[i % len(VFS)]
        store.save(
            record(f"{i:064x}", network=f"n6-gone-{i}", pci_address=vf, device_info_file=None, created_file=False,
                   pod_namespace="gone", pod_name=f"upf-gone-{i:05d}", pod_uid=uid, device_info=device_info(vf))
        )  # fmt: skip
    return os.path.getsize(store.path(f"{0:064x}", "net1")) if count else 0


def idle(seconds: float) -> None:
    time.sleep(seconds)


def quantile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    v = [x * 1000 for x in values]
    return f"{statistics.median(v):.0f} / {quantile(v, 0.99):.0f} / {max(v):.0f}"


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def run(args: argparse.Namespace) -> str:
    impl = [os.path.abspath(args.exe)] if args.exe else [args.python, "-m", "deviceid_inject"]
    label = args.exe or "python -m deviceid_inject"
    scratch = Path(tempfile.mkdtemp(prefix="deviceid-inject-bridge-bench."))
    made = Made()
    kube: ApiServer | None = None
    agent: BridgeProcess | None = None
    watch: PodWatch | None = None
    try:
        if args.exe:  # the launcher unpacks into a folder of this run's, warmed before anything is timed
            cache = scratch / "cache"
            cache.mkdir(mode=0o755)
            os.environ["DEVICEID_INJECT_CACHE"] = str(cache)
            subprocess.run([*impl, "--version"], check=True, capture_output=True)
        kube = ApiServer(scratch / "kube")
        kube.start()
        kube.install_nad_crd()
        install(kube)
        admin = kube.api()
        identity = agent_api(kube, NODE)
        plugins = plugin_folder(scratch, impl)
        scene = Scene.create(admin, scratch, plugins, made.make_veth, made.make_netns, f"bench-{uuid.uuid4().hex[:8]}")
        ns = scene.ns

        stale_size = stale_records(scene.data_dir, args.stale)

        # BridgeProcess passes --log-level debug last; this exec wrapper puts info after it (the last
        # one wins) and keeps the PID: sh execs the implementation, whose launcher execs the program.
        wrapper = ["/bin/sh", "-c", 'exec "$@" --log-level info', "sh", *impl]
        kubeconfig = identity.kubeconfig(scratch / "bridge.kubeconfig", user="bridge")
        agent = BridgeProcess(wrapper, kubeconfig, scene.data_dir, node=NODE, resync=args.resync)
        started = time.monotonic()
        agent.start()
        agent.wait_ready()
        ready = time.monotonic() - started
        pid = agent.proc.pid if agent.proc else 0
        exe = os.readlink(f"/proc/{pid}/exe")
        time.sleep(1)  # the first list's reconciles and the HTTP server's first answers are over
        rss_after_start, hwm_after_start = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")
        anon, files = status_kib(pid, "RssAnon"), status_kib(pid, "RssFile") + status_kib(pid, "RssShmem")
        idle_before, _ = measure_window(pid, idle, args.idle)

        watch = PodWatch(admin, ns).start()
        names = [f"upf-{i:03d}" for i in range(args.pods)]

        def churn() -> list[Attached]:
            pool = ThreadPoolExecutor(max_workers=args.parallel)
            try:
                done = list(pool.map(lambda i: attach(scene, i), range(args.pods)))
            finally:  # on a failure or SIGTERM, the ADDs not started yet are not started
                pool.shutdown(wait=True, cancel_futures=True)
            watch.wait_for(names, timeout=args.timeout)
            return done

        busy, attached = measure_window(pid, churn)
        time.sleep(0.5)  # the patch's histogram sample lands after the patch is visible
        hist_sum, hist_count = agent.metric(f"{LATENCY}_sum"), agent.metric(f"{LATENCY}_count")
        patches = agent.metric("deviceid_inject_bridge_patches_total")
        conflicts = agent.metric("deviceid_inject_bridge_conflicts_total")
        errors = sum(
            agent.metric("deviceid_inject_bridge_errors_total", f'{{kind="{k}"}}')
            for k in ("api", "patch", "conflict-retries", "pod", "record")
        )
        idle_after, _ = measure_window(pid, idle, args.idle)

        seen = watch.device_info_seen
        from_add = [seen[a.name] - a.returned for a in attached if a.name in seen]
        from_multus = [seen[n] - watch.multus_seen[n] for n in names if n in seen and n in watch.multus_seen]
        early = sum(1 for x in from_add if x < 0)
        wrong = sum(1 for a in attached if a.name in seen and watch.device_info[a.name] != device_info(a.vf))
        missing = len(names) - len(seen)
        mean_hist = f"{1000 * hist_sum / hist_count:.1f} ms (n={hist_count:.0f})" if hist_count else "-"

        lines = [
            f"Bridge: `{label}` (measured process {exe}), Multus {MULTUS}, {args.pods} Pods attached "
            f"{args.parallel} at a time, {args.stale} stale records of {stale_size} bytes in the data dir, "
            f"--resync {args.resync:g}, --log-level info; "
            f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| Multus ADD returned -> device-info on the watch (median / p99 / max) | {ms(from_add)} ms |",
            f"| Multus's write on the watch -> device-info on the watch (median / p99 / max) | {ms(from_multus)} ms |",
            f"| agent's patch latency histogram, sum/count | {mean_hist} |",
            f"| Multus ADD wall time (median / p99 / max) | {ms([a.add_wall for a in attached])} ms |",
            f"| device-info visible before Multus ADD returned | {early} of {len(from_add)} |",
            f"| Pods without device-info after {args.timeout:g} s / with another VF's | {missing} / {wrong} |",
            f"| patches / conflicts / errors (agent's counters) | {patches:.0f} / {conflicts:.0f} / {errors:.0f} |",
            f"| start to ready | {ready:.2f} s |",
            f"| RSS after start / its peak since exec | {mib(rss_after_start)} / {mib(hwm_after_start)} |",
            f"| RSS after start: anonymous / file-backed and shared | {mib(anon)} / {mib(files)} |",
            f"| idle, {idle_before.wall:.0f} s: RSS / CPU | {mib(idle_before.rss_kib)} / "
            f"{1000 * idle_before.cpu:.0f} ms ({idle_before.cpu_percent:.2f} %) |",
            f"| churn, {busy.wall:.1f} s: peak RSS / mean RSS | {mib(busy.peak_kib)} / {mib(busy.mean_kib)} |",
            f"| churn: CPU | {busy.cpu:.2f} s ({busy.cpu_percent:.1f} % of one core), "
            f"{1000 * busy.cpu / args.pods:.1f} ms per Pod |",
            f"| idle after the churn, {idle_after.wall:.0f} s: RSS / CPU | {mib(idle_after.rss_kib)} / "
            f"{1000 * idle_after.cpu:.0f} ms ({idle_after.cpu_percent:.2f} %) |",
        ]
        if watch.error:
            lines.append(f"| the watch ended early | {watch.error} |")
        lines += ["", f"CPU is utime + stime in ticks of {1000 / TICK:g} ms; p99 of {args.pods} values interpolates."]
        return "\n".join(lines) + "\n"
    finally:
        if watch is not None:
            watch.stop()
        if agent is not None:
            agent.stop()
        if kube is not None:
            kube.stop()
        made.remove()
        shutil.rmtree(scratch, ignore_errors=True)
        os.environ.pop("DEVICEID_INJECT_CACHE", None)


def interrupted(signum: int, frame: Any) -> None:
    """SIGTERM ends the run through the same cleanup as Ctrl-C. A second SIGTERM (`timeout` forwards
    the one it got, `pkill` sends its own) is ignored: it cut the cleanup short, leaving 300 netns."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 Pods: proves the benchmark runs (CI)")
    parser.add_argument("--pods", type=int, help="Pods to attach (default 100, quick 20)")
    parser.add_argument(
        "--stale", type=int, default=0, help="records of Pods not on the node in the data dir (default %(default)s)"
    )
    parser.add_argument("--parallel", type=int, default=4, help="Multus ADDs at a time (default %(default)s)")
    parser.add_argument("--exe", help="the implementation: this executable (e.g. dist/deviceid-inject)")
    parser.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"))
    parser.add_argument(
        "--resync", type=float, default=DEFAULT_RESYNC, help="the agent's --resync (default %(default)s s)"
    )
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of each idle window (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=120.0, help="wait this long for the last device-info")
    parser.add_argument("--out", help="also write the Markdown table here")
    parser.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    args = parser.parse_args()
    args.pods = args.pods or (20 if args.quick else 100)
    if os.geteuid() != 0:
        raise SystemExit("bridge_bench: needs root (network namespaces, veths, mount namespaces)")
    missing = missing_tools() + ([] if have_cni_tools() else [str(CNI_BIN)])
    missing += [] if os.access(multus_binary(MULTUS), os.X_OK) else [str(multus_binary(MULTUS))]
    if missing:
        raise SystemExit(f"bridge_bench: the test bed is not installed ({', '.join(missing)}): run make setup")
    if args.exe and not os.access(args.exe, os.X_OK):
        raise SystemExit(f"bridge_bench: {args.exe} is not an executable: run make build")
    signal.signal(signal.SIGTERM, interrupted)

    text = run(args)
    print(text)
    if args.out:
        with open(args.out, "a" if args.append else "w") as f:
            f.write(("\n" if args.append and f.tell() else "") + text)


if __name__ == "__main__":
    main()
