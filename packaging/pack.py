"""Make the one-file binary: the launcher (launcher.c) with a standalone folder appended.

    python3 packaging/pack.py LAUNCHER FOLDER BUILD_ID OUTPUT

FOLDER must hold the program as `deviceid-inject`. Layout after the launcher's own bytes:
records (u8 type 'f'|'l', u32 mode, u32 path length, u64 data length, path, data), then an
80-byte trailer: magic b"DIDINJ\\0\\1", u64 records offset, u64 records length, build id
(hex, NUL-padded to 56 bytes). All integers little-endian.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import sys

MAGIC = b"DIDINJ\x00\x01"
ENTRY = "deviceid-inject"


def records(folder: str):
    for parent, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(parent, d))):
            path = os.path.join(parent, name)
            rel = os.path.relpath(path, folder)
            if ".." in rel.split(os.sep):
                raise SystemExit(f"pack.py: {rel!r}: a '..' component would climb out of the folder")
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                yield b"l", 0o777, rel, os.readlink(path).encode()
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as f:
                    yield b"f", stat.S_IMODE(info.st_mode), rel, f.read()


def pack(launcher: str, folder: str, build_id: str, output: str) -> None:
    if not re.fullmatch(r"[0-9a-f]{1,55}", build_id):
        raise SystemExit("pack.py: the build id must be 1 to 55 lower-case hex digits")
    if not os.access(os.path.join(folder, ENTRY), os.X_OK):
        raise SystemExit(f"pack.py: {folder}/{ENTRY} is not an executable")
    with open(launcher, "rb") as f:
        head = f.read()
    body = bytearray()
    for kind, mode, rel, data in records(folder):
        path = rel.encode()
        body += kind + struct.pack("<IIQ", mode, len(path), len(data)) + path + data
    trailer = MAGIC + struct.pack("<QQ", len(head), len(body)) + build_id.encode().ljust(56, b"\0")
    tmp = output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(head + body + trailer)
    os.chmod(tmp, 0o755)
    os.replace(tmp, output)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    pack(*sys.argv[1:])
