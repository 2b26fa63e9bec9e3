"""Downloading and unpacking what the datasets and models need.

The Python side of the ``wget`` / ``tar`` / ``unzip`` calls in the original
``setup_ilsvrcanimalpart.m``, ``setup_vocpart.m``, ``setup_cub200.m`` and
``setup_matconvnet.m``, with what those shell calls did not do:

* `download` streams a URL (``http(s)://`` or ``file://``) with urllib, shows a
  tqdm progress bar, resumes an interrupted download (the ``dest + '.part'``
  file) with an HTTP ``Range`` request where the server allows it (a server
  that answers ``200`` instead of ``206`` gets a fresh full download), checks
  the length, verifies an MD5 and/or SHA-256 while it streams, and renames the
  file into place only once it verified. A checksum mismatch deletes the
  partial file and raises `ChecksumError` naming the URL and both hashes.
* `extract` unpacks a zip or tar (plain, .gz, .bz2, .xz) into a temporary
  folder beside the target and renames it into place only when every member
  was written, after refusing any member that would land outside the target
  (absolute paths, ``..``, symbolic or hard links pointing outside, device
  files). A failed extraction leaves nothing behind.
* `check_disk_space` says, before a long download or training run, that the
  disk is too full.

Only the standard library (urllib, zipfile, tarfile) and tqdm are used.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from legacy_compat.atomic import remove_orphans, writer_tag
from legacy_compat.cli import UserError

__all__ = ["download", "extract", "check_disk_space", "DownloadError", "ChecksumError",
           "ArchiveError", "UnsafeArchiveError", "InsufficientDiskSpaceError",
           "file_digest", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 60.0          # seconds without data before a connection is given up
CHUNK_SIZE = 1 << 20            # bytes read per step
USER_AGENT = "icnn-python-port/1.0 (urllib)"


class DownloadError(UserError, OSError):
    """A download failed; the message names the URL and the reason."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected hash (the partial file was deleted)."""

    def __init__(self, url: str, algorithm: str, expected: str, actual: str, path: Path):
        self.url, self.algorithm, self.expected, self.actual = url, algorithm, expected, actual
        super().__init__(f"checksum mismatch for {url}: expected {algorithm} {expected}, got {actual} "
                         f"(the partial download {path} was deleted; download it again)")


class ArchiveError(UserError, OSError):
    """An archive could not be read or unpacked; the message names the archive."""


class UnsafeArchiveError(ArchiveError):
    """An archive member would be written outside the target folder; the message names it."""


class InsufficientDiskSpaceError(UserError, OSError):
    """Not enough free disk space; the message says how much is needed and how much is free."""


# ----------------------------------------------------------------------------------------------
# Hashes

def _new_hashers(md5: str | None, sha256: str | None) -> dict[str, "hashlib._Hash"]:
    hashers = {}
    if md5:
        hashers["md5"] = hashlib.md5()
    if sha256:
        hashers["sha256"] = hashlib.sha256()
    return hashers


