"""The wire format between the exec'd launcher (packaging/launcher.c) and the node's CNI server.

One request and one answer per connection on a unix stream socket; integers little-endian.

Request, client to server:
    MAGIC, u32 build-id length, build id, u32 count of environment entries, each as
    u32 length + b"KEY=VALUE", u32 stdin length, stdin.
  With the first bytes, as SCM_RIGHTS: the client's own network namespace, its root folder, then
  the Pod's network namespace (CNI_NETNS) when the call names one the client could open.

Answer, server to client:
    MAGIC, then b"A", i32 exit code, u32 stdout length, stdout, u32 stderr length, stderr:
  the plugin ran, relay it; or b"R", u32 reason length, reason: refused, nothing was done, the
  client runs the plugin itself. A connection that ends before a whole answer means the same.

The build id is the launcher's (the binary's payload digest): a server of another build refuses,
so a rollout never mixes a client and a server that disagree on this format or on the plugin. An
empty build id is a health probe (`deviceid-inject probe unix:PATH`): the server's loop refuses it
itself with a reason that starts with ALIVE, proving it accepts, reads and answers.
Pure functions only: the socket work is the server's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NoReturn

MAGIC = b"DIDINJ-CNI/1\n"
# stdin is bounded by the plugin at 4 MiB (protocol.MAX_STDIN_BYTES); the environment is small.
MAX_REQUEST_BYTES = 4 * 1024 * 1024 + 256 * 1024
MAX_ENV_ENTRIES = 256
HEALTH_BUILD_ID = ""
ALIVE = "alive:"
_U32 = struct.Struct("<I")


class BadRequest(ValueError):
    """The bytes are not a request of this format; the message says where they went wrong."""


@dataclass(frozen=True)
class Request:
    build_id: str
    environ: dict[str, str]
    stdin: bytes


@dataclass(frozen=True)
class Answer:
    code: int
    stdout: bytes
    stderr: bytes


def decode_request(data: bytes) -> Request | None:
    """The request in `data`, None while it is incomplete; BadRequest when it can never be one."""
    reader = _Reader(data)
    magic = reader.take(len(MAGIC))
    if magic is None:
        return None if MAGIC.startswith(data) else _bad("not a deviceid-inject CNI request (wrong magic)")
    if magic != MAGIC:
        _bad("not a deviceid-inject CNI request (wrong magic)")
    build_id = reader.field("build id", 64)
    if build_id is None:
        return None
    count = reader.u32()
    if count is None:
        return None
    if count > MAX_ENV_ENTRIES:
        _bad(f"{count} environment entries, more than {MAX_ENV_ENTRIES}")
    environ: dict[str, str] = {}
    for _ in range(count):
        entry = reader.field("environment entry", 64 * 1024)
        if entry is None:
            return None
        key, sep, value = entry.partition(b"=")
        if not sep or not key:
            _bad("an environment entry without KEY=")
        try:
            environ[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        except UnicodeDecodeError:
            _bad("an environment name that is not UTF-8")
    stdin = reader.field("stdin", MAX_REQUEST_BYTES)
    if stdin is None:
        return None
    if reader.pos != len(data):
        _bad("bytes after the end of the request")
    try:
        build = build_id.decode("ascii")
    except UnicodeDecodeError:
        _bad("a build id that is not ASCII")
    return Request(build, environ, stdin)


def encode_request(request: Request) -> bytes:
    """The client's side, in Python: for tests and benchmarks that speak to a server directly."""
    parts = [MAGIC, _field(request.build_id.encode()), _U32.pack(len(request.environ))]
    parts += [_field(f"{k}={v}".encode("utf-8", "surrogateescape")) for k, v in request.environ.items()]
    parts.append(_field(request.stdin))
    return b"".join(parts)


def encode_answer(answer: Answer) -> bytes:
    return MAGIC + b"A" + struct.pack("<i", answer.code) + _field(answer.stdout) + _field(answer.stderr)


def encode_refusal(reason: str) -> bytes:
    return MAGIC + b"R" + _field(reason.encode())


def decode_reply(data: bytes) -> Answer | str | None:
    """An Answer, a refusal's reason, or None for anything incomplete or malformed (the client
    then runs the plugin itself)."""
    reader = _Reader(data)
    if reader.take(len(MAGIC)) != MAGIC:
        return None
    kind = reader.take(1)
    if kind == b"R":
        reason = reader.field("reason", 1 << 20)
        return reason.decode(errors="replace") if reason is not None else None
    if kind != b"A":
        return None
    code = reader.take(4)
    stdout = reader.field("stdout", 1 << 26)
    stderr = reader.field("stderr", 1 << 26)
    if code is None or stdout is None or stderr is None:
        return None
    return Answer(struct.unpack("<i", code)[0], stdout, stderr)


def _field(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def _bad(message: str) -> NoReturn:
    raise BadRequest(message)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes | None:
        if self.pos + size > len(self.data):
            return None
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def u32(self) -> int | None:
        raw = self.take(4)
        return None if raw is None else _U32.unpack(raw)[0]

    def field(self, what: str, limit: int) -> bytes | None:
        start = self.pos
        size = self.u32()
        if size is None:
            return None
        if size > limit:
            _bad(f"a {what} of {size} bytes, more than {limit}")
        chunk = self.take(size)
        if chunk is None:
            self.pos = start
        return chunk
