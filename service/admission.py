"""The bounded request queue: at most ``limit`` requests are admitted at once; the rest are
refused at the door (429 with ``Retry-After``) instead of piling up an unbounded backlog.

Only the event loop thread touches it, so it needs no lock.
"""

from __future__ import annotations

from collections.abc import Callable


class Admission:
    def __init__(
        self,
        limit: int,
        on_reject: Callable[[], None] | None = None,
    ) -> None:
        self.limit = limit
        self.depth = 0
        self._on_reject = on_reject

    def try_enter(self) -> bool:
        if self.depth >= self.limit:
            if self._on_reject is not None:
                self._on_reject()
            return False
        self.depth += 1
        return True

    def leave(self) -> None:
        self.depth -= 1
