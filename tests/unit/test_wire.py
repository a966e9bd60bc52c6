"""The launcher-server wire format (wire.py): what the server's loop decides from bytes alone."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deviceid_inject import wire

REQUEST = wire.Request("5011dce", {"CNI_COMMAND": "ADD", "CNI_IFNAME": "net1", "CNI_ARGS": "A=b=c"}, b'{"x": 1}')


def test_a_request_decodes_to_what_was_encoded():
    assert wire.decode_request(wire.encode_request(REQUEST)) == REQUEST


def test_every_prefix_of_a_request_is_incomplete_not_wrong():
    data = wire.encode_request(REQUEST)
    for end in range(len(data)):
        assert wire.decode_request(data[:end]) is None, end


@given(
    build=st.text(alphabet="0123456789abcdef", max_size=20),
    environ=st.dictionaries(st.text(min_size=1).filter(lambda k: "=" not in k), st.text(), max_size=8),
    stdin=st.binary(max_size=300),
)
def test_any_request_round_trips(build: str, environ: dict[str, str], stdin: bytes):
    request = wire.Request(build, environ, stdin)
    assert wire.decode_request(wire.encode_request(request)) == request


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"GET / HTTP/1.1\r\n", "wrong magic"),
        (b"X", "wrong magic"),
        (wire.MAGIC + struct.pack("<I", 100), "build id of 100 bytes"),
        (wire.MAGIC + struct.pack("<I", 0) + struct.pack("<I", 10_000), "10000 environment entries"),
        (wire.MAGIC + struct.pack("<II", 0, 1) + struct.pack("<I", 3) + b"ABC", "without KEY="),
        (wire.MAGIC + struct.pack("<III", 0, 0, 1 << 30), "stdin of 1073741824 bytes"),
        (wire.encode_request(REQUEST) + b"!", "bytes after the end"),
    ],
)
def test_what_can_never_be_a_request_is_named(data: bytes, words: str):
    with pytest.raises(wire.BadRequest, match=words):
        wire.decode_request(data)


def test_replies_decode_and_a_broken_one_is_none():
    answer = wire.Answer(1, b'{"code": 7}', b"log line\n")
    assert wire.decode_reply(wire.encode_answer(answer)) == answer
    assert wire.decode_reply(wire.encode_refusal("another build")) == "another build"
    whole = wire.encode_answer(answer)
    for end in range(len(whole)):
        assert wire.decode_reply(whole[:end]) is None, end
    assert wire.decode_reply(b"HTTP/1.1 200 OK\r\n") is None
