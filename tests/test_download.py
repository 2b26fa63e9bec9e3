"""data_prep.download: streaming, resume, checksums and safe unpacking, against a local HTTP server."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from download_fixtures import start_server, stop_server

from data_prep.download import (
    ArchiveError,
    ChecksumError,
    DownloadError,
    InsufficientDiskSpaceError,
    UnsafeArchiveError,
    check_disk_space,
    download,
    extract,
    file_digest,
)

PAYLOAD = bytes((i * 7 + i // 251) % 256 for i in range(300_000))
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(scope="module")
def server():
    s = start_server()
    s.files["blob.bin"] = PAYLOAD
    yield s
    stop_server(s)


@pytest.fixture(autouse=True)
def _clear(server):
    server.requests.clear()


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------ download

def test_download_verifies_md5_and_sha256(server, tmp_path):
    dest = download(server.url("range", "blob.bin"), tmp_path / "blob.bin", md5=MD5, sha256=SHA256,
                    progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert _listing(tmp_path) == ["blob.bin"]             # no .part left behind
    assert server.ranges() == [None]


def test_checksum_mismatch_deletes_partial_and_names_url_and_hashes(server, tmp_path):
    url = server.url("range", "blob.bin")
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as info:
        download(url, tmp_path / "blob.bin", md5=wrong, progress=False)
    msg = str(info.value)
    assert url in msg and wrong in msg and MD5 in msg and "MD5" in msg
    assert _listing(tmp_path) == []                        # neither dest nor .part


def test_sha256_mismatch_is_reported(server, tmp_path):
    with pytest.raises(ChecksumError) as info:
        download(server.url("range", "blob.bin"), tmp_path / "b", sha256="ab" * 32, progress=False)
    assert info.value.actual == SHA256 and info.value.algorithm == "SHA256"


def test_truncated_transfer_keeps_part_and_resume_completes_it(server, tmp_path):
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError) as info:
        download(server.url("truncated", "blob.bin"), dest, md5=MD5, progress=False)
    assert "cut short" in str(info.value) and str(len(PAYLOAD)) in str(info.value)
    part = tmp_path / "blob.bin.part"
    assert not dest.exists()
    assert part.read_bytes() == PAYLOAD[: len(PAYLOAD) // 2]
    server.requests.clear()
    download(server.url("range", "blob.bin"), dest, md5=MD5, progress=False)
    assert server.ranges() == [f"bytes={len(PAYLOAD) // 2}-"]
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_resume_sends_range_and_appends(server, tmp_path):
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:12345])
    download(server.url("range", "blob.bin"), dest, md5=MD5, progress=False)
    assert server.ranges() == ["bytes=12345-"]
    assert dest.read_bytes() == PAYLOAD


def test_resume_against_server_without_range_restarts_from_zero(server, tmp_path):
    # the .part holds garbage: only a full re-download (200 instead of 206) can pass the checksum
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 5000)
    dest = download(server.url("norange", "blob.bin"), tmp_path / "blob.bin", md5=MD5, progress=False)
    assert server.ranges() == ["bytes=5000-"]
    assert dest.read_bytes() == PAYLOAD


def test_resumed_bytes_are_checked_too(server, tmp_path):
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 5000)      # wrong prefix, the server resumes after it
    with pytest.raises(ChecksumError):
        download(server.url("range", "blob.bin"), tmp_path / "blob.bin", md5=MD5, progress=False)
    assert _listing(tmp_path) == []


def test_complete_part_and_416_finishes_without_body(server, tmp_path):
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD)
    dest = download(server.url("range", "blob.bin"), tmp_path / "blob.bin", md5=MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_no_resume_discards_part(server, tmp_path):
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 5000)
    download(server.url("range", "blob.bin"), tmp_path / "blob.bin", md5=MD5, resume=False, progress=False)
    assert server.ranges() == [None]


def test_http_error_names_url_and_status(server, tmp_path):
    url = server.url("range", "absent.bin")
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "absent.bin", progress=False)
    assert url in str(info.value) and "404" in str(info.value)
    assert _listing(tmp_path) == []


def test_unreachable_server_is_a_download_error(tmp_path):
    with pytest.raises(DownloadError) as info:
        download("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", progress=False, timeout=5)
    assert "http://127.0.0.1:9/x.bin" in str(info.value)


def test_expected_size_mismatch(server, tmp_path):
    with pytest.raises(DownloadError) as info:
        download(server.url("range", "blob.bin"), tmp_path / "b", expected_size=len(PAYLOAD) + 1, progress=False)
    assert str(len(PAYLOAD) + 1) in str(info.value)
    assert _listing(tmp_path) == []


def test_existing_file_kept_when_it_verifies_and_replaced_when_not(server, tmp_path):
    dest = tmp_path / "blob.bin"
    dest.write_bytes(PAYLOAD)
    download(server.url("range", "blob.bin"), dest, md5=MD5, progress=False)
    assert server.requests == []                               # nothing fetched
    dest.write_bytes(b"stale")
    download(server.url("range", "blob.bin"), dest, md5=MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 1


def test_file_url_and_its_resume(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "copy.bin"
    dest.parent.mkdir()
    (dest.parent / "copy.bin.part").write_bytes(PAYLOAD[:1000])
    download(src.as_uri(), dest, md5=MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError) as info:
        download((tmp_path / "nope.bin").as_uri(), tmp_path / "n", progress=False)
    assert "nope.bin" in str(info.value)


def test_unsupported_scheme(tmp_path):
    with pytest.raises(DownloadError, match="ftp"):
        download("ftp://example.org/x", tmp_path / "x", progress=False)


def test_file_digest_known_answer(tmp_path):
    p = tmp_path / "abc"
    p.write_bytes(b"abc")
    assert file_digest(p, "md5") == "900150983cd24fb0d6963f7d28e17f72"


# ------------------------------------------------------------------ extract

def _zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] = {}) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in symlinks.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return path


def _tar(path: Path, members: dict[str, bytes], links: dict[str, tuple[bytes, str]] = {}, mode="w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (kind, target) in links.items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tf.addfile(info)
    return path


GOOD = {"top/a.txt": b"alpha", "top/sub/b.txt": b"beta"}


@pytest.mark.parametrize("maker", ["zip", "tar.gz", "tar"])
def test_extract_good_archive(tmp_path, maker):
    archive = (_zip(tmp_path / "a.zip", GOOD) if maker == "zip"
               else _tar(tmp_path / f"a.{maker}", GOOD, mode="w:gz" if maker == "tar.gz" else "w"))
    out = extract(archive, tmp_path / "out", progress=False)
    assert (out / "top/a.txt").read_bytes() == b"alpha"
    assert (out / "top/sub/b.txt").read_bytes() == b"beta"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([archive.name, "out"])   # no temp folder left


def test_extract_keeps_a_symlink_that_stays_inside(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", GOOD, links={"top/link": (tarfile.SYMTYPE, "sub/b.txt")})
    out = extract(archive, tmp_path / "out", progress=False)
    assert (out / "top/link").is_symlink() and (out / "top/link").read_bytes() == b"beta"


UNSAFE = [
    ("zip", {"top/ok.txt": b"ok", "../evil.txt": b"evil"}, {}, "../evil.txt"),
    ("zip", {"top/ok.txt": b"ok", "/tmp/abs_evil.txt": b"evil"}, {}, "/tmp/abs_evil.txt"),
    ("zip", {"top/ok.txt": b"ok", "top/../../evil.txt": b"evil"}, {}, "top/../../evil.txt"),
    ("zip-symlink", {"top/ok.txt": b"ok"}, {"top/out": "../../outside"}, "top/out"),
    ("tar", {"top/ok.txt": b"ok", "../evil.txt": b"evil"}, {}, "../evil.txt"),
    ("tar", {"top/ok.txt": b"ok", "/abs_evil.txt": b"evil"}, {}, "/abs_evil.txt"),
    ("tar", {"top/ok.txt": b"ok"}, {"top/link": (tarfile.SYMTYPE, "../../outside")}, "top/link"),
    ("tar", {"top/ok.txt": b"ok"}, {"top/link": (tarfile.SYMTYPE, "/etc/passwd")}, "top/link"),
    ("tar", {"top/ok.txt": b"ok"}, {"top/hard": (tarfile.LNKTYPE, "../outside")}, "top/hard"),
    ("tar", {"top/ok.txt": b"ok"}, {"top/fifo": (tarfile.FIFOTYPE, "")}, "top/fifo"),
]


@pytest.mark.parametrize("kind,members,links,bad", UNSAFE, ids=[u[3] + "-" + u[0] for u in UNSAFE])
def test_extract_refuses_members_that_escape(tmp_path, kind, members, links, bad):
    work = tmp_path / "work"
    work.mkdir()
    if kind.startswith("zip"):
        archive = _zip(tmp_path / "evil.zip", members, links)
    else:
        archive = _tar(tmp_path / "evil.tar.gz", members, links)
    with pytest.raises(UnsafeArchiveError) as info:
        extract(archive, work / "out", progress=False)
    assert repr(bad) in str(info.value) and str(archive) in str(info.value)
    assert list(work.iterdir()) == []                       # nothing half-written, no temp folder
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/abs_evil.txt").exists()


def test_extract_truncated_archive_leaves_nothing(tmp_path):
    big = {f"top/f{i}.bin": os.urandom(20000) for i in range(5)}
    archive = _tar(tmp_path / "a.tar.gz", big)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ArchiveError) as info:
        extract(archive, work / "out", progress=False)
    assert str(archive) in str(info.value)
    assert list(work.iterdir()) == []


def test_extract_refuses_non_archives_and_non_empty_targets(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(ArchiveError, match="neither a zip nor a tar"):
        extract(junk, tmp_path / "o1", progress=False)
    archive = _zip(tmp_path / "a.zip", GOOD)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ArchiveError, match="not empty"):
        extract(archive, tmp_path / "full", progress=False)
    (tmp_path / "empty").mkdir()
    assert (extract(archive, tmp_path / "empty", progress=False) / "top/a.txt").exists()


# ------------------------------------------------------------------ disk space

def test_check_disk_space(tmp_path):
    free = check_disk_space(tmp_path / "not" / "yet", 1)
    assert free > 0
    with pytest.raises(InsufficientDiskSpaceError) as info:
        check_disk_space(tmp_path / "x", 1 << 62)
    assert str(tmp_path / "x") in str(info.value) and "need" in str(info.value)
    with pytest.raises(ValueError):
        check_disk_space(tmp_path, -1)
