"""Reading and writing MAT files: v5/v7 through scipy.io, v7.3 (HDF5) through h5py.

`loadmat(path)` returns the file's variables as a `MatStruct` of the values
documented in `legacy_compat.mattypes` (and docs/MATLAB_MAPPING.md); the same
content gives the same Python values whichever MAT version wrote it.
`savemat(path, variables, version="7.3" | "5")` writes files MATLAB can load,
atomically (a temporary file in the target folder, then `os.replace`).
Every failure, reading or writing, is a `MatFileError` that names the file
and says what is wrong (and which variable, field or cell where it can).

This module ports no original .m file: it implements MATLAB's MAT-file
formats (the MAT-File Format reference for v5; MATLAB's HDF5 layout for 7.3).

v5/v7: scipy.io reads the data, but it loses classes (logical comes back as
uint8 unless `mat_dtype=True`, which in turn drops the imaginary part of
complex arrays; logical sparse always comes back as uint8). So before scipy
reads a variable, a small walker goes over its data elements: it checks the
structure (sizes inside bounds, the zlib stream complete and bounded, nesting
not absurdly deep), so that corrupt files fail fast instead of reaching scipy,
and it records the class flags (class, logical, complex) of every array, which
the conversion to our types then applies.

v7.3: h5py's low-level API reads MATLAB's HDF5 layout (one attribute read and
one dataset read per value, which keeps files with thousands of `#refs#`
entries well under a second). libhdf5 can crash or hang on corrupt files when
it converts a corrupt stored datatype or reads a variable-length attribute from
a corrupt global heap (tests/test_matio_fuzz.py found both), so every stored
type is checked before HDF5 converts it, and `MATLAB_fields`, the one
variable-length attribute, is read from the file bytes by a bounds-checked
parser of HDF5's old layout (what MATLAB writes). Soft and external links and
external storage are refused.
"""
from __future__ import annotations

import io
import math
import mmap
import os
import platform
import re
import struct
import sys
import time
import warnings
import zlib
from typing import Any, Callable, Iterable, Mapping

import h5py
import numpy as np
import scipy.io
import scipy.sparse

from .atomic import atomic_write
from .cli import UserError
from .mattypes import MatStruct, StructArray

__all__ = ["MatFileError", "loadmat", "savemat"]


class MatFileError(UserError):
    """A MAT file could not be read or written; the message names the file and the reason."""

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable (DataLoader workers, multiprocessing)
        return (type(self), (self.path, self.reason))


class _Bad(Exception):
    """Raised deep inside a reader or writer; `where` collects the location on the way up."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.where: list[str] = []  # innermost first: ".field", "{3}", "(2)"

    def location(self, root: str) -> str:
        return root + "".join(reversed(self.where))


def _fail(path: str, exc: _Bad, root: str | None) -> MatFileError:
    if root is None:
        return MatFileError(path, exc.reason)
    return MatFileError(path, f"variable {exc.location(root)!r}: {exc.reason}")


# ---------------------------------------------------------------------------
# MATLAB classes

_NUMERIC_CLASSES = {
    "double": np.dtype(np.float64), "single": np.dtype(np.float32),
    "int8": np.dtype(np.int8), "uint8": np.dtype(np.uint8),
    "int16": np.dtype(np.int16), "uint16": np.dtype(np.uint16),
    "int32": np.dtype(np.int32), "uint32": np.dtype(np.uint32),
    "int64": np.dtype(np.int64), "uint64": np.dtype(np.uint64),
}
_CLASS_OF_DTYPE = {dt: name for name, dt in _NUMERIC_CLASSES.items()}
_COMPLEX_OF = {np.dtype(np.float32): np.dtype(np.complex64)}  # everything else -> complex128
_REAL_OF_COMPLEX = {np.dtype(np.complex64): np.dtype(np.float32), np.dtype(np.complex128): np.dtype(np.float64)}
_MAX_DEPTH = 200
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}\Z")


def _complex_dtype(real: np.dtype) -> np.dtype:
    return _COMPLEX_OF.get(np.dtype(real), np.dtype(np.complex128))


def _char_value(chars: np.ndarray) -> Any:
    """A '<U1' array in MATLAB shape -> str for a 1 x n row or the 0 x 0 '', else the array."""
    if chars.ndim == 2 and (chars.shape[0] == 1 or chars.shape == (0, 0)):
        return "".join(chars.reshape(-1).tolist())
    return chars


def _at_least_2d(arr: np.ndarray) -> np.ndarray:
    if arr.ndim >= 2:
        return arr
    return arr.reshape((1, 1) if arr.ndim == 0 else (1, arr.shape[0]))


# ---------------------------------------------------------------------------
# loadmat

def loadmat(path: os.PathLike | str, variable_names: Iterable[str] | None = None) -> MatStruct:
    """Read a MAT file (v5, v7 or v7.3) into Python values (see `mattypes`).

    `variable_names` (a name or an iterable of names) reads only those
    variables; one that the file does not hold is a `MatFileError`. Any
    other problem (missing, truncated or corrupt file, not a MAT file, an
    HDF5 file MATLAB did not write, a class Python cannot hold such as a
    function handle or a MATLAB object) is a `MatFileError` too.
    """
    path = os.fspath(path)
    wanted = _wanted_names(path, variable_names)
    version, head = _sniff(path)
    if version == "5":
        out = _load_v5(path, head, wanted)
    else:
        out = _load_v73(path, wanted)
    if wanted is not None:
        missing = [n for n in wanted if n not in out]
        if missing:
            raise MatFileError(path, f"has no variable {missing[0]!r} (it holds: {_holds(path, version)})")
        out = MatStruct((n, out[n]) for n in wanted)
    return out


def _wanted_names(path: str, variable_names: Any) -> list[str] | None:
    if variable_names is None:
        return None
    names = [variable_names] if isinstance(variable_names, str) else list(variable_names)
    for n in names:
        if not isinstance(n, str):
            raise MatFileError(path, f"variable_names must be strings, got {n!r}")
    return list(dict.fromkeys(names))


def _holds(path: str, version: str) -> str:
    """The variable names a file holds, for error messages."""
    try:
        if version == "5":
            names = [entry[0] for entry in scipy.io.whosmat(path)]   # (name, shape, class) triples
        else:
            with h5py.File(path, "r") as f:
                names = [n for n in f.keys() if not n.startswith("#")]
    except Exception:  # noqa: BLE001 - only decorates a message
        return "?"
    return ", ".join(names) if names else "no variables"


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _sniff(path: str) -> tuple[str, bytes]:
    """Which MAT version a file is ("5" or "7.3") and its 128-byte header; MatFileError if neither."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(128)
            fh.seek(512)
            at512 = fh.read(8)
    except FileNotFoundError:
        raise MatFileError(path, "no such file") from None
    except OSError as exc:
        raise MatFileError(path, f"cannot open ({exc.strerror or exc})") from None
    if head.startswith(_HDF5_SIGNATURE) or (at512 == _HDF5_SIGNATURE and head[124:128] not in _V73_MARKS):
        raise MatFileError(path, "is an HDF5 file that MATLAB did not write (no MATLAB 7.3 header)")
    if len(head) == 0:
        raise MatFileError(path, "is empty, not a MAT file")
    if len(head) < 128:
        raise MatFileError(path, f"is too short to be a MAT file ({len(head)} bytes; the header alone is 128)")
    mark = head[124:128]
    if mark in _V5_MARKS:
        return "5", head
    if mark in _V73_MARKS:
        if at512 != _HDF5_SIGNATURE:
            raise MatFileError(path, "has a MATLAB 7.3 header but no HDF5 data after it (truncated or corrupt)")
        return "7.3", head
    if head.startswith(b"MATLAB"):
        raise MatFileError(path, f"has a MATLAB header with an unknown version/endian mark {mark!r} (corrupt?)")
    extra = " (MAT v4 files are not supported)" if 0 in head[:4] else ""
    raise MatFileError(path, f"is not a MAT file: no MATLAB v5/v7/v7.3 header{extra}")


_V5_MARKS = (b"\x00\x01IM", b"\x01\x00MI")
_V73_MARKS = (b"\x00\x02IM", b"\x02\x00MI")


# ---------------------------------------------------------------------------
# v5 / v7: structure walker + scipy.io

