"""What ADD did, kept by container ID and ifname, so DEL, CHECK and GC work after the device has left.

Layout: <dataDir>/<containerID>/<ifname>.json, one small JSON record per attachment,
and <dataDir>/.lock, the one lock every writer takes. Container IDs and ifnames are
validated before they get here, so neither can climb out of dataDir, and a container ID
never starts with a dot, so no container's folder can meet .lock or .validated.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass, fields

from . import files

# Names for annotations only: typing costs milliseconds to import on every ADD.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_DATA_DIR = "/var/lib/cni/deviceid-inject"  # the config's dataDir when it names none
LOCK_TIMEOUT_SECONDS = 10.0
STATE_MODE = 0o600


class Busy(Exception):
    """Another run held the store's lock for longer than the wait: the caller may try again."""


@dataclass(frozen=True)
class Record:
    container_id: str
    ifname: str
    network: str
    pci_address: str | None
    strategy: str | None
    device_info_file: str | None
    created_file: bool
    # Whose attachment this is (CNI_ARGS K8S_POD_*) and the device-info we wrote: what the
    # network-status bridge needs. Records written before these fields existed lack them.
    pod_namespace: str | None = None
    pod_name: str | None = None
    pod_uid: str | None = None
    device_info: dict[str, Any] | None = None


class Store:
    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir

    def path(self, container_id: str, ifname: str) -> str:
        return os.path.join(self.data_dir, container_id, f"{ifname}.json")

    @contextlib.contextmanager
    def locked(self, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
        """Hold the store's lock; a busy node gets Busy (CNI: code 11, try again) rather than a hang."""
        files.make_dirs(self.data_dir)
        lock_path = os.path.join(self.data_dir, ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, STATE_MODE)
        except OSError as exc:
            raise files.io_error("open lock", lock_path, exc) from None
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise Busy(f"{lock_path} is held by another run") from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)

    def load(self, container_id: str, ifname: str, max_bytes: int | None = None) -> Record | None:
        """The record, or None when there is none or it is not one of ours (not JSON, edited, or
        with `max_bytes` larger than that). A symlink or a non-file raises files.Refused."""
        path = self.path(container_id, ifname)
        try:
            raw = files.read_json(path, max_bytes)
        except files.NotJson:
            return None
        return record_from(raw)

    def save(self, record: Record) -> None:
        path = self.path(record.container_id, record.ifname)
        files.make_dirs(os.path.dirname(path))
        try:
            files.write_json(path, asdict(record), STATE_MODE)
        except files.FileError:
            self._drop_empty_folder(path)
            raise

    def forget(self, container_id: str, ifname: str) -> None:
        path = self.path(container_id, ifname)
        files.remove(path)
        self._drop_empty_folder(path)

    def restore(self, container_id: str, ifname: str, previous: Record | None) -> None:
        """Put back what was there before a failed change: the previous record, or none."""
        if previous is None:
            self.forget(container_id, ifname)
        else:
            self.save(previous)

    @staticmethod
    def _drop_empty_folder(path: str) -> None:
        with contextlib.suppress(OSError):  # other ifnames of the container may still be there
            os.rmdir(os.path.dirname(path))

    def attachments(self, unreadable: Callable[[files.FileError], None] | None = None) -> list[tuple[str, str]]:
        """Every (containerID, ifname) with a record, for GC and the bridge. A container folder
        that cannot be listed raises files.CannotAccess, or, given `unreadable`, is handed to it and skipped."""
        found = []
        for container_id in _listdir(self.data_dir):
            folder = os.path.join(self.data_dir, container_id)
            if not os.path.isdir(folder) or os.path.islink(folder):
                continue
            try:
                names = _listdir(folder)
            except files.FileError as exc:
                if unreadable is None:
                    raise
                unreadable(exc)
                continue
            found.extend(
                (container_id, name[: -len(".json")])
                for name in names
                if name.endswith(".json") and not name.startswith(".")
            )
        return found


# What each annotation of Record's fields admits on disk (the dataclass is the one statement of the
# types; a field of a new type fails here, at import, until it is named).
_ADMITS = {
    "str": (str,),
    "bool": (bool,),
    "str | None": (str, type(None)),
    "dict[str, Any] | None": (dict, type(None)),
}
_TYPES = {f.name: _ADMITS[f.type] for f in fields(Record)}
_REQUIRED = {f.name for f in fields(Record) if f.default is MISSING}  # fields added later have defaults


def record_from(raw: object) -> Record | None:
    """A Record from what was on disk, or None when it is not one of ours (edited, truncated)."""
    if not isinstance(raw, dict) or not _REQUIRED <= set(raw) <= set(_TYPES):
        return None
    if not all(isinstance(value, _TYPES[key]) for key, value in raw.items()):
        return None
    return Record(**raw)


def _listdir(folder: str) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise files.io_error("list", folder, exc) from None
