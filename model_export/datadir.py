"""Where the corpus lives: ``--data``, else ``$NEXTWORD_DATA``, else the shipped WikiText-2.

The project ships WikiText-2 as ``data/wikitext-2/{train,valid,test}.txt.xz`` with the SHA-256 of
each decompressed file in ``SHA256SUMS`` (attribution and licence beside them, in ``README.md``
and ``LICENSE``). On first use the files are decompressed next to themselves, or under
``$XDG_CACHE_HOME/nextword/wikitext-2`` (``~/.cache/...``) where that directory cannot be
written. Each file is decompressed as a stream into a temporary name in its target directory,
hashed on the way, and renamed into place only when it matches ``SHA256SUMS``: an interrupted
unpack leaves at most a temporary file, never a ``train.txt`` that later passes for good.
Unpacked files are checked again at every use (about 0.05 s for the three); one that fails is
unpacked anew.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from model_export.data import DATA_ENV, DOWNLOAD_HINT, SPLITS, DataError

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "wikitext-2"
"""The compressed copy in the checkout (found next to the package, not installed with it)."""
SUMS = "SHA256SUMS"
CHUNK = 1 << 20

Note = Callable[[str], None]


def resolve_data_dir(
    flag: str | None, *, shipped: Path = SHIPPED_DIR, note: Note | None = None
) -> Path:
    """The ``--data`` flag, else ``$NEXTWORD_DATA``, else the shipped copy, unpacked and checked.

    ``note`` is told, once, when the shipped copy is being unpacked (it takes about a second).
    """
    chosen = flag or os.environ.get(DATA_ENV)
    if chosen:
        return Path(chosen).expanduser()
    if not (shipped / SUMS).is_file():
        raise DataError(
            f"no data directory: pass --data DIR or set {DATA_ENV} to a WikiText-2 directory "
            f"(train.txt, valid.txt, test.txt); the copy shipped in {shipped} is missing, and "
            f"`{DOWNLOAD_HINT}` fetches it when online"
        )
    return unpack_shipped(shipped, note=note)


def cache_dir() -> Path:
    """Where the shipped copy is unpacked when its own directory is read-only."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "nextword" / "wikitext-2"


def unpack_shipped(
    source: Path, targets: Sequence[Path] | None = None, *, note: Note | None = None
) -> Path:
    """The first of ``targets`` (default: ``source``, then :func:`cache_dir`) that holds, or can
    be given, the three splits of ``source`` decompressed and matching ``source/SHA256SUMS``."""
    sums = read_sums(source / SUMS)
    tried: list[str] = []
    for target in targets if targets is not None else (source, cache_dir()):
        try:
            for name, digest in sums.items():
                if _ensure(source / f"{name}.xz", target / name, digest, note):
                    note = None  # one notice per unpack, not one per file
        except _NotWritable as exc:
            tried.append(str(exc))
            continue
        return target
    raise DataError(f"cannot unpack the shipped WikiText-2: {'; '.join(tried)}")


def read_sums(path: Path) -> dict[str, str]:
    """``{file name: sha256 hex}`` for the three splits, from a ``sha256sum`` listing."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} ({exc})") from None
    sums: dict[str, str] = {}
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and len(fields[0]) == 64:
            sums[fields[1].lstrip("*")] = fields[0].lower()
    wanted = [f"{split}.txt" for split in SPLITS]
    missing = [name for name in wanted if name not in sums]
    if missing:
        raise DataError(f"{path} lists no checksum for {', '.join(missing)}")
    return {name: sums[name] for name in wanted}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _NotWritable(Exception):
    """A target directory cannot be created or written; the next one is tried."""


def _ensure(packed: Path, path: Path, digest: str, note: Note | None) -> bool:
    """Make ``path`` the decompressed ``packed``; False when it already was."""
    if path.is_file():
        try:
            if sha256_of(path) == digest:
                return False  # unpacked before and still intact
            path.unlink()  # damaged or edited: unpacked anew below
        except OSError:
            pass  # unreadable, or in a read-only directory: the next target is tried
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise _NotWritable(f"{path.parent} is not writable ({exc.strerror or exc})") from None
    if note is not None:
        note(
            f"unpacking the shipped WikiText-2 (CC BY-SA 3.0, {packed.parent / 'README.md'}) "
            f"into {path.parent}"
        )
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide a shared checkout's copy from others
        got = _decompress(packed, fd)
        if got != digest:
            raise DataError(
                f"{packed} decompresses to a {path.name} whose sha256 {got[:12]}... is not the "
                f"{digest[:12]}... that {SUMS} lists; restore the file (git checkout -- {packed})"
            )
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    return True


def _decompress(packed: Path, fd: int) -> str:
    """Stream ``packed`` (xz) into the open file ``fd``; the sha256 of what was written."""
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        try:
            with lzma.open(packed) as stream:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except (lzma.LZMAError, EOFError) as exc:
            raise DataError(f"{packed} is not a complete xz file ({exc})") from None
        except FileNotFoundError:
            raise DataError(f"{packed} is missing (restore it: git checkout -- {packed})") from None
        except OSError as exc:
            raise DataError(f"cannot unpack {packed} ({exc.strerror or exc})") from None
    return digest.hexdigest()
