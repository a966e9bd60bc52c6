"""A real Kubernetes node for the tests, on this machine, in namespaces of its own.

One `Node` is a single-node cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
containerd with runc, kubelet and kube-proxy (all of tools.KUBERNETES_VERSION and versions.env), the
reference bridge + host-local plugins as its primary CNI. Every one of its processes runs inside:

- a network namespace of its own, whose node address is NODE_IP on a veth pair inside it (the kubelet
  refuses a loopback node IP); the tests reach its API server through testbed.forward, a forwarder
  from the host's loopback;
- a mount namespace of its own, made private from the host's, in which scratch folders of the node's
  root are bound over /run, /var/lib, /var/log, /var/cache and /opt, /etc is an overlay whose
  writes land in the scratch folder, and /etc/cni is a scratch folder of its own (the host's CNI
  configs, podman's for one, must not reach the node's runtime or Multus).
  Manifests with hostPaths (ours, Multus's own) therefore apply unchanged and nothing lands on the
  host. The kernel tunables the kubelet insists on are scratch files bound over their /proc/sys
  entries, so the host's kernel settings stay as they are;
- a cgroup of its own (`dit-node-<id>`) in every hierarchy: the node's processes in its `system`
  child, the kubelet's pods under it (its cgroupRoot).

`stop` kills every process in that cgroup tree, which ends the namespaces and with them every mount,
link and pod netns, then removes the cgroups; `leftovers` says what, if anything, is still there.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import tools
from testbed.harness import NotReady, Outcome, Service, base_env, run
from testbed.helpers import wait_for
from testbed.kube import Api, ApiError, api_ready

NODE_NAME = "dit-node"
NODE_IP = "198.18.0.1"  # RFC 2544's benchmarking range: never a real network
API_PORT = 6443
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
CLUSTER_CIDR = "10.244.0.0/16"
# The primary network's host-local range: all of CLUSTER_CIDR. Multus v4.2 and later (thick, at
# least) keep the primary conflist for DEL with only the standard keys of each plugin (their
# LoadDelegateNetConfFromConfList marshals libcni's PluginConf), so the bridge plugin's DEL fails
# with "no IP ranges specified" and every Pod's address stays allocated: a /24 ran out after 250
# Pods of the benchmark. Not ours to fix; a range this size outlasts any run here.
POD_SUBNET = CLUSTER_CIDR
PAUSE_IMAGE = "localhost/deviceid-inject-test/pause:1"
FORWARD = Path(__file__).resolve().with_name("forward.py")

# What the kubelet wants these host-wide sysctls to be (pkg/kubelet/cm setupKernelTunables). It would
# write them into the host's kernel; inside the node they are files of its own holding those values.
KERNEL_TUNABLES = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}
# Node paths bound to scratch folders (fs/<path with '/' as '-'>), and /etc made an overlay over
# which ETC_OWN, a scratch folder too, is bound.
BOUND = ("/run", "/var/lib", "/var/log", "/var/cache", "/opt")
ETC_OWN = "/etc/cni"

# The holder: the first process of the node's namespaces, made by `unshare --mount --net`. It lays out
# the mounts and the node's address, says so, and sleeps; the other processes join it with nsenter.
SETUP = r"""
set -e
root="$1"; fs="$root/fs"
for path in BOUND; do mount --bind "$fs/$(echo "${path#/}" | tr / -)" "$path"; done
mount -t overlay node-etc -o "lowerdir=/etc,upperdir=$fs/overlay/etc/upper,workdir=$fs/overlay/etc/work" /etc
mkdir -p ETC_OWN
mount --bind "$fs/ETC_FOLDER" ETC_OWN
for tunable in TUNABLES; do mount --bind "$fs/sysctl/$(echo "$tunable" | tr / -)" "/proc/sys/$tunable"; done
# Shared inside the node only (the namespace was copied private): mounts made later, such as the pod
# netns containerd pins under /run/netns, reach containers that ask for HostToContainer propagation.
mount --make-rshared /
ip link set lo up
ip link add node0 type veth peer name node0-peer
ip addr add NODE_IP/24 dev node0
ip link set node0 up
ip link set node0-peer up
# A default route, as a node has: Service IPs must route before kube-proxy's DNAT can apply to them.
# It leads nowhere: nothing answers ARP on that link for an address that is not the node's own.
ip route add default dev node0
touch "$root/holder.ready"
exec sleep infinity
"""


def _setup_script() -> str:
    return (
        SETUP.replace("BOUND", " ".join(BOUND))
        .replace("ETC_FOLDER", fs_name(ETC_OWN))
        .replace("ETC_OWN", ETC_OWN)
        .replace("TUNABLES", " ".join(KERNEL_TUNABLES))
        .replace("NODE_IP", NODE_IP)
    )


def fs_name(node_path: str) -> str:
    return node_path.strip("/").replace("/", "-")


# --- cgroups -----------------------------------------------------------------------------------------


def cgroup_mounts() -> list[Path]:
    """Every cgroup hierarchy mounted on this host (v1 controllers, named ones, the unified v2)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2"):
                found.append(Path(fields[4]))
    return found


@dataclass
class Cgroups:
    """The node's cgroup `name` in every hierarchy, with a `system` child for its own processes."""

    name: str

    def dirs(self) -> list[Path]:
        return [mount / self.name for mount in cgroup_mounts()]

    def create(self) -> None:
        for top in self.dirs():
            for folder in (top, top / "system"):
                folder.mkdir()
                for key in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset: empty until copied from the parent
                    if (folder / key).exists():
                        (folder / key).write_text((folder.parent / key).read_text())

    def join(self, argv: Sequence[str]) -> list[str]:
        """`argv` run from inside the node's system cgroup (in every hierarchy)."""
        procs = " ".join(shlex.quote(str(top / "system" / "cgroup.procs")) for top in self.dirs())
        return ["sh", "-c", f'for f in {procs}; do echo $$ > "$f"; done; exec "$@"', "sh", *argv]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for top in self.dirs():
            for folder, _, files in os.walk(top):
                if "cgroup.procs" in files:
                    with contextlib.suppress(OSError):
                        found.update(int(p) for p in Path(folder, "cgroup.procs").read_text().split())
        return found

    def kill_all(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of {self.name} survive SIGKILL: {sorted(pids)}")
            time.sleep(0.05)

    def remove(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        for top in self.dirs():
            if not top.exists():
                continue
            for folder, _, _ in sorted(os.walk(top), key=lambda w: -len(Path(w[0]).parts)):
                while True:
                    try:
                        os.rmdir(folder)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:  # EBUSY while the kernel lets go of tasks that just died
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)


# --- identities and certificates ---------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    name: str  # the kubeconfig's file name
    user: str
    groups: tuple[str, ...]
    token: str


def _identities() -> dict[str, Identity]:
    def make(name: str, user: str, *groups: str) -> Identity:
        return Identity(name, user, groups, uuid.uuid4().hex)

    return {
        i.name: i
        for i in (
            make("admin", "admin", "system:masters"),
            make("kubelet", f"system:node:{NODE_NAME}", "system:nodes"),
            make("kube-proxy", "system:kube-proxy"),
            make("controller-manager", "system:kube-controller-manager"),
            make("scheduler", "system:kube-scheduler"),
        )
    }


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate (for every name it is reached by: the node address,
    the kubernetes Service, the forwarder on the host's loopback), its client certificate for the
    kubelet, and the service-account signing key."""
    pki.mkdir(parents=True)
    # The extensions kubeadm's CA has: Python 3.13 verifies strictly (VERIFY_X509_STRICT), and refuses
    # a CA without keyUsage or a certificate without authorityKeyIdentifier.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3", "-subj", "/CN=deviceid-inject test node CA",
             "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
             "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"))  # fmt: skip
    names = [f"IP:{NODE_IP}", f"IP:{SERVICE_IP}", "IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes"]
    names += ["DNS:kubernetes.default", "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"]
    certs = {
        "apiserver": ("/CN=kube-apiserver", f"subjectAltName={','.join(names)}\nextendedKeyUsage=serverAuth\n"),
        "apiserver-kubelet-client": (
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            "extendedKeyUsage=clientAuth\n",
        ),
    }
    for name, (subject, extensions) in certs.items():
        (pki / f"{name}.ext").write_text(f"{extensions}authorityKeyIdentifier=keyid,issuer\n")
        key, csr, crt = (str(pki / f"{name}.{kind}") for kind in ("key", "csr", "crt"))
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", key, "-out", csr)
        ca = ("-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"), "-CAcreateserial")
        _openssl("x509", "-req", "-in", csr, *ca, "-days", "3", "-extfile", str(pki / f"{name}.ext"), "-out", crt)
    _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


# --- the node ----------------------------------------------------------------------------------------


class Node:
    """A single-node cluster in namespaces of its own under `root` (see the module docstring)."""

    def __init__(self, root: Path, name: str = NODE_NAME, kubelet_flags: Sequence[str] = ()) -> None:
        self.root = root
        self.name = name
        self.kubelet_flags = list(kubelet_flags)
        self.id = uuid.uuid4().hex[:8]
        self.cgroups = Cgroups(f"dit-node-{self.id}")
        self.fs = root / "fs"
        self.pki = root / "pki"
        self.config = root / "config"
        self.logs = root / "logs"
        self.identities = _identities()
        self.services: dict[str, Service] = {}
        self.holder: Service | None = None
        self.api_port = 0
        self.namespace_inodes: dict[str, int] = {}
        self.host_links: set[str] = set()  # the host's links before the node started

    # --- paths as the node sees them, and where they are on the host

    def host_path(self, node_path: str) -> Path:
        """Where a path of the node's (/run/..., /var/lib/..., /etc/cni/...) is on the host."""
        if node_path == "/var/run" or node_path.startswith("/var/run/"):  # a symlink to /run
            node_path = node_path[len("/var") :]
        for bound in (*BOUND, ETC_OWN):
            if node_path == bound or node_path.startswith(bound + "/"):
                return self.fs / fs_name(bound) / node_path[len(bound) :].lstrip("/")
        if node_path.startswith("/etc/"):
            return self.fs / "overlay" / "etc" / "upper" / node_path[len("/etc/") :]
        raise ValueError(f"{node_path} is not one of the node's own paths")

    @property
    def netns(self) -> str:
        assert self.holder is not None
        return f"/proc/{self.holder.pid}/ns/net"

    @property
    def mntns(self) -> str:
        assert self.holder is not None
        return f"/proc/{self.holder.pid}/ns/mnt"

    def enter(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the node's network and mount namespaces."""
        return ["nsenter", f"--net={self.netns}", f"--mount={self.mntns}", "--", *argv]

    def run(self, argv: Sequence[str], timeout: float = 60, stdin: bytes = b"") -> Outcome:
        """One command inside the node (ip, iptables, ...)."""
        return run(self.enter(argv), timeout=timeout, stdin=stdin)

    # --- start and stop

    def start(self, timeout: float = 180) -> Node:
        self.host_links = set(os.listdir("/sys/class/net"))
        try:
            self._lay_out()
            self.cgroups.create()
            self._start_holder()
            self._start_control_plane()
            self._start_runtime()
            self._start_kubelet(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _lay_out(self) -> None:
        for path in BOUND:
            (self.fs / fs_name(path)).mkdir(parents=True)
        (self.fs / fs_name(ETC_OWN) / "net.d").mkdir(parents=True)
        for part in ("upper", "work"):
            (self.fs / "overlay" / "etc" / part).mkdir(parents=True)
        (self.fs / "sysctl").mkdir()
        for tunable, value in KERNEL_TUNABLES.items():
            (self.fs / "sysctl" / fs_name(tunable)).write_text(f"{value}\n")
        for folder in (self.config, self.logs):
            folder.mkdir()
        make_pki(self.pki)
        lines = [f'{i.token},{i.user},{i.user},"{",".join(i.groups)}"' for i in self.identities.values()]
        (self.pki / "tokens.csv").write_text("\n".join(lines) + "\n")
        for identity in self.identities.values():
            self.api(identity.name, inside=True).kubeconfig(self.pki / f"{identity.name}.kubeconfig", identity.name)

    def _service(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None, inside: bool = True
    ) -> Service:
        command = self.cgroups.join(self.enter(argv) if inside else argv)
        service = Service(name, command, self.logs / f"{name}.log", env or base_env())
        self.services[name] = service
        return service.start()

    def restart(self, name: str, timeout: float = 60) -> None:
        """Stop one of the node's processes (SIGTERM) and start it again as it was started."""
        service = self.services[name]
        service.stop()
        service.start()
        if name == "kubelet":
            service.wait_until(self._kubelet_healthy, timeout, "healthy")

    def _start_holder(self) -> None:
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--net",
            "sh",
            "-c",
            _setup_script(),
            "sh",
            str(self.root),
        ]
        self.holder = Service("holder", self.cgroups.join(argv), self.logs / "holder.log").start()
        self.holder.wait_until(lambda: (self.root / "holder.ready").exists(), 30, "set up")
        self.namespace_inodes = {kind: os.stat(getattr(self, f"{kind}ns")).st_ino for kind in ("net", "mnt")}

    def _start_control_plane(self) -> None:
        pki = self.pki
        etcd_data = "/var/lib/etcd"
        self._service(
            "etcd",
            [
                str(tools.ETCD), "--data-dir", etcd_data, "--log-level", "warn",
                "--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
                "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                "--initial-cluster", "default=http://127.0.0.1:2380",
            ],
        )  # fmt: skip
        self._service(
            "kube-apiserver",
            [
                str(tools.kube("kube-apiserver")),
                "--etcd-servers", "http://127.0.0.1:2379",
                "--bind-address", NODE_IP, "--advertise-address", NODE_IP, "--secure-port", str(API_PORT),
                "--tls-cert-file", str(pki / "apiserver.crt"), "--tls-private-key-file", str(pki / "apiserver.key"),
                "--client-ca-file", str(pki / "ca.crt"),
                "--token-auth-file", str(pki / "tokens.csv"),
                "--authorization-mode", "Node,RBAC",
                "--enable-admission-plugins", "NodeRestriction",
                "--allow-privileged=true",  # Multus's own DaemonSet runs privileged
                "--service-account-issuer", "https://kubernetes.default.svc",
                "--service-account-key-file", str(pki / "sa.pub"),
                "--service-account-signing-key-file", str(pki / "sa.key"),
                "--service-cluster-ip-range", SERVICE_CIDR,
                "--kubelet-client-certificate", str(pki / "apiserver-kubelet-client.crt"),
                "--kubelet-client-key", str(pki / "apiserver-kubelet-client.key"),
                "--kubelet-preferred-address-types", "InternalIP",  # the node's name is in no DNS
                "--profiling=false",
            ],
        )  # fmt: skip
        port_file = self.root / "api.port"
        forward = self._service(
            "forward",
            [sys.executable, str(FORWARD), self.netns, f"{NODE_IP}:{API_PORT}", str(port_file)],
            inside=False,
        )
        forward.wait_until(port_file.exists, 30, "listening")
        self.api_port = int(port_file.read_text())
        apiserver = self.services["kube-apiserver"]
        apiserver.wait_until(lambda: api_ready(self.api()), 120, "ready")
        self.kubeconfig().write_text((self.pki / "admin.kubeconfig").read_text().replace(
            f"https://{NODE_IP}:{API_PORT}", f"https://127.0.0.1:{self.api_port}"))  # fmt: skip
        self._service(
            "kube-controller-manager",
            [
                str(tools.kube("kube-controller-manager")),
                "--kubeconfig", str(pki / "controller-manager.kubeconfig"),
                "--service-account-private-key-file", str(pki / "sa.key"),
                "--root-ca-file", str(pki / "ca.crt"),
                "--use-service-account-credentials",
                "--leader-elect=false",
                "--bind-address", "127.0.0.1",
            ],
        )  # fmt: skip
        self._service(
            "kube-scheduler",
            [
                str(tools.kube("kube-scheduler")),
                "--kubeconfig", str(pki / "scheduler.kubeconfig"),
                "--leader-elect=false",
                "--bind-address", "127.0.0.1",
            ],
        )  # fmt: skip

    def _start_runtime(self) -> None:
        cni_bin = self.host_path("/opt/cni/bin")
        cni_bin.mkdir(parents=True)
        for plugin in ("bridge", "host-local", "loopback", "host-device"):
            dest = cni_bin / plugin
            dest.write_bytes((tools.CNI_BIN / plugin).read_bytes())
            dest.chmod(0o755)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "node-pods",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                }
            ],
        }
        self.host_path("/etc/cni/net.d/10-bridge.conflist").write_text(json.dumps(conflist, indent=2))
        config = self.config / "containerd.toml"
        config.write_text(CONTAINERD_CONFIG.format(runc=tools.RUNC, pause=PAUSE_IMAGE))
        env = base_env(PATH=f"{tools.CONTAINERD_BIN}:{base_env()['PATH']}")
        containerd = self._service(
            "containerd", [str(tools.CONTAINERD_BIN / "containerd"), "--config", str(config)], env
        )
        containerd.wait_until(lambda: self.ctr("version").code == 0, 60, "serving")
        self.import_image(self.build_pause_image())

    def _start_kubelet(self, timeout: float) -> None:
        (self.config / "kubelet.yaml").write_text(
            KUBELET_CONFIG.format(cgroup_root=f"/{self.cgroups.name}", ca=self.pki / "ca.crt", node_ip=NODE_IP)
        )
        kubelet = self._service(
            "kubelet",
            [
                str(tools.kube("kubelet")),
                "--config", str(self.config / "kubelet.yaml"),
                "--kubeconfig", str(self.pki / "kubelet.kubeconfig"),
                "--node-ip", NODE_IP,
                "--hostname-override", self.name,
                "--v", "2",
                *self.kubelet_flags,
            ],
        )  # fmt: skip
        kubelet.wait_until(self._node_ready, timeout, "a Ready node", interval=0.5)
        (self.config / "kube-proxy.yaml").write_text(
            KUBE_PROXY_CONFIG.format(kubeconfig=self.pki / "kube-proxy.kubeconfig", node=self.name, cidr=CLUSTER_CIDR)
        )
        proxy = self._service(
            "kube-proxy", [str(tools.kube("kube-proxy")), "--config", str(self.config / "kube-proxy.yaml")]
        )
        proxy.wait_until(self._service_routed, 60, "routing the kubernetes Service")

    def _kubelet_healthy(self) -> bool:
        probe = 'exec 3<>/dev/tcp/127.0.0.1/10248 && printf "GET /healthz HTTP/1.0\\r\\n\\r\\n" >&3 && cat <&3'
        out = self.run(["bash", "-c", probe], timeout=10)
        return out.code == 0 and out.stdout.rstrip().endswith("ok")

    def _node_ready(self) -> bool:
        try:
            node = self.api().get(f"/api/v1/nodes/{self.name}")
        except (ApiError, OSError):
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _service_routed(self) -> bool:
        out = self.run(["iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES"], timeout=20)
        return out.code == 0 and "default/kubernetes:https" in out.stdout

    def stop(self) -> None:
        """Kill everything the node runs (its cgroup tree), which ends its namespaces, then remove the
        cgroups. Safe to call on a node that never fully started."""
        for name in ("kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager"):
            if name in self.services:
                self.services[name].stop(timeout=10)
        with contextlib.suppress(FileNotFoundError):
            self.cgroups.kill_all()
        for service in [*self.services.values(), *([self.holder] if self.holder else [])]:
            service.stop(timeout=5)  # reaps what was our child
        self.cgroups.remove()

    def leftovers(self) -> list[str]:
        """What the node left on the host: processes in its namespaces, cgroups, mounts under its
        root, a mount that pins one of its namespaces, links the host did not have before it."""
        found = [f"cgroup {d}" for d in self.cgroups.dirs() if d.exists()]
        for pid in filter(str.isdigit, os.listdir("/proc")):
            for kind, inode in self.namespace_inodes.items():
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{pid}/ns/{kind}").st_ino == inode:
                        found.append(f"process {pid} in the node's {kind} namespace")
        pins = {f"{kind}:[{inode}]" for kind, inode in self.namespace_inodes.items()}
        with open("/proc/self/mountinfo") as f:
            for line in f:
                root, mount_point = line.split()[3:5]
                if str(self.root) in line or root in pins:
                    found.append(f"mount {mount_point}")
        if self.host_links:  # (a node never started made none)
            found += [f"link {name}" for name in sorted(set(os.listdir("/sys/class/net")) - self.host_links)]
        return found

    # --- the API, kubectl, containerd

    def api(self, identity: str = "admin", inside: bool = False) -> Api:
        """The API as `identity` sees it: from inside the node (its address), or through the forwarder."""
        url = f"https://{NODE_IP}:{API_PORT}" if inside else f"https://127.0.0.1:{self.api_port}"
        return Api(url, str(self.pki / "ca.crt"), self.identities[identity].token)

    def kubeconfig(self) -> Path:
        """The admin's kubeconfig for clients on the host (through the forwarder)."""
        return self.root / "admin-host.kubeconfig"

    def kubectl(self, *args: str, stdin: str = "", timeout: float = 120) -> Outcome:
        argv = [str(tools.kube("kubectl")), "--kubeconfig", str(self.kubeconfig()), *args]
        # kubectl keeps a cache under $HOME/.kube: the node's folder, never the caller's working folder
        return run(argv, base_env(HOME=str(self.root)), timeout=timeout, stdin=stdin.encode())

    def ctr(self, *args: str, timeout: float = 120) -> Outcome:
        socket = self.host_path("/run/containerd/containerd.sock")
        return run(
            [str(tools.CONTAINERD_BIN / "ctr"), "--address", str(socket), "-n", "k8s.io", *args], timeout=timeout
        )

    def import_image(self, archive: Path) -> None:
        out = self.ctr("images", "import", str(archive), timeout=300)
        assert out.code == 0, f"ctr images import {archive}: {out.stdout}{out.stderr}"

    def build_pause_image(self) -> Path:
        """The sandbox image: testdata/node/pause.c, linked statically, as the only file of an image."""
        binary = self.root / "images" / "pause"
        binary.parent.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-static", "-O2", "-o", str(binary), str(PAUSE_SOURCE)], check=True, capture_output=True)
        archive = self.root / "images" / "pause.tar"
        build_image(PAUSE_IMAGE, archive, {"/pause": binary}, entrypoint=["/pause"])
        return archive

    def sandboxes_returned(self) -> dict[str, float]:
        """When containerd's RunPodSandbox returned (after the CNI ADD, Multus's included, returned),
        by Pod UID: wall time, from containerd's log."""
        found = {}
        for stamp, uid in SANDBOX_RETURNS.findall(self.services["containerd"].log()):
            whole, _, fraction = stamp.rstrip("Z").partition(".")
            moment = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC)
            found[uid] = moment.timestamp() + float(f"0.{fraction or 0}")
        return found

    def wait(self, what: Any, timeout: float = 120, why: str = "", interval: float = 0.2) -> Any:
        """helpers.wait_for, failing with `why` and the kubelet's log tail."""
        try:
            return wait_for(what, timeout, why, interval)
        except AssertionError as err:
            raise NotReady(f"{err}\n{self.services['kubelet'].tail(30)}") from None


