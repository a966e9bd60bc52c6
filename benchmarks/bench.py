"""ADD, CHECK and DEL wall time and peak RSS, interleaved, against the peers an operator compares.

    sudo .venv/bin/python benchmarks/bench.py [--quick] [--rounds N] [--out FILE]

Variants, measured in the same run, in a shuffled order each round:
  served   dist/deviceid-inject with the node's CNI server running (`deviceid-inject cni-server`,
           started from the same binary): the exec'd process is the launcher as a thin client
  binary   dist/deviceid-inject with no server: the launcher runs the embedded program (the fallback)
  python   .venv/bin/python -m deviceid_inject
  tuning   containernetworking's Go tuning plugin, chained on a veth in a scratch netns
  floor    a Nuitka hello world in the shipped layout (launcher + standalone folder) that
           reads the same stdin and prints it back: the start-up floor of any such binary
  before, before-floor (with --before DIR): DIR/deviceid-inject and DIR/hello, another build's
           binary and hello world (say, the last release's), with no server: before and after
           measured side by side in one run
Each round of ours starts with a CNI VERSION call (never offered to a server: the exec path).
deviceid-inject runs the real path (no fixture): the host's PCI-backed NIC seen through
CNI_NETNS, with a config seen before (its validation cached). Then ADD through a fixture
host with 8, 128 and 1024 VFs shows the cost against the number of VFs.

Each process runs under /usr/bin/time (peak RSS %M) and is reaped with wait4 (CPU, user + system,
its reaped children's included: what the runtime, or Multus's daemon container, is charged), with
perf_counter around it for the wall time. The server's own CPU per call (its children's included) is
read from its /proc/PID/stat over the measured rounds: the cost the server moves off the caller, not
a cost it removes.
Medians are printed as a Markdown table; no number is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from testbed import sysfs_builder

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Samples:
    wall_ms: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)

    def add(self, wall: float, rss: int, cpu: float) -> None:
        self.wall_ms.append(wall * 1000)
        self.rss_kib.append(rss)
        self.cpu_ms.append(cpu * 1000)

    @property
    def wall(self) -> float:
        return statistics.median(self.wall_ms)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_ms)

    @property
    def rss_mib(self) -> float:
        return statistics.median(self.rss_kib) / 1024


TIME = "/usr/bin/time"


def measure(argv: list[str], env: dict[str, str], stdin: bytes) -> tuple[float, int, float, bytes]:
    """Run once under /usr/bin/time; (wall seconds, peak RSS KiB, CPU seconds, stdout). Fails loudly
    on a non-zero exit.

    The RSS comes from /usr/bin/time, not from this process's wait4: a child forked from this
    Python process is charged this process's resident pages until it execs, which would put a
    floor of ~16 MiB under every reading. The CPU comes from wait4 on `time` (microseconds; the
    kernel adds a reaped process's reaped descendants): `time` prints it in hundredths of a second,
    too coarse for a Go plugin. Both include `time`'s own exec (~0.3 ms wall, a fraction of a
    millisecond of CPU), the same for every variant."""
    with tempfile.TemporaryFile() as given, tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile("r") as rss:
        given.write(stdin)
        given.seek(0)
        start = time.perf_counter()
        proc = subprocess.Popen(
            [TIME, "-f", "%M", "-o", rss.name, *argv], stdin=given, stdout=out, stderr=subprocess.DEVNULL, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        stdout = out.read()
        peak = rss.read().split()[-1]
    if proc.returncode != 0:
        raise SystemExit(f"bench: {argv[0]} exited {proc.returncode}: {stdout.decode(errors='replace')}")
    return wall, int(peak), usage.ru_utime + usage.ru_stime, stdout


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def host_pci_netdev() -> str:
    for name in sorted(os.listdir("/sys/class/net")):
        if os.path.exists(f"/sys/class/net/{name}/device"):
            return name
    raise SystemExit("bench: this host has no PCI-backed netdev for the real path")


def cni_env(command: str, container: str, netns: str, ifname: str, extra: dict[str, str]) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": "/opt/cni/bin",
        **extra,
    }


class Bench:
    def __init__(self, scratch: Path, quick: bool) -> None:
        self.scratch = scratch
        self.quick = quick
        self.results: dict[tuple[str, str], Samples] = {}
        self.nic = host_pci_netdev()

    def record(self, variant: str, command: str, argv, env, stdin: bytes) -> bytes:
        wall, rss, cpu, out = measure(argv, env, stdin)
        self.results.setdefault((variant, command), Samples()).add(wall, rss, cpu)
        return out

    def ours(self, variant: str, argv: list[str], extra_env: dict[str, str]) -> None:
        """VERSION, then ADD, CHECK, DEL of one attachment on the host NIC, through CNI_NETNS, real sysfs."""
        config = {
            "cniVersion": "1.1.0",
            "name": "bench",
            "type": "deviceid-inject",
            "deviceInfoRoot": str(self.scratch / "devinfo"),
            # A dataDir per variant: each build keys its validation cache by its own build id and
            # prunes other builds' entries, so two variants sharing one would evict each other.
            "dataDir": str(self.scratch / f"state-{variant}"),
            "prevResult": {"cniVersion": "1.1.0", "interfaces": [{"name": self.nic, "sandbox": "/proc/1/ns/net"}]},
        }
        container = f"bench-{uuid.uuid4().hex[:12]}"
        netns = f"/proc/{os.getpid()}/ns/net"
        env = lambda c: cni_env(c, container, netns, self.nic, extra_env)  # noqa: E731
        self.record(variant, "VERSION", argv, env("VERSION"), b'{"cniVersion": "1.1.0"}')
        result = self.record(variant, "ADD", argv, env("ADD"), json.dumps(config).encode())
        config["prevResult"] = json.loads(result)
        self.record(variant, "CHECK", argv, env("CHECK"), json.dumps(config).encode())
        self.record(variant, "DEL", argv, env("DEL"), json.dumps(config).encode())

    def tuning(self, plugin: str, netns: str) -> None:
        container = f"bench-{uuid.uuid4().hex[:12]}"
        config = {
            "cniVersion": "1.1.0",
            "name": "bench",
            "type": "tuning",
            "sysctl": {},
            "prevResult": {"cniVersion": "1.1.0", "interfaces": [{"name": "net1", "sandbox": netns}]},
        }
        for command in ("ADD", "CHECK", "DEL"):
            env = cni_env(command, container, netns, "net1", {})
            out = self.record("tuning", command, [plugin], env, json.dumps(config).encode())
            if command == "ADD":
                config["prevResult"] = json.loads(out)

    def floor(self, variant: str, hello: str, extra_env: dict[str, str]) -> None:
        stdin = json.dumps({"cniVersion": "1.1.0", "name": "bench", "type": "hello"}).encode()
        self.record(variant, "ADD", [hello], {"PATH": "/usr/bin:/bin", **extra_env}, stdin)

    def vf_scaling(
        self, argv: list[str], extra_env: dict[str, str], counts: list[int], rounds: int
    ) -> dict[int, Samples]:
        """ADD through fixture hosts with `count` VFs: the pod's netdev is the last VF."""
        curve = {}
        for count in counts:
            root = self.scratch / f"host-{count}"
            sysfs_builder.sriov_host(str(root), vf_count=count, pod_vf=count - 1)
            config = {
                "cniVersion": "1.1.0",
                "name": "bench",
                "type": "deviceid-inject",
                "sysfsRoot": str(root),
                "deviceInfoRoot": str(self.scratch / "devinfo"),
                "dataDir": str(self.scratch / "state"),
                "prevResult": {"cniVersion": "1.1.0", "interfaces": [{"name": "net1", "sandbox": "/x"}]},
            }
            samples = Samples()
            for i in range(rounds + 1):  # the first run validates the config: not measured
                container = f"bench-{uuid.uuid4().hex[:12]}"
                stdin = json.dumps(config).encode()
                wall, rss, cpu, _ = measure(
                    argv, cni_env("ADD", container, "/proc/self/ns/net", "net1", extra_env), stdin
                )
                if i > 0:
                    samples.add(wall, rss, cpu)
                measure(argv, cni_env("DEL", container, "", "net1", extra_env), stdin)
            curve[count] = samples
        return curve


