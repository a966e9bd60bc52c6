"""Safe file primitives shared by the device-info writer and the state store.

Two promises live here: no reader ever sees half a file (write a temporary file
in the same folder, then rename it over the target), and nothing is written or
read through a symlink or outside the tree it belongs to.

Its errors are its own (FileError: Refused or CannotAccess; NotJson): the CNI boundary
(cni.py) turns them into protocol errors, and the network-status bridge, which reads the
same records, never sees one.
"""

from __future__ import annotations

import errno
import json
import os
import stat

# Names for annotations only: typing costs milliseconds to import on every ADD.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class FileError(Exception):
    """A file operation that did not happen; the message names the path and why."""


class Refused(FileError):
    """The path itself is unacceptable: relative, outside its tree, a symlink, a folder, not a
    regular file. Whoever named it is at fault, so retrying cannot help."""


class CannotAccess(FileError):
    """The path is acceptable but the system refused the operation (permissions, a full or
    read-only filesystem, ...); the message names the action, the path and the reason."""


def inside(root: str, path: str) -> bool:
    """Whether `path` resolves to `root` or below it, with symlinks resolved on both sides."""
    real_root = os.path.realpath(root)
    real_path = os.path.realpath(path)
    return os.path.commonpath([real_root, real_path]) == real_root


def require_inside(root: str, path: str, what: str) -> None:
    if not os.path.isabs(path):
        raise Refused(f"{what} {path!r} is not an absolute path")
    if not inside(root, os.path.dirname(path)):
        raise Refused(f"{what} {path} resolves to {os.path.realpath(path)}, outside {root}; not written")
    if os.path.basename(path) in ("", ".", ".."):
        raise Refused(f"{what} {path!r} does not name a file")


def io_error(action: str, path: str, exc: OSError) -> CannotAccess:
    return CannotAccess(f"cannot {action} {path}: {exc.strerror or exc}")


def make_dirs(path: str) -> None:
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise io_error("create folder", path, exc) from None


class NotJson(Exception):
    """The file exists but holds no JSON; each caller decides what that means."""


class TooLarge(NotJson):
    """The file holds more than the caller's bound: none of it is taken as JSON."""


def read_json(path: str, max_bytes: int | None = None) -> Any:
    """The JSON in `path`, or None when there is no file. Refuses symlinks and non-files, and
    with `max_bytes` a file larger than that (TooLarge), reading no more than one byte past it."""
    data = read_bytes(path, max_bytes)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise NotJson(f"{path} does not hold JSON: {exc}") from None


def read_bytes(path: str, max_bytes: int | None = None) -> bytes | None:
    """What `path` holds, or None when there is no file. Refuses symlinks and non-files, and
    with `max_bytes` a file larger than that (TooLarge)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(f"{path} is a symlink; deviceid-inject never follows one") from None
        raise io_error("open", path, exc) from None
    if not _is_regular(fd):
        os.close(fd)
        raise Refused(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except OSError as exc:
            raise io_error("read", path, exc) from None
    if max_bytes is not None and len(data) > max_bytes:
        raise TooLarge(f"{path} holds more than {max_bytes} bytes")
    return data


def _is_regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


def write_json(path: str, obj: Any, mode: int) -> None:
    """Replace `path` atomically with `obj` as JSON; the folder must exist."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode)


def write_bytes(path: str, data: bytes, mode: int) -> None:
    """Replace `path` atomically with `data`: a temporary file in the same folder, renamed over it."""
    folder, name = os.path.split(path)
    if os.path.isdir(path) and not os.path.islink(path):
        raise Refused(f"{path} is a directory, not a file")
    tmp = os.path.join(folder, _temp_name(name))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    except OSError as exc:
        raise io_error("create", tmp, exc) from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except OSError as exc:
        remove(tmp)
        raise io_error("write", path, exc) from None


def remove(path: str) -> bool:
    """Unlink `path` (a symlink itself, never its target) and any temporary file a killed
    writer left beside it; True when `path` was there."""
    folder, name = os.path.split(path)
    try:
        leftovers = [n for n in os.listdir(folder) if _is_temp_of(n, name)]
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise io_error("list", folder, exc) from None
    for leftover in leftovers:
        _unlink(os.path.join(folder, leftover))
    return _unlink(path)


def _temp_name(name: str) -> str:
    return f".{name}.{os.getpid()}.tmp"


def _is_temp_of(candidate: str, name: str) -> bool:
    """Whether `candidate` is a temporary file _temp_name made for `name`, by any process."""
    prefix = f".{name}."
    pid = candidate[len(prefix) : -len(".tmp")]
    return candidate.startswith(prefix) and candidate.endswith(".tmp") and pid.isdigit()


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        raise CannotAccess(f"cannot remove {path}: it is a directory") from None
    except OSError as exc:
        raise io_error("remove", path, exc) from None
    return True