_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MI_ITEMSIZE = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8}
_MX_CELL, _MX_STRUCT, _MX_OBJECT, _MX_CHAR, _MX_SPARSE = 1, 2, 3, 4, 5
_MX_FUNCTION, _MX_OPAQUE = 16, 17
_MX_NUMERIC = {6: "double", 7: "single", 8: "int8", 9: "uint8", 10: "int16", 11: "uint16",
               12: "int32", 13: "uint32", 14: "int64", 15: "uint64"}
_DEFLATE_MAX_RATIO = 1032  # zlib cannot expand data more than this


class _V5Node:
    """Class flags of one array in a v5 file, and of the arrays inside it (cells, struct fields)."""

    __slots__ = ("mclass", "logical", "complex", "children", "classname", "fields")

    def __init__(self, mclass: int, logical: bool = False, complex_: bool = False):
        self.mclass = mclass
        self.logical = logical
        self.complex = complex_
        self.children: list[_V5Node] = []
        self.classname = ""
        self.fields: list[str] = []


_V5_EMPTY = _V5Node(0)  # a 0-byte miMATRIX: MATLAB's [] inside a cell or struct


class _V5Walker:
    """Walks the data elements of one v5 variable; checks bounds; builds its `_V5Node` tree."""

    def __init__(self, buf: bytes, endian: str):
        self.buf = buf
        self.e = endian
        self.two = struct.Struct(endian + "II")

    def tag(self, pos: int, end: int) -> tuple[int, int, int, int]:
        """(type, nbytes, data start, next element) of the data element at `pos`."""
        if pos + 8 > end:
            raise _Bad("truncated data element (file truncated or corrupt)")
        w0, w1 = self.two.unpack_from(self.buf, pos)
        if w0 >> 16:  # small data element: type and size packed in the first word
            n = w0 >> 16
            if n > 4:
                raise _Bad("corrupt small data element")
            return w0 & 0xFFFF, n, pos + 4, pos + 8
        data = pos + 8
        if data + w1 > end:
            raise _Bad("a data element runs past the end of its container (file truncated or corrupt)")
        return w0, w1, data, min(data + w1 + (-w1 % 8), end)

    def name(self, pos: int, end: int) -> str:
        """The name of the miMATRIX at `pos` (without walking its contents)."""
        t, n, s, _ = self.tag(pos, end)
        if t != _MI_MATRIX:
            raise _Bad(f"expected an array (miMATRIX), found data type {t}")
        if n == 0:
            return ""
        _, _, _, p = self.tag(s, s + n)            # array flags
        _, _, _, p = self.tag(p, s + n)            # dimensions
        _, nn, d, _ = self.tag(p, s + n)           # name
        return bytes(self.buf[d:d + nn]).decode("latin1")

    def matrix(self, pos: int, end: int, depth: int) -> tuple[_V5Node, int]:
        t, n, s, nxt = self.tag(pos, end)
        if t != _MI_MATRIX:
            raise _Bad(f"expected an array (miMATRIX), found data type {t}")
        return self.contents(s, s + n, depth), nxt

    def contents(self, s: int, e: int, depth: int) -> _V5Node:
        """The miMATRIX body in buf[s:e]: array flags, dimensions, name, then the class's data."""
        if depth > _MAX_DEPTH:
            raise _Bad(f"arrays nested more than {_MAX_DEPTH} levels deep")
        if s == e:
            return _V5_EMPTY
        t, n, d, p = self.tag(s, e)
        if t != 6 or n != 8:
            raise _Bad("corrupt array flags")
        flags, _ = self.two.unpack_from(self.buf, d)
        node = _V5Node(flags & 0xFF, bool(flags & 0x200), bool(flags & 0x800))
        t, n, d, p = self.tag(p, e)
        if t != 5 or n % 4 or n < 8:
            raise _Bad("corrupt array dimensions")
        dims = struct.unpack_from(f"{self.e}{n // 4}i", self.buf, d)
        if min(dims) < 0:
            raise _Bad(f"negative array dimensions {dims}")
        _, _, _, p = self.tag(p, e)  # array name
        c = node.mclass
        if c in _MX_NUMERIC or c == _MX_CHAR:
            self._numeric(node, dims, p, e)
        elif c == _MX_SPARSE:
            self._sparse(dims, p, e)
        elif c == _MX_CELL:
            self._cell(node, math.prod(dims), p, e, depth)
        elif c in (_MX_STRUCT, _MX_OBJECT):
            self._struct(node, math.prod(dims), p, e, depth)
        elif c == _MX_OPAQUE:
            self._opaque(node, p, e)
        elif c == _MX_FUNCTION:
            raise _Bad("is a MATLAB function handle, which Python cannot hold")
        else:
            raise _Bad(f"unknown array class {c}")
        return node

    def _numeric(self, node: _V5Node, dims: tuple[int, ...], p: int, e: int) -> None:
        """A numeric or char array: the real part fills the dimensions; the imaginary part follows."""
        t, n, _, p = self.tag(p, e)
        size = _MI_ITEMSIZE.get(t)
        if node.mclass != _MX_CHAR and (size is None or n != math.prod(dims) * size):
            raise _Bad(f"{_MX_NUMERIC[node.mclass]} data of {n} bytes does not fill its dimensions {dims}")
        if node.complex:
            self.tag(p, e)

    def _sparse(self, dims: tuple[int, ...], p: int, e: int) -> None:
        """A sparse matrix: row indices, column index (numel = columns + 1), data."""
        if len(dims) != 2:
            raise _Bad(f"sparse array with dimensions {dims}")
        _, _, _, p = self.tag(p, e)  # ir
        t, n, _, p = self.tag(p, e)  # jc
        if n != 4 * (dims[1] + 1):
            raise _Bad("corrupt sparse column index")
        self.tag(p, e)  # data

    def _cell(self, node: _V5Node, count: int, p: int, e: int, depth: int) -> None:
        """A cell array: `count` miMATRIX elements; an error names the cell {k}."""
        for k in range(count):
            try:
                child, p = self.matrix(p, e, depth + 1)
            except _Bad as exc:
                exc.where.append(f"{{{k + 1}}}")
                raise
            node.children.append(child)

    def _struct(self, node: _V5Node, count: int, p: int, e: int, depth: int) -> None:
        """A struct array (or an object, refused): field names, then count x fields miMATRIX elements."""
        if node.mclass == _MX_OBJECT:
            _, n, d, p = self.tag(p, e)
            node.classname = bytes(self.buf[d:d + n]).decode("latin1", "replace")
        t, n, d, p = self.tag(p, e)
        if t != 5 or n != 4:
            raise _Bad("corrupt struct field-name length")
        (length,) = struct.unpack_from(self.e + "i", self.buf, d)
        t, n, d, p = self.tag(p, e)
        if length <= 0 or n % length:
            if n:
                raise _Bad("corrupt struct field names")
        nfields = n // length if length > 0 else 0
        raw = bytes(self.buf[d:d + n])
        node.fields = [raw[i * length:(i + 1) * length].split(b"\0", 1)[0].decode("latin1")
                       for i in range(nfields)]
        if node.mclass == _MX_OBJECT:
            raise _Bad(f"is a MATLAB object of class {node.classname!r}, which Python cannot hold")
        for k in range(count * nfields):
            try:
                child, p = self.matrix(p, e, depth + 1)
            except _Bad as exc:
                exc.where.append(f".{node.fields[k % nfields]}")
                if count != 1:
                    exc.where.append(f"({k // nfields + 1})")
                raise
            node.children.append(child)

    def _opaque(self, node: _V5Node, p: int, e: int) -> None:
        """A MATLAB object (MCOS): its class name, for the message; always refused."""
        try:
            _, n, d, p = self.tag(p, e)  # type system ("MCOS")
            _, n, d, p = self.tag(p, e)  # class name
            node.classname = bytes(self.buf[d:d + n]).decode("latin1", "replace")
        except _Bad:
            pass
        raise _Bad(f"is a MATLAB object of class {node.classname!r}, which Python cannot hold")


