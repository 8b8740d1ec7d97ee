"""Typed words that are two corpus tokens: contractions such as ``don't`` (``don`` + ``'t``).

WikiText splits a clitic off its host (``don 't``, ``I 'm``, ``it 's``), so the tree has no leaf
for ``don't`` and a keyboard that offered tokens could never show it. A *form* is a host token
followed by a clitic token, with its exact probability
``P(host | context) * P(clitic | context, host)``: one batched encoder step after all the hosts a
request needs (:meth:`WordForms.clitic_log_probs`). When a host is split into its forms, the
bare word keeps the rest of its probability, ``P(host) * (1 - sum_c P(c | host))``: the user
types ``don`` and then a space, not ``don't``. (``/v1/score`` of ``"don"`` is the token's
probability, bare word and forms together.)

A form is offered only where its clitic is at least :data:`MIN_CLITIC_PROB` likely after its
host (``don're`` never is); the bare word keeps the mass of the forms not offered.

Hosts are a fixed English list (:data:`HOSTS`, matched case-insensitively): the negated
auxiliaries and the pronouns and adverbs that contract. Possessives of nouns (``John's``) are
not forms: any noun takes ``'s``, which would cost an encoder step for every candidate; they
are one apostrophe away (``John'`` completes to ``John's``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service import decode

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]

After = Callable[[IntArray], F32Array]
"""``ids (B,) -> hidden (B, d)``: the encoder's output after the request's context plus each
one of ``ids``."""

MIN_CLITIC_PROB = 0.01
"""Forms whose clitic is less likely than this after the host are not offered."""

CLITICS = ("'t", "'s", "'m", "'re", "'ve", "'ll", "'d")
"""Clitic tokens as WikiText writes them (``don 't``: it never has ``n't``)."""

HOSTS = frozenset(
    {
        "don", "didn", "doesn", "isn", "aren", "wasn", "weren", "can", "couldn", "wouldn",
        "shouldn", "won", "hadn", "hasn", "haven", "ain", "mustn", "needn",
        "i", "you", "we", "they", "he", "she", "it", "that", "there", "here", "what", "who",
        "where", "how", "let",
    }
)  # fmt: skip
"""Words whose contractions people type (lowercase; ``It`` and ``IT`` match ``it``)."""


@dataclass(frozen=True)
class WordForms:
    """The hosts and clitics of one vocabulary."""

    is_host: BoolArray
    """``(V,)``: the token is a host."""
    clitic_ids: IntArray
    """``(C,)``: the clitic tokens this vocabulary has."""

    @classmethod
    def of(cls, vocab: Sequence[str]) -> WordForms:
        index = {token: i for i, token in enumerate(vocab)}
        clitics = [index[c] for c in CLITICS if c in index]
        hosts = np.array([bool(clitics) and t.casefold() in HOSTS for t in vocab], dtype=bool)
        return cls(is_host=hosts, clitic_ids=np.array(clitics, dtype=np.int64))

    def clitic_log_probs(
        self, dt: decode.DecodeTree, after: After, hosts: Sequence[int]
    ) -> list[F64Array]:
        """``log P(clitic | context, host)`` for each host, ``(C,)`` each; one encoder call."""
        hidden = after(np.asarray(hosts, dtype=np.int64))
        return [decode.word_log_probs(dt, row, self.clitic_ids) for row in hidden]
