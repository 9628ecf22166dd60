"""The fair share: what one enclave may hold in the relay, alone and among others."""

from __future__ import annotations

import asyncio

import pytest

from parent_side.fairshare import SAMPLE, FairShare

KIB = 1024
MIB = 1024 * KIB
STEP = 0.125  # a rate sample's length (at least SAMPLE; exact in binary, unlike 0.1)
assert STEP >= SAMPLE


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_enclave_alone_may_hold_the_whole_window() -> None:
    fair = FairShare(window=64 * KIB, capacity=1024 * KIB)
    fair.add("flood", 64 * KIB)
    assert fair.share() == 64 * KIB and not fair.over("flood")
    fair.add("flood", 1)  # past the window while the upstream delivers: wait for it
    assert fair.over("flood")


def test_competing_enclaves_each_get_the_window_divided_among_them() -> None:
    fair = FairShare(window=90 * KIB, capacity=900 * KIB)
    fair.add("flood", 40 * KIB)
    fair.add("quiet", 1 * KIB)
    assert fair.share() == 45 * KIB and not fair.over("flood")
    fair.add("third", 1 * KIB)
    assert fair.share() == 30 * KIB
    assert fair.over("flood") and not fair.over("quiet")
    fair.delivered("quiet", 1 * KIB)  # quiet holds nothing now: two share
    assert fair.share() == 45 * KIB and not fair.over("flood")


def test_once_the_others_hold_nothing_the_flooder_has_it_all_again() -> None:
    fair = FairShare(window=64 * KIB)
    fair.add("flood", 60 * KIB)
    fair.add("quiet", 1 * KIB)
    assert fair.over("flood")
    fair.delivered("quiet", 1 * KIB)
    assert not fair.over("flood")


def test_a_stalled_upstream_shares_the_spool_capacity_instead() -> None:
    clock = Clock()
    fair = FairShare(window=64 * KIB, capacity=1024 * KIB, stall=1.0, clock=clock)
    fair.add("flood", 200 * KIB)
    fair.add("quiet", 1 * KIB)
    assert fair.budget() == 64 * KIB and fair.over("flood")
    clock.now += 1.5  # nothing delivered for longer than ``stall``: an outage
    assert fair.budget() == 1024 * KIB and not fair.over("flood")
    fair.delivered("flood", 1 * KIB)  # the upstream is back: the window again
    assert fair.budget() == 64 * KIB and fair.over("flood")


def test_settle_forgets_bytes_that_were_taken_and_never_delivered() -> None:
    fair = FairShare(window=64 * KIB)
    fair.add("flood", 200 * KIB)  # say, a resend the spool took once already
    fair.add("quiet", 1 * KIB)
    fair.settle()
    assert fair.held == {} and not fair.over("flood")


@pytest.mark.asyncio
async def test_a_reader_over_its_share_waits_for_deliveries_then_goes_on() -> None:
    fair = FairShare(window=64 * KIB)
    fair.add("flood", 100 * KIB)
    fair.add("quiet", 1 * KIB)
    waiting = asyncio.ensure_future(fair.wait("flood"))
    await asyncio.sleep(0)
    assert not waiting.done() and fair.waits == 1
    fair.delivered("flood", 60 * KIB)  # 40 KiB left, the share is 32 KiB: still over
    await asyncio.sleep(0)
    assert not waiting.done()
    fair.delivered("flood", 10 * KIB)
    await asyncio.wait_for(waiting, 1.0)
    await fair.wait("quiet")  # under its share: returns at once
    assert fair.waits == 1


