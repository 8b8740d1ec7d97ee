"""service.decode against the numpy brute force over random trees of every shape.

Each hypothesis example draws a tree kind (random binary, random n-ary up to 8 children,
two-level classes, the adaptive softmax's shortlist and clusters with factored rows, a
degenerate chain), sizes, a weight regime (gaussian, all zero so every
branch ties, half the rows zero, duplicated rows, very confident) and a seed for the arrays.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import decode
from service import decode_kernels as kernels
from service.decode import DecodeTree, beam_search, brute_force_log_probs, top_k, word_log_probs
from service.tree import Factors, Tree

TOL = 1e-9
KINDS = ("binary", "nary", "classes", "adaptive", "chain")
WEIGHTS = ("gaussian", "zero", "half_zero", "duplicated", "confident")
ALPHABET = "aAbB@-é"
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- random trees ------------------------------------------------------------------------------


def merge_tree(num_leaves: int, max_children: int, rng: np.random.Generator) -> Tree:
    """Repeatedly merge 2..max_children random nodes under a new parent (ids grow upwards)."""
    pool, child_ptr, children = list(range(num_leaves)), [0], []
    while len(pool) > 1:
        count = min(len(pool), int(rng.integers(2, max_children + 1)))
        picked = sorted(rng.choice(len(pool), count, replace=False).tolist(), reverse=True)
        children += [pool.pop(i) for i in picked]
        child_ptr.append(len(children))
        pool.append(num_leaves + len(child_ptr) - 2)
    return Tree(num_leaves, child_ptr, children)


def class_tree(num_leaves: int, rng: np.random.Generator) -> Tree:
    """Root over classes of >= 2 words; words of singleton groups hang off the root."""
    words = rng.permutation(num_leaves).tolist()
    cuts = sorted(rng.choice(np.arange(1, num_leaves), size=min(3, num_leaves - 1), replace=False))
    return groups_tree(num_leaves, [g for g in np.split(np.asarray(words), cuts) if len(g)])


def adaptive_tree(num_leaves: int, rng: np.random.Generator) -> Tree:
    """The adaptive softmax's shape: a shortlist of leaves under the root, then 1-3 clusters."""
    words = rng.permutation(num_leaves)
    shortlist = int(rng.integers(1, num_leaves))
    tail = words[shortlist:]
    cuts = sorted(rng.choice(np.arange(1, len(tail) + 1), size=min(2, len(tail)), replace=False))
    clusters = [g for g in np.split(tail, cuts) if len(g)]
    return groups_tree(num_leaves, [words[i : i + 1] for i in range(shortlist)] + clusters)


def groups_tree(num_leaves: int, groups: list[npt.NDArray[np.int64]]) -> Tree:
    """Two levels: a node per group of >= 2 words under the root, singletons as root leaves."""
    child_ptr, children, root_children = [0], [], []
    for group in groups:
        if len(group) == 1:
            root_children.append(int(group[0]))
            continue
        children += group.tolist()
        child_ptr.append(len(children))
        root_children.append(num_leaves + len(child_ptr) - 2)
    if len(root_children) == 1:  # one class holding everything: it is the root
        return Tree(num_leaves, child_ptr, children)
    children += root_children
    child_ptr.append(len(children))
    return Tree(num_leaves, child_ptr, children)


def chain_tree(num_leaves: int, rng: np.random.Generator) -> Tree:
    """A caterpillar: every internal node has one leaf and the rest of the chain."""
    words = rng.permutation(num_leaves).tolist()
    children = [words[0], words[1]]
    child_ptr = [0, 2]
    for position, word in enumerate(words[2:]):
        pair = [num_leaves + position, word]
        children += pair if rng.random() < 0.5 else pair[::-1]
        child_ptr.append(len(children))
    return Tree(num_leaves, child_ptr, children)


