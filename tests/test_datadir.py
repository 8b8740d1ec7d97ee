"""model_export.datadir: --data, then $NEXTWORD_DATA, then the shipped WikiText-2, unpacked."""

from __future__ import annotations

import hashlib
import lzma
from pathlib import Path
from typing import Any

import pytest

from model_export import datadir
from model_export.data import DATA_ENV, DataError, load_corpus
from model_export.datadir import SHIPPED_DIR, cache_dir, resolve_data_dir, unpack_shipped

TEXTS = {
    "train.txt": " = Title = \n \n the cat sat on the mat \n",
    "valid.txt": " the mat sat \n",
    "test.txt": " on the cat \n",
}
# The published WikiText-2 v1 files (wiki.{train,valid,test}.tokens of wikitext-2-v1.zip).
WIKITEXT2 = {
    "train.txt": (10_797_148, "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"),
    "valid.txt": (1_121_681, "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
    "test.txt": (1_256_449, "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
}


def ship(root: Path, sums: dict[str, str] | None = None) -> Path:
    """A shipped-copy directory: the three splits as .xz and their SHA256SUMS."""
    root.mkdir(parents=True, exist_ok=True)
    listing = []
    for name, text in TEXTS.items():
        data = text.encode()
        (root / f"{name}.xz").write_bytes(lzma.compress(data, preset=1))
        digest = (sums or {}).get(name, hashlib.sha256(data).hexdigest())
        listing.append(f"{digest}  {name}\n")
    (root / "SHA256SUMS").write_text("".join(listing), encoding="utf-8")
    return root


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".part"))


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


# -- which directory ---------------------------------------------------------------------------


def test_flag_then_environment_override_the_shipped_copy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shipped = ship(tmp_path / "shipped")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert resolve_data_dir(str(tmp_path / "flag"), shipped=shipped) == tmp_path / "flag"
    assert resolve_data_dir(None, shipped=shipped) == tmp_path / "env"
    assert not (shipped / "train.txt").exists()  # nothing unpacked when overridden


@pytest.mark.usefixtures("no_env")
def test_without_flag_or_environment_the_shipped_copy_is_unpacked(tmp_path: Path) -> None:
    shipped = ship(tmp_path / "shipped")
    notes: list[str] = []
    assert resolve_data_dir(None, shipped=shipped, note=notes.append) == shipped
    for name, text in TEXTS.items():
        assert (shipped / name).read_text(encoding="utf-8") == text
        assert (shipped / name).stat().st_mode & 0o777 == 0o644
    assert len(notes) == 1
    assert "CC BY-SA 3.0" in notes[0]
    assert leftovers(shipped) == []
    assert load_corpus(shipped).counts.sum() == 12  # 9 words and 3 <eos> in train