def _load_v5(path: str, head: bytes, wanted: list[str] | None) -> MatStruct:
    """Read a v5/v7 file: every variable is walked (checked, classes recorded), then read by scipy."""
    endian = "<" if head[126:128] == b"IM" else ">"
    out = MatStruct()
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size <= 128:
                return out
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                for name, raw in _v5_variables(mm, size, head, endian, wanted):
                    try:
                        out[name] = _read_v5_variable(raw, endian)
                    except _Bad as exc:
                        raise _fail(path, exc, name) from None
    except MatFileError:
        raise
    except _Bad as exc:
        raise MatFileError(path, exc.reason) from None
    except Exception as exc:  # noqa: BLE001 - any library error becomes a MatFileError
        raise MatFileError(path, f"cannot read as a MAT v5/v7 file ({type(exc).__name__}: {exc})") from None
    return out


def _v5_variables(mm: mmap.mmap, size: int, head: bytes, endian: str, wanted: list[str] | None):
    """Yield (name, bytes of a one-variable uncompressed v5 file) for each variable to read."""
    two = struct.Struct(endian + "II")
    pos, k = 128, 0
    while pos < size:
        k += 1
        if size - pos < 8:
            raise _Bad(f"{size - pos} stray bytes at the end (truncated or corrupt)")
        t, n = two.unpack_from(mm, pos)
        end = pos + 8 + n
        if end > size:
            raise _Bad(f"variable #{k} needs {end - pos} bytes but the file ends after {size - pos} (truncated)")
        if t == _MI_COMPRESSED:
            element = _inflate_element(mm[pos + 8:end], endian, wanted, k)
        elif t == _MI_MATRIX:
            name = _V5Walker(mm, endian).name(pos, end)
            element = None if (wanted is not None and name not in wanted) else mm[pos:end]
        else:
            raise _Bad(f"unexpected data type {t} where variable #{k} should start (corrupt)")
        pos = end
        if element is None:
            continue
        raw = head + element
        name = _V5Walker(raw, endian).name(128, len(raw))
        if name == "" or name.startswith("__"):
            continue  # MATLAB's function workspace (subsystem data), not a variable
        if wanted is not None and name not in wanted:
            continue
        yield name, raw


def _inflate_element(comp: bytes, endian: str, wanted: list[str] | None, k: int) -> bytes | None:
    """Decompress one miCOMPRESSED element, bounded by the size it declares; None if not wanted."""
    d = zlib.decompressobj()
    try:
        tag = d.decompress(comp, 8)
        if len(tag) < 8:
            raise _Bad(f"variable #{k}: corrupt compressed data")
        t, n = struct.unpack(endian + "II", tag)
        if t != _MI_MATRIX:
            raise _Bad(f"variable #{k}: compressed data does not hold an array (type {t})")
        if n + 8 > len(comp) * _DEFLATE_MAX_RATIO + 64:
            raise _Bad(f"variable #{k}: declares {n} bytes, more than its {len(comp)} compressed bytes can hold")
        first = d.decompress(d.unconsumed_tail, min(n, 512))
        if wanted is not None:
            try:
                name = _V5Walker(tag + first, endian).name(0, 8 + len(first))
            except _Bad:
                name = None  # header longer than 512 bytes: decide after inflating it all
            if name is not None and name not in wanted:
                return None
        rest = d.decompress(d.unconsumed_tail, n - len(first)) if n > len(first) else b""
        if len(first) + len(rest) != n:
            raise _Bad(f"variable #{k}: compressed data ends early (truncated or corrupt)")
        d.decompress(d.unconsumed_tail, 64)
        if not d.eof:
            raise _Bad(f"variable #{k}: compressed data is incomplete or corrupt")
    except zlib.error as exc:
        raise _Bad(f"variable #{k}: corrupt compressed data ({exc})") from None
    return tag + first + rest


def _read_v5_variable(raw: bytes, endian: str) -> Any:
    """Walk the variable in `raw` (header + one miMATRIX), read it with scipy, convert it."""
    node, _ = _V5Walker(raw, endian).matrix(128, len(raw), 0)  # raises on classes Python cannot hold
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = scipy.io.loadmat(io.BytesIO(raw), mat_dtype=False, squeeze_me=False, chars_as_strings=False,
                               struct_as_record=True, verify_compressed_data_integrity=True)
    values = [v for k, v in got.items() if not k.startswith("__")]
    if len(values) != 1:
        raise _Bad("scipy.io could not read it")
    return _from_v5(values[0], node)


def _from_v5(value: Any, node: _V5Node) -> Any:
    """What scipy.io.loadmat gave (mat_dtype=False, no squeeze, char arrays) -> our types, by `node`."""
    c = node.mclass
    if node is _V5_EMPTY:
        return np.zeros((0, 0))
    if isinstance(value, str):  # scipy reports a variable it could not read as a string
        raise _Bad(f"unreadable ({value})")
    if c in _MX_NUMERIC:
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biufc":
            raise _Bad("numeric array expected")
        if node.logical:
            return _at_least_2d(value != 0)
        dt = _NUMERIC_CLASSES[_MX_NUMERIC[c]]
        if node.complex:
            dt = _complex_dtype(dt)
        return _at_least_2d(value.astype(dt, copy=False))
    if c == _MX_CHAR:
        if not isinstance(value, np.ndarray) or value.dtype.kind != "U":
            raise _Bad("char array expected")
        return _char_value(_at_least_2d(value.astype("<U1", copy=False)))
    if c == _MX_SPARSE:
        if not scipy.sparse.issparse(value):
            raise _Bad("sparse array expected")
        out = scipy.sparse.csc_matrix(value)
        out.check_format(full_check=True)
        if node.logical:
            return out.astype(bool)
        return out.astype(np.complex128 if node.complex else np.float64, copy=False)
    if c == _MX_CELL:
        if not isinstance(value, np.ndarray) or value.dtype != object or value.size != len(node.children):
            raise _Bad("cell array expected")
        flat = value.reshape(-1, order="F")
        out = np.empty(flat.shape[0], dtype=object)
        for k, child in enumerate(node.children):
            try:
                out[k] = _from_v5(flat[k], child)
            except _Bad as exc:
                exc.where.append(f"{{{k + 1}}}")
                raise
        return out.reshape(_at_least_2d(value).shape, order="F")
    if c == _MX_STRUCT:
        return _struct_from_v5(value, node)
    if c == _MX_FUNCTION:
        raise _Bad("is a MATLAB function handle, which Python cannot hold")
    what = f" of class {node.classname!r}" if node.classname else ""
    raise _Bad(f"is a MATLAB object{what}, which Python cannot hold")


def _struct_from_v5(value: Any, node: _V5Node) -> MatStruct | StructArray:
    names = node.fields
    if not isinstance(value, np.ndarray):
        raise _Bad("struct expected")
    shape = _at_least_2d(value).shape
    count = math.prod(shape)
    if len(node.children) != count * len(names) or (names and tuple(names) != value.dtype.names):
        raise _Bad("struct does not match its header")
    columns = [value[n].reshape(-1, order="F") for n in names]
    elements = []
    for k in range(count):
        s = MatStruct()
        for f, n in enumerate(names):
            try:
                s[n] = _from_v5(columns[f][k], node.children[k * len(names) + f])
            except _Bad as exc:
                exc.where.append(f".{n}")
                if shape != (1, 1):
                    exc.where.append(f"({k + 1})")
                raise
        elements.append(s)
    if shape == (1, 1):
        return elements[0]
    return _struct_array(shape, names, elements)


def _struct_array(shape: tuple[int, ...], names: list[str], elements: list[MatStruct]) -> StructArray:
    """A StructArray of `shape` from its elements in MATLAB linear (column-major) order."""
    flat = np.empty(len(elements), dtype=object)
    for k, s in enumerate(elements):
        flat[k] = s
    out = flat.reshape(shape, order="F").view(StructArray)
    out.fieldnames = list(names)
    return out


# ---------------------------------------------------------------------------
# v7.3 (HDF5) reading

def _load_v73(path: str, wanted: list[str] | None) -> MatStruct:

    out = MatStruct()
    name = None
    try:
        try:
            f = h5py.File(path, "r", locking=False)
        except TypeError:  # h5py built without file-locking control
            f = h5py.File(path, "r")
        with f, open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            raw = _RawFieldNames(mm, len(mm), f.userblock_size)
            reader = _H5Reader(f, len(mm), raw)
            names = [n for n in f.keys() if not n.startswith("#")]
            for name in names:
                if wanted is not None and name not in wanted:
                    continue
                out[name] = reader.variable(name)
    except _Bad as exc:
        raise _fail(path, exc, name) from None
    except MatFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - any h5py / HDF5 error becomes a MatFileError
        where = f" (variable {name!r})" if name is not None else ""
        raise MatFileError(path, f"cannot read as a MAT 7.3 (HDF5) file{where}: {type(exc).__name__}: {exc}") from None
    return out


