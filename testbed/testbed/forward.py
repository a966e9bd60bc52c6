"""A TCP forwarder from the host's loopback into a network namespace: how the tests (in the host's
netns) reach the test node's API server, which listens on the node's own address in the node's netns.

    python testbed/testbed/forward.py NETNS_PATH TARGET_HOST:PORT PORT_FILE

The listening socket is made first, on 127.0.0.1 in the caller's netns, and its port written to
PORT_FILE; then the process enters NETNS_PATH, so every connection it opens to TARGET is made from
inside the node. A socket keeps the netns it was made in, and threads made after setns inherit it.
Python 3.11 has no os.setns, hence libc through ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000


def relay(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def serve(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    threading.Thread(target=relay, args=(upstream, client), daemon=True).start()
    relay(client, upstream)
    client.close()
    upstream.close()


def main(netns: str, target: str, port_file: str) -> None:
    host, _, port = target.rpartition(":")
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    if ctypes.CDLL("libc.so.6", use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise SystemExit(f"forward.py: cannot enter {netns}: {os.strerror(ctypes.get_errno())}")
    os.close(fd)
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(listener.getsockname()[1]))
    os.rename(tmp, port_file)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, (host, int(port))), daemon=True).start()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