@pytest.mark.usefixtures("no_env")
def test_no_shipped_copy_says_how_to_get_data(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        resolve_data_dir(None, shipped=tmp_path / "absent")
    message = str(caught.value)
    assert "\n" not in message
    assert "--data" in message
    assert DATA_ENV in message
    assert "python -m model_export download --to DIR" in message


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "nextword" / "wikitext-2"


# -- unpacking -----------------------------------------------------------------------------------


def test_a_good_unpacked_copy_is_reused_without_unpacking(tmp_path: Path) -> None:
    shipped = ship(tmp_path / "shipped")
    unpack_shipped(shipped, [shipped])
    before = {name: (shipped / name).stat() for name in TEXTS}
    (shipped / "train.txt.xz").write_bytes(b"no longer xz")  # would fail if it were read again
    notes: list[str] = []
    assert unpack_shipped(shipped, [shipped], note=notes.append) == shipped
    assert notes == []
    for name, stat in before.items():
        after = (shipped / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


def test_a_damaged_unpacked_file_is_unpacked_again(tmp_path: Path) -> None:
    shipped = ship(tmp_path / "shipped")
    unpack_shipped(shipped, [shipped])
    (shipped / "valid.txt").write_text(" edited by hand \n", encoding="utf-8")
    unpack_shipped(shipped, [shipped])
    assert (shipped / "valid.txt").read_text(encoding="utf-8") == TEXTS["valid.txt"]


def test_a_checksum_mismatch_is_one_line_and_leaves_no_file(tmp_path: Path) -> None:
    shipped = ship(tmp_path / "shipped", sums={"valid.txt": "0" * 64})
    (shipped / "valid.txt").write_text(" a stale copy \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"valid\.txt whose sha256 .* is not the 000000000000") as e:
        unpack_shipped(shipped, [shipped])
    assert "\n" not in str(e.value)
    assert not (shipped / "valid.txt").exists()
    assert leftovers(shipped) == []


def test_a_truncated_archive_is_one_line_and_leaves_no_file(tmp_path: Path) -> None:
    shipped = ship(tmp_path / "shipped")
    packed = shipped / "train.txt.xz"
    packed.write_bytes(packed.read_bytes()[:-20])
    with pytest.raises(DataError, match="not a complete xz file"):
        unpack_shipped(shipped, [shipped])
    assert not (shipped / "train.txt").exists()
    assert leftovers(shipped) == []


def test_an_interrupted_unpack_leaves_nothing_that_passes_for_good(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shipped = ship(tmp_path / "shipped")
    real_open = lzma.open

    class Interrupted:
        def __init__(self, path: Any) -> None:
            self.inner = real_open(path)
            self.reads = 0

        def __enter__(self) -> Interrupted:
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.close()

        def read(self, size: int) -> bytes:
            self.reads += 1
            if self.reads > 1:
                raise KeyboardInterrupt
            return self.inner.read(4)  # a few bytes reach the file, then Ctrl-C

    monkeypatch.setattr(lzma, "open", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        unpack_shipped(shipped, [shipped])
    assert not (shipped / "train.txt").exists()
    assert leftovers(shipped) == []
    monkeypatch.undo()
    unpack_shipped(shipped, [shipped])
    assert (shipped / "train.txt").read_text(encoding="utf-8") == TEXTS["train.txt"]


def test_an_unwritable_directory_falls_back_to_the_next(tmp_path: Path) -> None:
    shipped = ship(tmp_path / "shipped")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory", encoding="utf-8")
    cache = tmp_path / "cache" / "wikitext-2"
    assert unpack_shipped(shipped, [blocked / "wikitext-2", cache]) == cache
    assert (cache / "test.txt").read_text(encoding="utf-8") == TEXTS["test.txt"]
    with pytest.raises(DataError, match=r"cannot unpack the shipped WikiText-2: .* not writable"):
        unpack_shipped(shipped, [blocked / "wikitext-2"])


def test_a_listing_without_a_split_is_refused(tmp_path: Path) -> None:
    shipped = ship(tmp_path / "shipped")
    sums = shipped / "SHA256SUMS"
    sums.write_text(sums.read_text().replace("test.txt", "other.txt"), encoding="utf-8")
    with pytest.raises(DataError, match=r"lists no checksum for test\.txt"):
        unpack_shipped(shipped, [shipped])


# -- the copy the project ships ----------------------------------------------------------------


def test_the_shipped_files_are_the_published_wikitext2(tmp_path: Path) -> None:
    # Decompresses 13 MB (about 0.3 s); into tmp_path, not the checkout.
    unpacked = unpack_shipped(SHIPPED_DIR, [tmp_path])
    for name, (size, digest) in WIKITEXT2.items():
        assert (unpacked / name).stat().st_size == size
        assert datadir.sha256_of(unpacked / name) == digest
    assert sum((SHIPPED_DIR / f"{name}.xz").stat().st_size for name in WIKITEXT2) < 4_000_000
    notice = (SHIPPED_DIR / "README.md").read_text(encoding="utf-8")
    assert "Merity" in notice
    assert "arXiv:1609.07843" in notice
    assert "https://creativecommons.org/licenses/by-sa/3.0/" in notice
    legal = (SHIPPED_DIR / "LICENSE").read_text(encoding="utf-8")
    assert "Attribution-ShareAlike 3.0 Unported" in legal
