"""Small validators that produce the house error messages.

Each names the argument, the offending value and, where there is one, the fix.
"""

from __future__ import annotations

import numbers

import numpy as np


def check_type(value, types, name: str):
    """Raise ``TypeError`` unless ``value`` is an instance of ``types``.

    Parameters
    ----------
    value : object
        The value to check.
    types : type or tuple of type
        Accepted types.
    name : str
        The argument's name, for the message.
    """
    if not isinstance(value, types):
        names = (types.__name__ if isinstance(types, type)
                 else " or ".join(t.__name__ for t in types))
        raise TypeError(f"{name} must be {names}, got {type(value).__name__} {value!r}.")
    return value


def check_option(value, options, name: str):
    """Raise ``ValueError`` unless ``value`` is one of ``options``.

    Parameters
    ----------
    value : object
        The value to check.
    options : collection
        Accepted values.
    name : str
        The argument's name, for the message.
    """
    if value not in options:
        raise ValueError(f"{name} must be one of {sorted(map(str, options))}, got {value!r}.")
    return value


def ensure_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as ``int``; ``TypeError``/``ValueError`` with the name otherwise.

    Parameters
    ----------
    value : object
        An integral number (``bool`` is refused).
    name : str
        The argument's name, for the message.
    minimum, maximum : int, optional
        Inclusive bounds.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}.")
    return value


def ensure_float(value, name: str, minimum: float | None = None, maximum: float | None = None,
                 strict_min: bool = False) -> float:
    """Return ``value`` as a finite ``float`` within bounds, or raise naming ``name``.

    Parameters
    ----------
    value : object
        A real number.
    name : str
        The argument's name, for the message.
    minimum, maximum : float, optional
        Inclusive bounds.
    strict_min : bool
        Make ``minimum`` exclusive.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}.")
    if minimum is not None and (value <= minimum if strict_min else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict_min else '>='} {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}.")
    return value


def as_float_matrix(X, name: str = "X", *, allow_nonfinite: bool = False,
                    n_columns: int | None = None, min_rows: int = 0) -> np.ndarray:
    """Return ``X`` as a C-contiguous float64 array of shape (n_rows, n_columns).

    Parameters
    ----------
    X : array-like of shape (n_rows, n_columns)
    name : str
        Name used in error messages.
    allow_nonfinite : bool
        If False, NaN or inf anywhere raises ``ValueError`` naming the first bad row.
    n_columns : int, optional
        Required number of columns.
    min_rows : int
        Required minimum number of rows.
    """
    arr = np.asarray(X)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}.")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_rows, n_columns), got shape {arr.shape}.")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if n_columns is not None and arr.shape[1] != n_columns:
        raise ValueError(f"{name} must have {n_columns} columns, got {arr.shape[1]}.")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {arr.shape[0]}.")
    if not allow_nonfinite:
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise ValueError(
                f"{name} contains NaN or inf in {int(bad.sum())} row(s) (first: row "
                f"{int(np.flatnonzero(bad)[0])}); drop or repair those rows first."
            )
    return arr
