"""The work queue: each key once, now or after its own doubling backoff, reset by forget."""

from __future__ import annotations

import threading

from deviceid_inject.bridge.workqueue import WorkQueue


def test_a_key_added_many_times_before_it_is_taken_is_taken_once():
    queue = WorkQueue(1.0, 60.0)
    for key in ("a", "b", "a", "a"):
        queue.add(key)
    assert [queue.get(0), queue.get(0), queue.get(0)] == ["a", "b", None]


def test_a_key_added_again_while_it_is_worked_on_comes_again():
    queue = WorkQueue(1.0, 60.0)
    queue.add("a")
    assert queue.get(0) == "a"
    queue.add("a")  # a newer object of the Pod arrived meanwhile
    assert queue.get(0) == "a"


def test_each_failure_doubles_that_keys_delay_up_to_the_cap_and_forget_resets_it():
    now = [0.0]
    queue = WorkQueue(0.5, 4.0, lambda: now[0])
    assert [queue.add_rate_limited("a") for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert queue.failures("a") == 5
    assert queue.add_rate_limited("b") == 0.5  # every key has its own
    queue.forget("a")
    assert queue.add_rate_limited("a") == 0.5


def test_a_delayed_key_is_not_taken_before_it_is_due_and_others_are_not_held_up():
    now = [0.0]
    queue = WorkQueue(2.0, 60.0, lambda: now[0])
    queue.add_rate_limited("slow")
    queue.add("fast")
    assert queue.get(0) == "fast"
    assert queue.get(0) is None
    now[0] = 1.9
    assert queue.get(0) is None
    now[0] = 2.0
    assert queue.get(0) == "slow"


def test_get_waits_for_a_producer():
    queue = WorkQueue(1.0, 60.0)
    threading.Timer(0.05, queue.add, args=("a",)).start()
    assert queue.get(5) == "a"
    assert queue.get(0.01) is None


def test_a_key_held_back_is_due_after_its_delay_and_kept_once_however_often_it_is_held():
    """The brake's queueing (issue 23, point 3): a Pod whose events keep coming while it waits
    is one entry, due once."""
    now = [0.0]
    queue = WorkQueue(1.0, 60.0, clock=lambda: now[0])
    for _ in range(1000):
        queue.add_after("a", 8.0)
    assert len(queue) == 1
    now[0] = 7.9
    assert queue.get(0) is None
    now[0] = 8.0
    assert [queue.get(0), queue.get(0)] == ["a", None]
    queue.add_after("a", 1.0)  # held again once taken
    assert len(queue) == 1
