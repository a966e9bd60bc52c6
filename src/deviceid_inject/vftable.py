"""The PFs' VF tables over netlink: how a VF with no netdev (DPDK, vfio-pci) is found by its MAC.

A PF's RTM_GETLINK answer, asked with RTEXT_FILTER_VF, lists every VF index with
its MAC, bound to a kernel driver or not: what `ip link show <pf>` prints as
`vf N ... link/ether ...`. Only the named PFs are asked, one request each, so the
cost follows the PFs searched, not the VFs on the host. pyroute2 is imported only
here, and only when this search runs.
"""

from __future__ import annotations

from dataclasses import dataclass

# Names for annotations only: typing costs milliseconds to import on every ADD.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    Source = Callable[[Sequence[str]], "list[VfEntry]"]

RTEXT_FILTER_VF = 1


@dataclass(frozen=True)
class VfEntry:
    pf: str
    index: int
    mac: str


class Ambiguous(Exception):
    """Two VFs carry the MAC we look for: picking one would be a guess."""


def find_mac(entries: Iterable[VfEntry], mac: str) -> list[VfEntry]:
    wanted = mac.lower()
    return [entry for entry in entries if entry.mac.lower() == wanted]


def netlink_tables(pfs: Sequence[str]) -> list[VfEntry]:
    """The VF tables of `pfs`, read from the kernel; a PF that is not there is skipped."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    entries: list[VfEntry] = []
    with IPRoute() as ipr:
        for pf in pfs:
            try:
                messages = ipr.link("get", ifname=pf, ext_mask=RTEXT_FILTER_VF)
            except NetlinkError:
                continue
            for message in messages:
                entries.extend(_entries(pf, message))
    return entries


def _entries(pf: str, message: object) -> list[VfEntry]:
    vflist = message.get_attr("IFLA_VFINFO_LIST")  # type: ignore[attr-defined]
    if vflist is None:
        return []
    entries = []
    for info in vflist.get_attrs("IFLA_VF_INFO"):
        mac = info.get_attr("IFLA_VF_MAC")
        if mac is not None and mac["mac"] != "00:00:00:00:00:00":
            entries.append(VfEntry(pf=pf, index=int(mac["vf"]), mac=mac["mac"]))
    return entries
