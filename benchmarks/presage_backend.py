"""Presage as a backend of the keystroke-savings simulator (``benchmarks/keystrokes.py``).

Presage (https://presage.sourceforge.io) is a C++ predictive text engine: it combines several
"predictors" - an interpolated (smoothed) n-gram model over a sqlite database, a second such
model that learns from what the user types, a recency predictor and an abbreviation expander -
into a ranked list of next-word suggestions or completions of the word being typed. It is the
classic free n-gram baseline against which a neural next-word model can be compared.

Requirements. Debian's ``presage`` (for ``text2ngram``) and ``libpresage1v5`` (the shared
library, loaded with :mod:`ctypes` through its C API, so no headers or compiler are needed;
``libpresage-dev`` only ships ``presage.h``; ``libpresage-data``, pulled in by the library,
holds ``/etc/presage.xml`` and the abbreviation list). These are benchmark-only: nothing in
the product depends on them, and the tests skip when they are absent.

The database. :func:`build_database` runs ``text2ngram -n N -l -f sqlite -o DB`` for
N = 1..order on the same file: each run adds one ``_N_gram`` table to one sqlite file, which is
what the smoothed n-gram predictor reads (its default ``DELTAS`` has three weights, so it wants
the tables ``_1_gram`` to ``_3_gram``). ``-l`` lowercases the corpus because Presage's context
tracker lowercases what is typed (``LOWERCASE_MODE`` is ``yes`` by default). ``text2ngram``
tokenises a file as one stream: punctuation and line ends are plain separators, so n-grams run
across sentence and line (paragraph) boundaries. It also exits 0 on many failures (an output
path it cannot write, an input file it cannot read), so the resulting tables are checked.

Configuration. Presage merges the profiles ``/etc/presage.xml`` and ``~/.presage/presage.xml``
(where they exist; the first holds the library's defaults) and cannot be told to skip them.
:class:`Presage` passes one more profile, read last, written into a fresh directory under
``user_db_dir``, that overrides only:

* ``Presage.Predictors.DefaultSmoothedNgramPredictor.DBFILENAME`` (default
  ``/usr/share/presage/database_en.db``): the database built from the benchmark's own corpus,
  so that Presage and the neural model are trained on the same text;
* ``Presage.Predictors.UserSmoothedNgramPredictor.DBFILENAME`` (default
  ``${HOME}/.presage/lm.db``): the learning predictor's database, a new file per instance, so
  that runs neither see the machine user's history nor each other's, and never write ``~``;
* ``Presage.Selector.SUGGESTIONS`` (default ``6``): the number of suggestions shown.

They go in a profile rather than through ``presage_config_set`` after ``presage_new`` because
the predictors open their databases while Presage is being constructed: ``presage_new`` alone
creates ``~/.presage/lm.db`` before any variable can be set. Every other value keeps its default,
in particular the selector's ``REPEAT_SUGGESTIONS=no`` (a word already offered for the word
being typed is not offered again at a later keystroke of that word), ``ONLINE_LEARNING=yes``
(the user predictor learns from the context as it is typed) and the four default predictors.
Further variables can be set with ``config=``; each value is read back to check it was taken.
A ``~/.presage/presage.xml`` could change the other values, so its presence is warned about.

Behaviour a caller should know (Presage 0.9.1). Suggestions come back lowercase. Because of
the no-repeat rule, asking twice for the same text gives different words, so a simulator must
ask once per keystroke; the memory is cleared when the context changes (a new word is begun,
or the text is edited backwards). The abbreviation predictor answers a prefix that is an entry
of its list (``c``, ``r``, ``u``, ``b4`` ...) with the expansion preceded by one backspace per
typed character, e.g. ``"\\x08see"`` after ``"c"``; such a suggestion never equals a word.
A database without the expected tables is accepted at construction and fails at the first
:meth:`Presage.predict` (``PRESAGE_SQLITE_EXECUTE_SQL_ERROR``).

One :class:`Presage` is not thread-safe: the past stream is a single buffer on the instance.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import functools
import os
import shutil
import sqlite3
import subprocess
import tempfile
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

DEBIAN_LIBRARY = "/usr/lib/x86_64-linux-gnu/libpresage.so.1"
TEXT2NGRAM = "text2ngram"

DB_VARIABLE = "Presage.Predictors.DefaultSmoothedNgramPredictor.DBFILENAME"
USER_DB_VARIABLE = "Presage.Predictors.UserSmoothedNgramPredictor.DBFILENAME"
SUGGESTIONS_VARIABLE = "Presage.Selector.SUGGESTIONS"
_PINNED = (DB_VARIABLE, USER_DB_VARIABLE, SUGGESTIONS_VARIABLE)

_PROFILE_NAME = "presage.xml"
_USER_DB_NAME = "user.db"


class PresageError(RuntimeError):
    """A Presage call returned an error code, or text2ngram is missing or failed."""


class ErrorCode(enum.IntEnum):
    """``presage_error_code_t`` from ``presageException.h``, for readable messages."""

    PRESAGE_OK = 0
    PRESAGE_ERROR = 1
    PRESAGE_TOKEN_PREFIX_MISMATCH_ERROR = 2
    PRESAGE_SMOOTHED_NGRAM_PREDICTOR_LEARN_ERROR = 3
    PRESAGE_CONFIG_VARIABLE_ERROR = 4
    PRESAGE_INVALID_CALLBACK_ERROR = 5
    PRESAGE_INVALID_SUGGESTION_ERROR = 6
    PRESAGE_INIT_PREDICTOR_ERROR = 7
    PRESAGE_SQLITE_OPEN_DATABASE_ERROR = 8
    PRESAGE_SQLITE_EXECUTE_SQL_ERROR = 9


# The callbacks return a pointer (c_void_p) to a buffer the instance owns, not c_char_p: ctypes
# cannot keep a bytes object returned from a callback alive, so with c_char_p it would hand
# Presage a pointer to freed memory (and warns "memory leak in callback function").
_STREAM_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
_CHAR_P_P = ctypes.POINTER(ctypes.c_char_p)


def find_library() -> str | None:
    """Where libpresage is: the Debian path, else what ctypes finds (a name CDLL accepts)."""
    if Path(DEBIAN_LIBRARY).is_file():
        return DEBIAN_LIBRARY
    return ctypes.util.find_library("presage")


@functools.cache
def _library() -> ctypes.CDLL:
    path = find_library()
    if path is None:
        raise PresageError("libpresage not found (Debian package libpresage1v5)")
    lib = ctypes.CDLL(path)
    handle_p = ctypes.POINTER(ctypes.c_void_p)
    code = ctypes.c_int  # a C enum is passed as int
    streams = [_STREAM_CALLBACK, ctypes.c_void_p] * 2  # past, then future: callback and arg
    signatures: dict[str, tuple[list[Any], Any]] = {
        "presage_new_with_config": ([*streams, ctypes.c_char_p, handle_p], code),
        "presage_free": ([ctypes.c_void_p], None),
        # Strings Presage allocates are taken as void pointers so ctypes does not copy them
        # into bytes and drop the pointer, which must go back to presage_free_string*.
        "presage_free_string": ([ctypes.c_void_p], None),
        "presage_free_string_array": ([_CHAR_P_P], None),
        "presage_predict": ([ctypes.c_void_p, ctypes.POINTER(_CHAR_P_P)], code),
        "presage_learn": ([ctypes.c_void_p, ctypes.c_char_p], code),
        "presage_config": ([ctypes.c_void_p, ctypes.c_char_p, handle_p], code),
        "presage_config_set": ([ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p], code),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = restype
    return lib


def _check(call: str, code: int) -> None:
    if code != ErrorCode.PRESAGE_OK:
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = "unknown error code"
        raise PresageError(f"{call} failed: {name} ({code})")


def _ngram_counts(db_path: Path, order: int) -> dict[int, int]:
    """Rows per ``_N_gram`` table for N = 1..order (0 for a missing table)."""
    counts: dict[int, int] = {}
    # Read-only URI: a missing file must not be created by the check itself.
    with sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        for n in range(1, order + 1):
            table = f"_{n}_gram"
            counts[n] = (
                db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] if table in tables else 0
            )
    return counts


def build_database(
    lines: Iterable[str], db_path: Path, *, order: int = 3, force: bool = False
) -> Path:
    """Build the n-gram database for Presage's smoothed n-gram predictor from ``lines``.

    ``lines`` are plain text as it would be typed, one paragraph per line. The database is
    built next to ``db_path`` and moved into place only once every table ``_1_gram`` ..
    ``_{order}_gram`` exists and has rows, so a failed build leaves no partial file (and, with
    ``force``, keeps the old one). An existing ``db_path`` raises FileExistsError unless
    ``force``: text2ngram cannot overwrite (it aborts on the rows already there).
    """
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    db_path = Path(db_path)
    if db_path.exists() and not force:
        raise FileExistsError(f"{db_path} exists (pass force=True to replace it)")
    exe = shutil.which(TEXT2NGRAM)
    if exe is None:
        raise PresageError(f"{TEXT2NGRAM} not found on PATH (Debian package presage)")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target, so the final rename is atomic (no cross-device move).
    with tempfile.TemporaryDirectory(dir=db_path.parent, prefix=f".{db_path.name}.") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        with corpus.open("w", encoding="utf-8") as f:
            for line in lines:
                f.write(line.rstrip("\n") + "\n")
        partial = Path(tmp) / "ngrams.db"
        for n in range(1, order + 1):
            command = [exe, "-n", str(n), "-l", "-f", "sqlite", "-o", str(partial), str(corpus)]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                detail = (result.stderr.strip().splitlines() or ["no message"])[-1]
                raise PresageError(f"{TEXT2NGRAM} -n {n} exited with {result.returncode}: {detail}")
        # text2ngram exits 0 when it could not write or read, so the tables are the evidence.
        counts = _ngram_counts(partial, order) if partial.is_file() else {}
        empty = [n for n in range(1, order + 1) if not counts.get(n)]
        if empty:
            raise PresageError(
                f"{TEXT2NGRAM} left no rows in the _N_gram tables for N in {empty} "
                f"(corpus too small for order {order}?)"
            )
        partial.replace(db_path)
    return db_path


def _write_profile(path: Path, values: Mapping[str, str]) -> None:
    """A Presage XML profile setting only ``values`` (dotted names become nested elements)."""
    root = ET.Element("Presage")
    for variable, value in values.items():
        parts = variable.split(".")
        if parts[0] != "Presage" or len(parts) < 2:
            raise ValueError(f"not a Presage variable: {variable!r}")
        node = root
        for part in parts[1:]:
            child = node.find(part)
            node = ET.SubElement(node, part) if child is None else child
        node.text = value
    ET.ElementTree(root).write(path, encoding="UTF-8", xml_declaration=True)


class Presage:
    """One Presage engine over ``db_path``, fed the whole text typed so far on each call.

    ``user_db_dir`` receives a fresh directory per instance holding the profile and the
    learning predictor's database (:attr:`user_db_path`); the caller deletes it. ``config``
    sets further Presage variables (not the three this class sets, which have arguments).
    """

    def __init__(
        self,
        db_path: Path,
        *,
        suggestions: int = 3,
        user_db_dir: Path,
        config: dict[str, str] | None = None,
    ) -> None:
        if suggestions < 1:
            raise ValueError(f"suggestions must be at least 1, got {suggestions}")
        extra = dict(config or {})
        clashes = sorted(set(extra) & set(_PINNED))
        if clashes:
            raise ValueError(f"set these through the arguments, not config: {clashes}")
        self.suggestions = suggestions
        self.db_path = Path(db_path).resolve()
        self._lib = _library()
        self._handle = ctypes.c_void_p()
        # Presage reads the past stream through this callback during each call; the buffer
        # and both callback objects live on the instance so the pointers stay valid.
        self._past = ctypes.create_string_buffer(b"")
        self._future = ctypes.create_string_buffer(b"")
        self._past_callback = _STREAM_CALLBACK(self._get_past)
        self._future_callback = _STREAM_CALLBACK(self._get_future)

        # Presage finds the home profile through $HOME, as here.
        home_profile = Path(os.environ.get("HOME", "/nonexistent"), ".presage", _PROFILE_NAME)
        if home_profile.is_file():
            warnings.warn(
                f"{home_profile} is merged into Presage's configuration: values this backend "
                "does not set may differ from Presage's defaults",
                stacklevel=2,
            )
        Path(user_db_dir).mkdir(parents=True, exist_ok=True)
        self.work_dir = Path(tempfile.mkdtemp(prefix="presage-", dir=user_db_dir)).resolve()
        self.user_db_path = self.work_dir / _USER_DB_NAME
        pinned = {
            DB_VARIABLE: str(self.db_path),
            USER_DB_VARIABLE: str(self.user_db_path),
            SUGGESTIONS_VARIABLE: str(suggestions),
        }
        profile = self.work_dir / _PROFILE_NAME
        _write_profile(profile, pinned)

        _check(
            "presage_new_with_config",
            self._lib.presage_new_with_config(
                self._past_callback,
                None,
                self._future_callback,
                None,
                str(profile).encode(),
                ctypes.byref(self._handle),
            ),
        )
        try:
            for variable, value in extra.items():
                # presage_config_set accepts any name and creates the variable, so a typo
                # would be silently ignored; every variable Presage uses is in its profile.
                self.config(variable)
                _check(
                    f"presage_config_set({variable})",
                    self._lib.presage_config_set(self._handle, variable.encode(), value.encode()),
                )
            # Reading back proves what is in use, e.g. that no other profile outranked ours.
            for variable, value in {**pinned, **extra}.items():
                actual = self.config(variable)
                if actual != value:
                    raise PresageError(f"{variable} is {actual!r} after setting it to {value!r}")
        except BaseException:
            self.close()
            raise

    def _get_past(self, _arg: int | None) -> int:
        return ctypes.addressof(self._past)

    def _get_future(self, _arg: int | None) -> int:
        return ctypes.addressof(self._future)

    def _require_open(self) -> ctypes.c_void_p:
        if not self._handle:
            raise PresageError("Presage instance is closed")
        return self._handle

    def predict(self, past: str) -> list[str]:
        """Suggestions for ``past``, the full text typed so far (a trailing space: next word)."""
        handle = self._require_open()
        self._past = ctypes.create_string_buffer(past.encode("utf-8"))
        result = _CHAR_P_P()
        _check("presage_predict", self._lib.presage_predict(handle, ctypes.byref(result)))
        words: list[str] = []
        try:
            i = 0
            while result[i] is not None:
                # errors="replace": Presage lowercases byte by byte, which can split a
                # multibyte character; one odd suggestion must not stop a simulation.
                words.append(result[i].decode("utf-8", errors="replace"))
                i += 1
        finally:
            self._lib.presage_free_string_array(result)
        return words[: self.suggestions]

    def learn(self, text: str) -> None:
        """Tell Presage's learning predictors about ``text`` (e.g. a finished paragraph)."""
        handle = self._require_open()
        _check("presage_learn", self._lib.presage_learn(handle, text.encode("utf-8")))

    def config(self, variable: str) -> str:
        """The value Presage uses for ``variable``; PresageError if it has no such variable."""
        handle = self._require_open()
        value = ctypes.c_void_p()
        _check(
            f"presage_config({variable})",
            self._lib.presage_config(handle, variable.encode(), ctypes.byref(value)),
        )
        try:
            return ctypes.string_at(value).decode("utf-8") if value.value else ""
        finally:
            self._lib.presage_free_string(value)

    def close(self) -> None:
        """Free the engine (idempotent); the files in :attr:`work_dir` stay."""
        if self._handle:
            self._lib.presage_free(self._handle)
            self._handle = ctypes.c_void_p()

    def __enter__(self) -> Presage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
