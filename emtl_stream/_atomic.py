"""Atomic file writes and model-file reads, shared by every layer.

A write goes to a temp file in the destination folder (``.<name>.<random>.tmp``):
write, flush, ``fsync``, ``os.replace`` onto the final name, then ``fsync`` of the
folder so the rename itself survives a power cut. A reader therefore sees either
the old file or the complete new one, never a torn one; a crash leaves at most a
stray ``.tmp`` file (the state store removes those when it opens).

Model files (source bundle, LabelledGMM, GMLVQ/LGMLVQ) are ``.npz`` archives of
plain arrays read with ``allow_pickle=False``; :func:`read_model_npz` gives all of
their loaders one error: :class:`~emtl_stream.errors.ModelError` naming the file.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .errors import ModelError

__all__ = ["fsync_dir", "atomic_write", "atomic_write_bytes", "read_model_npz",
           "model_file_error"]


def fsync_dir(path: str | os.PathLike) -> None:
    """``fsync`` a folder so a rename inside it is durable (no-op where unsupported).

    Parameters
    ----------
    path : str or path-like
        The folder.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a temp file in the same folder.

    Parameters
    ----------
    path : path-like
        Final file name; its folder is created if missing.
    write : callable
        Gets a binary file handle. If it raises, the temp file is removed and the
        old ``path`` (if any) is untouched.

    Returns
    -------
    Path
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of a ready byte string.

    Parameters
    ----------
    path : str or path-like
        Destination file.
    data : bytes
        Its whole content.
    """
    return atomic_write(path, lambda fh: fh.write(data))


#: What a broken, foreign or missing model file can raise while being read.
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


def model_file_error(path, what: str, exc: BaseException) -> ModelError:
    """Build the one error all model loaders raise: names the file, what it should hold and why.

    Parameters
    ----------
    path : str or Path
        The file that could not be read.
    what : str
        What it should hold (``"an emtl_stream source model"``).
    exc : BaseException
        Why it could not be read.
    """
    reason = "file not found" if isinstance(exc, FileNotFoundError) else str(exc)
    return ModelError(f"cannot load {what} from {path}: {reason}. The file is missing, "
                      f"corrupted, incomplete or of another kind; save or train it again.")


def read_model_npz(path, what: str, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read the arrays of a model ``.npz`` (``allow_pickle=False``).

    Parameters
    ----------
    path : path-like
    what : str
        What the file should hold, for the message (``"a LabelledGMM"``).
    keys : iterable of str, optional
        Arrays that must be present (default: all, none required).

    Returns
    -------
    dict of str to ndarray

    Raises
    ------
    ModelError
        Missing, unreadable, truncated or foreign file, or a required array absent;
        the message names ``path``.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files) if keys is None else list(keys)
            return {k: z[k] for k in names}
    except _READ_ERRORS as exc:
        raise model_file_error(path, what, exc) from exc