def make_tree(kind: str, num_leaves: int, rng: np.random.Generator) -> Tree:
    if kind == "binary":
        return merge_tree(num_leaves, 2, rng)
    if kind == "nary":
        return merge_tree(num_leaves, 8, rng)
    if kind == "classes":
        return class_tree(num_leaves, rng)
    if kind == "adaptive":
        return adaptive_tree(num_leaves, rng)
    return chain_tree(num_leaves, rng)


def make_weights(
    regime: str, rows: int, dim: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    weight = rng.standard_normal((rows, dim)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    if regime == "zero":
        weight[:], bias[:] = 0.0, 0.0
    elif regime == "half_zero":
        weight[::2], bias[::2] = 0.0, 0.0
    elif regime == "duplicated":
        weight[:], bias[:] = weight[0], bias[0]
    elif regime == "confident":
        weight *= 8.0
    return weight, bias


def random_factors(
    tree: Tree, weight: npt.NDArray[np.float32], rng: np.random.Generator
) -> Factors | None:
    """Low-rank rows for the non-root nodes of an adaptive-shaped tree (``None`` when it has
    none), written into ``weight`` as well, as a bundle stores them."""
    nodes = list(range(tree.num_internal - 1))
    if not nodes:
        return None
    dim = weight.shape[1]
    ranks = rng.integers(1, dim + 2, size=len(nodes))
    projs, rows = [], []
    for node, rank in zip(nodes, ranks, strict=True):
        proj = rng.standard_normal((rank, dim)).astype(np.float32)
        count = int(tree.child_ptr[node + 1] - tree.child_ptr[node]) - 1
        q = rng.standard_normal((count, rank)).astype(np.float32)
        first = int(tree.child_ptr[node] - node)
        weight[first : first + count] = q @ proj
        projs.append(proj.reshape(-1))
        rows.append(q.reshape(-1))
    return Factors(tree, dim, nodes, ranks, np.concatenate(projs), np.concatenate(rows))


def make_vocab(num_leaves: int, rng: np.random.Generator) -> list[str]:
    """Short random words over a tiny alphabet (many shared prefixes), made unique by a suffix."""
    letters = list(ALPHABET)
    return [
        "".join(rng.choice(letters, size=int(rng.integers(0, 4)))) + str(i)
        for i in range(num_leaves)
    ]


@dataclass
class Case:
    dt: DecodeTree
    hidden: npt.NDArray[np.float32]
    brute: npt.NDArray[np.float64]
    rng: np.random.Generator


@st.composite
def cases(draw: st.DrawFn, max_leaves: int = 60) -> Case:
    kind = draw(st.sampled_from(KINDS))
    num_leaves = draw(st.integers(2, max_leaves))
    dim = draw(st.integers(1, 6))
    regime = draw(st.sampled_from(WEIGHTS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tree = make_tree(kind, num_leaves, rng)
    weight, bias = make_weights(regime, num_leaves - 1, dim, rng)
    factors = random_factors(tree, weight, rng) if kind == "adaptive" else None
    dt = DecodeTree(tree, weight, bias, make_vocab(num_leaves, rng), factors)
    hidden = rng.standard_normal(dim).astype(np.float32)
    return Case(dt, hidden, brute_force_log_probs(dt, hidden), rng)


# -- checks ------------------------------------------------------------------------------------


def assert_exact_top(result: decode.TopK, scores: npt.NDArray[np.float64], k: int) -> None:
    """``result`` is a top-k of ``scores`` (``-inf`` = not qualifying), ties in any order."""
    qualifying = np.flatnonzero(np.isfinite(scores))
    expected = np.sort(scores[qualifying])[::-1][:k]
    assert result.exact
    assert len(result.ids) == len(expected)
    assert len(set(result.ids.tolist())) == len(result.ids)
    np.testing.assert_allclose(result.logprobs, scores[result.ids], atol=TOL, rtol=0)
    np.testing.assert_allclose(result.logprobs, expected, atol=TOL, rtol=0)
    if len(expected):
        rest = np.setdiff1d(qualifying, result.ids)
        assert (scores[rest] <= result.logprobs[-1] + TOL).all()


def prefix_scores(case: Case, prefix: str, case_insensitive: bool) -> npt.NDArray[np.float64]:
    vocab = case.dt.vocab or []
    if case_insensitive:
        match = [w.casefold().startswith(prefix.casefold()) for w in vocab]
    else:
        match = [w.startswith(prefix) for w in vocab]
    return np.where(match, case.brute, -np.inf)


# -- exact top-k -------------------------------------------------------------------------------


@SETTINGS
@given(case=cases(), k=st.integers(1, 12))
def test_top_k_equals_brute_force(case: Case, k: int) -> None:
    assert_exact_top(top_k(case.dt, case.hidden, k), case.brute, k)


@SETTINGS
@given(case=cases())
def test_all_leaves_sum_to_one(case: Case) -> None:
    everything = top_k(case.dt, case.hidden, case.dt.num_words)
    assert sorted(everything.ids.tolist()) == list(range(case.dt.num_words))
    assert math.isclose(float(np.exp(everything.logprobs).sum()), 1.0, abs_tol=1e-9)
    assert math.isclose(float(np.exp(case.brute).sum()), 1.0, abs_tol=1e-9)


@SETTINGS
@given(case=cases())
def test_word_log_probs_equal_brute_force(case: Case) -> None:
    ids = case.rng.integers(0, case.dt.num_words, size=7)
    np.testing.assert_allclose(word_log_probs(case.dt, case.hidden, ids), case.brute[ids], atol=TOL)


def test_batched_brute_force_matches_rows() -> None:
    rng = np.random.default_rng(1)
    tree = merge_tree(30, 3, rng)
    dt = DecodeTree(tree, *make_weights("gaussian", 29, 4, rng))
    hiddens = rng.standard_normal((3, 4)).astype(np.float32)
    batched = brute_force_log_probs(dt, hiddens)
    assert batched.shape == (3, 30)
    np.testing.assert_allclose(batched[1], brute_force_log_probs(dt, hiddens[1]))


# -- constraints -------------------------------------------------------------------------------


@SETTINGS
@given(
    case=cases(),
    k=st.integers(1, 8),
    prefix=st.text(ALPHABET + "0123456789", max_size=3),
    case_insensitive=st.booleans(),
    marking=st.sampled_from(["per_request", "shared", "preloaded", "leaf_filter"]),
)
def test_prefix_completion_equals_filtered_brute_force(
    case: Case, k: int, prefix: str, case_insensitive: bool, marking: str
) -> None:
    # Each path is forced in turn: marks built per request (few matching words), shared marks
    # built on first use or preloaded (popular prefixes), filtering at the leaves (prefixes
    # matching very many words).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode, "MARK_LIMIT", 0 if marking == "leaf_filter" else decode.MARK_LIMIT)
        shared = marking in ("shared", "preloaded")
        patch.setattr(decode, "SHARED_MARKS_MIN_WORDS", 1 if shared else 1 << 30)
        dt = case.dt
        if marking == "preloaded":  # built with the threshold at 1: every prefix preloaded
            dt = DecodeTree(dt.tree, dt.weight, dt.bias, dt.vocab, dt.factors)
        result = top_k(dt, case.hidden, k, prefix=prefix, case_insensitive=case_insensitive)
        again = top_k(dt, case.hidden, k, prefix=prefix, case_insensitive=case_insensitive)
    assert again.ids.tolist() == result.ids.tolist()  # a second use of cached marks agrees
    expected = prefix_scores(case, prefix, case_insensitive)
    assert_exact_top(result, expected, k)
    count = case.dt.count_prefix(prefix, case_insensitive=case_insensitive)
    assert count == int(np.isfinite(expected).sum())


@SETTINGS
@given(case=cases(), k=st.integers(1, 8), quantile=st.floats(0.0, 1.0))
def test_min_prob_keeps_exactly_the_words_above_it(case: Case, k: int, quantile: float) -> None:
    levels = np.unique(case.brute)
    levels = levels[np.diff(levels, prepend=-np.inf) > 1e-6]  # near-ties are one level
    # A threshold halfway between two distinct probabilities, so no word sits on the boundary.
    at = min(int(quantile * len(levels)), len(levels) - 1)
    low = levels[at - 1] if at > 0 else levels[0] - 1.0
    min_prob = math.exp((low + levels[at]) / 2)
    result = top_k(case.dt, case.hidden, k, min_prob=min_prob)
    assert_exact_top(result, np.where(case.brute >= math.log(min_prob), case.brute, -np.inf), k)


@SETTINGS
@given(
    case=cases(),
    k=st.integers(1, 8),
    share=st.floats(0.0, 1.0),
    prefix=st.sampled_from("aAb"),
    shared_marks=st.booleans(),
)
def test_banned_words_are_skipped_exactly(
    case: Case, k: int, share: float, prefix: str, shared_marks: bool
) -> None:
    banned = case.rng.random(case.dt.num_words) < share
    result = top_k(case.dt, case.hidden, k, banned=banned)
    assert_exact_top(result, np.where(banned, -np.inf, case.brute), k)
    # Shared marks include banned words (they do not depend on a request's bans).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode, "SHARED_MARKS_MIN_WORDS", 1 if shared_marks else 1 << 30)
        with_prefix = top_k(case.dt, case.hidden, k, banned=banned, prefix=prefix)
    filtered = prefix_scores(case, prefix, True)
    assert_exact_top(with_prefix, np.where(banned, -np.inf, filtered), k)


# -- continuing a search ------------------------------------------------------------------------


@SETTINGS
@given(
    case=cases(),
    k=st.integers(1, 6),
    more_k=st.integers(1, 20),
    prefix=st.sampled_from(["", "a", "B", "ab"]),
    share=st.floats(0.0, 0.5),
    tiny_heap=st.booleans(),
)
def test_continued_search_equals_a_fresh_longer_one(
    case: Case, k: int, more_k: int, prefix: str, share: float, tiny_heap: bool
) -> None:
    banned = case.rng.random(case.dt.num_words) < share
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode, "_HEAP_START", 1 if tiny_heap else decode._HEAP_START)
        dt = DecodeTree(case.dt.tree, case.dt.weight, case.dt.bias, case.dt.vocab, case.dt.factors)
        first = top_k(dt, case.hidden, k, prefix=prefix or None, banned=banned)
        longer = decode.more(dt, first, k + more_k)
    expected = np.where(banned, -np.inf, prefix_scores(case, prefix, True))
    if first.frontier is None:
        assert longer is None
        # Only wide nodes (they prune below their k-th best leaf) or a search that ran out.
        assert dt.max_children >= kernels.WIDE_NODE or np.isfinite(expected).sum() <= k
        return
    assert dt.max_children < kernels.WIDE_NODE
    assert longer is not None
    assert longer.ids[:k].tolist() == first.ids.tolist()
    assert_exact_top(longer, expected, k + more_k)
    fresh = top_k(dt, case.hidden, k + more_k, prefix=prefix or None, banned=banned)
    np.testing.assert_array_equal(longer.logprobs, fresh.logprobs)
    assert longer.expansions <= fresh.expansions + first.expansions


def test_a_search_in_between_ends_the_continuation() -> None:
    rng = np.random.default_rng(7)
    tree = merge_tree(40, 2, rng)
    dt = DecodeTree(tree, *make_weights("gaussian", 39, 3, rng), make_vocab(40, rng))
    hidden = rng.standard_normal(3).astype(np.float32)
    first = top_k(dt, hidden, 2)
    assert first.frontier is not None
    top_k(dt, hidden, 3, prefix="a")  # reuses the thread's heap and marks
    assert decode.more(dt, first, 5) is None
    second = top_k(dt, hidden, 2)
    assert decode.more(dt, second, 2) is None  # no longer than it already is
    capped = decode.more(dt, second, 30, max_expansions=second.expansions)
    assert capped is not None
    assert not capped.exact  # the cap counts the first part's expansions too


def test_ban_mask_and_bad_arguments() -> None:
    rng = np.random.default_rng(2)
    dt = DecodeTree(merge_tree(10, 2, rng), *make_weights("gaussian", 9, 3, rng))
    assert dt.ban_mask([1, 4]).nonzero()[0].tolist() == [1, 4]
    hidden = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match="vocabulary"):
        top_k(dt, hidden, 3, prefix="a")
    with pytest.raises(ValueError, match="banned"):
        top_k(dt, hidden, 3, banned=np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="hidden"):
        top_k(dt, np.zeros(4, dtype=np.float32), 3)
    assert len(top_k(dt, hidden, 0).ids) == 0
    assert len(top_k(dt, hidden, 3, min_prob=1.5).ids) == 0


# -- latency budget ----------------------------------------------------------------------------


def assert_valid_partial(result: decode.TopK, scores: npt.NDArray[np.float64], k: int) -> None:
    """An early-stopped result: qualifying words, sorted, and a true bound on what it missed."""
    assert not result.exact
    assert len(result.ids) <= k
    assert len(set(result.ids.tolist())) == len(result.ids)
    assert np.isfinite(scores[result.ids]).all()
    np.testing.assert_allclose(result.logprobs, scores[result.ids], atol=TOL, rtol=0)
    assert (np.diff(result.logprobs) <= TOL).all()
    qualifying_mass = np.exp(scores[np.isfinite(scores)]).sum()
    missed = qualifying_mass - np.exp(result.logprobs).sum()
    assert missed <= result.unexplored_mass + 1e-9


@SETTINGS
@given(case=cases(), k=st.integers(1, 8), cap=st.integers(0, 6), share=st.floats(0.0, 0.5))
def test_expansion_cap_gives_a_valid_bound(case: Case, k: int, cap: int, share: float) -> None:
    banned = case.rng.random(case.dt.num_words) < share
    result = top_k(case.dt, case.hidden, k, banned=banned, max_expansions=cap)
    scores = np.where(banned, -np.inf, case.brute)
    if result.exact:
        assert_exact_top(result, scores, k)
    else:
        assert_valid_partial(result, scores, k)
        # Greedy descents fill free slots: at most one per free slot, each at most depth long.
        assert result.expansions <= cap + k * int(case.dt.tree.depths.max())


def test_greedy_fill_stops_at_its_budget_when_descents_dead_end() -> None:
    rng = np.random.default_rng(8)
    dt = DecodeTree(merge_tree(200, 2, rng), *make_weights("gaussian", 199, 4, rng))
    hidden = rng.standard_normal(4).astype(np.float32)
    brute = brute_force_log_probs(dt, hidden)
    banned = np.ones(200, dtype=bool)
    banned[brute.argmin()] = False  # one allowed word, below nearly every frontier node
    result = top_k(dt, hidden, 3, banned=banned, max_expansions=1)
    assert_valid_partial(result, np.where(banned, -np.inf, brute), 3)
    assert 1 < result.expansions <= 1 + 3 * dt.max_depth


@SETTINGS
@given(case=cases(), k=st.integers(1, 8))
def test_passed_deadline_stops_after_one_chunk(case: Case, k: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode, "CHUNK_EXPANSIONS", 1)
        result = top_k(case.dt, case.hidden, k, deadline=time.perf_counter() - 1.0)
    if result.exact:
        assert_exact_top(result, case.brute, k)
    else:
        assert_valid_partial(result, case.brute, k)


def test_far_deadline_is_exact() -> None:
    rng = np.random.default_rng(3)
    dt = DecodeTree(merge_tree(200, 2, rng), *make_weights("zero", 199, 2, rng))
    hidden = np.zeros(2, dtype=np.float32)
    result = top_k(dt, hidden, 50, deadline=time.perf_counter() + 60.0)
    assert_exact_top(result, brute_force_log_probs(dt, hidden), 50)


# -- beam search -------------------------------------------------------------------------------


class ToyEncoder:
    """A deterministic recurrent step: state (1, B, S) -> tanh(state / 2 + embed[id])."""

    def __init__(self, num_words: int, dim: int, rng: np.random.Generator) -> None:
        self.embed = rng.standard_normal((num_words, 5)).astype(np.float32)
        self.project = rng.standard_normal((5, dim)).astype(np.float32)
        self.calls: list[int] = []

    def __call__(
        self, ids: npt.NDArray[np.int64], state: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        assert state.shape == (1, len(ids), 5)
        self.calls.append(len(ids))
        new_state = np.tanh(state / 2 + self.embed[ids][None]).astype(np.float32)
        return new_state[0] @ self.project, new_state


def beam_case(seed: int, kind: str, num_leaves: int) -> tuple[DecodeTree, ToyEncoder, Case]:
    rng = np.random.default_rng(seed)
    weight, bias = make_weights("gaussian", num_leaves - 1, 3, rng)
    dt = DecodeTree(make_tree(kind, num_leaves, rng), weight, bias, make_vocab(num_leaves, rng))
    encoder = ToyEncoder(num_leaves, 3, rng)
    hidden = rng.standard_normal(3).astype(np.float32)
    return dt, encoder, Case(dt, hidden, brute_force_log_probs(dt, hidden), rng)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(KINDS), words=st.integers(1, 5))
def test_beam_width_one_is_greedy(seed: int, kind: str, words: int) -> None:
    dt, encoder, case = beam_case(seed, kind, 40)
    banned = dt.ban_mask([0])
    state = np.zeros((1, 1, 5), dtype=np.float32)
    result = beam_search(
        dt, encoder, case.hidden, state, max_words=words, beam_width=1, k=1, banned=banned
    )
    greedy, total, hidden = [], 0.0, case.hidden
    for _ in range(words):
        scores = np.where(banned, -np.inf, brute_force_log_probs(dt, hidden))
        word = int(np.argmax(scores))
        greedy.append(word)
        total += scores[word]
        hidden_b, state = encoder(np.array([word]), state)
        hidden = hidden_b[0]
    assert result.phrases[0].ids == tuple(greedy)
    assert math.isclose(result.phrases[0].logprob, total, abs_tol=1e-9)
    assert result.encoder_calls == words - 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(KINDS), k=st.integers(1, 6))
def test_full_width_two_word_beam_is_exhaustive(seed: int, kind: str, k: int) -> None:
    num_leaves = 9
    dt, encoder, case = beam_case(seed, kind, num_leaves)
    state = np.zeros((1, 1, 5), dtype=np.float32)
    result = beam_search(
        dt, encoder, case.hidden, state, max_words=2, beam_width=num_leaves, k=k, prefix="a"
    )
    first = prefix_scores(case, "a", True)
    firsts = np.flatnonzero(np.isfinite(first))
    assert encoder.calls == ([len(firsts)] if len(firsts) else [])  # one batched step
    if not len(firsts):
        assert result.phrases == []
        return
    follow_hidden, _ = encoder(firsts, np.zeros((1, len(firsts), 5), dtype=np.float32))
    pairs = first[firsts][:, None] + brute_force_log_probs(dt, follow_hidden)  # (F, V)
    expected = np.sort(pairs.reshape(-1))[::-1][:k]
    np.testing.assert_allclose([p.logprob for p in result.phrases], expected, atol=TOL)
    for phrase in result.phrases:
        row = int(np.flatnonzero(firsts == phrase.ids[0])[0])
        assert math.isclose(pairs[row, phrase.ids[1]], phrase.logprob, abs_tol=TOL)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 6), width=st.integers(1, 4))
