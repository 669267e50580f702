"""The event loop: virtual time order, ties in scheduling order, no running into the past."""

from __future__ import annotations

from sim.events import EventLoop


def test_events_run_in_time_order_and_ties_in_scheduling_order():
    loop, seen = EventLoop(), []
    for time_s, name in [(2.0, "c"), (1.0, "a"), (1.0, "b"), (0.5, "first")]:
        loop.at(time_s, lambda n=name: seen.append((loop.now, n)))
    loop.run()
    assert seen == [(0.5, "first"), (1.0, "a"), (1.0, "b"), (2.0, "c")]


def test_an_event_scheduled_in_the_past_runs_now_and_after_is_relative():
    loop, seen = EventLoop(), []

    def at_one() -> None:
        loop.at(0.2, lambda: seen.append(("past", loop.now)))
        loop.after(0.5, lambda: seen.append(("later", loop.now)))

    loop.at(1.0, at_one)
    loop.run()
    assert seen == [("past", 1.0), ("later", 1.5)]


def test_run_until_leaves_later_events_queued():
    loop, seen = EventLoop(), []
    loop.at(1.0, lambda: seen.append(1))
    loop.at(3.0, lambda: seen.append(3))
    loop.run(until_s=2.0)
    assert seen == [1] and len(loop) == 1
    loop.run()
    assert seen == [1, 3] and loop.num_events == 2
