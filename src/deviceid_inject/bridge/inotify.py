"""Linux inotify, as much of it as the record index needs: which names changed in a few folders.

Python has no binding of its own (os has none up to 3.14), so the three calls come from libc by
ctypes; the events are read without blocking and decoded with struct. The descriptor is
close-on-exec and non-blocking: reading it when nothing happened costs one system call.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import weakref
from dataclasses import dataclass

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of name


@dataclass(frozen=True)
class Event:
    wd: int
    mask: int
    name: str  # empty for an event about the watched folder itself


class Inotify:
    """One inotify instance. Raises OSError where the kernel or libc offers none."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self._add.restype = ctypes.c_int
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = (ctypes.c_int, ctypes.c_int)
        self._rm.restype = ctypes.c_int
        init = libc.inotify_init1
        init.argtypes = (ctypes.c_int,)
        init.restype = ctypes.c_int
        fd = init(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        self.fd = fd
        # An index dropped without close() (tests make many) gives its instance back: the kernel
        # allows a user only fs.inotify.max_user_instances (128 by default), shared by the node.
        self._closer = weakref.finalize(self, os.close, fd)

    def add_watch(self, path: str, mask: int) -> int:
        """The watch descriptor of `path`; OSError (ENOENT, ENOTDIR, ENOSPC: no watches left) otherwise."""
        wd = self._add(self.fd, os.fsencode(path), mask)
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        return wd

    def rm_watch(self, wd: int) -> None:
        self._rm(self.fd, wd)  # EINVAL when the kernel already dropped it (folder removed): nothing to do

    def read(self) -> list[Event]:
        """Every event queued now; [] when there is none."""
        events: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            offset = 0
            while offset + _HEADER.size <= len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                name = data[offset : offset + length].rstrip(b"\0")
                offset += length
                events.append(Event(wd, mask, os.fsdecode(name)))

    def close(self) -> None:
        self._closer()
        self.fd = -1
