"""The fair share: what one enclave may hold in the relay, alone and among others."""

from __future__ import annotations

import asyncio

import pytest

from parent_side.fairshare import FairShare

KIB = 1024


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
