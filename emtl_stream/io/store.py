"""Atomic persistence of the daemon's state: source model, every map H, every burst.

Layout of ``state_dir``::

    source/model.npz        the source model (a SourceBundle file) + source/model.json
    maps/H_<version>.npz    arrays H (m, n) and b (m,)
    maps/H_<version>.json   version, created, burst, objective, parent, ... (commit marker)
    bursts/<id>.npz         raw windows, features, labels, timestamps (whatever was given)
    bursts/<id>.json        burst metadata (commit marker)
    live.json               {"version": <live map version>}

Every file is written atomically by :mod:`emtl_stream._atomic` (temp file in the
same folder, ``fsync``, ``os.replace``, ``fsync`` of the folder), so a reader sees
either the old file or the complete new one. The ``.json``
of a map or burst is written *after* its ``.npz``, so it marks the pair complete;
an ``.npz`` without ``.json`` (killed in between) is ignored, and its number is
never reused. Stale temp files are removed when a store is opened. Map versions
and burst ids are increasing integers.

No pickle: arrays go through ``np.savez`` and are read with ``allow_pickle=False``;
object arrays are refused. One process owns a state directory at a time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .._atomic import atomic_write, atomic_write_bytes, fsync_dir
from ..logs import logger

__all__ = ["StateStore", "atomic_write", "atomic_write_json", "atomic_write_npz", "fsync_dir",
           "load_npz"]

_MAP_RE = re.compile(r"^H_(\d+)\.(npz|json)$")
_BURST_RE = re.compile(r"^(\d+)\.(npz|json)$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------- atomic I/O
def _json_bytes(obj: Mapping[str, Any], what: str) -> bytes:
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"{type(o).__name__} is not JSON serialisable")

    try:
        return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False,
                          default=default).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} metadata must be JSON with finite numbers: {exc}") from exc


def atomic_write_json(path, obj: Mapping[str, Any]) -> Path:
    """Atomically write a JSON object (finite numbers only).

    Parameters
    ----------
    path : str or Path
        Destination file.
    obj : mapping
        The JSON object.
    """
    data = _json_bytes(obj, Path(path).name)
    return atomic_write_bytes(path, data)


def _check_arrays(arrays: Mapping[str, Any], what: str) -> dict[str, np.ndarray]:
    out = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(f"{what} array name {key!r} must be an identifier "
                             "(letters, digits, _).")
        arr = np.asarray(value)
        if arr.dtype == object:
            raise TypeError(f"{what} array {key!r} has dtype object (mixed types or None?); "
                            "give numbers or strings only, e.g. labels as "
                            "np.asarray(..., dtype=str).")
        out[key] = arr
    return out


def atomic_write_npz(path, arrays: Mapping[str, Any]) -> Path:
    """Atomically write arrays to an uncompressed ``.npz`` (no object arrays).

    Parameters
    ----------
    path : str or Path
        Destination ``.npz``.
    arrays : mapping of str to array-like
        The arrays, by name.
    """
    arrays = _check_arrays(arrays, Path(path).name)
    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


def load_npz(path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz``, read with ``allow_pickle=False``.

    Parameters
    ----------
    path : str or Path
        An ``.npz`` file.
    """
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------- the store
class StateStore:
    """The daemon's state directory.

    Parameters
    ----------
    state_dir : path-like
        Created if missing.

    Notes
    -----
    Thread-safe within one process (a lock serialises writers). Two processes must
    not share a state directory.
    """

    def __init__(self, state_dir: str | os.PathLike):
        self.root = Path(state_dir)
        self.maps_dir = self.root / "maps"
        self.bursts_dir = self.root / "bursts"
        self.source_dir = self.root / "source"
        for d in (self.root, self.maps_dir, self.bursts_dir, self.source_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        removed = self.remove_temp_files()
        if removed:
            logger.warning("removed %d half-written temp file(s) in %s (interrupted write)",
                           removed, self.root)

    def remove_temp_files(self) -> int:
        """Delete leftover ``.*.tmp`` files of interrupted writes; returns how many."""
        n = 0
        for d in (self.root, self.maps_dir, self.bursts_dir, self.source_dir):
            for p in d.glob(".*.tmp"):
                p.unlink(missing_ok=True)
                n += 1
        return n

    # ------------------------------------------------------------------ maps
    def _map_paths(self, version: int) -> tuple[Path, Path]:
        return self.maps_dir / f"H_{version}.npz", self.maps_dir / f"H_{version}.json"

    def _numbers(self, folder: Path, pattern: re.Pattern) -> tuple[set[int], set[int]]:
        """(numbers with any file, numbers with a .json commit marker)."""
        seen, done = set(), set()
        for p in folder.iterdir():
            m = pattern.match(p.name)
            if m:
                seen.add(int(m.group(1)))
                if m.group(2) == "json":
                    done.add(int(m.group(1)))
        return seen, done

    def next_map_version(self) -> int:
        """Return the version the next :meth:`save_map` will give (previous maximum + 1)."""
        with self._lock:
            seen, _ = self._numbers(self.maps_dir, _MAP_RE)
            return max(seen, default=0) + 1

    def save_map(self, H, b=None, meta: Mapping[str, Any] | None = None, *,
                 version: int | None = None) -> int:
        """Persist a map and return its new version (previous maximum + 1, from 1).

        Parameters
        ----------
        H : array-like of shape (m, n)
            Finite.
        b : array-like of shape (m,), optional
            Offset; ``None`` stores zeros.
        meta : mapping, optional
            JSON-serialisable extras. ``burst``, ``objective`` and ``parent`` are
            always present in the stored metadata (``None`` unless given).
        version : int, optional
            The version announced beforehand by :meth:`next_map_version`;
            ``ValueError`` if another map took it meanwhile.

        Returns
        -------
        int
        """
        H = np.array(H, dtype=np.float64, copy=True)
        if H.ndim != 2 or not np.all(np.isfinite(H)):
            raise ValueError(f"H must be a finite 2-D array, got shape {H.shape} "
                             f"({'non-finite values' if H.ndim == 2 else 'wrong rank'}).")
        bias = b is not None
        b = np.zeros(H.shape[0]) if b is None else np.array(b, dtype=np.float64).ravel()
        if b.shape != (H.shape[0],) or not np.all(np.isfinite(b)):
            raise ValueError(f"b must be a finite vector of length {H.shape[0]}, got shape "
                             f"{b.shape}.")
        info = {"burst": None, "objective": None, "parent": None}
        info.update(dict(meta or {}))
        with self._lock:
            seen, _ = self._numbers(self.maps_dir, _MAP_RE)
            expected = max(seen, default=0) + 1
            if version is not None and int(version) != expected:
                raise ValueError(f"map version {version} is no longer free (next is "
                                 f"{expected}).")
            version = expected
            info.update(version=version, created=time.time(),
                        created_iso=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        shape=list(H.shape), bias=bias)
            data = _json_bytes(info, f"map {version}")  # fail before writing anything
            npz, js = self._map_paths(version)
            atomic_write_npz(npz, {"H": H, "b": b})
            atomic_write(js, lambda fh: fh.write(data))
        logger.info("saved map version %d to %s", version, npz)
        return version

    def load_map(self, version: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """``(H, b, meta)`` of a complete map; ``FileNotFoundError`` naming the version.

        Parameters
        ----------
        version : int
            The map version.
        """
        npz, js = self._map_paths(int(version))
        if not js.exists():
            known = [m["version"] for m in self.list_maps()]
            raise FileNotFoundError(f"map version {version} does not exist in {self.maps_dir} "
                                    f"(known versions: {known}).")
        meta = json.loads(js.read_text())
        arrays = load_npz(npz)
        return arrays["H"], arrays["b"], meta

    def list_maps(self) -> list[dict]:
        """Metadata of every complete map, by increasing version."""
        _, done = self._numbers(self.maps_dir, _MAP_RE)
        out = []
        for v in sorted(done):
            npz, js = self._map_paths(v)
            if npz.exists():
                out.append(json.loads(js.read_text()))
        return out

    def set_live(self, version: int | None) -> None:
        """Point ``live.json`` at a complete map version (``None`` clears the pointer).

        Parameters
        ----------
        version : int or None
            The map version.
        """
        with self._lock:
            if version is not None:
                version = int(version)
                if not self._map_paths(version)[1].exists():
                    raise FileNotFoundError(f"cannot make map {version} live: it does not exist "
                                            f"in {self.maps_dir}.")
            atomic_write_json(self.root / "live.json", {"version": version, "set": time.time()})

    def live_version(self) -> int | None:
        """Return the live map version, or ``None`` (no pointer, or it names a missing map)."""
        path = self.root / "live.json"
        if not path.exists():
            return None
        version = json.loads(path.read_text()).get("version")
        if version is None:
            return None
        if not self._map_paths(int(version))[1].exists():
            logger.warning("live.json names map %s, which does not exist; ignoring it", version)
            return None
        return int(version)

    # ------------------------------------------------------------------ bursts
    def _burst_paths(self, burst_id: int) -> tuple[Path, Path]:
        return self.bursts_dir / f"{burst_id:06d}.npz", self.bursts_dir / f"{burst_id:06d}.json"

    def next_burst_id(self) -> int:
        """Return the id the next :meth:`save_burst` will give (previous maximum + 1)."""
        with self._lock:
            seen, _ = self._numbers(self.bursts_dir, _BURST_RE)
            return max(seen, default=0) + 1

    def save_burst(self, arrays: Mapping[str, Any], meta: Mapping[str, Any] | None = None, *,
                   burst_id: int | None = None) -> int:
        """Persist a calibration burst; returns its id (increasing integer from 1).

        Parameters
        ----------
        arrays : mapping of str to array-like
            E.g. ``X`` (n_windows, n_features), ``labels`` (n_windows,) as strings,
            ``timestamps`` (n_windows,), ``raw`` (n_windows, n_samples, n_channels).
        meta : mapping, optional
            JSON-serialisable extras.
        burst_id : int, optional
            The id announced beforehand by :meth:`next_burst_id`; ``ValueError`` if
            another burst took it meanwhile.
        """
        arrays = _check_arrays(arrays, "burst")
        info = dict(meta or {})
        with self._lock:
            seen, _ = self._numbers(self.bursts_dir, _BURST_RE)
            expected = max(seen, default=0) + 1
            if burst_id is not None and int(burst_id) != expected:
                raise ValueError(f"burst id {burst_id} is no longer free (next is {expected}).")
            burst_id = expected
            info.update(id=burst_id, created=time.time(), arrays=sorted(arrays),
                        shapes={k: list(v.shape) for k, v in arrays.items()})
            data = _json_bytes(info, f"burst {burst_id}")
            npz, js = self._burst_paths(burst_id)
            atomic_write_npz(npz, arrays)
            atomic_write(js, lambda fh: fh.write(data))
        return burst_id

    def load_burst(self, burst_id: int) -> tuple[dict[str, np.ndarray], dict]:
        """``(arrays, meta)`` of a complete burst; ``FileNotFoundError`` naming the id.

        Parameters
        ----------
        burst_id : int
            The burst's id.
        """
        npz, js = self._burst_paths(int(burst_id))
        if not js.exists():
            raise FileNotFoundError(f"burst {burst_id} does not exist in {self.bursts_dir}.")
        return load_npz(npz), json.loads(js.read_text())

    def list_bursts(self) -> list[dict]:
        """Metadata of every complete burst, by increasing id."""
        _, done = self._numbers(self.bursts_dir, _BURST_RE)
        return [json.loads(self._burst_paths(i)[1].read_text()) for i in sorted(done)
                if self._burst_paths(i)[0].exists()]

    # ------------------------------------------------------------------ source model
    def source_path(self) -> Path | None:
        """Path of the stored source model, or ``None`` if none was saved."""
        path = self.source_dir / "model.npz"
        return path if path.exists() and (self.source_dir / "model.json").exists() else None

    def save_source(self, source, meta: Mapping[str, Any] | None = None) -> Path:
        """Store the source model as ``source/model.npz``; returns its path.

        Parameters
        ----------
        source : object with ``save(path)``, path-like, or mapping of arrays
            A :class:`~emtl_stream.daemon.bundle.SourceBundle` (its own atomic
            ``save``), an existing model file (copied atomically) or arrays.
        meta : mapping, optional
            Extras for ``source/model.json``.
        """
        dest = self.source_dir / "model.npz"
        info = {"saved": time.time(), **dict(meta or {})}
        with self._lock:
            # Clear the commit marker first: a crash below leaves "no source", not a
            # new model file described by the old metadata.
            (self.source_dir / "model.json").unlink(missing_ok=True)
            if hasattr(source, "save"):
                source.save(dest)
                fsync_dir(self.source_dir)
                info.setdefault("kind", type(source).__name__)
            elif isinstance(source, (str, os.PathLike)):
                src = Path(source)
                if not src.is_file():
                    raise FileNotFoundError(f"source model file {src} does not exist.")
                with open(src, "rb") as fh_in:
                    atomic_write(dest, lambda fh: shutil.copyfileobj(fh_in, fh))
                info.setdefault("copied_from", str(src.resolve()))
            elif isinstance(source, Mapping):
                atomic_write_npz(dest, source)
                info.setdefault("kind", "arrays")
            else:
                raise TypeError(f"source must be a model with save(path), a file path or a "
                                f"mapping of arrays, got {type(source).__name__}.")
            atomic_write_json(self.source_dir / "model.json", info)
        return dest

    def __repr__(self) -> str:
        return f"StateStore({str(self.root)!r})"

