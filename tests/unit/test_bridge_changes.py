"""The bridge's decisions (bridge/changes.py), without a server: which entry gets which device-info, what is
never touched, what is refused."""

from __future__ import annotations

import json

import pytest

from deviceid_inject.annotations import ANNOTATIONS_LIMIT, NETWORK_STATUS, NETWORKS_STATUS
from deviceid_inject.bridge import changes
from deviceid_inject.bridge.changes import Refused, pick, with_device_info
from deviceid_inject.bridge.records import Known
from testbed.bridge import DEVICE_PLUGINS, OTHER_VF, VF, record


def status(*entries: dict) -> str:
    return json.dumps(list(entries), indent=4)


DEFAULT = {"name": "default/kindnet", "interface": "eth0", "ips": ["10.244.1.5"], "mac": "aa:bb", "default": True}
N6 = {"name": "ran/n6-dpdk", "interface": "net1", "ips": ["10.10.0.5"], "mac": "02:00:00:00:00:01", "dns": {}}


def test_adds_device_info_to_our_entry_and_nothing_else():
    raw = status(DEFAULT, N6)
    new = with_device_info(raw, [Known(record(), 1)])
    assert json.loads(new) == [DEFAULT, {**N6, "device-info": VF}]


@pytest.mark.parametrize("key", ["device-info", "Device-Info", "DEVICE-INFO"])
def test_an_entry_with_device_info_is_never_touched(key):
    """Under any case of its name: Go's decoder reads each as the field device-info, and ours added
    after it would replace what another writer gave."""
    raw = status(DEFAULT, {**N6, key: DEVICE_PLUGINS})
    assert with_device_info(raw, [Known(record(), 1)]) is None


@pytest.mark.parametrize(
    "members",
    [
        {"Device-Info": None},
        {"device-info": None},
        {"device-info": "0000:3b:02.3"},
        {"DEVICE-INFO": []},
        {"device-info": 1},
        {"device-info": DEVICE_PLUGINS, "Device-Info": None},  # Go keeps the last: nil
    ],
    ids=["Null", "null", "string", "list", "number", "object-then-null"],
)
def test_device_info_that_is_not_an_object_is_no_device_info(members):
    """Issue 23, point 7: `"Device-Info": null` counted as device-info present, so the Pod never got
    ours; Go readers see none there. Ours is added after it, the member every reader keeps."""
    raw = status(DEFAULT, {**N6, **members})
    new = with_device_info(raw, [Known(record(), 1)])
    kept = raw[: raw.rindex("}")].rstrip()
    assert new is not None and new.startswith(kept)  # every byte of it kept
    assert new[len(kept) :].lstrip(", \n").startswith('"device-info": {')  # ours, the last member
    assert json.loads(new)[1]["device-info"] == VF


def test_device_info_null_then_an_object_is_device_info():
    raw = status(DEFAULT, {**N6, "Device-Info": None, "device-info": DEVICE_PLUGINS})
    assert with_device_info(raw, [Known(record(), 1)]) is None


@pytest.mark.parametrize("raw", [None, "", "[]", status(DEFAULT), status({**N6, "interface": "net2"}), "[1, [2]]"])
def test_nothing_to_do_gives_none(raw):
    assert with_device_info(raw, [Known(record(), 1)]) is None


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        json.dumps({"name": "x"}),  # an object, not a list
        '[{"interface": "net1", "x": NaN}]',  # not JSON, though Python's json.loads takes it
        '[{"interface": "net1"},]',
        '[{"interface": "net1"}] trailing',
        '[{"interface":"net1","x":' + "[" * 3000 + "]" * 3000 + "}]",  # the 6 KB value
        "[" * 100_000,
    ],
    ids=["text", "object", "nan", "trailing-comma", "trailing-text", "nested-3000", "open-100000"],
)
def test_what_is_not_understood_is_refused_and_never_raises_anything_else(raw):
    with pytest.raises(Refused) as refused:
        with_device_info(raw, [Known(record(), 1)])
    assert refused.value.reason == "unparsable"


