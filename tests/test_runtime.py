"""service.runtime.Runtime.call: inline as the policy allows, else on a request thread; bounded."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from service.admission import Admission
from service.responses import ApiError
from service.runtime import Runtime
from service.settings import Settings


def _runtime(tmp_path: Path, **settings: Any) -> Runtime:
    # call() needs only the settings, the executor and the admission gate.
    runtime = Runtime.__new__(Runtime)
    runtime.settings = Settings(bundle=tmp_path, **settings)
    runtime.executor = ThreadPoolExecutor(2)
    runtime.admission = Admission(runtime.settings.queue_limit)
    return runtime


@pytest.mark.parametrize(
    ("policy", "light", "inline"),
    [
        ("when_idle", True, True),
        ("when_idle", False, False),
        ("always", True, True),
        ("always", False, False),
        ("never", True, False),
    ],
)
def test_idle_requests_run_inline_only_when_allowed(
    tmp_path: Path, policy: str, light: bool, inline: bool
) -> None:
    runtime = _runtime(tmp_path, inline_light=policy)

    async def scenario() -> tuple[threading.Thread, int]:
        thread = await runtime.call(threading.current_thread, light=light)
        return thread, runtime.admission.depth

    thread, depth = asyncio.run(scenario())
    assert (thread is threading.main_thread()) == inline
    assert depth == 0


@pytest.mark.parametrize(("policy", "inline"), [("when_idle", False), ("always", True)])
def test_light_requests_while_busy_follow_the_policy(
    tmp_path: Path, policy: str, inline: bool
) -> None:
    runtime = _runtime(tmp_path, inline_light=policy)
    release = threading.Event()

    async def scenario() -> threading.Thread:
        busy = asyncio.ensure_future(runtime.call(release.wait, 5))
        await asyncio.sleep(0)  # admitted: one request in flight on a thread
        thread = await runtime.call(threading.current_thread, light=True)
        release.set()
        await busy
        return thread

    assert (asyncio.run(scenario()) is threading.main_thread()) == inline
    assert runtime.admission.depth == 0


def test_busy_requests_go_to_threads_and_overflow_is_refused(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path, queue_limit=2, inline_light="never")
    release = threading.Event()

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(runtime.call(release.wait, 5))
        await asyncio.sleep(0)  # the first is admitted and blocks a thread
        second = asyncio.ensure_future(runtime.call(threading.current_thread))
        await asyncio.sleep(0)
        with pytest.raises(ApiError) as refused:
            await runtime.call(threading.current_thread)
        assert refused.value.status == 429
        assert refused.value.headers == {"Retry-After": "1"}
        release.set()
        return [await first, await second]

    done, thread = asyncio.run(scenario())
    assert done is True
    assert thread is not threading.main_thread()
    assert runtime.admission.depth == 0