class _RawFieldNames:
    """MATLAB_fields read straight from the file bytes, bounds-checked at every step.

    HDF5 reads a variable-length attribute through its global heap, and on a corrupt heap it can
    crash or loop forever (found by tests/test_matio_fuzz.py). MATLAB's (and hdf5storage's) files
    use the oldest HDF5 layout: superblock v0, v1 object headers, attribute messages v1 and the
    global heap collections ("GCOL"); this reads the attribute from those. `names()` returns None
    when the layout is another one (then HDF5 reads it).
    """

    def __init__(self, mm: Any, size: int, superblock: int):
        self.mm = mm
        self.size = size
        self.heaps: dict[int, dict[int, tuple[int, int]]] = {}
        sb = superblock
        self.ok = (size >= sb + 32 and mm[sb:sb + 8] == _HDF5_SIGNATURE and mm[sb + 8] == 0
                   and mm[sb + 13] == 8 and mm[sb + 14] == 8)
        self.base = struct.unpack_from("<Q", mm, sb + 24)[0] if self.ok else 0

    def at(self, addr: int, n: int) -> int:
        """Absolute position of `n` bytes at HDF5 address `addr`, checked to lie inside the file."""
        pos = self.base + addr
        if addr < 0 or pos + n > self.size:
            raise _Bad("an HDF5 address points past the end of the file (truncated or corrupt)")
        return pos

    def names(self, addr: int) -> list[str] | None:
        elements = self.attribute(addr, b"MATLAB_fields\0")
        if elements is None:
            return None
        return [self.heap_object(coll, index, length).decode("latin1") for length, coll, index in elements]

    def attribute(self, addr: int, name: bytes) -> list[tuple[int, int, int]] | None:
        """The (length, heap collection, object index) of each element of a vlen attribute."""
        mm = self.mm
        if not self.ok:
            return None
        p = self.at(addr, 16)
        if mm[p] != 1:
            return None  # not a v1 object header
        nmsgs = struct.unpack_from("<H", mm, p + 2)[0]
        blocks = [(p + 16, p + 16 + struct.unpack_from("<I", mm, p + 8)[0])]
        seen = 0
        while blocks and seen < nmsgs:
            start, end = blocks.pop(0)
            if end > self.size:
                raise _Bad("corrupt object header (runs past the end of the file)")
            q = start
            while q + 8 <= end and seen < nmsgs:
                mtype, msize = struct.unpack_from("<HH", mm, q)
                data, q = q + 8, q + 8 + msize
                seen += 1
                if q > end:
                    raise _Bad("corrupt object header message")
                if mtype == 0x10 and msize >= 16:  # continuation: more messages elsewhere
                    offset, length = struct.unpack_from("<QQ", mm, data)
                    blocks.append((self.at(offset, length), self.at(offset, length) + length))
                    if len(blocks) > 1000:
                        raise _Bad("corrupt object header (too many continuations)")
                elif mtype == 0x0C and msize >= 8 and mm[data] == 1:
                    found = self.attribute_message(data, q, name)
                    if found is not None:
                        return found
        raise _Bad(f"attribute {name.rstrip(bytes(1)).decode()} not found where HDF5 says it is (corrupt)")

    def attribute_message(self, data: int, end: int, name: bytes) -> list[tuple[int, int, int]] | None:
        mm = self.mm
        name_size, type_size, space_size = struct.unpack_from("<HHH", mm, data + 2)
        pad = lambda n: n + (-n % 8)  # noqa: E731 - v1 attribute parts are 8-byte aligned
        q = data + 8
        if mm[q:q + name_size] != name:
            return None
        dtype_at = q + pad(name_size)
        space_at = dtype_at + pad(type_size)
        values = space_at + pad(space_size)
        if values > end or mm[dtype_at] & 0x0F != 9 or struct.unpack_from("<I", mm, dtype_at + 4)[0] != 16:
            raise _Bad("corrupt MATLAB_fields attribute")
        rank = mm[space_at + 1]
        if mm[space_at] != 1 or rank != 1 or space_at + 16 > end:
            raise _Bad("corrupt MATLAB_fields attribute (not a list)")
        count = struct.unpack_from("<Q", mm, space_at + 8)[0]
        if values + 16 * count > end:
            raise _Bad("corrupt MATLAB_fields attribute (shorter than its length)")
        return [struct.unpack_from("<IQI", mm, values + 16 * k) for k in range(count)]

    def heap_object(self, coll: int, index: int, length: int) -> bytes:
        objects = self.heaps.get(coll)
        if objects is None:
            objects = self.heaps[coll] = self.collection(coll)
        if index not in objects:
            raise _Bad("MATLAB_fields points at a missing global-heap object (corrupt)")
        start, size = objects[index]
        if length > size:
            raise _Bad("MATLAB_fields longer than its global-heap object (corrupt)")
        return bytes(self.mm[start:start + length])

    def collection(self, coll: int) -> dict[int, tuple[int, int]]:
        """Index -> (position, size) of the objects of a global heap collection."""
        mm = self.mm
        p = self.at(coll, 16)
        if mm[p:p + 4] != b"GCOL" or mm[p + 4] != 1:
            raise _Bad("corrupt global heap (MATLAB_fields)")
        end = self.at(coll, struct.unpack_from("<Q", mm, p + 8)[0]) + struct.unpack_from("<Q", mm, p + 8)[0]
        objects: dict[int, tuple[int, int]] = {}
        q = p + 16
        while q + 16 <= end:
            index, size = struct.unpack_from("<H", mm, q)[0], struct.unpack_from("<Q", mm, q + 8)[0]
            if index == 0:
                break  # free space: the rest of the collection
            if q + 16 + size > end:
                raise _Bad("corrupt global heap object (MATLAB_fields)")
            objects[index] = (q + 16, size)
            q += 16 + size + (-size % 8)
        return objects


# H5Tencode of MATLAB_fields' type (after its 2-byte header): vlen sequence (0x19 0x00) of a 1-byte string (0x13) whose pad/charset
# byte is NULLTERM (MATLAB), NULLPAD (h5py, hdf5storage) or SPACEPAD, ASCII or UTF-8
_FIELDS_TYPES = {b"\x19\x00\x00\x00\x10\x00\x00\x00\x13" + bytes([padset]) + b"\x00\x00\x01\x00\x00\x00"
                 for padset in (0x00, 0x01, 0x02, 0x10, 0x11, 0x12)}