def test_no_record_no_change():
    assert with_device_info(status(DEFAULT, N6), []) is None


def test_each_interface_gets_its_own_record():
    n7 = {"name": "ran/n7", "interface": "net2", "mac": "02:00:00:00:00:02"}
    known = [Known(record(ifname="net1"), 1), Known(record(ifname="net2", network="n7", device_info=OTHER_VF), 1)]
    new = json.loads(with_device_info(status(DEFAULT, N6, n7), known))
    assert new[1]["device-info"] == VF
    assert new[2]["device-info"] == OTHER_VF


def test_of_two_sandboxes_the_newest_record_wins():
    old, new = Known(record("sandbox1", device_info=OTHER_VF), 1), Known(record("sandbox2"), 2)
    assert pick([old, new], N6).device_info == VF
    assert pick([new, old], N6).device_info == VF


def test_a_record_of_the_named_network_beats_a_newer_one_of_another():
    ours = Known(record("sandbox1", network="n6-dpdk"), 1)
    other = Known(record("sandbox2", network="other", device_info=OTHER_VF), 2)
    assert pick([ours, other], N6).device_info == VF


# --- every byte of another writer's stays (issue 15, defects 4 and 5) ---------------------------------

MULTUS_STYLE = (
    "[{\n"
    '    "name": "default/kindnet",\n'
    '    "interface": "eth0",\n'
    '    "ips": [\n'
    '        "10.244.1.5"\n'
    "    ],\n"
    '    "default": true,\n'
    '    "dns": {}\n'
    "},{\n"
    '    "name": "ran/n6-dpdk",\n'
    '    "interface": "net1",\n'
    '    "huge": 1e400,\n'
    '    "precise": 0.1000000000000000001,\n'
    '    "hundred": 1E2,\n'
    '    "mac": "02:00:00:00:00:01",\n'
    '    "dns": {}\n'
    "}]"
)
OUR_MEMBER_MULTUS_STYLE = (
    ',\n    "device-info": {\n'
    '        "type": "pci",\n'
    '        "version": "1.1.0",\n'
    '        "pci": {\n'
    '            "pci-address": "0000:3b:02.3",\n'
    '            "pf-pci-address": "0000:3b:00.0"\n'
    "        }\n"
    "    }"
)


def test_other_writers_numbers_and_layout_stay_byte_for_byte():
    """Issue 15, defect 4: 1e400 stayed `Infinity` (which Go, and so Multus, refuses),
    0.1000000000000000001 became 0.1 and 1E2 100.0. Now the value written is the value read
    with our member inserted, in the style of the entry's own members."""
    new = with_device_info(MULTUS_STYLE, [Known(record(), 1)])
    assert new == MULTUS_STYLE[:-3] + OUR_MEMBER_MULTUS_STYLE + "\n}]"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            '[{"name":"ran/n6-dpdk","interface":"net1"}]',
            '[{"name":"ran/n6-dpdk","interface":"net1","device-info":{"type":"pci","version":"1.1.0",'
            '"pci":{"pci-address":"0000:3b:02.3","pf-pci-address":"0000:3b:00.0"}}}]',
        ),
        (
            '[ { "interface" : "net1" , "x" : [ 1 ] } ]',
            '[ { "interface" : "net1" , "x" : [ 1 ] , "device-info" : {"type" : "pci" , "version" : "1.1.0" , '
            '"pci" : {"pci-address" : "0000:3b:02.3" , "pf-pci-address" : "0000:3b:00.0"}} } ]',
        ),
        (
            '[\n\t{\n\t\t"interface": "net1"\n\t}\n]',
            '[\n\t{\n\t\t"interface": "net1",\n\t\t"device-info": {\n\t\t\t"type": "pci",\n\t\t\t"version": '
            '"1.1.0",\n\t\t\t"pci": {\n\t\t\t\t"pci-address": "0000:3b:02.3",\n\t\t\t\t"pf-pci-address": '
            '"0000:3b:00.0"\n\t\t\t}\n\t\t}\n\t}\n]',
        ),
    ],
    ids=["compact", "spaced", "tabs"],
)
def test_our_member_follows_the_style_of_its_neighbours(raw, expected):
    assert with_device_info(raw, [Known(record(), 1)]) == expected