def test_one_word_beam_equals_top_k(seed: int, k: int, width: int) -> None:
    dt, encoder, case = beam_case(seed, "nary", 30)
    state = np.zeros((1, 1, 5), dtype=np.float32)
    result = beam_search(dt, encoder, case.hidden, state, max_words=1, beam_width=width, k=k)
    expected = top_k(dt, case.hidden, k)
    assert [p.ids for p in result.phrases] == [(w,) for w in expected.ids.tolist()]
    assert encoder.calls == []
    assert result.exact


def test_beam_min_prob_applies_to_the_phrase() -> None:
    dt, encoder, case = beam_case(5, "binary", 30)
    state = np.zeros((1, 1, 5), dtype=np.float32)
    free = beam_search(dt, encoder, case.hidden, state, max_words=3, beam_width=4, k=10)
    cut = math.exp(free.phrases[4].logprob) * 1.000001
    limited = beam_search(
        dt, encoder, case.hidden, state, max_words=3, beam_width=4, k=10, min_prob=cut
    )
    assert [p.ids for p in limited.phrases] == [p.ids for p in free.phrases[:4]]


def test_warm_up_runs_every_kernel() -> None:
    rng = np.random.default_rng(4)
    dt = DecodeTree(
        merge_tree(20, 4, rng), *make_weights("gaussian", 19, 3, rng), make_vocab(20, rng)
    )
    decode.warm_up(dt)


