"""Typed text <-> WikiText-2 tokens: the one tokenizer shared by training and serving.

WikiText-2 was tokenized with Moses-style rules, which :func:`tokenize` reproduces for text a
person types:

* punctuation and symbols are split off (``( " ; : ! ? $ % = / …``); a word-final period is
  split off unless the word is an abbreviation (``U.S.``, ``e.g.``, ``Mr.``, ``St.``, single
  initials ``J.``, and ``No. 5``-style prefixes before a number); runs of dots (``...``) are
  one token;
* inside numbers ``1,000`` becomes ``1 @,@ 000`` and ``3.5`` becomes ``3 @.@ 5``; a hyphen
  between two letters or digits becomes ``@-@`` (``well @-@ known``);
* an apostrophe glued to letters starts a clitic token: ``don't`` -> ``don 't``, ``it's`` ->
  ``it 's``, ``O'Brien`` -> ``O 'Brien`` (WikiText has ``'t``, never ``n't``); any other
  apostrophe is a token of its own (``students '``);
* typographic quotes are typed as straight ones (phone keyboards insert them; the corpus
  mostly has ``'`` and ``"``), text is NFC-normalised, control characters are dropped and
  whitespace is collapsed; ``<unk>`` is kept as one token.

:func:`detokenize` is the inverse for display: ``@-@`` glued back to ``-``, punctuation
attached, clitics joined (``don 't`` -> ``don't``), quotes paired. The round trip
``tokenize(detokenize(line.split())) == line.split()`` holds for most corpus lines (measured
in tests/test_text.py); it fails only where the corpus itself is ambiguous (``St .`` at the end
of a sentence, typographic quotes, zero-width characters).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

UNK = "<unk>"

TOKENIZER = "wikitext-moses"
"""The name of these rules; bundles record it with the version (:mod:`service.bundle`)."""
TOKENIZER_VERSION = 1
"""Raised whenever a change to the rules gives some text other tokens: a model trained on the
old tokens would be served text it never saw, so such bundles are refused rather than served."""

MARKERS = {"@-@": "-", "@,@": ",", "@.@": "."}
"""WikiText's in-word separators and what a user sees for each."""

_TYPOGRAPHIC = str.maketrans(
    {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'}
    | dict.fromkeys("\u200b\u2060\ufeff", " ")  # zero-width separators count as spaces
)
_TYPOGRAPHIC_CHARS = re.compile("[" + "".join(chr(code) for code in _TYPOGRAPHIC) + "]")
# Controls, surrogates, private-use and unassigned code points are dropped.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cs", "Co", "Cn"})
_PLACEHOLDER = "\ue000"  # stands in for <unk> while splitting; private-use chars are dropped

# Abbreviations that keep their period (initials A-Z are handled separately); the second
# set keeps it only before a number ("No. 5", "pp. 12").
_ABBREVIATIONS = frozenset(
    {
        "Mr", "Mrs", "Ms", "Dr", "St", "Sr", "Lt", "Col", "Gen", "Sgt", "Capt", "Cpl", "Maj",
        "Adm", "Pvt", "Prof", "Gov", "Sen", "Rev", "Hon", "Bros", "Messrs", "Mme", "Mlle",
        "vs", "v", "var", "ssp",
    }
)  # fmt: skip
_NUMERIC_ABBREVIATIONS = frozenset({"No", "Nos", "Nr", "Op", "pp"})

# Opening / closing characters for display: no space after / before them.
_GLUE_RIGHT = frozenset("([{$£€¥₹#")
_GLUE_LEFT = frozenset({",", ".", ";", ":", "!", "?", ")", "]", "}", "%", "...", "…"})
_GLUE_BOTH = frozenset({"/", *MARKERS})


@dataclass(frozen=True)
class _Patterns:
    symbol: re.Pattern[str]
    hyphen: re.Pattern[str]


def _combining_marks() -> str:
    """Regex class body with every combining mark (category M*): they live in planes 0, 1, 14."""
    ranges: list[str] = []
    for plane_start, plane_end in ((0, 0x20000), (0xE0000, 0xE1000)):
        start = -1
        for code in range(plane_start, plane_end + 1):
            is_mark = code < plane_end and unicodedata.category(chr(code)).startswith("M")
            if is_mark and start < 0:
                start = code
            elif not is_mark and start >= 0:
                ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(code - 1))}")
                start = -1
    return "".join(ranges)