def test_a_compact_annotation_stays_compact_and_under_the_limit():
    """Issue 15, defect 5: a compact 174,218-byte network-status re-indented by four spaces was
    300,425 bytes, over the API server's 262,144-byte limit: refused at every resync."""
    raw = compact_status(174_218)
    new = with_device_info(raw, [Known(record(), 1)])
    assert len(new) - len(raw) == len(
        ',"device-info":{"type":"pci","version":"1.1.0","pci":{"pci-address":"0000:3b:02.3",'
        '"pf-pci-address":"0000:3b:00.0"}}'
    )
    assert changes.changes({NETWORK_STATUS: raw}, [Known(record(), 1)]) == {NETWORK_STATUS: new}


def compact_status(size: int) -> str:
    """A compact network-status of exactly `size` characters: many other entries, ours last."""
    ours = json.dumps({"name": "ran/n6-dpdk", "interface": "net1"}, separators=(",", ":"))
    entries, i = [], 0
    while True:
        entry = json.dumps(
            {"name": f"ran/other-{i}", "interface": f"o{i}", "mac": "02:00:00:00:00:01"}, separators=(",", ":")
        )
        if 2 + sum(len(e) + 1 for e in [*entries, entry]) + len(ours) > size:
            break
        entries.append(entry)
        i += 1
    text = "[" + ",".join([*entries, ours]) + "]"
    pad = size - len(text)
    return text[:1] + " " * pad + text[1:]


def test_a_change_that_would_exceed_the_annotation_limit_is_refused_before_the_api_server_does():
    raw = compact_status(200_000)
    filler = "x" * (ANNOTATIONS_LIMIT - len(raw) - len(NETWORK_STATUS) - len("filler") - 50)
    annotations = {NETWORK_STATUS: raw, "filler": filler}
    with pytest.raises(Refused) as refused:
        changes.changes(annotations, [Known(record(), 1)])
    assert refused.value.reason == "too-large"


def test_a_value_larger_than_any_pods_annotations_is_not_scanned():
    with pytest.raises(Refused) as refused:
        with_device_info("[" + " " * ANNOTATIONS_LIMIT + "]", [Known(record(), 1)])
    assert refused.value.reason == "too-large"


def test_two_entries_claiming_our_interface_are_left_alone_unless_one_names_our_network():
    other = {"name": "ran/other", "interface": "net1"}
    assert with_device_info(status(other, {**other, "name": "ran/third"}), [Known(record(), 1)]) is None
    new = json.loads(with_device_info(status(other, N6), [Known(record(), 1)]))
    assert "device-info" not in new[0]
    assert new[1]["device-info"] == VF


# --- --legacy-networks-status -------------------------------------------------------------------------


def test_the_v3_key_is_kept_equal_to_network_status_only_when_asked():
    raw = status(DEFAULT, N6)
    known = [Known(record(), 1)]
    new = with_device_info(raw, known)
    annotations = {NETWORK_STATUS: raw}
    assert changes.changes(annotations, known) == {NETWORK_STATUS: new}
    assert changes.changes(annotations, known, legacy=True) == {
        NETWORK_STATUS: new,
        NETWORKS_STATUS: new,
    }
    # a Pod without a record of ours: network-status is copied as it is
    assert changes.changes(annotations, [], legacy=True) == {NETWORKS_STATUS: raw}
    assert changes.changes({**annotations, NETWORKS_STATUS: raw}, [], legacy=True) == {}
    # no network-status: the bridge never removes the v3 key, nor writes one
    assert changes.changes({NETWORKS_STATUS: raw}, [], legacy=True) == {}


def test_the_v3_copy_is_dropped_where_it_alone_would_exceed_the_limit():
    raw = compact_status(140_000)
    known = [Known(record(), 1)]
    wanted = changes.changes({NETWORK_STATUS: raw}, known, legacy=True)
    assert list(wanted) == [NETWORK_STATUS]
