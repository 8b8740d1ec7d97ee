"""model_export.vocab: ordering, the two limits, <unk> counts and out-of-vocabulary tokens."""

from __future__ import annotations

import pytest

from model_export.vocab import build_vocabulary, count_words, encode, word_types

# Counts: a 3, <eos> 3 (one per unit), b 2, c 1, d 1, <unk> 0; first seen a, b, c, d.
UNITS = [["a", "b", "a"], ["c", "a", "b"], ["d"]]


def test_ids_follow_train_counts_ties_in_order_of_appearance() -> None:
    vocab = build_vocabulary(UNITS)
    assert vocab.words == ["a", "<eos>", "b", "c", "d", "<unk>"]
    assert vocab.counts.tolist() == [3, 3, 2, 1, 1, 0]
    assert vocab.index() == {word: i for i, word in enumerate(vocab.words)}


def test_min_count_drops_rare_words_into_unk() -> None:
    vocab = build_vocabulary(UNITS, min_count=2)
    # c and d (1 each) are dropped; <unk> takes their 2 and ties with b, which was seen first.
    assert vocab.words == ["a", "<eos>", "b", "<unk>"]
    assert vocab.counts.tolist() == [3, 3, 2, 2]
    assert vocab.counts.sum() == sum(len(u) + 1 for u in UNITS)  # still the train histogram


def test_max_vocab_counts_eos_and_unk() -> None:
    vocab = build_vocabulary(UNITS, max_vocab=3)
    # Room for one word besides <eos> and <unk>: a. b, c, d (4 tokens) become <unk>.
    assert vocab.words == ["<unk>", "a", "<eos>"]
    assert vocab.counts.tolist() == [4, 3, 3]
    assert build_vocabulary(UNITS, max_vocab=2).words == ["<unk>", "<eos>"]
    assert build_vocabulary(UNITS, max_vocab=100).words == build_vocabulary(UNITS).words


def test_max_vocab_breaks_count_ties_by_first_appearance() -> None:
    vocab = build_vocabulary([["x", "y", "z"]], max_vocab=4)  # x, y, z and <eos> once each
    assert vocab.words == ["x", "y", "<eos>", "<unk>"]  # z is cut, the last seen
    assert vocab.counts.tolist() == [1, 1, 1, 1]


def test_both_limits_together() -> None:
    vocab = build_vocabulary(UNITS, max_vocab=3, min_count=3)
    assert vocab.words == ["<unk>", "a", "<eos>"]


def test_max_vocab_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        build_vocabulary(UNITS, max_vocab=1)


def test_encode_counts_out_of_vocabulary_tokens_not_literal_unk() -> None:
    index = build_vocabulary(UNITS, min_count=2).index()
    ids, oov = encode([["a", "c", "<unk>"], ["zz"]], index)
    unk, eos = index["<unk>"], index["<eos>"]
    assert ids.tolist() == [index["a"], unk, unk, eos, unk, eos]
    assert oov == 2  # c (dropped) and zz (never seen); the literal <unk> is not out of vocabulary


def test_encode_counts_only_what_the_limit_keeps() -> None:
    index = build_vocabulary(UNITS).index()
    ids, oov = encode([["a", "zz"], ["zz", "zz"]], index, limit=3)
    assert ids.tolist() == [index["a"], index["<unk>"], index["<eos>"]]
    assert oov == 1


def test_word_types_leave_out_the_special_tokens() -> None:
    assert word_types(count_words([["a", "<unk>", "a", "b"]])) == 2
    assert word_types(count_words([["<unk>", "<eos>"]])) == 0