@SETTINGS
@given(case=cases(), k=st.integers(1, 12))
def test_search_resumes_after_growing_a_tiny_heap(case: Case, k: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode, "_HEAP_START", 1)
        fresh = DecodeTree(  # new per-thread buffers
            case.dt.tree, case.dt.weight, case.dt.bias, factors=case.dt.factors
        )
        assert_exact_top(top_k(fresh, case.hidden, k), case.brute, k)


def marked_nodes(marks: npt.NDArray[np.uint64], num_nodes: int) -> npt.NDArray[np.int64]:
    bits = np.unpackbits(marks.view(np.uint8), bitorder="little")[:num_nodes]
    return np.flatnonzero(bits)


def test_popular_prefixes_are_every_prefix_with_enough_words() -> None:
    rng = np.random.default_rng(4)
    vocab = make_vocab(300, rng)
    index = decode._PrefixIndex([w.casefold() for w in vocab])
    counts: dict[str, int] = {}
    for word in vocab:
        for end in range(1, len(word) + 1):
            counts[word.casefold()[:end]] = counts.get(word.casefold()[:end], 0) + 1
    for min_words in (1, 3, 20):
        expected = {p for p, n in counts.items() if n >= min_words}
        found = index.popular(min_words)
        assert {p for p, _, _ in found} == expected
        assert all(index.range(p) == (lo, hi) for p, lo, hi in found)
        sizes = [hi - lo for _, lo, hi in found]
        assert sizes == sorted(sizes, reverse=True)  # most words first