def test_the_window_is_the_time_the_upstream_takes_to_deliver_delay_seconds_of_it() -> None:
    clock = Clock()
    fair = FairShare(window=16 * MIB, min_window=64 * KIB, delay=0.04, clock=clock)
    assert fair.window == 16 * MIB  # no rate measured yet: the most
    fair.add("flood", 10 * MIB)
    clock.now += STEP
    fair.delivered("flood", 5 * MIB // 2)  # 20 MiB/s
    assert fair.rate == 20 * MIB and fair.window == int(20 * MIB * 0.04)
    assert fair.share() == fair.window and fair.over("flood")


def test_the_window_stays_between_the_least_and_the_most() -> None:
    clock = Clock()
    fair = FairShare(window=4 * MIB, min_window=256 * KIB, delay=0.04, clock=clock)
    fair.add("flood", 100 * MIB)
    clock.now += STEP
    fair.delivered("flood", 128 * KIB)  # 1 MiB/s: 40 KiB of delay, under the least
    assert fair.window == 256 * KIB
    clock.now += STEP
    fair.delivered("flood", 64 * MIB)  # 512 MiB/s: 20 MiB of delay, over the most
    assert fair.window == 4 * MIB


def test_the_rate_follows_a_rise_at_once_and_a_fall_by_halves() -> None:
    clock = Clock()
    fair = FairShare(window=64 * MIB, min_window=KIB, delay=0.04, clock=clock)
    fair.add("flood", 100 * MIB)
    clock.now += STEP
    fair.delivered("flood", 5 * MIB // 2)
    assert fair.rate == 20 * MIB
    clock.now += STEP
    fair.delivered("flood", MIB // 4)  # 2 MiB/s for one sample
    assert fair.rate == 11 * MIB
    clock.now += STEP
    fair.delivered("flood", 30 * MIB // 8)
    assert fair.rate == 30 * MIB


def test_idle_time_is_not_taken_for_a_slow_upstream() -> None:
    clock = Clock()
    fair = FairShare(window=64 * MIB, min_window=KIB, delay=0.04, clock=clock)
    fair.add("quiet", 5 * MIB // 2)
    clock.now += STEP
    fair.delivered("quiet", 5 * MIB // 2)  # 20 MiB/s, and nothing held
    clock.now += 60.0  # idle for a minute
    fair.add("quiet", 5 * MIB // 2)
    clock.now += STEP
    fair.delivered("quiet", 5 * MIB // 2)
    assert fair.rate == 20 * MIB


def test_an_enclave_alone_held_back_by_the_window_sees_it_grow_to_what_the_upstream_takes(
        ) -> None:
    """No fixed cap: a window that limits delivery is delivered in less than ``delay``,
    so the rate it lets through sizes a larger one, up to the upstream's own rate."""
    clock = Clock()
    upstream, latency = 128 * MIB, 1 / 128  # bytes/s it takes, seconds a batch spends
    fair = FairShare(window=64 * MIB, min_window=256 * KIB, delay=0.04, clock=clock)
    for _ in range(256):  # two seconds: the agent always has more to send
        fair.add("alone", fair.share() - fair.held.get("alone", 0))
        clock.now += latency
        fair.delivered("alone", min(fair.held["alone"], int(upstream * latency)))
    assert fair.window == pytest.approx(upstream * 0.04, rel=0.05)


def test_each_enclave_holding_something_may_hold_a_window_of_its_own_up_to_the_most() -> None:
    """A flood kept to a part of the window while quiet enclaves hold a few lines each
    would leave the upstream idle between its reads: each gets the whole window."""
    clock = Clock()
    fair = FairShare(window=4 * MIB, min_window=KIB, delay=0.04, clock=clock)
    fair.add("flood", 10 * MIB)
    clock.now += STEP
    fair.delivered("flood", 5 * MIB // 2)  # 20 MiB/s: an 800 KiB window
    window = fair.window
    for quiet in ("a", "b", "c"):
        fair.add(quiet, KIB)
    assert fair.share() == window  # four windows are 3.2 MiB: under the most
    assert fair.over("flood") and fair.held["flood"] > window
    fair.delivered("flood", fair.held["flood"] - window)
    assert not fair.over("flood")
    fair.max_window = 2 * MIB  # four windows together would be more than the most
    assert fair.share() == 2 * MIB // 4
