"""The tools the tests run against and where scripts/install-tools.sh put them, read from
scripts/versions.env: the one place a version is written.

`missing(...)` names what is not installed; the fixtures fail on it (in `make test` a missing tool
is a broken setup, never a reason to skip).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # this is testbed/testbed/tools.py in the repository
TOOLS = REPO / ".tools"
VERSIONS_FILE = REPO / "scripts" / "versions.env"


def _versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found[key] = " ".join(shlex.split(value))
    return found


VERSIONS = _versions()
KUBERNETES_VERSION = VERSIONS["KUBERNETES_VERSION"]
CONTAINERD_VERSION = VERSIONS["CONTAINERD_VERSION"]
RUNC_VERSION = VERSIONS["RUNC_VERSION"]
CNITOOL_VERSION = VERSIONS["CNITOOL_VERSION"]
CNI_PLUGINS_VERSION = VERSIONS["CNI_PLUGINS_VERSION"]
MULTUS_V4_VERSIONS = tuple(VERSIONS["MULTUS_V4_VERSIONS"].split())
MULTUS_V3_VERSIONS = tuple(VERSIONS["MULTUS_V3_VERSIONS"].split())
# In that order (versions.env says why): v3.7.1 hands every delegate a device-info path, as v3.7
# did; v3.7.2 is the first with the deviceID gate.
V3_UNGATED, V3_GATED = MULTUS_V3_VERSIONS
THICK_MULTUS = VERSIONS["THICK_MULTUS"]
FIELD_MULTUS = VERSIONS["FIELD_MULTUS"]
# The API test bed's kube-apiserver (testbed.kube): KUBERNETES_VERSION's, or one of
# KUBERNETES_API_VERSIONS named by DEVICEID_INJECT_KUBE_APISERVER (make test-kubernetes-versions).
APISERVER_VERSION = os.environ.get("DEVICEID_INJECT_KUBE_APISERVER") or KUBERNETES_VERSION
# MutatingAdmissionPolicy: GA and on from 1.36; beta (admissionregistration.k8s.io/v1beta1, off
# unless its feature gate and API are turned on) in 1.34 and 1.35.
MUTATING_POLICY_BETA = int(APISERVER_VERSION.split(".")[1]) < 36
MUTATING_POLICY_API = "admissionregistration.k8s.io/" + ("v1beta1" if MUTATING_POLICY_BETA else "v1")

CNI_BIN = TOOLS / "cni-bin"
CNITOOL = CNI_BIN / "cnitool"
CONTAINERD_BIN = TOOLS / "node" / f"containerd-{CONTAINERD_VERSION}"
RUNC = TOOLS / "node" / f"runc-{RUNC_VERSION}" / "runc"
ETCD = Path("/usr/bin/etcd")
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
# What each Multus v4 folder holds besides the thin plugin: thick mode, and its own manifest for it.
MULTUS_THICK_COMMANDS = ("multus-daemon", "multus-shim", "install_multus", "multus")


def kube(command: str, version: str = KUBERNETES_VERSION) -> Path:
    """kube-apiserver, kubelet, kubectl, ... of `version` (install-tools builds them all of
    KUBERNETES_VERSION; with --api-servers, kube-apiserver of each KUBERNETES_API_VERSIONS)."""
    return TOOLS / "k8s" / f"kubernetes-{version}" / command


def multus(version: str, command: str = "multus") -> Path:
    """A Multus binary: the thin plugin, or (v4) multus-daemon, multus-shim, install_multus."""
    return TOOLS / "k8s" / f"multus-{version}" / command


def multus_selection_parser(version: str) -> Path:
    """testdata/multus/parse-selection.go built inside Multus `version` (v4): Multus's own parser of a
    Pod's network selection, one JSON query a line."""
    return TOOLS / "k8s" / f"multus-selection-{version}" / "parse-selection"


NODE_TOOLS = (
    *(
        kube(c)
        for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl")
    ),
    CONTAINERD_BIN / "containerd",
    CONTAINERD_BIN / "containerd-shim-runc-v2",
    CONTAINERD_BIN / "ctr",
    RUNC,
    ETCD,
    BUSYBOX,
    *(multus(v, c) for v in (THICK_MULTUS, FIELD_MULTUS) for c in MULTUS_THICK_COMMANDS),
)


def missing(*paths: Path) -> list[str]:
    return [str(p) for p in paths if not os.access(p, os.X_OK)]