@functools.cache
def _patterns() -> _Patterns:
    """Compiled on first use (the mark class takes a scan of Unicode, about 50 ms)."""
    marks = _combining_marks()
    word_char = f"(?:[^\\W_]|[{marks}{_PLACEHOLDER}])"
    # A symbol (anything but a letter, digit, space or . ' ` , -) with its combining marks.
    # Skin-tone modifiers (U+1F3FB..F) attach to their emoji like marks do.
    symbol = f"(?:[^\\w\\s.'`,\\-{marks}{_PLACEHOLDER}\u200d]|_)[{marks}\U0001f3fb-\U0001f3ff]*"
    return _Patterns(
        # Zero-width joiners keep an emoji sequence (family, flag, skin tone) one token.
        symbol=re.compile(f"{symbol}(?:\u200d{symbol})*"),
        hyphen=re.compile(f"(?<={word_char})-(?={word_char})"),
    )


# <unk> often stands for a number in WikiText ("16 @,@ <unk>"), so it counts as digits here.
_DIGIT_COMMA = re.compile(f"(?<=[\\d{_PLACEHOLDER}]),(?=[\\d{_PLACEHOLDER}])")
_DIGIT_POINT = re.compile(f"(?<=[\\d{_PLACEHOLDER}])\\.(?=[\\d{_PLACEHOLDER}])")
_DOTS = re.compile(r"\.{2,}")
_COMMA = re.compile(r"(?<!@),(?!@)")  # every comma but the one inside the @,@ marker
_APOSTROPHE = re.compile("'")
_UNK_SPLIT = re.compile(f"({_PLACEHOLDER})")


# -- text -> tokens ------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """NFC, straight quotes, control characters dropped, every whitespace run one space."""
    return " ".join(_clean(text).split())


def _clean(text: str) -> str:
    if not text.isascii():  # ASCII is already NFC and has no typographic quotes
        text = unicodedata.normalize("NFC", text)
        if _TYPOGRAPHIC_CHARS.search(text):  # str.translate costs ~0.1 µs a character
            text = text.translate(_TYPOGRAPHIC)
    if text.isprintable():  # the common case: nothing to drop
        return text
    return "".join(
        char
        for char in text
        if char.isspace() or unicodedata.category(char) not in _DROPPED_CATEGORIES
    )


def tokenize(text: str) -> list[str]:
    """Typed text -> WikiText-2 tokens (never maps to ``<unk>``: that needs the vocabulary)."""
    return _tokenize_clean(_clean(text))


def _tokenize_clean(clean: str) -> list[str]:
    """:func:`tokenize` of text that :func:`_clean` has already seen.

    The text before its last word comes from a cache: successive keystrokes share it (only the
    last word changes while it is typed), and walking its words cost ~40 µs for a paragraph.
    The cache holds at most 1024 heads: ~30 MB at the default ``max_text_chars`` of 10,000.
    """
    parts = clean.rsplit(None, 1)
    if len(parts) < 2:
        return list(_tokenize_word(parts[0], False)) if parts else []
    head, last = parts
    return [*_tokenize_words(head, last[:1].isdigit()), *_tokenize_word(last, False)]


@functools.lru_cache(maxsize=1 << 10)
def _tokenize_words(text: str, before_digit: bool) -> tuple[str, ...]:
    """The tokens of ``text``'s words; ``before_digit``: the word after them starts with one."""
    words = text.split()
    tokens: list[str] = []
    for i, word in enumerate(words):
        next_digit = words[i + 1][:1].isdigit() if i + 1 < len(words) else before_digit
        tokens += _tokenize_word(word, next_digit)
    return tuple(tokens)


@functools.lru_cache(maxsize=1 << 16)
def _tokenize_word(word: str, before_digit: bool) -> tuple[str, ...]:
    """The tokens of one whitespace-free word; ``before_digit``: the next word starts with one.

    Every rule looks only inside a word, except the period of ``No.``-style abbreviations,
    which stays only before a number; so text is tokenized word by word, and a keystroke's text
    (mostly the same words as the previous keystroke's) costs a cache lookup per word.
    """
    patterns = _patterns()
    spaced = word.replace(UNK, _PLACEHOLDER)
    if not spaced.isalnum():  # letters and digits alone have nothing to split
        spaced = patterns.symbol.sub(lambda m: f" {m.group()} ", spaced)
    # Each pass runs only when its character occurs.
    if "," in spaced:
        spaced = _COMMA.sub(" , ", _DIGIT_COMMA.sub(" @,@ ", spaced))
    if "." in spaced:
        spaced = _DIGIT_POINT.sub(" @.@ ", spaced)
    if "-" in spaced:
        spaced = patterns.hyphen.sub(" @-@ ", spaced)
    if ".." in spaced:
        spaced = _DOTS.sub(lambda m: f" {m.group()} ", spaced)
    if "'" in spaced:
        spaced = _APOSTROPHE.sub(_split_apostrophe, spaced)
    pieces = spaced.split()
    tokens: list[str] = []
    for i, piece in enumerate(pieces):
        if not piece.endswith(".") and _PLACEHOLDER not in piece:
            tokens.append(piece)
            continue
        following = pieces[i + 1] if i + 1 < len(pieces) else ("0" if before_digit else "")
        for token in _split_period(piece, following):
            tokens.extend(_UNK_SPLIT.split(token) if _PLACEHOLDER in token else [token])
    return tuple(UNK if token == _PLACEHOLDER else token for token in tokens if token)


