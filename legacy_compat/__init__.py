"""MATLAB / MatConvNet interop: the one place where the package meets MATLAB.

Public surface: `loadmat`, `savemat`, `MatFileError`, the value types of
`mattypes`, MATLAB numerics (`numerics`), SimpleNN <-> PyTorch conversion
(`simplenn`) and the golden-case parity runner (its registry and comparisons; the adapters and
the command, `python -m reproduce.golden`, are in reproduce.golden).
`atomic` holds the one atomic-write helper every writer of the port uses.
legacy_compat imports nothing from the rest of the package.
"""
from .matio import MatFileError, loadmat, savemat
from .mattypes import MatStruct, StructArray, cell, cell_items, is_cell, scalar

__all__ = ["MatStruct", "StructArray", "cell", "cell_items", "is_cell", "scalar",
           "MatFileError", "loadmat", "savemat"]
