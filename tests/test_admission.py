"""service.admission: the bounded queue's count and refusals."""

from __future__ import annotations

from service.admission import Admission


def test_admits_up_to_the_limit_then_refuses() -> None:
    refused: list[int] = []
    gate = Admission(2, on_reject=lambda: refused.append(1))
    assert gate.try_enter()
    assert gate.try_enter()
    assert not gate.try_enter()
    assert gate.depth == 2
    assert refused == [1]
    gate.leave()
    assert gate.try_enter()
    assert gate.depth == 2