class _H5Reader:
    """Reads MATLAB's HDF5 layout through h5py's low-level API (fast on files with thousands of refs).

    HDF5 can crash converting a corrupt stored datatype, so nothing is read before its stored type
    is checked, and everything is read into a memory type chosen here.
    """

    def __init__(self, f: Any, file_size: int, raw: _RawFieldNames | None = None):

        self.h5py = h5py
        self.raw = raw
        self.f = f
        self.fid = f.id
        self.s64 = h5py.h5t.py_create(np.dtype("S64"))
        self.i64 = h5py.h5t.py_create(np.dtype(np.int64))
        # no value can be larger than the file could hold when inflated (deflate is at most 1032:1)
        self.max_bytes = file_size * _DEFLATE_MAX_RATIO + (1 << 20)

    # -- attributes
    def attr_names(self, oid: Any) -> set[bytes]:
        names: list[bytes] = []
        self.h5py.h5a.iterate(oid, names.append)
        return set(names)

    def attr_id(self, oid: Any, name: bytes, single: bool = True) -> tuple[Any, Any]:
        aid = self.h5py.h5a.open(oid, name)
        if single and aid.get_space().get_simple_extent_npoints() != 1:
            raise _Bad(f"corrupt {name.decode()} attribute (not a single value)")
        return aid, aid.get_type()

    def attr_int(self, oid: Any, name: bytes) -> int:
        """A scalar integer attribute (MATLAB_empty, MATLAB_sparse)."""
        aid, t = self.attr_id(oid, name)
        if t.get_class() != self.h5py.h5t.INTEGER or t.get_size() > 8:
            raise _Bad(f"corrupt {name.decode()} attribute (not an integer)")
        buf = np.zeros(aid.shape, dtype=np.int64)
        aid.read(buf, mtype=self.i64)
        return int(buf.reshape(-1)[0])

    def class_name(self, oid: Any) -> str:
        """The MATLAB_class attribute (a short fixed-length string in every MATLAB file)."""
        aid, t = self.attr_id(oid, b"MATLAB_class")
        if t.get_class() != self.h5py.h5t.STRING or t.is_variable_str():
            raise _Bad("its MATLAB_class attribute is not a fixed-length string (corrupt, or not written by MATLAB)")
        buf = np.zeros(aid.shape, dtype="S64")
        aid.read(buf, mtype=self.s64)
        return buf.reshape(-1)[0].decode("ascii", "replace").rstrip("\0")

    def field_names(self, oid: Any) -> list[str] | None:
        """MATLAB_fields (one vlen of 1-byte chars per field name), or None when absent."""
        h5py = self.h5py
        if not h5py.h5a.exists(oid, b"MATLAB_fields"):
            return None
        aid, t = self.attr_id(oid, b"MATLAB_fields", single=False)
        # the stored type must be exactly a vlen sequence of 1-byte strings (an unknown vlen kind
        # makes HDF5 crash on read, and the API does not show it; the encoded type does)
        if t.encode()[2:] not in _FIELDS_TYPES or len(aid.shape) != 1 or aid.shape[0] > 65535:
            raise _Bad("corrupt MATLAB_fields attribute")
        if self.raw is not None:
            names = self.raw.names(h5py.h5o.get_info(oid).addr)
            if names is not None:
                if len(names) != aid.shape[0]:
                    raise _Bad("corrupt MATLAB_fields attribute")
                return names
        buf = np.empty(aid.shape, dtype=h5py.vlen_dtype(np.dtype("S1")))
        aid.read(buf)
        return [b"".join(np.asarray(item, dtype="S1").tolist()).decode("latin1") for item in buf]

    # -- datasets
    def type_class(self, did: Any) -> int:
        return did.get_type().get_class()

    def data(self, did: Any, dtype: np.dtype) -> np.ndarray:
        """The dataset converted to `dtype` by HDF5 (dims in HDF5 order); the caller checked its type."""
        shape = did.shape
        if math.prod(shape) * max(dtype.itemsize, 1) > self.max_bytes:
            raise _Bad(f"dataset of shape {shape} is larger than the file could hold (corrupt)")
        if did.get_create_plist().get_external_count():
            raise _Bad("dataset stored in external files (MATLAB never writes that; refused)")
        buf = np.empty(shape, dtype=dtype)
        if buf.size:
            did.read(self.h5py.h5s.ALL, self.h5py.h5s.ALL, buf)
        return buf

    def member(self, gid: Any, name: bytes) -> Any:
        """Open a group member; only hard links (soft and external links could lead out of the file)."""
        if gid.links.get_info(name).type != self.h5py.h5l.TYPE_HARD:
            raise _Bad(f"{name.decode('utf-8', 'replace')!r} is a soft or external link (MATLAB never writes those)")
        return self.h5py.h5o.open(gid, name)

    def numbers(self, did: Any, dtype: np.dtype, what: str) -> np.ndarray:
        """An integer or float dataset read as `dtype`."""
        if self.type_class(did) not in (self.h5py.h5t.INTEGER, self.h5py.h5t.FLOAT):
            raise _Bad(f"{what} is not stored as numbers (corrupt)")
        return self.data(did, dtype)

    def complex_numbers(self, did: Any, real: np.dtype) -> np.ndarray:
        """A compound {real, imag} dataset (MATLAB's complex) read as complex."""
        h5t = self.h5py.h5t
        t = did.get_type()
        n = t.get_nmembers()
        names = sorted(t.get_member_name(i) for i in range(n)) if n == 2 else []
        if names != [b"imag", b"real"] or any(t.get_member_class(i) not in (h5t.INTEGER, h5t.FLOAT) for i in range(n)):
            raise _Bad("compound data that is not a {real, imag} complex number (corrupt)")
        arr = self.data(did, np.dtype([("real", real), ("imag", real)]))
        out = np.empty(arr.shape, dtype=_complex_dtype(real))
        out.real = arr["real"]
        out.imag = arr["imag"]
        return out

    def is_ref_dataset(self, oid: Any) -> bool:
        """A dataset of (old-style, 8-byte) object references: cells and struct-array fields."""
        if not isinstance(oid, self.h5py.h5d.DatasetID):
            return False
        t = oid.get_type()
        return t.get_class() == self.h5py.h5t.REFERENCE and t.get_size() == 8

    def refs(self, did: Any) -> np.ndarray:
        """The references of a cell / struct-array field, flat in MATLAB's column-major order."""
        return self.data(did, self.h5py.ref_dtype).reshape(-1)  # HDF5's C order reverses MATLAB's dims

    def deref(self, ref: Any) -> Any:
        if not ref:
            raise _Bad("null object reference (corrupt)")
        return self.h5py.h5r.dereference(ref, self.fid)

    @staticmethod
    def matlab_shape(hshape: tuple[int, ...]) -> tuple[int, ...]:
        """HDF5 dims -> MATLAB dims (reversed; at least 2-D)."""
        s = tuple(reversed(hshape))
        return s if len(s) >= 2 else ((1, 1) if not s else (s[0], 1))

    def matlab_order(self, arr: np.ndarray) -> np.ndarray:
        return arr.T if arr.ndim >= 2 else arr.reshape(self.matlab_shape(arr.shape))

    # -- values
    def variable(self, name: str) -> Any:
        return self.read(self.member(self.f["/"].id, name.encode("utf-8")), 0)

    def read(self, oid: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise _Bad(f"values nested more than {_MAX_DEPTH} levels deep (or a reference cycle)")
        h5py = self.h5py
        attrs = self.attr_names(oid)
        cls = self.class_name(oid) if b"MATLAB_class" in attrs else None
        if b"MATLAB_object_decode" in attrs:
            raise _Bad(f"is a MATLAB object of class {cls!r}, which Python cannot hold")
        if cls is None:
            raise _Bad("has no MATLAB_class attribute: the file was not written by MATLAB")
        if cls == "function_handle":
            raise _Bad("is a MATLAB function handle, which Python cannot hold")
        if isinstance(oid, h5py.h5g.GroupID):
            if b"MATLAB_sparse" in attrs:
                return self.sparse(oid, cls)
            if cls == "struct":
                return self.struct(oid, depth)
            raise _Bad(f"is a MATLAB object of class {cls!r}, which Python cannot hold")
        if not isinstance(oid, h5py.h5d.DatasetID):
            raise _Bad("is neither an HDF5 dataset nor a group (corrupt)")
        if b"MATLAB_empty" in attrs and self.attr_int(oid, b"MATLAB_empty"):
            return self.empty(oid, cls)
        if cls in _NUMERIC_CLASSES:
            return self.numeric(oid, cls)
        if cls == "char":
            return self.char(oid)
        if cls == "logical":
            return self.matlab_order(self.integers(oid, np.dtype(np.uint8), "logical data")).astype(bool)
        if cls == "cell":
            return self.cell(oid, depth)
        if cls == "canonical empty":
            return np.zeros((0, 0))
        if cls == "struct":
            raise _Bad("struct stored as a dataset without MATLAB_empty (corrupt)")
        raise _Bad(f"is a MATLAB object of class {cls!r}, which Python cannot hold")

    def integers(self, did: Any, dtype: np.dtype, what: str) -> np.ndarray:
        if self.type_class(did) != self.h5py.h5t.INTEGER:
            raise _Bad(f"{what} is not stored as integers (corrupt)")
        return self.data(did, dtype)

    def numeric(self, did: Any, cls: str) -> np.ndarray:
        dt = _NUMERIC_CLASSES[cls]
        if self.type_class(did) == self.h5py.h5t.COMPOUND:
            return self.matlab_order(self.complex_numbers(did, dt))
        return self.matlab_order(self.numbers(did, dt, f"{cls} data"))

    def char(self, did: Any) -> Any:
        units = self.matlab_order(self.integers(did, np.dtype(np.uint16), "char data"))
        if units.ndim == 2 and units.shape[0] == 1:
            code = np.ascontiguousarray(units.reshape(-1), dtype="<u2")
            return code.tobytes().decode("utf-16-le", "surrogatepass")
        chars = np.ascontiguousarray(units, dtype="<u4").view("<U1")
        return _char_value(np.asfortranarray(chars))

    def empty(self, did: Any, cls: str) -> Any:
        """A MATLAB_empty dataset: its data are the MATLAB dims of the empty value."""
        dims = tuple(int(d) for d in self.integers(did, np.dtype(np.uint64), "MATLAB_empty dims").reshape(-1))
        if not dims:
            raise _Bad("corrupt MATLAB_empty dimensions")
        if len(dims) < 2:
            dims = dims + (1,)
        if cls == "canonical empty":
            return np.zeros((0, 0))
        if math.prod(dims) != 0:
            raise _Bad(f"marked empty but its dimensions are {dims} (corrupt)")
        if cls in _NUMERIC_CLASSES:
            return np.zeros(dims, dtype=_NUMERIC_CLASSES[cls], order="F")
        if cls == "logical":
            return np.zeros(dims, dtype=bool, order="F")
        if cls == "char":
            return _char_value(np.zeros(dims, dtype="<U1", order="F"))
        if cls == "cell":
            return np.empty(dims, dtype=object, order="F")
        if cls == "struct":
            return StructArray(dims, self.field_names(did) or [])
        raise _Bad(f"is an empty MATLAB object of class {cls!r}, which Python cannot hold")

    def cell(self, did: Any, depth: int) -> np.ndarray:
        if not self.is_ref_dataset(did):
            raise _Bad("cell array not stored as object references (corrupt)")
        refs = self.refs(did)
        out = np.empty(refs.shape[0], dtype=object)
        for k, ref in enumerate(refs):
            try:
                out[k] = self.read(self.deref(ref), depth + 1)
            except _Bad as exc:
                exc.where.append(f"{{{k + 1}}}")
                raise
        return out.reshape(self.matlab_shape(did.shape), order="F")

    def struct(self, gid: Any, depth: int) -> MatStruct | StructArray:
        """A struct group: a scalar struct (fields hold values) or a struct array (fields hold refs)."""
        h5py = self.h5py
        names = self.field_names(gid)
        if names is None:  # no MATLAB_fields (MATLAB omits it at times): the group's member order
            names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n
                     for n in h5py.Group(gid).keys()]
        members = []
        for n in names:
            key = n.encode("utf-8")
            if not key or not gid.links.exists(key):
                raise _Bad(f"struct field {n!r} is listed in MATLAB_fields but missing")
            members.append(self.member(gid, key))
        array_fields = [self.is_ref_dataset(m) and not h5py.h5a.exists(m, b"MATLAB_class") for m in members]
        if any(array_fields):
            if not all(array_fields) or len({m.shape for m in members}) != 1:
                raise _Bad("struct array whose fields have different shapes (corrupt)")
            return self.struct_array(names, members, depth)
        out = MatStruct()
        for n, m in zip(names, members):
            try:
                out[n] = self.read(m, depth + 1)
            except _Bad as exc:
                exc.where.append(f".{n}")
                raise
        return out

    def struct_array(self, names: list[str], members: list[Any], depth: int) -> StructArray | MatStruct:
        shape = self.matlab_shape(members[0].shape)
        columns = [self.refs(m) for m in members]
        elements = []
        for k in range(math.prod(shape)):
            s = MatStruct()
            for n, col in zip(names, columns):
                try:
                    s[n] = self.read(self.deref(col[k]), depth + 1)
                except _Bad as exc:
                    exc.where.append(f".{n}")
                    exc.where.append(f"({k + 1})")
                    raise
            elements.append(s)
        if shape == (1, 1):
            return elements[0]
        return _struct_array(shape, names, elements)

    def sparse(self, gid: Any, cls: str) -> scipy.sparse.csc_matrix:
        """A sparse group: MATLAB_sparse = rows; data, ir (row indices), jc (column starts)."""
        h5py = self.h5py
        if cls not in ("double", "logical"):
            raise _Bad(f"sparse array of class {cls!r} (MATLAB sparse is double or logical)")
        nrows = self.attr_int(gid, b"MATLAB_sparse")

        def member(name: bytes) -> Any:
            if not gid.links.exists(name):
                return None
            did = self.member(gid, name)
            if not isinstance(did, h5py.h5d.DatasetID):
                raise _Bad(f"sparse member {name.decode()} is not a dataset (corrupt)")
            return did

        jc, ir, data = member(b"jc"), member(b"ir"), member(b"data")
        if jc is None:
            raise _Bad("sparse array without its column index (jc)")
        jc = self.integers(jc, np.dtype(np.int64), "sparse column index").reshape(-1)
        ir = np.zeros(0, np.int64) if ir is None else self.integers(ir, np.dtype(np.int64), "sparse row index")
        if data is None:
            values = np.zeros(0, dtype=bool if cls == "logical" else np.float64)
        elif cls == "logical":
            values = self.integers(data, np.dtype(np.uint8), "logical sparse data").astype(bool)
        elif self.type_class(data) == h5py.h5t.COMPOUND:
            values = self.complex_numbers(data, np.dtype(np.float64))
        else:
            values = self.numbers(data, np.dtype(np.float64), "sparse data")
        if jc.size == 0 or nrows < 0:
            raise _Bad("corrupt sparse array dimensions")
        out = scipy.sparse.csc_matrix((values.reshape(-1), ir.reshape(-1), jc), shape=(nrows, jc.size - 1))
        out.check_format(full_check=True)
        return out


