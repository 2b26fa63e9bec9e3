"""Reading and writing MAT files (v5/v7 through scipy.io, v7.3 through h5py).

`loadmat(path)` returns the file's variables as a `MatStruct` of the values
documented in `legacy_compat.mattypes`; the same content gives the same
Python values whichever MAT version wrote it. Every failure is a
`MatFileError` that names the file and says what is wrong.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np
import scipy.io
import scipy.sparse

from .mattypes import MatStruct, StructArray


class MatFileError(Exception):
    """A MAT file could not be read or written; the message names the file."""

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def loadmat(path: os.PathLike | str, variable_names: Iterable[str] | None = None) -> MatStruct:
    """Read a MAT file (v5, v7 or v7.3) into Python values (see `mattypes`)."""
    path = os.fspath(path)
    try:
        raw = scipy.io.loadmat(path, struct_as_record=True, squeeze_me=False,
                               chars_as_strings=False, mat_dtype=False,
                               variable_names=None if variable_names is None else list(variable_names))
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise MatFileError(path, f"cannot read as a MAT file ({type(exc).__name__}: {exc})") from exc
    out = MatStruct()
    for name, value in raw.items():
        if name.startswith("__"):
            continue
        out[name] = _from_scipy(value, name, path)
    if variable_names is not None:
        for name in variable_names:
            if name not in out:
                raise MatFileError(path, f"has no variable {name!r}")
    return out


def _from_scipy(value: Any, where: str, path: str) -> Any:
    """Convert what scipy.io.loadmat gives (struct_as_record, no squeeze) to our types."""
    if scipy.sparse.issparse(value):
        return scipy.sparse.csc_matrix(value)
    if not isinstance(value, np.ndarray):
        raise MatFileError(path, f"variable {where!r} holds a {type(value).__name__}, which Python cannot hold")
    if value.dtype.names is not None:
        names = list(value.dtype.names)
        if value.shape == (1, 1):
            return MatStruct((n, _from_scipy(value[0, 0][n], f"{where}.{n}", path)) for n in names)
        out = StructArray(value.shape, names)
        for idx in np.ndindex(value.shape):
            out[idx] = MatStruct((n, _from_scipy(value[idx][n], f"{where}.{n}", path)) for n in names)
        return out
    if value.dtype == object:
        out = np.empty(value.shape, dtype=object)
        for idx in np.ndindex(value.shape):
            out[idx] = _from_scipy(value[idx], f"{where}{{{idx}}}", path)
        return out
    if value.dtype.kind == "U":
        if value.size == 0 or value.shape[0] == 1 and value.ndim == 2:
            return "".join(value.reshape(-1).tolist())
        return value
    if value.ndim < 2:
        value = value.reshape(1, -1) if value.ndim == 1 else value.reshape(1, 1)
    return value
