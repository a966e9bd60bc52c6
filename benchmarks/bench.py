"""ADD, CHECK and DEL wall time and peak RSS, interleaved, against the peers an operator compares.

    sudo .venv/bin/python benchmarks/bench.py [--quick] [--rounds N] [--out FILE]

Variants, measured in the same run, in a shuffled order each round:
  binary   dist/deviceid-inject (the shipped one-file binary; its cache warmed first)
  python   .venv/bin/python -m deviceid_inject
  tuning   containernetworking's Go tuning plugin, chained on a veth in a scratch netns
  floor    a Nuitka hello world in the shipped layout (launcher + standalone folder) that
           reads the same stdin and prints it back: the start-up floor of any such binary
deviceid-inject runs the real path (no fixture): the host's PCI-backed NIC seen through
CNI_NETNS, with a config seen before (its validation cached). Then ADD through a fixture
host with 8, 128 and 1024 VFs shows the cost against the number of VFs.

Each process runs under /usr/bin/time (peak RSS, %M), with perf_counter around it for
the wall time.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "testdata"))
import sysfs_builder  # noqa: E402


@dataclass
class Samples:
    wall_ms: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)

    def add(self, wall: float, rss: int) -> None:
        self.wall_ms.append(wall * 1000)
        self.rss_kib.append(rss)

    @property
    def wall(self) -> float:
        return statistics.median(self.wall_ms)

    @property
    def rss_mib(self) -> float:
        return statistics.median(self.rss_kib) / 1024


TIME = "/usr/bin/time"


def measure(argv: list[str], env: dict[str, str], stdin: bytes) -> tuple[float, int, bytes]:
    """Run once under /usr/bin/time; (wall seconds, peak RSS KiB, stdout). Fails loudly on a non-zero exit.

    The RSS comes from /usr/bin/time, not from this process's wait4: a child forked from this
    Python process is charged this process's resident pages until it execs, which would put a
    floor of ~16 MiB under every reading. The wall time includes `time`'s own exec (~0.3 ms),
    the same for every variant."""
    with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile("r") as rss:
        start = time.perf_counter()
        proc = subprocess.run(
            [TIME, "-f", "%M", "-o", rss.name, *argv], input=stdin, stdout=out, stderr=subprocess.DEVNULL, env=env
        )
        wall = time.perf_counter() - start
        out.seek(0)
        stdout = out.read()
        peak = int(rss.read().split()[-1])
    if proc.returncode != 0:
        raise SystemExit(f"bench: {argv[0]} exited {proc.returncode}: {stdout.decode(errors='replace')}")
    return wall, peak, stdout


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
        wall, rss, out = measure(argv, env, stdin)
        self.results.setdefault((variant, command), Samples()).add(wall, rss)
        return out

    def ours(self, variant: str, argv: list[str], extra_env: dict[str, str]) -> None:
        """ADD, CHECK, DEL of one attachment on the host NIC, through CNI_NETNS, real sysfs."""
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

    def floor(self, hello: str, extra_env: dict[str, str]) -> None:
        stdin = json.dumps({"cniVersion": "1.1.0", "name": "bench", "type": "hello"}).encode()
        self.record("floor", "ADD", [hello], {"PATH": "/usr/bin:/bin", **extra_env}, stdin)

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
                wall, rss, _ = measure(argv, cni_env("ADD", container, "/proc/self/ns/net", "net1", extra_env), stdin)
                if i > 0:
                    samples.add(wall, rss)
                measure(argv, cni_env("DEL", container, "", "net1", extra_env), stdin)
            curve[count] = samples
        return curve


def table(bench: Bench, curve: dict[int, Samples]) -> str:
    def cell(variant: str, command: str) -> str:
        s = bench.results.get((variant, command))
        return f"{s.wall:.1f} ms / {s.rss_mib:.1f} MiB" if s else "-"

    def ratio(variant: str, other: str) -> str:
        a, b = bench.results.get((variant, "ADD")), bench.results.get((other, "ADD"))
        return f"{a.wall / b.wall:.2f}x" if a and b else "-"

    rounds = len(next(iter(bench.results.values())).wall_ms)
    lines = [
        f"Medians of {rounds} interleaved rounds, wall time / peak RSS; "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}.",
        "",
        "| variant | ADD | CHECK | DEL | ADD vs tuning | ADD vs floor |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "binary": "dist/deviceid-inject",
        "python": "python -m deviceid_inject",
        "tuning": "Go tuning (reference plugins)",
        "floor": "Nuitka hello world, same layout",
    }
    for variant, label in names.items():
        if any(v == variant for v, _ in bench.results):
            lines.append(
                f"| {label} | {cell(variant, 'ADD')} | {cell(variant, 'CHECK')} | {cell(variant, 'DEL')} "
                f"| {ratio(variant, 'tuning')} | {ratio(variant, 'floor')} |"
            )
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
    parser.add_argument("--out", help="also write the Markdown table here")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 41)

    scratch = Path(tempfile.mkdtemp(prefix="deviceid-inject-bench."))
    cache = scratch / "cache"
    cache.mkdir(mode=0o755)
    launcher_env = {"DEVICEID_INJECT_CACHE": str(cache)}
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
        else:
            print(f"bench: {args.binary} not built: run make build (binary left out)", file=sys.stderr)
        variants.append(lambda: bench.ours("python", [args.python, "-m", "deviceid_inject"], {}))
        if os.access(args.tuning, os.X_OK):
            variants.append(lambda: bench.tuning(args.tuning, netns))
        if os.access(args.hello, os.X_OK):
            variants.append(lambda: bench.floor(args.hello, launcher_env))
        else:
            print(f"bench: {args.hello} not built: run ./build.sh hello (floor left out)", file=sys.stderr)

        for variant in variants:  # warm-up: caches unpacked, configs validated, page cache filled
            variant()
        bench.results.clear()
        for _ in range(rounds):
            random.shuffle(variants)
            for variant in variants:
                variant()

        target = [args.binary] if os.access(args.binary, os.X_OK) else [args.python, "-m", "deviceid_inject"]
        env = launcher_env if target == [args.binary] else {}
        curve = bench.vf_scaling(target, env, [8, 128, 1024], max(3, rounds // 4))
        text = table(bench, curve)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
    finally:
        subprocess.run(["ip", "netns", "del", netns_name], capture_output=True)
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
