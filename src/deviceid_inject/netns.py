"""Looking at a netdev from inside the pod's network namespace: the one place that enters it.

A process that only joins a netns still sees the sysfs its mount namespace has,
i.e. the host's view of /sys/class/net. So, like `ip netns exec`, a forked child
joins the netns, takes a private mount namespace and mounts a fresh sysfs over
/sys there; the host's mounts never change, and the child's view dies with it.
The same child asks the kernel for the netdev's ethtool bus-info.

Python 3.11 (the oldest we run on) has no os.setns/os.unshare, so libc is called through ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import struct
from _socket import AF_INET, SOCK_DGRAM, socket  # not `socket`: its enum wrappers cost more than the query
from dataclasses import dataclass

from .pci import SYSFS

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003
# struct ethtool_drvinfo: cmd, then driver, version, fw_version, bus_info, erom_version (32 bytes
# each), reserved2[12], five u32 counters.
_DRVINFO_SIZE = 4 + 32 * 5 + 12 + 4 * 5
_DRIVER = slice(4, 36)
_BUS_INFO = slice(4 + 32 * 3, 4 + 32 * 4)


def read_netdev(sysfs: str, ifname: str) -> tuple[bool, str | None, str | None]:
    """(exists, device path, problem) of `ifname` in the class/net of a sysfs tree: the pod's own, mounted
    in the probe's private mount namespace, or a fixture's (sysfsRoot)."""
    link = os.path.join(sysfs, "class", "net", ifname)
    if not os.path.lexists(link):
        return False, None, None
    device = os.path.join(link, "device")
    if not os.path.exists(device):
        return True, None, f"{link} has no device link: a virtual netdev"
    return True, os.path.realpath(device), None


@dataclass(frozen=True)
class NetdevView:
    """What the pod's netns shows of one netdev. `problem` says why a part could not be seen."""

    exists: bool
    device_path: str | None = None
    driver: str | None = None
    bus_info: str | None = None
    problem: str | None = None


def look_inside(netns_path: str, ifname: str) -> NetdevView:
    """Fork a child that enters `netns_path` and reports on `ifname`."""
    try:
        ns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return NetdevView(exists=False, problem=f"cannot open netns {netns_path}: {exc.strerror}")
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # the child never returns
            os.close(read_end)
            _child(ns_fd, ifname, write_end)
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as pipe:
            read_end = -1
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(ns_fd)
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    try:
        return NetdevView(**json.loads(data))
    except (ValueError, TypeError):
        return NetdevView(exists=False, problem=f"netns probe ended with status {status} and no answer")


def _child(ns_fd: int, ifname: str, out_fd: int) -> None:
    try:
        view = _inspect(ns_fd, ifname)
    except BaseException as exc:  # anything, even KeyboardInterrupt: the parent must get an answer
        view = {"exists": False, "problem": f"netns probe failed: {exc}"}
    try:
        os.write(out_fd, json.dumps(view).encode())
    finally:
        os._exit(0)


def enter(ns_fd: int) -> None:
    """Move this whole process into the network namespace open at `ns_fd`: only ever in a child
    forked for it (the probe's, or the CNI server's per call). OSError says why not."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.setns(ns_fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "not a network namespace" if err == errno.EINVAL else os.strerror(err))


def _inspect(ns_fd: int, ifname: str) -> dict[str, object]:
    try:
        enter(ns_fd)
    except OSError as exc:
        return {"exists": False, "problem": f"cannot enter the netns: {exc.strerror}"}
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    view: dict[str, object] = {"exists": False}
    problems = []
    try:
        driver, bus_info = _ethtool_drvinfo(ifname)
        view.update(exists=True, driver=driver or None, bus_info=bus_info or None)
    except OSError as exc:
        if exc.errno != errno.ENODEV:  # no such netdev: the sysfs look below says so
            problems.append(f"ethtool query of {ifname} failed: {exc.strerror}")
    mount_problem = _mount_private_sysfs(libc)
    if mount_problem:
        problems.append(mount_problem)
    else:
        exists, device_path, problem = read_netdev(SYSFS, ifname)
        if exists:
            view["exists"] = True
        if device_path:
            view["device_path"] = device_path
        if problem:
            problems.append(problem)
    if problems:
        view["problem"] = "; ".join(problems)
    return view


def _mount_private_sysfs(libc: ctypes.CDLL) -> str | None:
    if libc.unshare(CLONE_NEWNS) != 0:
        return f"cannot create a private mount namespace: {os.strerror(ctypes.get_errno())}"
    # Slave, not private: mounts made here must never propagate back to the host.
    if libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None) != 0:
        return f"cannot make / a slave mount: {os.strerror(ctypes.get_errno())}"
    if libc.mount(b"sysfs", SYSFS.encode(), b"sysfs", 0, None) != 0:
        err = ctypes.get_errno()
        # EBUSY: the kernel refuses to stack a sysfs on itself, so /sys already is this netns's view.
        if err != errno.EBUSY:
            return f"cannot mount sysfs inside the netns: {os.strerror(err)}"
    return None


def _ethtool_drvinfo(ifname: str) -> tuple[str, str]:
    """(driver, bus-info) from ETHTOOL_GDRVINFO, asked inside the current netns; OSError when the
    query fails (ENODEV: no such netdev)."""
    request = bytearray(struct.pack("I", ETHTOOL_GDRVINFO) + bytes(_DRVINFO_SIZE - 4))
    buffer = (ctypes.c_char * _DRVINFO_SIZE).from_buffer(request)
    ifreq = struct.pack("16sP16x", ifname.encode(), ctypes.addressof(buffer))
    sock = socket(AF_INET, SOCK_DGRAM)
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    finally:
        sock.close()
    return _cstr(request[_DRIVER]), _cstr(request[_BUS_INFO])


def _cstr(raw: bytes) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")
