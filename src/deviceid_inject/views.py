"""Whether the CNI server sees a path as its client does.

The server runs in a mount namespace of its own (a container with hostPath mounts); its client, the
launcher, in the runtime's (the host's, or Multus's daemon chrooted into the host's root). A call may
only be served when every path its config names is the same file for both: else the server would
read and write its own view of that path, not the node's. The client sends an open descriptor of
its root directory; a path is the same when its nearest existing folder, resolved by the server in
its own root and in the client's root, is the same device and inode (a bind mount of the same
folder has the same identity). Symlinks in the client's tree are followed inside the client's root.
"""

from __future__ import annotations

import os
import stat

MAX_LINKS = 40  # as the kernel's path walk


def differs(named: dict[str, str], client_root: int) -> str | None:
    """The first of `named` (config key -> absolute path) that the server does not see as the
    client does, said in words; None when all are the same."""
    for key, path in sorted(named.items()):
        if not path.startswith("/"):
            continue  # the config's own validation refuses it, on either side
        folder = _nearest_existing(os.path.normpath(path))
        ours = os.stat(folder)
        theirs = stat_in(client_root, folder)
        if theirs is None or (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            return f"{key} {path}: {folder} is another folder here than where the client runs"
    return None


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def stat_in(root: int, path: str) -> os.stat_result | None:
    """stat(2) of `path` resolved under the directory open at `root` as if it were "/": absolute
    symlinks restart there, ".." stops there. None when it does not resolve."""
    pending = [p for p in reversed(path.split("/")) if p not in ("", ".")]
    chain = [os.dup(root)]  # the folders walked through, chain[0] the root
    links = 0
    try:
        while pending:
            name = pending.pop()
            if name == "..":
                if len(chain) > 1:
                    os.close(chain.pop())
                continue
            try:
                info = os.stat(name, dir_fd=chain[-1], follow_symlinks=False)
            except OSError:
                return None
            if stat.S_ISLNK(info.st_mode):
                links += 1
                if links > MAX_LINKS:
                    return None
                target = os.readlink(name, dir_fd=chain[-1])
                if target.startswith("/"):
                    while len(chain) > 1:
                        os.close(chain.pop())
                pending += [p for p in reversed(target.split("/")) if p not in ("", ".")]
            elif not pending:
                return info
            elif stat.S_ISDIR(info.st_mode):
                chain.append(os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=chain[-1]))
            else:
                return None
        return os.fstat(chain[-1])
    finally:
        for fd in chain:
            os.close(fd)
