"""Python's cyclic garbage collector, run while the server is idle instead of inside requests.

CPython collects its youngest generation every 700 net allocations of container objects,
wherever the 700th happens: in a request. At 200 keystrokes/s that was a 0.05 ms pause every
~20 requests and a 0.5-1.5 ms one (the middle generation, which holds the sessions' objects)
every ~200, each charged to whichever request was running (measured with ``gc.callbacks``; see
the README's load-test notes). Requests allocate mostly acyclic garbage, which reference
counting frees at once, so nothing is lost by collecting a little later.

:class:`IdleCollector` turns automatic collection off and makes the same decisions CPython
would (the oldest generation whose count is past its threshold, once the youngest's is) from a
task on the event loop, at moments when no request is in flight. Light requests run on the loop
itself, so the task never interrupts one; the check costs a few microseconds every
:attr:`IdleCollector.interval_s`. Under load that leaves no idle moment, it collects anyway once
the youngest generation is :attr:`IdleCollector.overdue` times past its threshold, so memory
stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable


class IdleCollector:
    def __init__(
        self,
        is_idle: Callable[[], bool],
        *,
        interval_s: float = 0.01,
        overdue: int = 8,
        on_collect: Callable[[int, bool], None] | None = None,
    ) -> None:
        """``on_collect(generation, idle)`` is told of every collection (for metrics)."""
        if interval_s <= 0.0 or overdue < 1:
            raise ValueError(f"need interval_s > 0 and overdue >= 1, got {interval_s}, {overdue}")
        self.is_idle = is_idle
        self.on_collect = on_collect
        self.interval_s = interval_s
        self.overdue = overdue
        self._task: asyncio.Task[None] | None = None

    def due(self) -> int | None:
        """The generation CPython would collect now, or None: the oldest one whose count is
        past its threshold, once the youngest's is."""
        counts, thresholds = gc.get_count(), gc.get_threshold()
        if counts[0] <= thresholds[0]:
            return None
        return max(g for g in range(len(counts)) if g == 0 or counts[g] > thresholds[g])

    def step(self) -> int | None:
        """Collect the due generation if the server is idle (or collection is overdue);
        returns the generation collected."""
        generation = self.due()
        if generation is None:
            return None
        idle = self.is_idle()
        if not idle and gc.get_count()[0] < self.overdue * gc.get_threshold()[0]:
            return None
        gc.collect(generation)
        if self.on_collect is not None:
            self.on_collect(generation, idle)
        return generation

    def start(self) -> None:
        """Turn automatic collection off and check from a task on the running loop."""
        gc.disable()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop checking and give collection back to CPython."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        gc.enable()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.step()