def file_digest(path: os.PathLike | str, algorithm: str = "md5") -> str:
    """Hex digest of a whole file (``algorithm``: any name hashlib knows)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_SIZE), b""):
            h.update(block)
    return h.hexdigest()


def _hash_existing(path: Path, hashers: dict) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_SIZE), b""):
            for h in hashers.values():
                h.update(block)


def _verify(url: str, part: Path, hashers: dict, expected: dict[str, str | None]) -> None:
    for name, h in hashers.items():
        actual = h.hexdigest()
        if actual.lower() != str(expected[name]).lower():
            part.unlink(missing_ok=True)
            raise ChecksumError(url, name.upper(), str(expected[name]).lower(), actual, part)


def _matches(path: Path, md5: str | None, sha256: str | None) -> bool:
    """True when the file at path has the given hashes (no hash given: when it exists)."""
    if md5 and file_digest(path, "md5") != md5.lower():
        return False
    if sha256 and file_digest(path, "sha256") != sha256.lower():
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Opening a URL, possibly from an offset

class _Source:
    """An open byte stream of a URL from some offset: what `_open` returns."""

    def __init__(self, stream, offset: int, total: int | None, close: Callable[[], None]):
        self.stream = stream          # has .read(n)
        self.offset = offset          # where the stream starts in the file (0: full download)
        self.total = total            # the file's full length, when known
        self.close = close


def _open_file_url(url: str, offset: int) -> _Source:
    path = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise DownloadError(f"cannot download {url}: {exc.strerror or exc}") from exc
    total = os.fstat(f.fileno()).st_size
    if offset > total:
        offset = 0
    f.seek(offset)
    return _Source(f, offset, total, f.close)


def _content_range_start_total(value: str | None) -> tuple[int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` (TOTAL may be ``*``)."""
    if not value or not value.strip().lower().startswith("bytes"):
        return None, None
    spec = value.strip()[5:].strip()
    rng, _, total = spec.partition("/")
    start = rng.split("-")[0].strip()
    return (int(start) if start.isdigit() else None), (int(total) if total.strip().isdigit() else None)


def _open_http_url(url: str, offset: int, timeout: float) -> _Source:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset > 0:
            # Range not satisfiable: the .part may already hold the whole file.
            _, total = _content_range_start_total(exc.headers.get("Content-Range"))
            exc.close()
            if total is not None and total == offset:
                return _Source(None, offset, total, lambda: None)
            return _open_http_url(url, 0, timeout)
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot download {url}: {reason}") from exc
    status = getattr(resp, "status", None)
    length = resp.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if offset > 0 and status == 206:
        start, total = _content_range_start_total(resp.headers.get("Content-Range"))
        if start == offset:
            if total is None and length is not None:
                total = offset + length
            return _Source(resp, offset, total, resp.close)
        resp.close()                   # a range we did not ask for: start again
        return _open_http_url(url, 0, timeout)
    # 200: the server ignored the Range header (or none was sent): full download.
    return _Source(resp, 0, length, resp.close)


def _open(url: str, offset: int, timeout: float) -> _Source:
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme == "file":
        return _open_file_url(url, offset)
    if scheme in ("http", "https"):
        return _open_http_url(url, offset, timeout)
    raise DownloadError(f"cannot download {url}: unsupported URL scheme {scheme!r} (use http, https or file)")


# ----------------------------------------------------------------------------------------------
# download

