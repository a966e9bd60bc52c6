"""deploy/selection-route against the real API server (kube-apiserver v1.37.2, where
MutatingAdmissionPolicy is GA and on by default) and against Multus's own parser of every v4 version.

The policy and its binding are applied as kustomize builds a user's overlay of the Component,
unchanged but for the opted-in networks. Pods are created through the API (real creates,
read back and deleted; dry-run creates where only admission matters, which run every admission
plugin and store nothing). Three namespaces: `home` and `other` (both matched), `disabled` (labelled
deviceid-inject/selection-route=disabled).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deviceid_inject.annotations import ANNOTATIONS_LIMIT, NETWORKS
from testbed.admission import (
    BINDING_PATH,
    DISABLED_LABEL,
    POLICY_PATH,
    MultusParsers,
    SelectionDefaulter,
    dry_run,
    pod_body,
    policy_objects,
    read_alike,
    refusal,
    remove,
    same_networks_violations,
    selection_of,
    wait_rewrites,
)
from testbed.helpers import PLACEHOLDER, wait_for
from testbed.kube import Api, ApiServer, apply, namespace

pytestmark = [pytest.mark.multus]


@dataclass
class Route:
    """The policy on the test bed's API server, and the namespaces and networks the tests use."""

    api: Api
    home: str
    other: str
    disabled: str
    work: Path

    @property
    def opted(self) -> set[str]:
        return {f"{self.home}/sriov-a", f"{self.home}/sriov-b", f"{self.other}/sriov-x"}

    def networks(self, *extra: str) -> list[str]:
        return [*sorted(self.opted), *extra]

    def configure(self, networks: list[str] | None, probe: str) -> None:
        """Apply the overlay with `networks` (which must opt `probe`, a network of `home`, in) and wait
        until the API server rewrites with them."""
        apply(self.api, policy_objects(self.work / uuid.uuid4().hex[:8], networks))
        wait_rewrites(self.api, self.home, probe)

    def admitted(self, ns: str, selection: str | None, **metadata: Any) -> dict[str, Any]:
        """Create a Pod (for real), read it back as stored, delete it."""
        name = f"p-{uuid.uuid4().hex[:8]}"
        path = f"/api/v1/namespaces/{ns}/pods"
        self.api.post(path, pod_body(name, selection, **metadata))
        try:
            return self.api.get(f"{path}/{name}")
        finally:
            self.api.delete(f"{path}/{name}")


@pytest.fixture(scope="module")
def route(kube: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Route]:
    api = kube.api()
    token = uuid.uuid4().hex[:6]
    made = Route(api, f"adm-{token}", f"adm-{token}-b", f"adm-{token}-off", tmp_path_factory.mktemp("admission"))
    disabled = namespace(made.disabled)
    disabled["metadata"]["labels"] = {DISABLED_LABEL: "disabled"}
    apply(api, [namespace(made.home), namespace(made.other), disabled])
    try:
        made.configure(made.networks(), "sriov-a")
        yield made
    finally:
        remove(api)
        for ns in (made.home, made.other, made.disabled):
            api.delete(f"/api/v1/namespaces/{ns}")


def rewritten_to(route: Route, ns: str, selection: str) -> list[dict[str, Any]]:
    stored = selection_of(route.admitted(ns, selection))
    assert stored is not None and stored != selection, f"{selection!r} was left alone"
    return json.loads(stored)


# --- what is rewritten -----------------------------------------------------------------------------------

P = PLACEHOLDER
SHAPES = {
    "name": ("sriov-a", [{"name": "sriov-a", "deviceID": P}]),
    "namespace/name": ("{home}/sriov-a", [{"name": "sriov-a", "namespace": "{home}", "deviceID": P}]),
    "name@interface": ("sriov-a@net1", [{"name": "sriov-a", "interface": "net1", "deviceID": P}]),
    "namespace/name@interface": (
        "{home}/sriov-a@net1",
        [{"name": "sriov-a", "namespace": "{home}", "interface": "net1", "deviceID": P}],
    ),
    "several networks": (
        "sriov-a@net1,sriov-b@net2",
        [
            {"name": "sriov-a", "interface": "net1", "deviceID": P},
            {"name": "sriov-b", "interface": "net2", "deviceID": P},
        ],
    ),
    "spaces around every part": (
        "  {home} / sriov-a @ net1 ,\tsriov-b \n",
        [
            {"name": "sriov-a", "namespace": "{home}", "interface": "net1", "deviceID": P},
            {"name": "sriov-b", "deviceID": P},
        ],
    ),
    "Unicode white space, as Go's TrimSpace removes it": (
        "\u00a0sriov-a\u3000@\u2028net1\u0085",
        [{"name": "sriov-a", "interface": "net1", "deviceID": P}],
    ),
    "a network of another namespace": (
        "{other}/sriov-x@net1",
        [{"name": "sriov-x", "namespace": "{other}", "interface": "net1", "deviceID": P}],
    ),
    "only the opted-in element gets the placeholder": (
        "plain@net1, sriov-a@net2, {other}/sriov-a",
        [
            {"name": "plain", "interface": "net1"},
            {"name": "sriov-a", "interface": "net2", "deviceID": P},
            {"name": "sriov-a", "namespace": "{other}"},
        ],
    ),
    "one network twice": (
        "sriov-a@net1,sriov-a@net2",
        [
            {"name": "sriov-a", "interface": "net1", "deviceID": P},
            {"name": "sriov-a", "interface": "net2", "deviceID": P},
        ],
    ),
    "an empty namespace is the Pod's": ("/sriov-a@net1", [{"name": "sriov-a", "interface": "net1", "deviceID": P}]),
    "an empty interface is none": ("sriov-a@", [{"name": "sriov-a", "deviceID": P}]),
    "a 15-character interface": (
        "sriov-a@abcdefghijklmno",
        [{"name": "sriov-a", "interface": "abcdefghijklmno", "deviceID": P}],
    ),
}


def filled(value: Any, route: Route) -> Any:
    """`value` with {home} and {other} filled in, in every string of it."""
    if isinstance(value, str):
        return value.replace("{home}", route.home).replace("{other}", route.other)
    if isinstance(value, list):
        return [filled(v, route) for v in value]
    return {k: filled(v, route) for k, v in value.items()}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_text_form_shape_is_rewritten_into_the_json_form_with_the_placeholder(
    route: Route, multus_parsers: MultusParsers, shape: str
):
    selection, expected = (filled(v, route) for v in SHAPES[shape])
    stored = selection_of(route.admitted(route.home, selection))
    assert stored is not None and json.loads(stored) == expected
    # ... and every Multus v4 reads the same networks, namespaces and interfaces from it.
    assert same_networks_violations(multus_parsers, route.home, selection, stored, route.opted) == []


def test_a_pod_in_another_namespace_names_that_namespace_s_networks(route: Route):
    """No namespace in the text means the Pod's, for the opt-in as for Multus: `sriov-x` is opted in
    in `other` only, `sriov-a` in `home` only."""
    assert rewritten_to(route, route.other, "sriov-x@net1") == [{"name": "sriov-x", "interface": "net1", "deviceID": P}]
    assert selection_of(route.admitted(route.other, "sriov-a@net1")) == "sriov-a@net1"
    assert selection_of(route.admitted(route.home, "sriov-x@net1")) == "sriov-x@net1"


def test_a_namespace_labelled_disabled_is_left_alone(route: Route):
    selection = f"{route.home}/sriov-a@net1"
    assert rewritten_to(route, route.other, selection)[0]["deviceID"] == P  # the same Pod elsewhere
    assert selection_of(route.admitted(route.disabled, selection)) == selection


def test_nothing_but_the_selection_changes(route: Route):
    """The Pod with its text form and the Pod already written in the JSON form the policy makes of it
    (which the policy leaves alone) are stored alike, in every field the API server does not make up."""
    metadata = {"labels": {"app": "upf"}, "annotations": {"example.com/other": "kept, as/is@net1"}}
    text = dry_run(route.api, route.home, pod_body("same", "sriov-a@net1, plain", **metadata))
    rewritten = selection_of(text)
    assert rewritten is not None and rewritten.startswith("[")
    json_form = dry_run(route.api, route.home, pod_body("same", rewritten, **metadata))
    assert comparable(text) == comparable(json_form)
    assert text["metadata"]["annotations"]["example.com/other"] == "kept, as/is@net1"


def comparable(pod: dict[str, Any]) -> dict[str, Any]:
    """A stored Pod less what the API server makes up for each create (uid, times)."""
    meta = {k: v for k, v in pod["metadata"].items() if k not in ("uid", "creationTimestamp")}
    meta["managedFields"] = [{k: v for k, v in f.items() if k != "time"} for f in meta.get("managedFields", [])]
    return {**pod, "metadata": meta}


# --- what is left alone, and always admitted ---------------------------------------------------------------


@pytest.mark.parametrize(
    "selection",
    ["plain", "plain@net1, other-net", "{other}/sriov-a@net1", "{home}/sriov-x", "kube-system/sriov-a"],
)
def test_a_selection_naming_no_opted_in_network_is_left_alone(route: Route, selection: str):
    selection = filled(selection, route)
    assert selection_of(route.admitted(route.home, selection)) == selection


@pytest.mark.parametrize(
    "selection",
    [
        '[{"name":"sriov-a","interface":"net1"}]',
        '[{"name":"sriov-a","interface":"net1","deviceID":"0000:3b:02.3"}]',  # a deviceID of its own
        '[{"name":"sriov-a","deviceID":"0000:00:00.0"}]',
        ' [ {"name": "sriov-a", "namespace": "{home}"} ] ',
        '{"name":"sriov-a"}',  # not a list: Multus fails the Pod, as it would have anyway
        'sriov-a"',  # a quote: Multus reads it as JSON and fails
    ],
)
def test_the_json_form_is_left_alone(route: Route, selection: str):
    selection = filled(selection, route)
    assert selection_of(route.admitted(route.home, selection)) == selection


MALFORMED = [
    "",
    " ",
    ",",
    "sriov-a,",
    ",sriov-a",
    "sriov-a,,sriov-b",
    "{home}/",
    "/",
    "@net1",
    "{home}/@net1",
    "sriov-a@net1@net2",
    "a/{home}/sriov-a",
    "Sriov-a",
    "sriov_a",
    "sriov.a",
    "-sriov-a",
    "sriov-a-",
    "sri ov-a",
    "sriov-a\u200b",  # a zero-width space: no white space to Go
    "sriov-a@Net1",  # v4.1 and later take it, v4.0.2 refuses it
    "sriov-a@net_1",
    "sriov-a@eth0.100",
    "sriov-a@abcdefghijklmnop",  # 16 characters: v4.0.2 takes it, v4.1 and later refuse it
    "sriov-a@net 1",
]


@pytest.mark.parametrize("selection", MALFORMED)
def test_a_malformed_selection_is_left_alone_and_the_pod_admitted(
    route: Route, multus_parsers: MultusParsers, selection: str
):
    selection = filled(selection, route)
    # Malformed to Multus itself: a version refuses it, the versions disagree, or a name is empty.
    assert not read_alike(multus_parsers.parse(route.home, selection))
    stored = route.admitted(route.home, selection)
    assert selection_of(stored) == selection


def test_a_pod_without_a_selection_gets_none(route: Route):
    pod = route.admitted(route.home, None, annotations={"example.com/other": "sriov-a"})
    assert pod["metadata"]["annotations"] == {"example.com/other": "sriov-a"}


def test_a_selection_longer_than_4_kib_is_left_alone(route: Route):
    """The policy's work grows faster than the selection; past 4096 characters it leaves it alone."""
    at_limit = ",".join(["sriov-a@net1"] * 315) + ",p"
    assert len(at_limit) == 4096
    assert rewritten_to(route, route.home, at_limit)[0] == {"name": "sriov-a", "interface": "net1", "deviceID": P}
    past = at_limit + "p"
    assert selection_of(route.admitted(route.home, past)) == past


def test_a_rewrite_past_the_annotation_limit_is_not_made(route: Route):
    """The JSON form is longer; the API server refuses a Pod whose annotations pass 256 KiB (in
    bytes). A rewrite that would pass it is not made, so the Pod is admitted as written: counted in
    bytes (the filler is 2 bytes a character), to the byte."""
    selection = "sriov-a@net1, sriov-b@net2"
    rewritten = selection_of(dry_run(route.api, route.home, pod_body("probe", selection)))
    assert rewritten is not None and rewritten != selection
    filler_key = "example.com/filler"
    room = ANNOTATIONS_LIMIT - len(NETWORKS) - len(rewritten.encode()) - len(filler_key)  # filler bytes that fit
    assert room % 2 == 0

    def with_filler(size: int) -> dict[str, Any]:
        return route.admitted(route.home, selection, annotations={filler_key: "é" * (size // 2) + "x" * (size % 2)})

    assert selection_of(with_filler(room)) == rewritten  # exactly 256 KiB after the rewrite
    assert selection_of(with_filler(room + 1)) == selection  # one byte more: left alone, and admitted


# --- idempotence, and errors of the policy's own -------------------------------------------------------------


def test_admitting_the_policys_output_again_changes_nothing(route: Route):
    once = selection_of(route.admitted(route.home, "sriov-a@net1, plain"))
    assert once is not None and once.count(P) == 1
    assert selection_of(route.admitted(route.home, once)) == once


def test_a_selection_a_later_webhook_sets_is_rewritten_once(route: Route):
    """A defaulting webhook (the admission chain runs it after every policy) gives the Pod a text
    selection: the policy runs again after it (reinvocationPolicy IfNeeded, and no matchConditions that
    would have skipped it the first time) and the Pod ends with one placeholder. The same policy with
    reinvocationPolicy Never leaves the webhook's selection as it set it."""
    defaulter = SelectionDefaulter(route.work / "webhook", route.home, "sriov-a@net1").start(route.api)
    probe = pod_body("probe", None, labels={"default-selection": "yes"})
    try:
        wait_for(lambda: selection_of(dry_run(route.api, route.home, probe)), 30, "the webhook's selection", 0.2)
        pod = route.admitted(route.home, None, labels={"default-selection": "yes"})
        assert json.loads(selection_of(pod) or "null") == [{"name": "sriov-a", "interface": "net1", "deviceID": P}]
        shipped = route.api.get(POLICY_PATH)
        assert shipped["spec"]["reinvocationPolicy"] == "IfNeeded" and "matchConditions" not in shipped["spec"]
        route.api.put(POLICY_PATH, {**shipped, "spec": {**shipped["spec"], "reinvocationPolicy": "Never"}})
        try:
            as_set = wait_for(lambda: selection_of(dry_run(route.api, route.home, probe)) == "sriov-a@net1", 30,
                              "the webhook's selection left alone under Never", 0.2)  # fmt: skip
            assert as_set
        finally:
            route.api.put(POLICY_PATH, {**shipped, "metadata": route.api.get(POLICY_PATH)["metadata"]})
        wait_for(lambda: selection_of(dry_run(route.api, route.home, probe)) != "sriov-a@net1", 30, "IfNeeded", 0.2)
    finally:
        defaulter.stop(route.api)


def test_the_policys_own_errors_never_block_pod_creation(route: Route):
    """A real failure of the shipped policy: an opt-in list of 4000 networks (the API server takes
    expressions of up to 100000 characters) makes a selection of 300 elements cost more than CEL's
    per-expression limit. With failurePolicy Fail the Pod is refused; as shipped (Ignore) it is
    admitted exactly as written."""
    selection = ",".join(f"sriov-a@n{i}" for i in range(300))
    assert len(selection) <= 4096
    body = pod_body("probe", selection)
    fillers = [f"ns-{i}/net-{i}" for i in range(4000)]
    try:
        route.configure(route.networks(f"{route.home}/probe-big", *fillers), "probe-big")
        shipped = route.api.get(POLICY_PATH)
        assert shipped["spec"]["failurePolicy"] == "Ignore"
        route.api.put(POLICY_PATH, {**shipped, "spec": {**shipped["spec"], "failurePolicy": "Fail"}})
        refused = wait_for(lambda: refusal(route.api, route.home, body), 30, "refused under Fail", 0.2)
        assert refused.status == 403 and "cost" in str(refused.body), refused.body
        route.api.put(POLICY_PATH, {**shipped, "metadata": route.api.get(POLICY_PATH)["metadata"]})
        wait_for(lambda: refusal(route.api, route.home, body) is None, 30, "admitted under Ignore", 0.2)
        assert selection_of(route.admitted(route.home, selection)) == selection
    finally:
        route.configure(route.networks(f"{route.home}/probe-back"), "probe-back")


def test_as_shipped_the_policy_changes_no_pod(route: Route):
    """The Component without an overlay's list: nothing opted in, every Pod admitted as written."""
    probe = pod_body("probe", "sriov-a")
    try:
        apply(route.api, policy_objects(route.work / "as-shipped", None))
        wait_for(lambda: selection_of(dry_run(route.api, route.home, probe)) == "sriov-a", 30, "left alone", 0.2)
        assert selection_of(route.admitted(route.home, "sriov-a@net1")) == "sriov-a@net1"
    finally:
        route.configure(route.networks(f"{route.home}/probe-again"), "probe-again")


def test_a_list_changed_while_unbound_takes_effect_when_bound_again(route: Route):
    """What breaks a ConfigMap as paramKind on kube-apiserver 1.37.2 (its informer stops while no
    binding uses the kind, and a later binding reads a stale copy): the binding deleted for longer than
    the API server's policy refresh, the list changed, the binding back. The new list is what runs."""
    route.api.delete(BINDING_PATH)
    probe = pod_body("probe", "sriov-a")
    wait_for(lambda: selection_of(dry_run(route.api, route.home, probe)) == "sriov-a", 30, "unbound", 0.2)
    time.sleep(3)  # several refreshes with no binding at all
    policy, binding = policy_objects(route.work / "while-unbound", [f"{route.home}/later"])
    try:
        apply(route.api, [policy])
        apply(route.api, [binding])
        wait_rewrites(route.api, route.home, "later")
        assert selection_of(route.admitted(route.home, "sriov-a")) == "sriov-a"  # off the list now
    finally:
        route.configure(route.networks(f"{route.home}/probe-bound"), "probe-bound")


# --- the differential test: the policy against Multus's own parser ---------------------------------------------

# White space as Go's strings.TrimSpace (and CEL's trim()) removes it, and two characters that look so.
SPACES = ["", " ", "  ", "\t", "\n", "\v", "\f", "\r", "\u0085", "\u00a0", "\u2003", "\u2028", "\u3000"]
NOT_SPACES = ["\u200b", "\ufeff"]
NAMES = ["sriov-a", "sriov-b", "sriov-x", "plain", "n", "a-b", "9"]
NOT_NAMES = ["", "Sriov-a", "sriov_a", "-a", "a-", "a.b"]
INTERFACES = ["net1", "eth0", "", "n", "abcdefghijklmno"]
NOT_INTERFACES = ["Net1", "net_1", "eth0.1", "abcdefghijklmnop", "net 1"]


NAMESPACE_DEFECTS = ["Upper", "a_b", "a.b", "-a"]
DEFECTS = (*[None] * 6, "namespace", "name", "interface", "space")  # mostly none: near the boundary


@st.composite
def selections(draw: st.DrawFn, home: str, other: str) -> str:
    """A network selection over the text form's grammar: elements from its valid parts (with every kind
    of white space Go trims), some with one defective part (one of a list, or random characters), and
    now and then a character that is no part of the grammar at all."""

    def part(valid: list[Any], invalid: list[str], alphabet: str, defective: bool) -> Any:
        if defective:
            return draw(st.one_of(st.sampled_from(invalid), st.text(alphabet=alphabet, min_size=1, max_size=17)))
        return draw(st.sampled_from(valid))

    elements = []
    for defect in draw(st.lists(st.sampled_from(DEFECTS), min_size=1, max_size=4)):
        namespace = part(
            [None, None, home, other, "", "kube-system"], NAMESPACE_DEFECTS, "az09-_.A/", defect == "namespace"
        )
        name = part(NAMES, NOT_NAMES, "az09-_.A@", defect == "name")
        interface = part([None, *INTERFACES], NOT_INTERFACES, "ac01-_ /", defect == "interface")
        pads = [draw(st.sampled_from(SPACES)) for _ in range(6)]
        if defect == "space":
            pads[draw(st.integers(0, 5))] += draw(st.sampled_from(NOT_SPACES))
        text = pads[0]
        if namespace is not None:
            text += namespace + pads[1] + "/" + pads[2]
        text += name + pads[3]
        if interface is not None:
            text += "@" + pads[4] + interface + pads[5]
        elements.append(text)
    selection = ",".join(elements)
    if draw(st.sampled_from([False] * 7 + [True])):
        at = draw(st.integers(0, len(selection)))
        selection = selection[:at] + draw(st.sampled_from(list('[{"@/,:é'))) + selection[at:]
    return selection


def test_every_rewrite_means_to_multus_what_the_original_meant(route: Route, multus_parsers: MultusParsers):
    """Hypothesis over the grammar; the policy as the API server runs it (dry-run creates), each
    selection and its rewrite parsed by Multus v4.0.2, v4.1.4, v4.2.3 and v4.3.0. A rewrite names the
    same networks, namespaces and interfaces, with the placeholder exactly on the opted-in ones; a
    selection left alone is JSON, or one that not every Multus reads alike with non-empty names, or
    one that names no opted-in network."""
    seen: Counter[str] = Counter()

    @settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(selection=selections(route.home, route.other), ns=st.sampled_from([route.home, route.other]))
    def check(selection: str, ns: str) -> None:
        stored = selection_of(dry_run(route.api, ns, pod_body("differential", selection)))
        parsed = multus_parsers.parse(ns, selection)
        readable = read_alike(parsed)
        opted = readable and any(
            f"{e['namespace']}/{e['name']}" in route.opted for e in next(iter(parsed.values())).networks
        )
        if stored != selection:
            seen["rewritten"] += 1
            assert stored is not None
            assert same_networks_violations(multus_parsers, ns, selection, stored, route.opted) == []
            return
        if any(c in selection for c in '[{"'):
            seen["left alone: JSON to Multus"] += 1
        elif not readable:
            seen["left alone: malformed to some Multus"] += 1
        else:
            assert not opted, f"{selection!r}: every Multus reads it alike and it names an opted-in network"
            seen["left alone: no opted-in network"] += 1

    check()
    print(f"\ndifferential: {sum(seen.values())} selections: {dict(seen)}")
    assert seen["rewritten"] >= 50  # the grammar reaches the rewrite often enough to mean something
