"""jsontext: entries and members found by position in another writer's JSON text, and one member
added in the style of its neighbours, without decoding what is not needed."""

from __future__ import annotations

import json

import pytest

from deviceid_inject.bridge.jsontext import NotUnderstood, add_member, entries


def test_entries_and_members_are_found_where_they_are():
    text = '[ {"interface": "net1", "n": 1e400}, 7, {"interf\\u0061ce": "net2", "interface": "net3"} ]'
    first, second = entries(text, 64)
    assert text[first.start : first.end] == '{"interface": "net1", "n": 1e400}'
    assert [m.key for m in first.members] == ["interface", "n"]
    assert first.get("interface").text == "net1"
    assert first.get("n").text is None  # only strings are decoded
    assert text[first.members[1].value_start : first.members[1].value_end] == "1e400"
    assert second.get("interface").text == "net3"  # of duplicates, the last: as decoders read it


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "[",
        "]",
        "[1,]",
        "[,1]",
        "[01]",
        "[1.]",
        "[.5]",
        "[-]",
        "[+1]",
        "[NaN]",
        "[Infinity]",
        "[tru]",
        "[truex]",
        '["\t"]',  # a raw control character
        '["\\x"]',
        '["\\u12"]',
        '[{"a" 1}]',
        '[{"a":1,}]',
        "[{1: 2}]",
        "[] []",
        "\ufeff[]",
        "{}",
        '"text"',
    ],
)
def test_anything_but_rfc_8259_json_is_not_understood(text):
    with pytest.raises(NotUnderstood):
        entries(text, 64)


@pytest.mark.parametrize(
    "text", ["[]", " [ ] ", "\n[\r\n\t]\n", '[1, -0.5e+3, true, null, "a\\u00e9\\n", [], {}, [[{}]]]', "[{}]"]
)
def test_json_is_understood(text):
    entries(text, 64)


def test_depth_is_a_parameter_not_the_interpreters_recursion_limit():
    value = "[" + "[" * 62 + "]" * 62 + "]"  # 63 levels
    entries(value, 63)
    with pytest.raises(NotUnderstood, match="nested deeper than 62 levels"):
        entries(value, 62)
    with pytest.raises(NotUnderstood):
        entries("[" * 200_000 + "]" * 200_000, 64)  # far beyond what json.loads survives


def test_a_member_is_added_after_the_last_one_and_nothing_else_moves():
    text = '[{"a": 1,  "b": [2]}, {"c": 3}]'
    first, second = entries(text, 64)
    assert add_member(text, second, "d", {"e": [1, 2]}) == '[{"a": 1,  "b": [2]}, {"c": 3, "d": {"e": [1, 2]}}]'
    assert add_member(text, first, "d", 4) == '[{"a": 1,  "b": [2],  "d": 4}, {"c": 3}]'


def test_a_member_on_lines_of_its_own_is_indented_as_its_neighbours():
    text = '[\n  {\n    "a": 1\n  }\n]'
    (entry,) = entries(text, 64)
    new = add_member(text, entry, "d", {"e": {"f": 1}})
    assert new == '[\n  {\n    "a": 1,\n    "d": {\n      "e": {\n        "f": 1\n      }\n    }\n  }\n]'
    assert json.loads(new) == [{"a": 1, "d": {"e": {"f": 1}}}]


def test_a_member_added_among_crlf_lines_ends_its_lines_with_crlf():
    text = '[\r\n  {\r\n    "a": 1\r\n  }\r\n]'
    (entry,) = entries(text, 64)
    new = add_member(text, entry, "d", {"e": 1})
    assert new == '[\r\n  {\r\n    "a": 1,\r\n    "d": {\r\n      "e": 1\r\n    }\r\n  }\r\n]'
    assert "\n" not in new.replace("\r\n", "")


def test_a_member_name_is_matched_as_go_matches_it_when_asked():
    (entry,) = entries('[{"Device-INFO": {}, "interface": "net1", "device-Info": null}]', 64)
    assert entry.get("device-info") is None
    assert entry.get_folded("device-inf") is None
    member = entry.get_folded("device-info")
    assert member is not None and member.key == "device-Info"  # the last, as Go keeps it


def test_only_strict_json_is_added():
    text = '[{"a": 1}]'
    (entry,) = entries(text, 64)
    with pytest.raises(ValueError):
        add_member(text, entry, "d", float("nan"))