SANDBOX_RETURNS = re.compile(
    r'time="([^"]+)" level=info msg="RunPodSandbox for name:\\"[^\\]+\\" uid:\\"([^\\]+)\\".*? returns sandbox id'
)
PAUSE_SOURCE = tools.REPO / "testdata" / "node" / "pause.c"
IMAGE_TOOL = tools.REPO / "packaging" / "image.py"


def build_image(reference: str, archive: Path, files: dict[str, Path], entrypoint: list[str], **options: Any) -> None:
    """An image archive (packaging/image.py) holding `files` (path in the image -> file here)."""
    argv = [sys.executable, str(IMAGE_TOOL), "files", "--tag", reference, "--out", str(archive)]
    argv += ["--entrypoint", json.dumps(entrypoint)]
    for link, target in options.get("symlinks", {}).items():
        argv += ["--symlink", f"{link}={target}"]
    argv += [f"{dest}={src}" for dest, src in files.items()]
    out = run(argv, timeout=300)
    assert out.code == 0, out.stdout + out.stderr


def build_our_image(binary: Path, reference: str, archive: Path) -> None:
    """deviceid-inject's image of `binary` (packaging/image.py, as `make image` builds it)."""
    argv = [sys.executable, str(IMAGE_TOOL), "deviceid-inject", "--binary", str(binary), "--tag", reference]
    out = run([*argv, "--out", str(archive)], timeout=300)
    assert out.code == 0, out.stdout + out.stderr


CONTAINERD_CONFIG = """\
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins.'io.containerd.cri.v1.runtime']
  # This sandbox lacks CAP_SYS_RESOURCE: containers may not get a lower OOM score than containerd's.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"

[plugins.'io.containerd.cri.v1.images']
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{pause}"
"""

KUBELET_CONFIG = """\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
# cgroup v1 here (PID 1 is no systemd): deprecated, still supported when asked for.
failCgroupV1: false
# The node's kernel tunables are its own files already set as the kubelet wants them; never write
# the host's.
protectKernelDefaults: true
address: {node_ip}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization:
  mode: AlwaysAllow
clusterDomain: cluster.local
# cadvisor cannot stat this machine's root disk: no local-storage accounting, no disk-based eviction,
# no image garbage collection (the images are imported, never pulled).
localStorageCapacityIsolation: false
evictionHard: {{memory.available: "100Mi"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
failSwapOn: false
"""

KUBE_PROXY_CONFIG = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: {kubeconfig}}}
hostnameOverride: {node}
mode: iptables
clusterCIDR: {cidr}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host-wide conntrack settings alone.
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
"""