def marks_case(
    seed: int, num_leaves: int
) -> tuple[DecodeTree, decode._PrefixIndex, decode._PrefixIndex, int]:
    """A small tree with a vocabulary, its folded and exact prefix indexes, and marks' words."""
    rng = np.random.default_rng(seed)
    tree = merge_tree(num_leaves, 2, rng)
    weights = make_weights("gaussian", num_leaves - 1, 3, rng)
    dt = DecodeTree(tree, *weights, make_vocab(num_leaves, rng))
    assert dt._folded is not None
    assert dt._exact is not None
    return dt, dt._folded, dt._exact, kernels.marks_words(tree.num_nodes)


def test_shared_marks_preload_popular_prefixes_and_keep_an_lru_of_others() -> None:
    dt, folded, exact, words = marks_case(5, 40)
    tree = dt.tree
    marks = decode._SharedMarks(tree.parent, 8 * words * 6, folded, min_words=4)
    popular = folded.popular(4)[:3]  # half of the six slots
    assert len(popular) == 3
    assert marks.capacity == 3
    for key, lo, hi in popular:
        got = marks.get(folded, key, True, lo, hi)
        assert got is marks.get(folded, key, True, lo, hi)  # preloaded: the same array
        matching = {i for i, w in enumerate(dt.vocab or []) if w.casefold().startswith(key)}
        nodes = set(marked_nodes(got, tree.num_nodes).tolist())
        assert {n for n in nodes if n < tree.num_leaves} == matching
        assert all(tree.parent[n] in nodes for n in nodes if n != tree.root)  # ancestors too

    def get(key: str) -> npt.NDArray[np.uint64]:
        return marks.get(exact, key, False, *exact.range(key))

    first = get("a")
    assert get("a") is first  # a hit returns the same array
    get("b")
    get("c")
    get("@")
    assert len(marks._recent) == 3
    assert get("a") is not first  # evicted, so built again
    assert np.array_equal(get("a"), first)