def server_cpu_seconds(pid: int) -> float:
    """A process's CPU so far, its reaped children's included (/proc/PID/stat utime..cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def start_server(binary: str, scratch: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`binary cni-server` on a scratch socket; returns once it answers its health probe."""
    sock = str(scratch / "server" / "cni.sock")
    argv = [binary, "cni-server", "--socket", sock, "--log-level", "warning"]
    server = subprocess.Popen(argv, env={"PATH": "/usr/bin:/bin", **env}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while subprocess.run([binary, "probe", f"unix:{sock}"], capture_output=True, env=env).returncode != 0:
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("bench: the CNI server did not start")
        time.sleep(0.2)
    return server, sock


def version_of(binary: Path, env: dict[str, str]) -> str:
    """The build's own words: `--version`'s lines on where it was built from and its Python."""
    out = subprocess.run([str(binary), "--version"], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True)
    return "; ".join(out.stdout.decode(errors="replace").splitlines()[1:3]) if out.returncode == 0 else str(binary)


def table(bench: Bench, curve: dict[int, Samples], server_cpu_ms: float | None = None, before_label: str = "") -> str:
    def cell(variant: str, command: str) -> str:
        s = bench.results.get((variant, command))
        return f"{s.wall:.1f} ms / {s.cpu:.1f} ms / {s.rss_mib:.1f} MiB" if s else "-"

    def ratio(variant: str, other: str) -> str:
        a, b = bench.results.get((variant, "ADD")), bench.results.get((other, "ADD"))
        return f"{a.wall / b.wall:.2f}x / {a.cpu / b.cpu:.2f}x" if a and b and b.cpu else "-"

    rounds = len(next(iter(bench.results.values())).wall_ms)
    lines = [
        f"Medians of {rounds} interleaved rounds, wall time / CPU time / peak RSS of the process the "
        f"runtime executes; {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}.",
        "",
        "| variant | VERSION | ADD | CHECK | DEL | ADD vs tuning (wall / CPU) | ADD vs floor (wall / CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {
        "served": "dist/deviceid-inject, CNI server running",
        "binary": "dist/deviceid-inject, no server (fallback)",
        "python": "python -m deviceid_inject",
        "tuning": "Go tuning (reference plugins)",
        "floor": "Nuitka hello world, same layout",
        "before": f"before: {before_label}, no server",
        "before-floor": "before: its Nuitka hello world",
    }
    for variant, label in names.items():
        if any(v == variant for v, _ in bench.results):
            cells = " | ".join(cell(variant, command) for command in ("VERSION", "ADD", "CHECK", "DEL"))
            floor = "before-floor" if variant.startswith("before") else "floor"  # each build against its own
            lines.append(f"| {label} | {cells} | {ratio(variant, 'tuning')} | {ratio(variant, floor)} |")
    if server_cpu_ms is not None:
        lines += ["", f"The CNI server's own CPU per call it served (children included): {server_cpu_ms:.1f} ms."]
    if curve:
        lines += ["", "ADD against the number of VFs on the host (fixture sysfs, the pod's VF is the last):", ""]
        lines += ["| VFs on the PF | ADD | peak RSS |", "|---|---|---|"]
        lines += [f"| {n} | {s.wall:.1f} ms | {s.rss_mib:.1f} MiB |" for n, s in curve.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: proves the benchmark runs (CI)")
    parser.add_argument("--rounds", type=int, help="rounds (default 41, quick 3)")
    parser.add_argument("--binary", default=str(REPO / "dist" / "deviceid-inject"))
    parser.add_argument("--hello", default=str(REPO / ".build" / "hello" / "deviceid-inject"))
    parser.add_argument("--tuning", default=str(REPO / ".tools" / "cni-bin" / "tuning"))
    parser.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"))
    parser.add_argument("--before", type=Path, help="a folder with another build's deviceid-inject and hello")
    parser.add_argument("--out", help="also write the Markdown table here")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 41)

    scratch = Path(tempfile.mkdtemp(prefix="deviceid-inject-bench."))
    cache = scratch / "cache"
    cache.mkdir(mode=0o755)
    # The fallback never meets a server this host may run; the served variant gets one of its own.
    launcher_env = {"DEVICEID_INJECT_CACHE": str(cache), "DEVICEID_INJECT_SOCKET": str(scratch / "no-server.sock")}
    server = None
    netns_name = f"dit-bench-{os.getpid()}"
    host_end = f"dib{os.getpid() % 100000}"
    bench = Bench(scratch, args.quick)
    try:
        ip("netns", "add", netns_name)
        ip("link", "add", host_end, "type", "veth", "peer", "name", f"{host_end}p")
        ip("link", "set", f"{host_end}p", "netns", netns_name, "name", "net1")
        netns = f"/var/run/netns/{netns_name}"

        variants = []
        if os.access(args.binary, os.X_OK):
            variants.append(lambda: bench.ours("binary", [args.binary], launcher_env))
            server, sock = start_server(args.binary, scratch, launcher_env)
            served_env = {**launcher_env, "DEVICEID_INJECT_SOCKET": sock}
            variants.append(lambda: bench.ours("served", [args.binary], served_env))
        else:
            print(f"bench: {args.binary} not built: run make build (binary left out)", file=sys.stderr)
        variants.append(lambda: bench.ours("python", [args.python, "-m", "deviceid_inject"], {}))
        if os.access(args.tuning, os.X_OK):
            variants.append(lambda: bench.tuning(args.tuning, netns))
        if os.access(args.hello, os.X_OK):
            variants.append(lambda: bench.floor("floor", args.hello, launcher_env))
        else:
            print(f"bench: {args.hello} not built: run ./build.sh hello (floor left out)", file=sys.stderr)
        before_label = ""
        if args.before:
            # Its own cache: another build id, unpacked beside ours as on a node during an upgrade.
            before_cache = scratch / "cache-before"
            before_cache.mkdir(mode=0o755)
            before_env = {**launcher_env, "DEVICEID_INJECT_CACHE": str(before_cache)}
            before_label = version_of(args.before / "deviceid-inject", before_env)
            variants.append(lambda: bench.ours("before", [str(args.before / "deviceid-inject")], before_env))
            variants.append(lambda: bench.floor("before-floor", str(args.before / "hello"), before_env))

        for variant in variants:  # warm-up: caches unpacked, configs validated, page cache filled
            variant()
        bench.results.clear()
        server_before = server_cpu_seconds(server.pid) if server else 0.0
        for _ in range(rounds):
            random.shuffle(variants)
            for variant in variants:
                variant()
        server_cpu_ms = None
        if server:
            calls = sum(len(s.wall_ms) for (v, _), s in bench.results.items() if v == "served")
            server_cpu_ms = (server_cpu_seconds(server.pid) - server_before) * 1000 / calls

        target = [args.binary] if os.access(args.binary, os.X_OK) else [args.python, "-m", "deviceid_inject"]
        env = launcher_env if target == [args.binary] else {}
        curve = bench.vf_scaling(target, env, [8, 128, 1024], max(3, rounds // 4))
        if os.access(args.binary, os.X_OK):
            print(f"binary: {version_of(Path(args.binary), launcher_env)}")
        text = table(bench, curve, server_cpu_ms, before_label)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
    finally:
        if server:
            server.terminate()
            server.wait(timeout=60)
        subprocess.run(["ip", "netns", "del", netns_name], capture_output=True)
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
