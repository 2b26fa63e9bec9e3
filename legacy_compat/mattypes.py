"""Python values for MATLAB values: the types `loadmat` returns and `savemat` takes.

The mapping (both MAT v5/v7 and v7.3 read to exactly these; docs/MATLAB_MAPPING.md
has the full table, both directions, and what savemat does with plain Python values):

| MATLAB                                   | Python                                                  |
|------------------------------------------|---------------------------------------------------------|
| scalar struct (1 x 1)                    | `MatStruct` (a dict; fields also as attributes)         |
| struct array (any other shape, incl. 0x0)| `StructArray` (ndarray of `MatStruct`, MATLAB shape,    |
|                                          | `.fieldnames` keeps the field order)                    |
| cell array                               | `numpy.ndarray` of dtype object, MATLAB shape           |
| char row (1 x n, incl. 1 x 0) and ''     | `str`                                                   |
| char of any other shape (m x n, n x 1)   | `numpy.ndarray` of dtype '<U1', MATLAB shape            |
| logical                                  | `numpy.ndarray` of bool, MATLAB shape                   |
| double/single/int8..uint64               | `numpy.ndarray` of float64/float32/int8..uint64          |
| complex                                  | `numpy.ndarray` of complex128/complex64 (complex        |
|                                          | integers, which numpy lacks, read as complex128)        |
| sparse (double or logical)               | `scipy.sparse.csc_matrix` (float64 / bool; complex128)  |
| empty of any class                       | an array of that class with its MATLAB shape (0 x 0 ...)|
|                                          | (empty char: '' for 0 x 0 and 1 x 0, else '<U1' array)  |
| function handle, MATLAB object           | not representable: `loadmat` raises `MatFileError`      |

Arrays are at least 2-D and keep MATLAB's shape: a 2 x 1 stays (2, 1), a
scalar is (1, 1). Indexing inside Python is 0-based (``sa[0, 2]`` is MATLAB's
``sa(1, 3)``). The variables of a file come back in a `MatStruct`.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np


class MatStruct(dict):
    """A MATLAB scalar struct: a dict whose keys are also attributes.

    ``s.bndbox.xmin`` and ``s["bndbox"]["xmin"]`` are the same value. Field
    order is the insertion order, as in MATLAB.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"struct has no field {name!r} (fields: {list(self)})") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"MatStruct({dict.__repr__(self)})"


class StructArray(np.ndarray):
    """A MATLAB struct array: an object ndarray of `MatStruct` with MATLAB's shape.

    ``fieldnames`` keeps the fields in order (it is what an empty struct
    array still has). ``elements()`` yields the structs in MATLAB's linear
    (column-major) order, ``field(name)`` gives one field of every element as
    an object array of the same shape.
    """

    def __new__(cls, shape: Iterable[int], fieldnames: Iterable[str] = ()) -> "StructArray":
        obj = np.empty(tuple(shape), dtype=object).view(cls)
        obj.fieldnames = list(fieldnames)
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        self.fieldnames = list(getattr(obj, "fieldnames", []))

    def __reduce__(self):  # keep fieldnames through pickle (DataLoader workers, multiprocessing)
        reconstruct, args, state = super().__reduce__()
        return reconstruct, args, (state, self.fieldnames)

    def __setstate__(self, state: Any) -> None:
        array_state, self.fieldnames = state
        super().__setstate__(array_state)

    @classmethod
    def from_structs(cls, structs: Iterable[MatStruct], shape: tuple[int, ...] | None = None) -> "StructArray":
        """Build from structs listed in MATLAB linear order (default shape 1 x N)."""
        structs = [s if isinstance(s, MatStruct) else MatStruct(s) for s in structs]
        if shape is None:
            shape = (1, len(structs))
        names: list[str] = []
        for s in structs:
            for k in s:
                if k not in names:
                    names.append(k)
        if int(np.prod(shape)) != len(structs):
            raise ValueError(f"{len(structs)} structs do not fill shape {shape}")
        out = cls(shape, names)
        for i, s in enumerate(structs):
            out[np.unravel_index(i, shape, order="F")] = s
        return out

    def elements(self) -> Iterator[MatStruct]:
        """The structs in MATLAB's linear (column-major) order."""
        for s in np.asarray(self).reshape(-1, order="F"):
            yield s

    def field(self, name: str) -> np.ndarray:
        """``[s.name for s in self]`` as an object array of this array's shape."""
        if name not in self.fieldnames:
            raise KeyError(f"struct array has no field {name!r} (fields: {self.fieldnames})")
        out = np.empty(self.shape, dtype=object)
        for idx in np.ndindex(self.shape):
            out[idx] = self[idx][name]
        return out

    def __len__(self) -> int:  # numel, as MATLAB counts it
        return int(np.prod(self.shape))

    def __repr__(self) -> str:
        return f"StructArray(shape={self.shape}, fieldnames={self.fieldnames})"


def is_cell(value: Any) -> bool:
    """True for a MATLAB cell array (an object ndarray that is not a struct array)."""
    return isinstance(value, np.ndarray) and value.dtype == object and not isinstance(value, StructArray)


def cell(items: Iterable[Any], shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Make a MATLAB cell array (default 1 x N) from items in MATLAB linear order."""
    items = list(items)
    if shape is None:
        shape = (1, len(items))
    if int(np.prod(shape)) != len(items):
        raise ValueError(f"{len(items)} items do not fill shape {shape}")
    out = np.empty(shape, dtype=object)
    for i, v in enumerate(items):
        out[np.unravel_index(i, shape, order="F")] = v
    return out


def cell_items(value: np.ndarray) -> list[Any]:
    """The items of a cell array in MATLAB linear (column-major) order."""
    return list(np.asarray(value).reshape(-1, order="F"))


def scalar(value: Any) -> Any:
    """The single element of a 1 x 1 MATLAB value as a Python scalar (int, float, bool, complex)."""
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"expected a 1 x 1 value, got shape {arr.shape}")
    return arr.reshape(-1)[0].item()
