"""Worker failures: who is blamed and avoided, when a request is tried again, and how long the
router's timings are (they come from ``worker.types.MEMBERSHIP``)."""

from __future__ import annotations

from router.config import RouterConfig
from router.dispatch.failures import (
    DeferredAborts,
    MissingWorkers,
    Suspects,
    lost,
    refused,
    should_retry,
    silent,
)
from transfer.messages import BAD_REQUEST, UNAVAILABLE, RequestFailed


def test_the_router_s_timings():
    config = RouterConfig(model_dir="m", redis_url="redis://127.0.0.1:1")
    assert (config.stale_after_s, config.lost_grace_s) == (3.0, 1.0)
    assert Suspects().suspect_s == 5.0
    assert DeferredAborts().abort_memory_s == 600.0
    assert MissingWorkers().lost_grace_s == 1.0


def test_who_is_blamed():
    assert lost("d0").failed_worker == "d0" and lost("d0").status == 503
    assert silent("d0", 2.0).failed_worker is None and silent("d0", 2.0).status == 504
    no_kv = refused(RequestFailed("r1", "p0", UNAVAILABLE, "decode refused the KV"), "d0")
    assert no_kv.failed_worker == "d0" and no_kv.status == 503  # the decode worker did not take it
    bad = refused(RequestFailed("r1", "p0", BAD_REQUEST, "bad"), "d0")
    assert bad.failed_worker is None and bad.status == 400


def test_only_a_blamed_failure_is_retried_while_retries_are_left():
    assert should_retry(lost("d0"), attempt=0, max_retries=1)
    assert not should_retry(lost("d0"), attempt=1, max_retries=1)
    assert not should_retry(silent("d0", 2.0), attempt=0, max_retries=1)


def test_suspects_are_avoided_unless_nobody_else_is_left():
    suspects = Suspects()
    assert suspects.blame(silent("p0", 1.0)) is None
    assert suspects.blame(lost("p0")) == "p0"
    assert suspects.trusted(("p0", "p1"), str) == ("p1",)
    assert suspects.trusted(("p0",), str) == ("p0",)  # the only one: better than nothing
    brief = Suspects(suspect_s=0.0)
    brief.blame(lost("p0"))
    assert brief.trusted(("p0", "p1"), str) == ("p0", "p1")  # its time is up


def test_deferred_aborts_are_delivered_once_and_expire():
    aborts = DeferredAborts()
    aborts.add("tcp://w0", "r1")
    aborts.add("tcp://w0", "r2")
    aborts.add("tcp://w1", "r3")
    assert aborts.take({"tcp://w0"}) == {"tcp://w0": ["r1", "r2"]}
    assert aborts.take({"tcp://w0"}) == {}
    forgetful = DeferredAborts(abort_memory_s=1e-9)
    forgetful.add("tcp://w0", "r1")
    assert forgetful.take({"tcp://w0"}) == {}