def download(url: str, dest: os.PathLike | str, md5: str | None = None, sha256: str | None = None,
             expected_size: int | None = None, progress: bool = True, resume: bool = True,
             timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download ``url`` to ``dest``; return ``dest`` as a Path.

    Python side of the original ``system('wget -O FILE URL')`` calls in
    setup_*.m. Streams into ``dest + '.part'``; with ``resume`` an existing
    ``.part`` is continued with ``Range: bytes=N-`` (a ``200`` answer means the
    server cannot resume: the file is fetched again from the start). The file
    is renamed to ``dest`` only after its length (``Content-Length`` or
    ``expected_size``) and its ``md5`` / ``sha256`` (hex strings) verified.

    A ``dest`` that already exists is kept when it matches the given hashes
    (or when no hash is given) and is downloaded again otherwise.

    Raises `DownloadError` (network or HTTP error, truncated transfer: the
    ``.part`` is kept for a later resume) or `ChecksumError` (the ``.part`` is
    deleted). ``file://`` URLs are read like any other (offline mirrors, tests).
    """
    dest = Path(dest)
    if dest.exists():
        if _matches(dest, md5, sha256) and (expected_size is None or dest.stat().st_size == expected_size):
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if (resume and part.exists()) else 0
    if not resume:
        part.unlink(missing_ok=True)
    source = _open(url, offset, timeout)
    try:
        hashers = _new_hashers(md5, sha256)
        if source.offset > 0:
            _hash_existing(part, hashers)
        received = _stream_to_part(url, source, part, hashers, progress, dest.name)
    finally:
        source.close()
    size = part.stat().st_size
    expected_total = source.total if source.total is not None else expected_size
    if expected_total is not None and size < expected_total:
        raise DownloadError(f"download of {url} was cut short: got {size} of {expected_total} bytes "
                            f"({received} in this attempt); {part} is kept, run again to resume")
    if expected_size is not None and size != expected_size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"download of {url} has {size} bytes, expected {expected_size} "
                            f"(the partial download {part} was deleted)")
    _verify(url, part, hashers, {"md5": md5, "sha256": sha256})
    os.replace(part, dest)
    return dest


def _stream_to_part(url: str, source: _Source, part: Path, hashers: dict, progress: bool, name: str) -> int:
    """Append (offset > 0) or write the stream to ``part``; return the bytes received."""
    if source.stream is None:           # 416 on a complete .part: nothing left to read
        return 0
    received = 0
    mode = "ab" if source.offset > 0 else "wb"
    with open(part, mode) as out, tqdm(total=source.total, initial=source.offset, unit="B", unit_scale=True,
                                       unit_divisor=1024, desc=name, disable=not progress, leave=False) as bar:
        while True:
            try:
                block = source.stream.read(CHUNK_SIZE)
            except http.client.IncompleteRead as exc:
                block = exc.partial
                _write_block(out, block, hashers)
                received += len(block)
                out.flush()
                raise DownloadError(f"download of {url} was cut short by the server after "
                                    f"{source.offset + received} bytes; {part} is kept, run again to resume") from exc
            except (OSError, http.client.HTTPException) as exc:
                out.flush()
                raise DownloadError(f"download of {url} failed after {source.offset + received} bytes: {exc}; "
                                    f"{part} is kept, run again to resume") from exc
            if not block:
                break
            _write_block(out, block, hashers)
            received += len(block)
            bar.update(len(block))
    return received


def _write_block(out, block: bytes, hashers: dict) -> None:
    out.write(block)
    for h in hashers.values():
        h.update(block)


# ----------------------------------------------------------------------------------------------
# extract

def _archive_kind(archive: Path) -> str:
    if not archive.is_file():
        raise ArchiveError(f"{archive}: no such archive")
    if zipfile.is_zipfile(archive):
        return "zip"
    try:
        if tarfile.is_tarfile(archive):
            return "tar"
    except (OSError, tarfile.TarError) as exc:
        raise ArchiveError(f"{archive}: cannot read the archive ({exc})") from exc
    raise ArchiveError(f"{archive}: neither a zip nor a tar archive")


def _inside(relpath: str) -> bool:
    """True when a normalised relative POSIX path stays inside its root."""
    return relpath not in ("..",) and not relpath.startswith("../") and not posixpath.isabs(relpath)


def _check_member_name(archive: Path, name: str) -> str:
    """The member's path relative to the target; raises when it would escape."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":") or clean.startswith("//"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    norm = posixpath.normpath(clean)
    if not _inside(norm):
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside the target folder "
                                 f"('..' in its path); refusing to extract")
    return norm


def _check_link(archive: Path, name: str, member_path: str, target: str, hard: bool) -> None:
    """Refuse a link whose target lies outside the extraction folder."""
    kind = "hard link" if hard else "symbolic link"
    clean = target.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} is a {kind} to the absolute path {target!r}; "
                                 f"refusing to extract")
    # A hard link's target is relative to the archive root, a symlink's to its own folder.
    base = "" if hard else posixpath.dirname(member_path)
    resolved = posixpath.normpath(posixpath.join(base, clean))
    if not _inside(resolved):
        raise UnsafeArchiveError(f"{archive}: member {name!r} is a {kind} to {target!r}, outside the target "
                                 f"folder; refusing to extract")


def _check_tar_members(archive: Path, tf: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tf.getmembers()
    for m in members:
        path = _check_member_name(archive, m.name)
        if m.issym() or m.islnk():
            _check_link(archive, m.name, path, m.linkname, hard=m.islnk())
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device, FIFO or other special file; "
                                     f"refusing to extract")
    return members