def test_shared_marks_preload_exact_case_prefixes_that_start_with_a_capital() -> None:
    dt, folded, exact, words = marks_case(7, 60)
    tree = dt.tree
    marks = decode._SharedMarks(tree.parent, 8 * words * 64, folded, 2, exact=exact)
    capitals = [found for found in exact.popular(2) if found[0][:1].isupper()]
    lowercase = [found for found in exact.popular(2) if not found[0][:1].isupper()]
    assert capitals
    assert lowercase
    for key, lo, hi in capitals:
        got = marks.get(exact, key, False, lo, hi)
        assert got is marks._fixed[(False, key)]  # preloaded, not built on first use
        matching = {i for i, w in enumerate(dt.vocab or []) if w.startswith(key)}
        nodes = set(marked_nodes(got, tree.num_nodes).tolist())
        assert {n for n in nodes if n < tree.num_leaves} == matching
    key, lo, hi = lowercase[0]
    marks.get(exact, key, False, lo, hi)  # exact-case lowercase: an LRU entry, built on use
    assert (False, key) not in marks._fixed
    assert (False, key) in marks._recent


def test_request_marks_are_cleared_between_requests() -> None:
    rng = np.random.default_rng(6)
    tree = merge_tree(50, 2, rng)
    dt = DecodeTree(tree, *make_weights("gaussian", 49, 3, rng), make_vocab(50, rng))
    index = dt._folded
    assert index is not None
    scratch = dt._scratch()
    for key in ("a", "b", "ab", "", "c"):
        lo, hi = index.range(key)
        scratch.mark(index.order, lo, hi, tree.parent, decode._NO_BANS)
        fresh = np.zeros_like(scratch.marks)
        kernels.mark_ancestors(index.order, lo, hi, tree.parent, decode._NO_BANS, fresh, True)
        assert np.array_equal(scratch.marks, fresh)


