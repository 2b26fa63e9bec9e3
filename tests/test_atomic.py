"""legacy_compat.atomic: the one atomic-write helper (temporary beside the file, then os.replace)."""
from __future__ import annotations

import os

import pytest

from legacy_compat.atomic import TMP_PREFIX, atomic_write, atomic_write_bytes, atomic_write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    seen = []

    def failing(tmp):
        seen.append(tmp)
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert seen[0].parent == tmp_path and seen[0].name.startswith(TMP_PREFIX + "out.pid") and seen[0].suffix == ".json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_bytes_and_text_land_whole_with_open_s_mode(tmp_path):
    target = tmp_path / "sub" / "a.csv"
    assert atomic_write_text(target, "x,y\r\n1,2\n") == target          # parents made, newlines kept
    assert target.read_bytes() == b"x,y\r\n1,2\n"
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert (target.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01" and sorted(os.listdir(target.parent)) == ["a.csv"]
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "missing" / "b.bin", b"", make_parents=False)


def test_overwrite_false_refuses_an_existing_or_appearing_file(tmp_path):
    target = tmp_path / "net-epoch-1.pt"
    atomic_write_bytes(target, b"first")
    with pytest.raises(FileExistsError, match="already exists; refusing to overwrite"):
        atomic_write(target, lambda tmp: tmp.write_bytes(b"second"), overwrite=False)
    late = tmp_path / "late.bin"

    def racing(tmp):
        tmp.write_bytes(b"mine")
        late.write_bytes(b"theirs")       # another writer got there first
    with pytest.raises(FileExistsError, match="appeared while writing"):
        atomic_write(late, racing, overwrite=False)
    assert target.read_bytes() == b"first" and late.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.bin", "net-epoch-1.pt"]
