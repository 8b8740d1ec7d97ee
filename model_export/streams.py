"""Token streams for truncated backpropagation through time.

A split is cut into ``B`` contiguous streams, one per batch row (Zaremba et al. 2014); window
``i`` feeds ``streams[:, i : i + T]`` and predicts the next token at every position. The
recurrent state flows from one window to the next, so every target but the first of each stream
sees its whole left context within the stream.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor


def batchify(ids: npt.NDArray[np.int64], batch_size: int) -> Tensor:
    """``(B, L)`` streams of the token ids; the tail that does not fill a row is dropped."""
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    length = len(ids) // batch_size
    if length < 2:
        raise ValueError(f"{len(ids)} tokens are too few for {batch_size} streams")
    return torch.from_numpy(np.ascontiguousarray(ids[: length * batch_size])).view(batch_size, -1)


def num_windows(streams: Tensor, bptt: int) -> int:
    return (streams.shape[1] - 2) // bptt + 1


def windows(streams: Tensor, bptt: int, start: int = 0) -> Iterator[tuple[int, Tensor, Tensor]]:
    """``(index, inputs (B, t), targets (B, t))`` for windows ``start, start + 1, ...``."""
    for index in range(start, num_windows(streams, bptt)):
        i = index * bptt
        t = min(bptt, streams.shape[1] - 1 - i)
        yield index, streams[:, i : i + t], streams[:, i + 1 : i + 1 + t]