def _zip_symlink_target(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return zf.read(info).decode("utf-8", "surrogateescape")
    return None


def _check_zip_members(archive: Path, zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        path = _check_member_name(archive, info.filename)
        link = _zip_symlink_target(zf, info)
        if link is not None:
            _check_link(archive, info.filename, path, link, hard=False)


def _extract_zip(archive: Path, zf: zipfile.ZipFile, into: Path) -> None:
    for info in zf.infolist():
        rel = _check_member_name(archive, info.filename)
        out = into / rel
        link = _zip_symlink_target(zf, info)
        if info.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        elif link is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(link, out)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK_SIZE)


def _extract_tar(archive: Path, tf: tarfile.TarFile, members: list[tarfile.TarInfo], into: Path) -> None:
    if hasattr(tarfile, "data_filter"):   # a second line of defence (Python >= 3.11.4)
        tf.extractall(into, members=members, filter="data")
    else:  # pragma: no cover - older Pythons; the members were checked above
        tf.extractall(into, members=members)


def extract(archive: os.PathLike | str, target_dir: os.PathLike | str, progress: bool = True) -> Path:
    """Unpack a zip or tar(.gz/.bz2/.xz) archive into ``target_dir``; return it.

    Python side of ``tar -xvf`` / ``unzip`` in setup_*.m. Every member is
    checked first: an absolute path, a ``..`` that leaves the target, a
    symbolic or hard link pointing outside it, or a special file raises
    `UnsafeArchiveError` naming the member, and nothing is written. The
    members are written into a temporary folder beside ``target_dir`` that is
    renamed to ``target_dir`` at the end; on any error it is removed, so a
    failed extraction leaves nothing half-written. ``target_dir`` must not
    exist or be an empty folder.
    """
    archive, target = Path(archive), Path(target_dir)
    kind = _archive_kind(archive)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ArchiveError(f"cannot extract {archive}: the target {target} already exists and is not empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(target.parent, (f".{target.name}.extract",))             # what a killed extraction left
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract{writer_tag()}", dir=target.parent))
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                _check_zip_members(archive, zf)
                if progress:
                    tqdm.write(f"unpacking {archive.name} ...")
                _extract_zip(archive, zf, tmp)
        else:
            with tarfile.open(archive, "r:*") as tf:
                members = _check_tar_members(archive, tf)
                if progress:
                    tqdm.write(f"unpacking {archive.name} ...")
                _extract_tar(archive, tf, members, tmp)
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except UnsafeArchiveError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, ArchiveError):
            raise
        if isinstance(exc, getattr(tarfile, "FilterError", ())):
            raise UnsafeArchiveError(f"{archive}: {exc}; refusing to extract") from exc
        raise ArchiveError(f"{archive}: cannot unpack ({type(exc).__name__}: {exc}); "
                           f"the archive is probably truncated or corrupt") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ----------------------------------------------------------------------------------------------
# disk space

def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        if path.parent == path:
            break
        path = path.parent
    return path


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def check_disk_space(path: os.PathLike | str, needed_bytes: int) -> int:
    """Raise `InsufficientDiskSpaceError` unless ``needed_bytes`` are free where ``path`` is (or would be).

    ``path`` may not exist yet (its nearest existing parent is measured).
    Returns the free bytes. Call it before long downloads or training so a
    full disk is reported before hours of work, not after.
    """
    if needed_bytes < 0:
        raise ValueError(f"needed_bytes must be >= 0, got {needed_bytes}")
    where = _existing_ancestor(Path(path))
    free = shutil.disk_usage(where).free
    if free < needed_bytes:
        raise InsufficientDiskSpaceError(
            f"not enough free disk space for {Path(path)}: need {human_size(needed_bytes)}, "
            f"only {human_size(free)} free on the disk holding {where}; free some space or choose another folder")
    return free