# ---------------------------------------------------------------------------
# savemat: Python values -> MATLAB values (checked before any file is touched)

def _canon(value: Any, v5: bool) -> Any:
    """Normalise a Python value to one of our MATLAB value types (see docs/MATLAB_MAPPING.md).

    Everything the chosen writer (`v5`: scipy.io; else our v7.3 writer) cannot store is refused
    here, before any file is touched.
    """
    if isinstance(value, StructArray):
        return _canon_struct_array(value, v5)
    if isinstance(value, Mapping):
        return _canon_struct(value, v5)
    if isinstance(value, str):
        _check_chars(value)
        return value
    if isinstance(value, (bool, np.bool_)):
        return np.full((1, 1), bool(value))
    if isinstance(value, int) and not isinstance(value, np.generic):
        if abs(value) > 2 ** 53:
            raise _Bad(f"the Python int {value} is not exact as a MATLAB double; pass np.int64/np.uint64")
        return np.full((1, 1), float(value))
    if isinstance(value, float):
        return np.full((1, 1), value, dtype=np.float64)
    if isinstance(value, complex):
        return np.full((1, 1), value, dtype=np.complex128)
    if value is None:
        return np.zeros((0, 0))
    if isinstance(value, (list, tuple)):  # a cell row; [] is MATLAB's {} (0 x 0)
        return _canon_cell(_object_array(value, (1, len(value)) if value else (0, 0)), v5)
    if scipy.sparse.issparse(value):
        return _canon_sparse(value)
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        return _canon_array(value, v5)
    raise _Bad(f"cannot store a {type(value).__module__}.{type(value).__qualname__} in a MAT file "
               "(store numpy arrays, str, bool/int/float/complex, None, list/tuple, dict/MatStruct, "
               "StructArray, object arrays or scipy.sparse matrices)")


def _object_array(items: Iterable[Any], shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)  # type: ignore[arg-type]
    for k, v in enumerate(items):
        out[k] = v
    return out.reshape(shape, order="F")


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _Bad(f"{what} {name!r} is not a valid MATLAB name (a letter, then letters, digits or _; "
                   "at most 63 characters)")
    return name


def _check_chars(text: str) -> None:
    if text and max(map(ord, text)) > 0xFFFF:
        raise _Bad("text holds characters outside the Basic Multilingual Plane, which MATLAB char cannot hold")


def _canon_struct(value: Mapping, v5: bool) -> MatStruct:
    out = MatStruct()
    for k, v in value.items():
        _check_name(k, "struct field")
        try:
            out[k] = _canon(v, v5)
        except _Bad as exc:
            exc.where.append(f".{k}")
            raise
    return out


