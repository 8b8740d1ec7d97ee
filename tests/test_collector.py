"""service.collector: CPython's choice of generation, made only while the server is idle."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from service.collector import IdleCollector


@pytest.fixture(autouse=True)
def collection_back_on() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.enable()


def allocate(containers: int) -> list[list[int]]:
    """Containers the collector counts (kept alive, so the count only grows)."""
    return [[i] for i in range(containers)]


def test_nothing_is_due_below_the_youngest_threshold() -> None:
    gc.disable()
    gc.collect()
    gc.set_threshold(1000, 10, 10)
    collector = IdleCollector(lambda: True)
    assert collector.due() is None
    assert collector.step() is None


def test_idle_collects_the_due_generation_and_busy_waits_until_overdue() -> None:
    gc.disable()
    gc.collect()
    gc.set_threshold(100, 2, 1000)
    idle = False
    seen: list[tuple[int, bool]] = []
    collector = IdleCollector(lambda: idle, overdue=4, on_collect=lambda *c: seen.append(c))
    kept = allocate(150)
    assert collector.due() == 0
    assert collector.step() is None  # busy, not overdue: the request is left alone
    idle = True
    assert collector.step() == 0
    assert gc.get_count()[0] < 100
    for _ in range(2):  # two more young collections make the middle generation due
        kept += allocate(150)
        assert collector.step() == 0
    kept += allocate(150)
    assert collector.due() == 1
    idle = False
    kept += allocate(400)  # 4 x the threshold: collected although busy
    assert collector.step() == 1
    assert seen == [(0, True), (0, True), (0, True), (1, False)]
    assert len(kept) > 0


def test_start_turns_automatic_collection_off_and_stop_back_on() -> None:
    gc.set_threshold(50, 10, 10)

    async def serve() -> tuple[bool, bool, int]:
        collector = IdleCollector(lambda: True, interval_s=0.001)
        collector.start()
        during = gc.isenabled()
        kept = allocate(500)
        await asyncio.sleep(0.05)  # the task runs between awaits, as between requests
        young = gc.get_count()[0]
        await collector.stop()
        return during, gc.isenabled(), young + 0 * len(kept)

    during, after, young = asyncio.run(serve())
    assert (during, after) == (False, True)
    assert young <= 50


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        IdleCollector(lambda: True, interval_s=0.0)
    with pytest.raises(ValueError, match="overdue"):
        IdleCollector(lambda: True, overdue=0)
