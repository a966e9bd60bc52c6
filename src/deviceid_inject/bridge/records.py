"""The plugin's records on this node, as the bridge reads them: indexed by Pod UID, kept current
by inotify, so that a refresh costs what changed since the last one, not what exists. This reads
files (the node's data dir, which the bridge trusts); changes.py decides what to write from what
it finds.

Why inotify rather than a cache keyed by path and mtime: such a cache still lists the data dir
and stats every record on each refresh, and a node that lost DELs keeps thousands of records
(issue 23: 10,000 of them made every Pod event cost 0.4 to 1 s). The kernel names the files that
changed; only those are stat'ed and read. One watch on the data dir (container folders come and
go) and one per container folder (a sandbox's second network lands in its existing folder).
Where the kernel cannot tell (its event queue overflowed) the index lists everything once again;
a folder it has no watch left for (fs.inotify.max_user_watches) is listed on every refresh, and
where there is no inotify at all every refresh lists everything, as before: slower, never wrong.

Every file is judged on its own and every one that cannot be used is named once, for the caller
to log and count: a directory, FIFO or symlink where a record should be, a record larger than
MAX_RECORD_BYTES, not JSON, not a record of ours, or device-info that is not a JSON object we
can write back. Silent only: records with no Pod (cnitool's) or no device-info (required: false).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass
from typing import Any

from .. import files
from ..state import Record, Store, record_from
from .inotify import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_DONT_FOLLOW,
    IN_IGNORED,
    IN_MODIFY,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
)

# The plugin's records are a few hundred bytes; a record larger than this is not one of ours.
MAX_RECORD_BYTES = 64 * 1024
# NPWG device-info is {"type", "version", "<type>": {...}}: three levels. Far deeper is not ours.
MAX_DEVICE_INFO_DEPTH = 32
SUFFIX = ".json"

_ROOT_EVENTS = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_FOLDER_EVENTS = (
    IN_CREATE | IN_CLOSE_WRITE | IN_MODIFY | IN_ATTRIB | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ONLYDIR
) | IN_DONT_FOLLOW


@dataclass(frozen=True)
class Known:
    """A record of ours with a device-info to give, and when it was written (newest wins)."""

    record: Record
    written_ns: int


@dataclass(frozen=True)
class _Seen:
    """What the index keeps of one record file, valid while the file's signature is unchanged:
    whose it is, not what it says (10,000 stale records parsed cost 26 MiB; this, a tenth)."""

    signature: tuple[int, int, int]  # inode, size, mtime
    uid: str | None  # the Pod's, when the record has device-info to give
    problem: str | None  # why the file is not used, when it is odd


class RecordIndex:
    """The plugin's records under `data_dir` by Pod UID, kept current from inotify's events
    (`watch=False`: by listing everything at each refresh)."""

    def __init__(self, data_dir: str, watch: bool = True) -> None:
        self.store = Store(data_dir)
        self.data_dir = data_dir
        self._seen: dict[str, _Seen] = {}  # by path
        self._by_folder: dict[str, set[str]] = {}  # container ID -> paths of its records seen
        self._by_uid: dict[str, set[str]] = {}  # Pod UID -> paths of its records
        # The records parsed, kept only for Pods asked about (for_pod) until forget_pod: the
        # node's Pods, not the records of Pods long gone.
        self._live: set[str] = set()
        self._known: dict[str, Known] = {}  # by path
        self._inotify: Inotify | None = None
        self._watch = watch
        self._root_wd: int | None = None
        self._folder_of: dict[int, str] = {}  # watch descriptor -> container ID
        self._wd_of: dict[str, int] = {}
        self._polled: set[str] = set()  # container folders without a watch: listed at every refresh
        self.full_listings = 0  # how often everything was listed (tests and the log tell why)

    # --- keeping current ------------------------------------------------------------------------------

    def refresh(self) -> list[str]:
        """Read what changed since the last refresh; returns what is newly wrong (one line per
        file or folder), for the caller to log. An unreadable data dir keeps the last index."""
        problems: list[str] = []
        if self._root_wd is None:
            self._list_all(problems)
            return problems
        assert self._inotify is not None
        try:
            events = self._inotify.read()
        except OSError as exc:
            problems.append(f"{self.data_dir}: reading inotify events: {exc.strerror}; listing everything")
            events = []
            self._root_wd = None
        folders: set[str] = set(self._polled)
        paths: set[tuple[str, str]] = set()
        for event in events:
            if event.mask & IN_Q_OVERFLOW:
                self._root_wd = None  # the kernel dropped events: only a full listing is sure
                break
            if event.wd == self._root_wd:
                if event.mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    self._root_wd = None
                    break
                if event.name and not event.name.startswith("."):
                    folders.add(event.name)
                continue
            container_id = self._folder_of.get(event.wd)
            if container_id is None:
                continue
            if event.mask & IN_IGNORED:  # the folder was removed (or replaced): judged again from scratch
                self._unwatch(container_id, event.wd)
                folders.add(container_id)
            elif event.name.endswith(SUFFIX) and not event.name.startswith("."):
                paths.add((container_id, event.name[: -len(SUFFIX)]))
        if self._root_wd is None:
            self._list_all(problems)
            return problems
        for container_id in sorted(folders):
            self._list_folder(container_id, problems)
        for container_id, ifname in sorted(paths):
            if container_id not in folders:
                self._judge(container_id, ifname, problems)
        return problems

    def _list_all(self, problems: list[str]) -> None:
        """Everything again: at the start, after an overflow, or where inotify is not to be had."""
        self.full_listings += 1
        if self._watch and self._inotify is None:
            try:
                self._inotify = Inotify()
            except OSError as exc:
                self._watch = False
                problems.append(f"{self.data_dir}: no inotify ({exc.strerror}): every refresh lists every record")
        if self._inotify is not None:
            self._inotify.read()  # what queued up so far is covered by this listing
            try:
                self._root_wd = self._inotify.add_watch(self.data_dir, _ROOT_EVENTS)
            except OSError as exc:  # no data dir yet (no ADD so far): listed again at the next refresh
                self._root_wd = None
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    problems.append(f"{self.data_dir}: cannot watch: {exc.strerror}")
        try:
            names = _listdir(self.data_dir)
        except OSError as exc:
            problems.append(f"{self.data_dir}: cannot list: {exc.strerror}")
            return
        present = {n for n in names if not n.startswith(".")}
        for container_id in set(self._by_folder) - present:
            self._forget_folder(container_id)
        for container_id in sorted(present):
            self._list_folder(container_id, problems)

    def _list_folder(self, container_id: str, problems: list[str]) -> None:
        """One container folder as it is now: watched first (so no change after the listing is
        missed), then each record in it judged; records no longer there forgotten."""
        folder = os.path.join(self.data_dir, container_id)
        try:
            st = os.lstat(folder)
        except OSError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):  # gone, or a symlink or file: never followed
            self._forget_folder(container_id)
            return
        self._watch_folder(folder, container_id, problems)
        try:
            names = _listdir(folder)
        except OSError as exc:
            problems.append(f"{folder}: cannot list: {exc.strerror}")
            return
        ifnames = {n[: -len(SUFFIX)] for n in names if n.endswith(SUFFIX) and not n.startswith(".")}
        for path in list(self._by_folder.get(container_id, ())):
            if os.path.basename(path)[: -len(SUFFIX)] not in ifnames:
                self._drop(container_id, path)
        for ifname in sorted(ifnames):
            self._judge(container_id, ifname, problems)

    def _watch_folder(self, folder: str, container_id: str, problems: list[str]) -> None:
        if self._inotify is None or self._root_wd is None:
            return
        try:
            wd = self._inotify.add_watch(folder, _FOLDER_EVENTS)
        except OSError as exc:
            if exc.errno == errno.ENOSPC and container_id not in self._polled:
                problems.append(
                    f"{folder}: no inotify watch left (fs.inotify.max_user_watches): listed at every refresh"
                )
            if exc.errno == errno.ENOSPC:
                self._polled.add(container_id)
            return
        self._polled.discard(container_id)
        old = self._wd_of.get(container_id)
        if old is not None and old != wd:
            self._folder_of.pop(old, None)
        self._wd_of[container_id] = wd
        self._folder_of[wd] = container_id

    def _unwatch(self, container_id: str, wd: int) -> None:
        if self._wd_of.get(container_id) == wd:
            del self._wd_of[container_id]
        self._folder_of.pop(wd, None)

    def _forget_folder(self, container_id: str) -> None:
        for path in list(self._by_folder.get(container_id, ())):
            self._drop(container_id, path)
        self._polled.discard(container_id)
        wd = self._wd_of.pop(container_id, None)
        if wd is not None:
            self._folder_of.pop(wd, None)
            if self._inotify is not None:
                self._inotify.rm_watch(wd)

    def _judge(self, container_id: str, ifname: str, problems: list[str]) -> None:
        """One record file: read again only when its signature changed."""
        path = self.store.path(container_id, ifname)
        try:
            st = os.lstat(path)
        except FileNotFoundError:  # removed by a DEL
            self._drop(container_id, path)
            return
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror}")
            return
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        seen = self._seen.get(path)
        if seen is not None and seen.signature == signature:
            return
        seen, known = self._read(path, st, signature)
        if seen.problem is not None:
            problems.append(f"{path}: {seen.problem}")
        self._drop(container_id, path)
        self._seen[path] = seen
        self._by_folder.setdefault(container_id, set()).add(path)
        if seen.uid is not None:
            self._by_uid.setdefault(seen.uid, set()).add(path)
            if known is not None and seen.uid in self._live:
                self._known[path] = known

    def _drop(self, container_id: str, path: str) -> None:
        seen = self._seen.pop(path, None)
        paths = self._by_folder.get(container_id)
        if paths is not None:
            paths.discard(path)
            if not paths:
                del self._by_folder[container_id]
        self._known.pop(path, None)
        if seen is not None and seen.uid is not None:
            mine = self._by_uid.get(seen.uid, set())
            mine.discard(path)
            if not mine:
                self._by_uid.pop(seen.uid, None)

    def _read(self, path: str, st: os.stat_result, signature: tuple[int, int, int]) -> tuple[_Seen, Known | None]:
        if not stat.S_ISREG(st.st_mode):
            return _Seen(signature, None, "not a regular file; ignored"), None
        if st.st_size > MAX_RECORD_BYTES:
            return _Seen(signature, None, f"{st.st_size} bytes, more than a record's {MAX_RECORD_BYTES}; ignored"), None
        try:
            raw = files.read_json(path, MAX_RECORD_BYTES)
        except files.NotJson as exc:  # TooLarge too: it grew since the lstat
            return _Seen(signature, None, f"{str(exc).removeprefix(f'{path} ')}; ignored"), None
        except files.FileError as exc:  # it became a symlink or a FIFO since the lstat
            return _Seen(signature, None, f"{exc}; ignored"), None
        if raw is None:  # removed since the lstat
            return _Seen(signature, None, None), None
        record = record_from(raw)
        if record is None:
            return _Seen(signature, None, "JSON, but not a record of deviceid-inject (edited?); ignored"), None
        if not record.pod_uid or record.device_info is None:
            return _Seen(signature, None, None), None  # not ours to give: cnitool's, required: false, ...
        wrong = _unusable(record.device_info)
        if wrong is not None:
            return _Seen(signature, None, f"its device-info {wrong}; ignored"), None
        return _Seen(signature, record.pod_uid, None), Known(record, st.st_mtime_ns)

    # --- reading ----------------------------------------------------------------------------------------

    def for_pod(self, uid: str, keep: bool = True) -> list[Known]:
        """The Pod's records with device-info to give; with `keep`, kept parsed until forget_pod."""
        if keep:
            self._live.add(uid)
        found = []
        for path in sorted(self._by_uid.get(uid, ())):
            known = self._known.get(path) or self._load(path)
            if known is not None:
                found.append(known)
                if keep:
                    self._known[path] = known
        return found

    def _load(self, path: str) -> Known | None:
        """One record read again (the index keeps whose it is, not what it says)."""
        try:
            st = os.lstat(path)
        except OSError:
            return None  # gone since: the next refresh forgets it
        _, known = self._read(path, st, (st.st_ino, st.st_size, st.st_mtime_ns))
        return known

    def forget_pod(self, uid: str) -> None:
        """The Pod is gone from the node: its records are no longer kept parsed."""
        self._live.discard(uid)
        for path in self._by_uid.get(uid, ()):
            self._known.pop(path, None)

    def pod_uids(self) -> set[str]:
        return set(self._by_uid)

    def count(self, uid: str) -> int:
        """How many records of ours the Pod `uid` has here."""
        return len(self._by_uid.get(uid, ()))

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
            self._root_wd = None


def _unusable(value: Any) -> str | None:
    """Why `value` cannot be written as device-info (not an object, nested deeper than
    MAX_DEVICE_INFO_DEPTH, not strict JSON), or None when it can."""
    if not isinstance(value, dict):
        return f"is a JSON {type(value).__name__}, not an object"
    if _depth(value) > MAX_DEVICE_INFO_DEPTH:
        return f"is nested deeper than {MAX_DEVICE_INFO_DEPTH} levels"
    try:
        json.dumps(value, allow_nan=False)
    except ValueError as exc:
        return f"is not strict JSON ({exc})"
    return None


def _depth(value: Any) -> int:
    """Nesting depth of decoded JSON, without recursion (a record holds what json.loads took)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item)
    return deepest


def _listdir(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []
