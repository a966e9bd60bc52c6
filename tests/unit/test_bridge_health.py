"""Health: alive while every loop beats within stale_after; ready once synced and while the API
server takes our credentials."""

from __future__ import annotations

import pytest

from deviceid_inject.bridge.health import PATCH, Health


def test_a_loop_that_stops_beating_is_named_once_stale():
    now = [100.0]
    health = Health(("watch", "worker"), 10.0, lambda: now[0])
    assert health.alive() == (True, "ok")  # a loop gets stale_after for its first beat
    now[0] += 9
    health.beat("worker")
    now[0] += 2
    ok, why = health.alive()
    assert not ok and "watch (11 s)" in why and "worker" not in why
    health.beat("watch")
    assert health.alive() == (True, "ok")


def test_a_beat_of_an_unknown_loop_is_a_bug():
    with pytest.raises(KeyError):
        Health(("watch",), 1.0).beat("wacth")


def test_ready_needs_the_first_list_and_credentials_the_server_takes():
    health = Health(("watch",), 1.0)
    assert health.ready() == (False, "not synced with the API server yet")
    health.synced.set()
    assert health.ready() == (True, "ok")
    health.refused("API error 401: Unauthorized")
    assert health.ready() == (False, "the API server refuses our credentials: API error 401: Unauthorized")
    health.accepted()
    assert health.ready() == (True, "ok")


def test_a_refused_patch_is_cleared_by_a_patch_that_goes_through_not_by_the_watch():
    """Issue 23, point 4: the open watch kept answering while every patch got 403."""
    health = Health(("watch",), 1.0)
    health.synced.set()
    health.refused("API error 403: forbidden", PATCH)
    health.accepted()  # an event on the watch
    assert health.ready() == (False, "the API server refuses our patches: API error 403: forbidden")
    health.accepted(PATCH)
    assert health.ready() == (True, "ok")
