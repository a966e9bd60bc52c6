"""Where things are in the text of a JSON array of objects, and one member added in place.

network-status is another writer's JSON text. To add our device-info without changing anything
else, the bridge never decodes and re-encodes that text: it finds each top-level object and its
members by position, decodes only keys and string values (to read `interface` and `name`), and
inserts one member into one object, in the whitespace style of that object's own members. Numbers
are never converted (`1e400`, `0.1000000000000000001` and `1E2` stay as written), nothing is
re-indented, and every byte outside the insertion stays where it was.

The scanner is iterative, so the depth it accepts is a parameter (`max_depth`), not the
interpreter's recursion limit; anything else than RFC 8259 JSON (NaN, a trailing comma, a leading
zero, a raw control character in a string) is refused as NotUnderstood.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_WHITESPACE = re.compile(r"[ \t\n\r]*")
# The unrolled form: every repetition starts with a backslash, so a long run never backtracks.
_STRING = re.compile(r'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"')
_SCALAR = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")
_CLOSER = {"{": "}", "[": "]"}


class NotUnderstood(ValueError):
    """The text is not JSON of the expected shape, or is nested deeper than allowed."""


@dataclass(frozen=True)
class Member:
    """One `"key": value` of an object: the decoded key, where the key and the value are in the
    text (ends exclusive), and the value decoded when it is a string."""

    key: str
    key_start: int
    key_end: int
    value_start: int
    value_end: int
    text: str | None


@dataclass(frozen=True)
class Entry:
    """One top-level object of the array: `start` is its `{`, `end` is just after its `}`."""

    start: int
    end: int
    members: tuple[Member, ...]

    def get(self, key: str) -> Member | None:
        """The member named `key`; of duplicates the last, as Go's and Python's decoders keep it."""
        for member in reversed(self.members):
            if member.key == key:
                return member
        return None

    def get_folded(self, key: str) -> Member | None:
        """The last member whose name equals `key` but for ASCII case: the one Go's encoding/json
        (so Multus and every reader built on its NetworkStatus type) takes for the field `key`,
        each later one overwriting what an earlier one set. (Go folds two non-ASCII letters as
        well, K and S; `key` here has neither.)"""
        folded = key.lower()
        for member in reversed(self.members):
            if member.key.lower() == folded:
                return member
        return None


def entries(text: str, max_depth: int) -> list[Entry]:
    """Every object at the top level of `text`, a JSON array (other elements are validated and
    skipped). Raises NotUnderstood for anything else, or for nesting deeper than `max_depth`
    (the array itself is level 1, its objects level 2)."""
    return _Scanner(text, max(max_depth, 2)).array()


def add_member(text: str, entry: Entry, key: str, value: Any) -> str:
    """`text` with `"key": value` added as the last member of `entry`, written in the style of
    that object's members: the same whitespace around commas and colons (of an object with one
    member, a space after the comma where there is one after the colon), and where members are on
    lines of their own, `value` indented as they are and its lines ended as theirs are. Raises
    ValueError when `value` is not strict JSON (NaN, infinities) or has no members to take a style
    from."""
    if not entry.members:
        raise ValueError("an empty object has no style to follow")
    last = entry.members[-1]
    colon = text[last.key_end : last.value_start]
    if len(entry.members) > 1:
        before_comma, _, before_key = text[entry.members[-2].value_end : last.key_start].partition(",")
    else:  # no comma to copy: the space after `{`, or on one line a space after the comma where the colon has one
        before_comma, before_key = "", text[entry.start + 1 : last.key_start]
        if "\n" not in before_key:
            before_key = " " if colon[-1:].isspace() else ""
    if "\n" in before_key:
        newline = "\r\n" if "\r\n" in before_key else "\n"  # the neighbours' line ends
        indent = before_key.rpartition("\n")[2]
        closing = text[last.value_end : entry.end - 1]
        outer = closing.rpartition("\n")[2] if "\n" in closing else ""
        unit = indent[len(outer) :] if indent.startswith(outer) else indent
        # json.dumps puts each nested member on a line of its own, `unit` deeper per level; every
        # such line of ours starts at the member's own indentation. Our value's strings are escaped,
        # so each raw newline in the dump is one of those line breaks.
        dumped = json.dumps(value, indent=unit, separators=(before_comma + ",", colon), allow_nan=False)
        rendered = dumped.replace("\n", newline + indent)
    else:
        rendered = json.dumps(value, separators=(before_comma + "," + before_key, colon), allow_nan=False)
    member = f"{before_comma},{before_key}{json.dumps(key)}{colon}{rendered}"
    return text[: last.value_end] + member + text[last.value_end :]


class _Scanner:
    def __init__(self, text: str, max_depth: int) -> None:
        self.text = text
        self.max_depth = max_depth

    def fail(self, pos: int, what: str) -> NotUnderstood:
        return NotUnderstood(f"{what} at offset {pos}")

    def skip_space(self, pos: int) -> int:
        return _WHITESPACE.match(self.text, pos).end()

    def at(self, pos: int, char: str) -> bool:
        return self.text.startswith(char, pos)

    def string(self, pos: int) -> int:
        found = _STRING.match(self.text, pos)
        if found is None:
            raise self.fail(pos, "not a JSON string")
        return found.end()

    def key(self, pos: int) -> tuple[int, int]:
        """A member's key at `pos`: (its end, where its value starts)."""
        end = self.string(pos)
        colon = self.skip_space(end)
        if not self.at(colon, ":"):
            raise self.fail(colon, "no ':' after a key")
        return end, self.skip_space(colon + 1)

    def array(self) -> list[Entry]:
        pos = self.skip_space(0)
        if not self.at(pos, "["):
            raise self.fail(pos, "not a JSON array")
        pos = self.skip_space(pos + 1)
        found: list[Entry] = []
        if self.at(pos, "]"):
            pos += 1
        else:
            while True:
                if self.at(pos, "{"):
                    entry = self.entry(pos)
                    found.append(entry)
                    pos = entry.end
                else:
                    pos = self.value(pos, depth=1)
                pos = self.skip_space(pos)
                if self.at(pos, ","):
                    pos = self.skip_space(pos + 1)
                elif self.at(pos, "]"):
                    pos += 1
                    break
                else:
                    raise self.fail(pos, "no ',' or ']' after an element")
        if self.skip_space(pos) != len(self.text):
            raise self.fail(pos, "text after the array")
        return found

    def entry(self, start: int) -> Entry:
        members: list[Member] = []
        pos = self.skip_space(start + 1)
        if self.at(pos, "}"):
            return Entry(start, pos + 1, ())
        while True:
            key_end, value_start = self.key(pos)
            value_end = self.value(value_start, depth=2)
            is_string = self.at(value_start, '"')
            members.append(
                Member(
                    key=json.loads(self.text[pos:key_end]),
                    key_start=pos,
                    key_end=key_end,
                    value_start=value_start,
                    value_end=value_end,
                    text=json.loads(self.text[value_start:value_end]) if is_string else None,
                )
            )
            pos = self.skip_space(value_end)
            if self.at(pos, ","):
                pos = self.skip_space(pos + 1)
            elif self.at(pos, "}"):
                return Entry(start, pos + 1, tuple(members))
            else:
                raise self.fail(pos, "no ',' or '}' after a member")

    def value(self, pos: int, depth: int) -> int:
        """The end of the JSON value that starts at `pos`, inside `depth` open containers."""
        closers: list[str] = []
        while True:
            char = self.text[pos : pos + 1]
            if char in ("{", "["):
                if depth + len(closers) + 1 > self.max_depth:
                    raise self.fail(pos, f"nested deeper than {self.max_depth} levels")
                closers.append(_CLOSER[char])
                pos = self.skip_space(pos + 1)
                if not self.at(pos, closers[-1]):
                    if char == "{":
                        pos = self.key(pos)[1]
                    continue  # the container's first value starts at pos
                closers.pop()
                pos += 1
            elif char == '"':
                pos = self.string(pos)
            else:
                found = _SCALAR.match(self.text, pos)
                if found is None or not char:
                    raise self.fail(pos, "not a JSON value")
                pos = found.end()
            # A value ended at pos: close what it ends, until a ',' starts the next value.
            while closers:
                pos = self.skip_space(pos)
                if self.at(pos, ","):
                    pos = self.skip_space(pos + 1)
                    if closers[-1] == "}":
                        pos = self.key(pos)[1]
                    break
                if not self.at(pos, closers[-1]):
                    raise self.fail(pos, f"no ',' or '{closers[-1]}'")
                closers.pop()
                pos += 1
            else:
                return pos