def test_every_kind_of_search_after_the_first_is_exact() -> None:
    # The first search fixes the argument types of the kernel's entry point, which later
    # searches call without type checks: every filter and input form must keep those types.
    rng = np.random.default_rng(7)
    tree = merge_tree(300, 3, rng)
    dt = DecodeTree(tree, *make_weights("gaussian", 299, 5, rng), make_vocab(300, rng))
    hidden = rng.standard_normal(5).astype(np.float32)
    brute = brute_force_log_probs(dt, hidden)
    assert_exact_top(top_k(dt, hidden, 5), brute, 5)
    assert dt._start_search is not dt._first_search
    readonly = hidden.copy()
    readonly.flags.writeable = False
    banned = np.zeros(600, dtype=bool)[::2]  # not contiguous
    banned[brute.argmax()] = True
    index = dt._folded
    assert index is not None
    shared = index.popular(decode.SHARED_MARKS_MIN_WORDS)[0][0]  # the prefix with most words
    assert_exact_top(top_k(dt, readonly, np.int64(4)), brute, 4)  # type: ignore[arg-type]
    assert_exact_top(top_k(dt, hidden.astype(np.float64), 3), brute, 3)
    assert_exact_top(top_k(dt, hidden, 6, banned=banned), np.where(banned, -np.inf, brute), 6)
    case = Case(dt, hidden, brute, rng)
    for prefix in ("a", shared):  # marked per request, then from the shared marks
        scores = prefix_scores(case, prefix, case_insensitive=True)
        assert_exact_top(top_k(dt, hidden, 3, prefix=prefix), scores, 3)
    above = np.where(brute >= math.log(0.01), brute, -np.inf)
    assert_exact_top(top_k(dt, hidden, 8, min_prob=0.01), above, 8)