def _split_apostrophe(match: re.Match[str]) -> str:
    """``'`` glued after a character and before a letter starts a clitic; any other stands alone."""
    text, at = match.string, match.start()
    after = text[at + 1 : at + 2]
    if at > 0 and text[at - 1] != " " and after.isalpha():
        return " '"
    return " ' "


def _split_period(word: str, following: str) -> list[str]:
    """Split a word-final period off unless the word is an abbreviation."""
    if len(word) < 2 or not word.endswith(".") or word.strip(".") == "":
        return [word]
    stem = word[:-1]
    abbreviation = (
        ("." in stem and any(char.isalpha() for char in stem))
        or stem in _ABBREVIATIONS
        or (len(stem) == 1 and stem.isupper())
        or (stem in _NUMERIC_ABBREVIATIONS and following[:1].isdigit())
    )
    return [word] if abbreviation else [stem, "."]


def split_typed(text: str) -> tuple[list[str], str]:
    """Keyboard convention: ``(finished tokens, partly typed word)``.

    Text that is empty or ends in whitespace is finished: ``(tokenize(text), "")``. Otherwise
    a trailing word (letters/digits, or a clitic such as ``'t`` / a lone ``'`` after a word)
    is still being typed and comes back as the second element, as typed after the same
    character normalisation :func:`tokenize` applies; trailing punctuation finishes the text,
    except a hyphen after a word, which becomes ``@-@`` (``well-`` -> ``(["well", "@-@"], "")``).
    """
    clean = _clean(text)
    if not clean or clean[-1].isspace():
        return _tokenize_clean(clean), ""
    last_char, before = clean[-1], clean[-2:-1]
    if last_char == "-" and _is_word_char(before):
        return [*_tokenize_clean(clean[:-1]), "@-@"], ""  # a hyphenated word is on its way
    tokens = _tokenize_clean(clean)
    if _is_word_char(last_char) or (last_char == "'" and _is_word_char(before)):
        return tokens[:-1], tokens[-1]
    return tokens, ""


def _is_word_char(char: str) -> bool:
    return char.isalnum() or unicodedata.category(char[:1] or " ").startswith("M")


# -- tokens -> text ------------------------------------------------------------------------------


def display_token(token: str) -> str:
    """One token as a user sees it (``@-@`` -> ``-``, ``@,@`` -> ``,``, ``@.@`` -> ``.``)."""
    return MARKERS.get(token, token)


def detokenize(tokens: Sequence[str]) -> str:
    """Tokens -> display text: markers glued, punctuation attached, clitics joined, quotes
    paired."""
    pieces: list[str] = []
    glue_next = True  # no space before the first piece
    double_open = False
    for token in tokens:
        left, right = _glue(token, pieces[-1] if pieces else "", double_open)
        if token == '"':
            double_open = not double_open
        if pieces and not (glue_next or left):
            pieces.append(" ")
        pieces.append(display_token(token))
        glue_next = right
    return "".join(pieces)


def _glue(token: str, previous: str, double_open: bool) -> tuple[bool, bool]:
    """Whether ``token`` attaches to the text before it and to the text after it."""
    if token in _GLUE_BOTH:
        return True, True
    if token in _GLUE_LEFT:
        return True, False
    if token in _GLUE_RIGHT:
        return False, True
    if token == '"':
        return (True, False) if double_open else (False, True)
    if token == "'":
        # After a word it closes a quote or marks a plural possessive; otherwise it opens.
        return (True, False) if previous[-1:].isalnum() else (False, True)
    if token.startswith("'") and token[1:2].isalpha():
        return True, False  # clitic: 's 't 're 'Brien
    return False, False
