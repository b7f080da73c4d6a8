"""Persisted maps: which stored map a source model resumes, and what each map records.

Plain functions of a :class:`~emtl_stream.io.store.StateStore` and explicit values;
the daemon calls them and swaps the live model itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..logs import logger
from .shift import ShiftReference


@dataclass(frozen=True)
class Resumed:
    """The map a source model starts on.

    Attributes
    ----------
    H : ndarray of shape (m, m)
    b : ndarray of shape (m,)
    meta : dict
        The stored map's meta (empty for a fresh identity map).
    version : int or None
        The stored version; None when a new identity map must be saved.
    refusal : str
        Why the live stored map was not resumed ("" when it was, or there was none).
    """

    H: np.ndarray
    b: np.ndarray
    meta: dict
    version: int | None
    refusal: str


def resume_map(store, n_features: int, fingerprint: str, fresh: bool) -> Resumed:
    """Return the stored live map if it was fitted for this source model, else identity.

    Parameters
    ----------
    store : StateStore
    n_features : int
        The source model's feature dimension m.
    fingerprint : str
        :func:`~.live.source_fingerprint` of the source model.
    fresh : bool
        A newly given source model: start at identity without looking.
    """
    m = int(n_features)
    version = store.live_version()
    if version is None or fresh:
        return Resumed(np.eye(m), np.zeros(m), {}, None, "")
    try:
        H, b, meta = store.load_map(version)
        if H.shape != (m, m):
            raise ValueError(f"map {version} has shape {H.shape}, model needs {(m, m)}")
        stored = meta.get("source_fingerprint")
        if stored is not None and stored != fingerprint:
            raise ValueError(f"map {version} was fitted for source model {stored}, the "
                             f"loaded model is {fingerprint}")
    except Exception as exc:  # a map of another model: start fresh, say so once
        reason = f"not resuming map {version}: {exc}"
        logger.warning("%s", reason)
        return Resumed(np.eye(m), np.zeros(m), {}, None, reason)
    return Resumed(H, b, meta, version, "")


def pick_reference(*sources) -> ShiftReference | None:
    """Return the first loadable shift reference.

    Parameters
    ----------
    *sources : dict or None
        :meth:`ShiftReference.to_dict` records, in order of preference.
    """
    for src in sources:
        if src is not None:
            try:
                return ShiftReference.from_dict(src)
            except ValueError as exc:
                logger.warning("ignoring shift reference: %s", exc)
    return None


#: The ``reason`` of the identity map stored with a new source model.
IDENTITY_REASON = "new source model"


def stored_rotation(meta) -> float | None:
    """Return a map's ring rotation from its stored meta, or None when it is unknown.

    ``map_rotation`` when it is a finite number; 0 for the identity map of a source
    model stored before maps recorded their rotation; None otherwise (a hand-edited
    value, or an older fitted map).

    Parameters
    ----------
    meta : Mapping
        The map's metadata (:func:`map_meta`).
    """
    value = meta.get("map_rotation")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value):
        return float(value)
    if value is None and meta.get("reason") == IDENTITY_REASON:
        return 0.0
    return None


def map_meta(fingerprint, reference: ShiftReference | None, **fields) -> dict:
    """Return the meta stored with a map.

    Parameters
    ----------
    fingerprint : str
        The source model's fingerprint the map was fitted for.
    reference : ShiftReference or None
        The shift watch's reference, stored with the map.
    **fields
        Provenance (reason, objective, parent, ...).
    """
    meta = dict(fields)
    meta["source_fingerprint"] = fingerprint
    if reference is not None:
        meta["shift_reference"] = reference.to_dict()
    return meta