def _canon_struct_array(value: StructArray, v5: bool) -> Any:
    names = list(value.fieldnames)
    for s in np.asarray(value).reshape(-1):
        if s is not None and not isinstance(s, Mapping):
            raise _Bad(f"struct array element is a {type(s).__name__}, not a struct")
        for k in (s or {}):
            if k not in names:
                names.append(k)
    for n in names:
        _check_name(n, "struct field")
    shape = _at_least_2d(np.asarray(value)).shape
    if not names and shape != (1, 1) and (v5 or value.size):
        raise _Bad(f"a {shape} struct array without fields cannot be written "
                   + ("by scipy.io (v5); use version='7.3' for an empty one" if v5 else "in MAT 7.3"))
    flat = np.asarray(value).reshape(-1, order="F")
    elements = []
    for k, s in enumerate(flat):
        s = s or {}
        el = MatStruct()
        for n in names:
            try:
                el[n] = _canon(s[n], v5) if n in s else np.zeros((0, 0))
            except _Bad as exc:
                exc.where.append(f".{n}")
                exc.where.append(f"({k + 1})")
                raise
        elements.append(el)
    if shape == (1, 1):
        return elements[0]
    return _struct_array(shape, names, elements)


def _canon_cell(value: np.ndarray, v5: bool) -> np.ndarray:
    shape = _at_least_2d(value).shape
    flat = value.reshape(-1, order="F")
    out = np.empty(flat.shape[0], dtype=object)
    for k, v in enumerate(flat):
        try:
            out[k] = _canon(v, v5)
        except _Bad as exc:
            exc.where.append(f"{{{k + 1}}}")
            raise
    return out.reshape(shape, order="F")


def _canon_sparse(value: Any) -> scipy.sparse.csc_matrix:
    out = scipy.sparse.csc_matrix(value)
    if out.dtype not in (np.dtype(np.float64), np.dtype(bool), np.dtype(np.complex128)):
        raise _Bad(f"sparse matrix of dtype {out.dtype}: MATLAB sparse is double, logical or complex double "
                   "(convert with .astype(float) or .astype(bool))")
    out = out.copy()
    out.sum_duplicates()
    out.sort_indices()
    return out


def _canon_array(value: np.ndarray, v5: bool) -> np.ndarray:
    kind = value.dtype.kind
    if value.dtype.names is not None:
        raise _Bad("numpy structured arrays are not MATLAB values (use StructArray or dict)")
    if kind == "O":
        return _canon_cell(value, v5)
    if kind == "U":
        if value.dtype.itemsize == 4:  # '<U1': a MATLAB char array
            arr = _at_least_2d(value.astype("<U1"))
            codes = np.ascontiguousarray(arr).view(np.uint32)
            if codes.size and codes.max() > 0xFFFF:
                raise _Bad("char array holds characters outside the Basic Multilingual Plane")
            return arr
        return _canon_cell(value.astype(object), v5)  # longer strings: a cell array of char rows
    if kind == "b":
        return _at_least_2d(value)
    dt = value.dtype.newbyteorder("=") if value.dtype.byteorder not in "=|" else value.dtype
    if kind in "iuf" and dt in _CLASS_OF_DTYPE:
        return _at_least_2d(value.astype(dt, copy=False))
    if kind == "c" and dt in _REAL_OF_COMPLEX:
        return _at_least_2d(value.astype(dt, copy=False))
    raise _Bad(f"numpy dtype {value.dtype} has no MATLAB class (use float64/float32, (u)int8..64, bool, "
               "complex64/128)")


# ---------------------------------------------------------------------------
# savemat

def savemat(path: os.PathLike | str, variables: Mapping[str, Any], version: str = "7.3") -> str:
    """Write `variables` (name -> value) to a MAT file MATLAB can load; returns the path.

    `version` is "7.3" (HDF5, MATLAB's `-v7.3`) or "5" (also "7": MATLAB's
    `-v7`, the v5 format compressed, written by scipy.io). Values are our
    MATLAB value types or plain Python values, converted as
    docs/MATLAB_MAPPING.md says. Every value is checked before anything is
    written; the file is written to a temporary file in the same folder and
    renamed into place, so a failure leaves neither a partial file nor a
    temporary one, and never clobbers an existing file.
    """
    path = os.fspath(path)
    version = str(version).lstrip("-v").strip()
    if version not in ("7.3", "5", "7"):
        raise MatFileError(path, f"unknown MAT version {version!r} (use '7.3' or '5')")
    if not isinstance(variables, Mapping):
        raise MatFileError(path, f"variables must be a mapping name -> value, got {type(variables).__name__}")
    values = MatStruct()
    for name, value in variables.items():
        try:
            _check_name(name, "variable name")
            values[name] = _canon(value, v5=version != "7.3")
        except _Bad as exc:
            raise _fail(path, exc, str(name)) from None
    writer = _write_v73 if version == "7.3" else _write_v5
    _write_mat_file(path, lambda tmp: writer(tmp, values))
    return path


def _write_mat_file(path: str, write: Callable[[str], None]) -> None:
    """Write through legacy_compat.atomic.atomic_write, every failure a MatFileError naming `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise MatFileError(path, f"cannot write: folder {folder} does not exist")
    if os.path.isdir(path):
        raise MatFileError(path, "cannot write: it is a folder")
    try:
        atomic_write(path, lambda tmp: write(str(tmp)), make_parents=False)
    except MatFileError:
        raise
    except _Bad as exc:
        raise _fail(path, exc, getattr(exc, "root", None)) from None
    except Exception as exc:  # noqa: BLE001 - any write error becomes a MatFileError naming the file
        raise MatFileError(path, f"write failed ({type(exc).__name__}: {exc})") from None


# -- v7.3 writer

_MATLAB_PLATFORMS = {("linux", "x86_64"): "GLNXA64", ("win32", "AMD64"): "PCWIN64",
                     ("darwin", "x86_64"): "MACI64", ("darwin", "arm64"): "MACA64"}


def _v73_header() -> bytes:
    """The 128 bytes MATLAB writes at the start of the 512-byte userblock of a 7.3 file."""

    plat = _MATLAB_PLATFORMS.get((sys.platform, platform.machine()), sys.platform)
    text = f"MATLAB 7.3 MAT-file, Platform: {plat}, Created on: {time.asctime()} HDF5 schema 1.00 ."
    return text.encode("ascii", "replace")[:116].ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM"


def _write_v73(tmp: str, values: MatStruct) -> None:

    with h5py.File(tmp, "w", userblock_size=512, libver=("earliest", "v108")) as f:
        writer = _H5Writer(f)
        for name, value in values.items():
            try:
                writer.write(f, name, value)
            except _Bad as exc:
                exc.root = name
                raise
    with open(tmp, "rb+") as fh:
        fh.write(_v73_header().ljust(512, b"\0"))


class _H5Writer:
    """Writes our MATLAB values in MATLAB's HDF5 layout (what MATLAB's save -v7.3 writes)."""

    def __init__(self, f: Any):

        self.h5py = h5py
        self.f = f
        self.refs_group = None
        self.nrefs = 0

    # -- helpers (attributes typed as MATLAB types them: NULLTERM strings, vlen of char for fields)
    def set_class(self, obj: Any, cls: str) -> None:
        h5py = self.h5py
        value = cls.encode("ascii")
        tid = h5py.h5t.C_S1.copy()
        tid.set_size(len(value))
        tid.set_strpad(h5py.h5t.STR_NULLTERM)
        aid = h5py.h5a.create(obj.id, b"MATLAB_class", tid, h5py.h5s.create(h5py.h5s.SCALAR))
        aid.write(np.array(value, dtype=f"S{len(value)}"), mtype=tid)

    def set_fields(self, obj: Any, names: list[str]) -> None:
        """MATLAB_fields: a vlen-of-char array attribute (MATLAB's chars are NULLTERM, h5py writes
        NULLPAD, as hdf5storage does; HDF5 cannot convert one-char strings between the two)."""
        if not names:
            return
        vlen = self.h5py.vlen_dtype(np.dtype("S1"))
        attr = np.empty(len(names), dtype=object)
        for k, n in enumerate(names):
            attr[k] = np.frombuffer(n.encode("ascii"), dtype="S1")
        obj.attrs.create("MATLAB_fields", attr, dtype=vlen)

    def refs(self) -> Any:
        if self.refs_group is None:
            self.refs_group = self.f.create_group("#refs#")
            a = self.refs_group.create_dataset("a", data=np.zeros(2, dtype=np.uint64))
            self.set_class(a, "canonical empty")
            a.attrs.create("MATLAB_empty", np.uint8(1))
        return self.refs_group

    def ref_name(self) -> str:
        digits = "bcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        k, out = self.nrefs, ""
        self.nrefs += 1
        while True:
            out = digits[k % len(digits)] + out
            k //= len(digits)
            if k == 0:
                return out

    def write_ref(self, value: Any) -> Any:
        return self.write(self.refs(), self.ref_name(), value).ref

    def write_empty(self, parent: Any, name: str, dims: tuple[int, ...], cls: str) -> Any:
        ds = parent.create_dataset(name, data=np.asarray(dims, dtype=np.uint64))
        self.set_class(ds, cls)
        ds.attrs.create("MATLAB_empty", np.uint8(1))
        if cls in ("char", "logical"):
            ds.attrs.create("MATLAB_int_decode", np.int32(2 if cls == "char" else 1))
        return ds

    def write_array(self, parent: Any, name: str, data: np.ndarray, cls: str) -> Any:
        """`data` in MATLAB order -> a dataset with the dims reversed (MATLAB's column-major on disk)."""
        ds = parent.create_dataset(name, data=np.ascontiguousarray(data.T))
        self.set_class(ds, cls)
        return ds

    # -- values
    def write(self, parent: Any, name: str, value: Any) -> Any:
        if isinstance(value, StructArray):
            return self.struct_array(parent, name, value)
        if isinstance(value, MatStruct):
            return self.struct(parent, name, value)
        if isinstance(value, str):
            return self.char(parent, name, _char_codes(value))
        if scipy.sparse.issparse(value):
            return self.sparse(parent, name, value)
        if value.dtype == object:
            return self.cell(parent, name, value)
        if value.dtype.kind == "U":
            return self.char(parent, name, np.ascontiguousarray(value).view(np.uint32).astype(np.uint16))
        if value.dtype == bool:
            if value.size == 0:
                return self.write_empty(parent, name, value.shape, "logical")
            ds = self.write_array(parent, name, value.astype(np.uint8), "logical")
            ds.attrs.create("MATLAB_int_decode", np.int32(1))
            return ds
        if value.dtype.kind == "c":
            real = _REAL_OF_COMPLEX[value.dtype]
            cls = _CLASS_OF_DTYPE[real]
            if value.size == 0:
                return self.write_empty(parent, name, value.shape, cls)
            return self.write_array(parent, name, _compound(value, real), cls)
        cls = _CLASS_OF_DTYPE[value.dtype]
        if value.size == 0:
            return self.write_empty(parent, name, value.shape, cls)
        return self.write_array(parent, name, value, cls)

    def char(self, parent: Any, name: str, codes: np.ndarray) -> Any:
        if codes.size == 0:
            return self.write_empty(parent, name, codes.shape, "char")
        ds = self.write_array(parent, name, codes, "char")
        ds.attrs.create("MATLAB_int_decode", np.int32(2))
        return ds

    def cell(self, parent: Any, name: str, value: np.ndarray) -> Any:
        if value.size == 0:
            return self.write_empty(parent, name, value.shape, "cell")
        refs = np.empty(value.shape, dtype=self.h5py.ref_dtype)
        flat = value.reshape(-1, order="F")
        for k, v in enumerate(flat):
            try:
                refs[np.unravel_index(k, value.shape, order="F")] = self.write_ref(v)
            except _Bad as exc:
                exc.where.append(f"{{{k + 1}}}")
                raise
        ds = parent.create_dataset(name, data=np.ascontiguousarray(refs.T), dtype=self.h5py.ref_dtype)
        self.set_class(ds, "cell")
        return ds

    def struct(self, parent: Any, name: str, value: MatStruct) -> Any:
        grp = parent.create_group(name)
        self.set_class(grp, "struct")
        self.set_fields(grp, list(value))
        for k, v in value.items():
            try:
                self.write(grp, k, v)
            except _Bad as exc:
                exc.where.append(f".{k}")
                raise
        return grp

    def struct_array(self, parent: Any, name: str, value: StructArray) -> Any:
        names = list(value.fieldnames)
        if value.size == 0:
            ds = self.write_empty(parent, name, value.shape, "struct")
            self.set_fields(ds, names)
            return ds
        if not names:
            raise _Bad(f"a {value.shape} struct array without fields cannot be written in MAT 7.3")  # _canon refuses it
        grp = parent.create_group(name)
        self.set_class(grp, "struct")
        self.set_fields(grp, names)
        flat = np.asarray(value).reshape(-1, order="F")
        for n in names:
            refs = np.empty(value.shape, dtype=self.h5py.ref_dtype)
            for k, s in enumerate(flat):
                try:
                    refs[np.unravel_index(k, value.shape, order="F")] = self.write_ref(s[n])
                except _Bad as exc:
                    exc.where.append(f".{n}")
                    exc.where.append(f"({k + 1})")
                    raise
            grp.create_dataset(n, data=np.ascontiguousarray(refs.T), dtype=self.h5py.ref_dtype)
        return grp

    def sparse(self, parent: Any, name: str, value: scipy.sparse.csc_matrix) -> Any:
        grp = parent.create_group(name)
        logical = value.dtype == bool
        self.set_class(grp, "logical" if logical else "double")
        if logical:
            grp.attrs.create("MATLAB_int_decode", np.int32(1))
        grp.attrs.create("MATLAB_sparse", np.uint64(value.shape[0]))
        if value.nnz:
            data = value.data.astype(np.uint8) if logical else value.data
            if data.dtype.kind == "c":
                data = _compound(data, np.dtype(np.float64))
            grp.create_dataset("data", data=data)
            grp.create_dataset("ir", data=value.indices.astype(np.uint64))
        grp.create_dataset("jc", data=value.indptr.astype(np.uint64))
        return grp


def _char_codes(text: str) -> np.ndarray:
    """A str -> its UTF-16 code units as a MATLAB 1 x n char row ('' -> 0 x 0, as MATLAB's '')."""
    codes = np.frombuffer(text.encode("utf-16-le"), dtype="<u2")
    return codes.reshape(1, -1) if codes.size else codes.reshape(0, 0)


def _compound(value: np.ndarray, real: np.dtype) -> np.ndarray:
    out = np.empty(value.shape, dtype=[("real", real), ("imag", real)])
    out["real"] = value.real
    out["imag"] = value.imag
    return out


# -- v5 writer (scipy.io)

def _write_v5(tmp: str, values: MatStruct) -> None:
    mdict = {name: _to_scipy(value) for name, value in values.items()}
    with open(tmp, "wb") as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scipy.io.savemat(fh, mdict, format="5", long_field_names=True, do_compression=True, oned_as="row")


def _to_scipy(value: Any) -> Any:
    """Our MATLAB value -> what scipy.io.savemat writes as that MATLAB value."""
    if isinstance(value, StructArray):
        dtype = [(n, object) for n in value.fieldnames]
        if not dtype:
            raise _Bad("a struct array without fields cannot be written by scipy.io")  # _canon refuses it
        out = np.empty(value.shape, dtype=dtype)
        for n in value.fieldnames:
            column = out[n]  # a view: assigning into it fills `out`
            for idx in np.ndindex(value.shape):
                column[idx] = _to_scipy(value[idx][n])
        return out
    if isinstance(value, MatStruct):
        if not value:
            return {}
        out = np.empty((1, 1), dtype=[(n, object) for n in value])
        for n, v in value.items():
            out[n][0, 0] = _to_scipy(v)
        return out
    if isinstance(value, str):
        return np.array([value])  # scipy writes a (1,) '<Un' array as a 1 x n char row
    if scipy.sparse.issparse(value):
        return value
    if value.dtype.kind == "U":
        # scipy writes an array of '<Uk' strings of shape S as a char array S x k: hand it the rows
        # along the last axis. (scipy writes every empty char array as 0 x 0, and NULs as spaces.)
        chars = np.ascontiguousarray(value)
        if chars.size == 0:
            return chars
        return chars.view(f"<U{chars.shape[-1]}").reshape(chars.shape[:-1])
    if value.dtype == object:
        out = np.empty(value.shape, dtype=object)
        for idx in np.ndindex(value.shape):
            out[idx] = _to_scipy(value[idx])
        return out
    return value
